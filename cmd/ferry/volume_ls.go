package main

import (
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
)

func cmdVolumeLs() *cli.Command {
	return &cli.Command{
		Name:      "ls",
		Aliases:   []string{"list"},
		Usage:     "list volumes",
		UsageText: "ferry volume ls [--json]",
		Flags:     append(apiFlags(), jsonFlag()),
		Action: func(c *cli.Context) error {
			vs, err := apiClient(c).Volumes(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(vs)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tSIZE\tALLOCATED\tBACKEND\tCLIENTS")
			for _, v := range vs {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", v.Name, formatSize(v.Size), formatSize(v.Allocated), v.Backend, len(v.Connections))
			}
			return w.Flush()
		},
	}
}
