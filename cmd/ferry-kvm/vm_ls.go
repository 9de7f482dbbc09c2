package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
)

func cmdVMLs() *cli.Command {
	return &cli.Command{
		Name:  "ls",
		Usage: "list VMs",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
		Action: func(c *cli.Context) error {
			vms, err := apiClient(c).List(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				e := json.NewEncoder(c.App.Writer)
				e.SetIndent("", "  ")
				return e.Encode(vms)
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tPID\tCPUS\tMEMORY\tDISKS\tUPTIME")
			for _, v := range vms {
				disks := ""
				for i, d := range v.Disks {
					if i > 0 {
						disks += ","
					}
					disks += d.Volume
				}
				up := "-"
				if v.UptimeSeconds > 0 {
					up = (time.Duration(v.UptimeSeconds) * time.Second).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%dM\t%s\t%s\n", v.Name, v.State, v.PID, v.CPUs, v.MemoryMiB, disks, up)
			}
			return tw.Flush()
		},
	}
}
