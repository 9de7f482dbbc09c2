package main

import (
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
)

func cmdPool() *cli.Command {
	return &cli.Command{
		Name:  "pool",
		Usage: "show pooled capacity",
		Subcommands: []*cli.Command{{
			Name:      "info",
			Usage:     "show the local pool's capacity and what volumes use",
			UsageText: "ferry pool info [--json]",
			Flags:     append(apiFlags(), jsonFlag()),
			Action: func(c *cli.Context) error {
				p, err := apiClient(c).Pool(c.Context)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(p)
				}
				fmt.Printf("volumes:      %d\n", p.Volumes)
				fmt.Printf("provisioned:  %s\n", formatSize(p.Provisioned))
				fmt.Printf("allocated:    %s\n", formatSize(p.Allocated))
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "\nLOCAL DIR\tSIZE\tFREE")
				for _, d := range p.Dirs {
					fmt.Fprintf(w, "%s\t%s\t%s\n", d.Path, formatSize(d.Total), formatSize(d.Free))
				}
				return w.Flush()
			},
		}},
	}
}
