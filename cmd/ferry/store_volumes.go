package main

import (
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
)

func cmdStoreVolumes() *cli.Command {
	return &cli.Command{
		Name:      "volumes",
		Usage:     "list the volumes a store holds, whichever gateway serves them",
		UsageText: "ferry store volumes STORE [--json]",
		Description: `Lists every volume in the store's bucket and prefix: its id and name,
size, newest recovery point, and its writer lease (which gateway holds it
and until when, or that it was released). Volumes this gateway serves
show their local name. Adopt one with ferry volume adopt STORE ID_OR_NAME.`,
		Flags: append(apiFlags(), jsonFlag()),
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			vs, err := apiClient(c).StoreVolumes(c.Context, name)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(vs)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tNAME\tSIZE\tRECOVERY POINT\tLEASE\tHERE AS")
			for _, v := range vs {
				rp := "none"
				if v.RecoveryPoint != 0 {
					rp = fmt.Sprintf("%s (%s ago)", v.RecoveryPointCreated.Local().Format("2006-01-02 15:04:05"), time.Since(v.RecoveryPointCreated).Round(time.Second))
				}
				ls := "none"
				if l := v.Lease; l != nil {
					ls = fmt.Sprintf("%s by %s, gen %d", l.State, orHolder(l), l.Generation)
					if l.State == "held" {
						ls += ", until " + l.Expires.Local().Format("15:04:05")
					}
				}
				here := v.Local
				if here == "" {
					here = "-"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", v.ID, v.Name, formatSize(v.Size), rp, ls, here)
			}
			return w.Flush()
		},
	}
}
