package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/internal/apiauth"
	"github.com/ferry-io/ferry/internal/size"
	"github.com/ferry-io/ferry/kvm/wire"
)

func cmdVMMigrate() *cli.Command {
	return &cli.Command{
		Name:      "migrate",
		Usage:     "live-migrate a running VM to another ferry-kvm (same gateway, or another on the same bucket)",
		ArgsUsage: "NAME",
		Description: `Starts the VM on the destination waiting for its memory, copies it while
the guest runs, pauses the guest, moves the disks' gateway attachments to
the destination and switches over. Prints progress, then the downtime. On
any failure the VM keeps running here.

When the destination ferry-kvm uses another gateway on the same S3
bucket, the guest stays paused after the switchover until each volume is
handed over: released on this host's gateway, adopted on the
destination's. The downtime printed includes the hand-over.

   ferry-kvm vm migrate web --to otherhost:9810 --to-token-file otherhost-api-token

The destination's API token (needed as soon as it listens off loopback)
goes to this host's daemon in the request, which sends it with its own
requests to the destination; it is neither stored nor logged.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "to", Required: true, Usage: "the destination ferry-kvm's API `ADDR`"},
			&cli.StringFlag{Name: "to-token-file", Usage: "`FILE` holding the destination daemon's API token (its STATE/api-token, or a copy)", EnvVars: []string{"FERRY_KVM_TO_TOKEN_FILE"}},
			&cli.StringFlag{Name: "to-token", Usage: "the destination daemon's API token (prefer --to-token-file or FERRY_KVM_TO_TOKEN)", EnvVars: []string{"FERRY_KVM_TO_TOKEN"}},
			&cli.StringFlag{Name: "bandwidth", Usage: "cap the migration stream at `SIZE` per second (e.g. 100M)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("vm migrate: give the VM's NAME", 2)
			}
			tok, err := apiauth.ClientToken(c.String("to-token"), c.String("to-token-file"), "--to-token")
			if err != nil {
				return cli.Exit(err.Error(), 2)
			}
			req := wire.MigrateRequest{To: c.String("to"), ToToken: tok}
			if b := c.String("bandwidth"); b != "" {
				n, err := size.Parse(b)
				if err != nil {
					return cli.Exit(fmt.Sprintf("--bandwidth: %v", err), 2)
				}
				req.MaxBandwidth = n
			}
			api := apiClient(c)
			name := c.Args().First()
			if _, err := api.Migrate(c.Context, name, req); err != nil {
				return err
			}
			w := c.App.Writer
			for {
				time.Sleep(250 * time.Millisecond)
				v, err := api.Info(c.Context, name)
				if err != nil {
					return err
				}
				m := v.Migration
				if m == nil {
					return errors.New("the daemon reports no migration")
				}
				fmt.Fprintf(w, "%s: transferred %s, remaining %s of %s, dirty %d pages/s, %.0f Mbit/s\n", m.Status, mib(m.TransferredBytes), mib(m.RemainingBytes), mib(m.TotalBytes), m.DirtyPagesRate, m.MbpsRate)
				switch m.Status {
				case "completed":
					fmt.Fprintf(w, "migrated %s to %s: downtime %d ms, total %d ms\n", name, m.To, m.DowntimeMS, m.TotalMS)
					if m.Handover != "" {
						fmt.Fprintf(w, "volumes: %s\n", m.Handover)
					}
					if m.Error != "" {
						return fmt.Errorf("migration of %s: %s", name, m.Error)
					}
					return nil
				case "failed", "cancelled":
					return fmt.Errorf("migration of %s failed (it runs on here): %s", name, m.Error)
				}
			}
		},
	}
}
