package main

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"
)

func cmdVolumeDetach() *cli.Command {
	return &cli.Command{
		Name:      "detach",
		Usage:     "show or break the hosts' attachments of a volume",
		UsageText: "ferry volume detach NAME [--host HOST] [--force]",
		Description: `A Docker host (ferry docker-plugin) holds a lease on each volume it has
mounted, which keeps other hosts from mounting it read-write; a host that
crashed lets its lease lapse within 20 s. Without --force this lists the
holders; with --force it breaks their leases at once (only --host's, when
given). Break a lease only when that host is really down: its writes are
not fenced.

   ferry volume detach pgdata
   ferry volume detach pgdata --host docker-3 --force`,
		Flags: append(apiFlags(),
			&cli.StringFlag{Name: "host", Usage: "only this host's attachment"},
			&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "break the attachments"},
		),
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			api := apiClient(c)
			l, err := api.Attachments(c.Context, name)
			if err != nil {
				return err
			}
			var broken int
			for _, a := range l {
				if h := c.String("host"); h != "" && a.Host != h {
					continue
				}
				mode := "read-write"
				if a.ReadOnly {
					mode = "read-only"
				}
				if !c.Bool("force") {
					fmt.Printf("%s: attached %s on host %s over %s since %s (lease until %s)\n", name, mode, a.Host, a.Protocol,
						a.Since.Local().Format(time.DateTime), a.Expires.Local().Format(time.TimeOnly))
					continue
				}
				if err := api.Detach(c.Context, name, a.Host); err != nil {
					return err
				}
				fmt.Printf("%s: broke host %s's %s attachment\n", name, a.Host, mode)
				broken++
			}
			switch {
			case len(l) == 0:
				fmt.Printf("%s: not attached anywhere\n", name)
			case !c.Bool("force"):
				return fmt.Errorf("not detached: add --force to break these attachments (only if the host is down)")
			case broken == 0:
				return fmt.Errorf("host %q holds no attachment of %s", c.String("host"), name)
			}
			return nil
		},
	}
}
