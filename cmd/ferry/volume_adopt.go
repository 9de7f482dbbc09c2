package main

import (
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/progress"
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
			&cli.StringFlag{Name: "hydrate", Usage: "all: fill the local cache with the volume's data in the background; none: fetch only what is read", Value: "all"},
			&cli.StringFlag{Name: "hydrate-rate", Usage: "bound on hydration, bytes a second (e.g. 100M); default none"},
			&cli.BoolFlag{Name: "wait", Usage: "wait for hydration to finish, with a progress line on a terminal"},
			&cli.BoolFlag{Name: "progress", Usage: "show progress on stderr when it is a terminal (with --wait)", Value: true},
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
				Force: c.Bool("force"), Steal: c.Bool("steal"), Hydrate: c.String("hydrate")}
			if h := req.Hydrate; h != "all" && h != "none" {
				return usagef(c, "--hydrate %q: use all or none", h)
			}
			if r := c.String("hydrate-rate"); r != "" {
				n, err := parseSize(r)
				if err != nil {
					return usagef(c, "--hydrate-rate: %w", err)
				}
				req.HydrateRate = n
			}
			r, err := apiClient(c).Adopt(c.Context, req)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(r)
			}
			if r.Previous != nil && r.Previous.State != "released" {
				fmt.Printf("took the writer lease from %s (it was %s); writes after the recovery point below are lost\n", orHolder(r.Previous), r.Previous.State)
				if r.Previous.State == "held" {
					fmt.Fprintf(os.Stderr, "warning: %s still renewed the lease: if it is alive, it is fenced now (its writes fail) and loses what it had not uploaded\n", orHolder(r.Previous))
				}
			}
			fmt.Printf("adopted %s (%s) at recovery point %d of %s (%s old), writer generation %d\n", r.Volume.Name,
				formatSize(r.Volume.Size), r.RecoveryPoint, r.RecoveryPointCreated.Local().Format("2006-01-02 15:04:05"),
				time.Duration(r.AgeSeconds*float64(time.Second)).Round(time.Second), r.Generation)
			printAttach(r.Volume)
			if c.Bool("wait") && req.Hydrate == "all" {
				return waitHydration(c, r.Volume.Name)
			}
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

// waitHydration polls the volume until its hydration ends, showing its
// progress on a terminal.
func waitHydration(c *cli.Context, name string) error {
	return pollVolume(c, name, func(in wire.VolumeInfo) (*pollState, error) {
		var h *wire.HydrationInfo
		if in.Tier != nil {
			h = in.Tier.Hydration
		}
		if h == nil {
			return nil, fmt.Errorf("volume %s is not hydrating", name)
		}
		st := &pollState{label: "hydrate " + name, done: h.DoneBytes, total: h.TotalBytes}
		if h.State != "running" {
			st.finish = func() error {
				fmt.Printf("hydration %s: %s of %s cached\n", h.State, formatSize(h.DoneBytes), formatSize(h.TotalBytes))
				if h.State == "stopped" {
					return fmt.Errorf("hydration of %s stopped: %s", name, h.Error)
				}
				return nil
			}
		}
		return st, nil
	})
}

// pollState is where a background job on a volume stands.
type pollState struct {
	label       string
	done, total int64
	// finish, when the job has ended, reports it and returns the
	// command's result.
	finish func() error
}

// pollVolume reads the volume every 200 ms and shows the progress step
// finds, on a terminal, until the job ends.
func pollVolume(c *cli.Context, name string, step func(wire.VolumeInfo) (*pollState, error)) error {
	cl := apiClient(c)
	var p *progress.Printer
	for {
		in, err := cl.Volume(c.Context, name)
		if err != nil {
			return err
		}
		st, err := step(in)
		if err != nil {
			return err
		}
		if p == nil {
			p = progress.ForTerminal(os.Stderr, st.label, st.total, c.Bool("progress"))
		}
		p.SetTotal(st.total)
		p.Set(st.done)
		if st.finish != nil {
			p.Done()
			return st.finish()
		}
		select {
		case <-c.Context.Done():
			p.Done()
			return c.Context.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
