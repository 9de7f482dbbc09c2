package main

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/gateway/api/wire"
)

func cmdVolumeAdopt() *cli.Command {
	return &cli.Command{
		Name:      "adopt",
		Usage:     "serve a volume another gateway kept in a shared store",
		UsageText: "ferry volume adopt STORE VOLUME_ID_OR_NAME [--name NEW] [--force | --steal] [--json]",
		Description: `Takes the volume's writer lease, starts from its newest recovery point
and serves it at once: reads of data not cached here come from S3. The
store must be added here too (ferry store add), with the same bucket and
prefix; ferry store volumes STORE lists what it holds.

A volume another gateway released is taken at once. One whose gateway is
gone (its lease expired without a release) needs --force: what that
gateway wrote after its last recovery point is lost, and the command says
how old that point is. --steal takes the lease even from a gateway that
still renews it: that gateway is fenced (its writes fail from then on) and
loses what it had not uploaded.

   ferry volume adopt cloud vm1
   ferry volume adopt cloud 7c9e6679-7425-40de-944b-e07fc1f90ae7 --name vm1-copy
   ferry volume adopt cloud vm1 --force`,
		Flags: append(apiFlags(),
			&cli.StringFlag{Name: "name", Usage: "local name (default: the volume's name in the store)"},
			&cli.BoolFlag{Name: "force", Usage: "take a writer lease that expired without a release (an unplanned move)"},
			&cli.BoolFlag{Name: "steal", Usage: "take the writer lease even while its holder renews it (fences that gateway)"},
			jsonFlag(),
		),
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return usagef(c, "expected STORE and VOLUME_ID_OR_NAME, got %d arguments (usage: %s)", c.NArg(), c.Command.UsageText)
			}
			if c.Bool("force") && c.Bool("steal") {
				return usagef(c, "give --force or --steal, not both")
			}
			req := wire.AdoptRequest{Store: c.Args().Get(0), Volume: c.Args().Get(1), Name: c.String("name"),
				Force: c.Bool("force"), Steal: c.Bool("steal")}
			r, err := apiClient(c).Adopt(c.Context, req)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(r)
			}
			if r.Previous != nil && r.Previous.State != "released" {
				fmt.Printf("took the writer lease from %s (it was %s); writes after the recovery point below are lost\n", orHolder(r.Previous), r.Previous.State)
			}
			fmt.Printf("adopted %s (%s) at recovery point %d of %s (%s old), writer generation %d\n", r.Volume.Name,
				formatSize(r.Volume.Size), r.RecoveryPoint, r.RecoveryPointCreated.Local().Format("2006-01-02 15:04:05"),
				time.Duration(r.AgeSeconds*float64(time.Second)).Round(time.Second), r.Generation)
			printAttach(r.Volume)
			return nil
		},
	}
}

func orHolder(li *wire.LeaseInfo) string {
	if li.HolderName != "" {
		return "gateway " + li.HolderName
	}
	return "gateway " + li.Holder
}
