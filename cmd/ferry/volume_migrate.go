package main

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/gateway/api/wire"
)

func cmdVolumeMigrate() *cli.Command {
	return &cli.Command{
		Name:      "migrate",
		Usage:     "move an S3-backed volume to another store while it serves",
		UsageText: "ferry volume migrate VOLUME --to-store STORE [--rate RATE] [--delete-source] [--wait] [--json]\n   ferry volume migrate VOLUME --cancel",
		Description: `Copies the volume's objects to the other store in the background while
the volume keeps serving reads and writes (and uploading to its store),
then briefly holds its uploads (not its clients: the cache absorbs their
writes), copies what they added, switches the volume to the other store,
publishes a recovery point there and gives up the old store's writer
lease. Its objects stay in the old store unless --delete-source.

A gateway restarted during the copy resumes it. A failure before the
switch (the other store does not answer, holds another gateway's copy,
refuses a write) leaves the volume on its store, intact; the error is in
ferry volume info. --cancel stops a move before the switch and deletes
the partial copy. Both stores must be added here (ferry store add) and
have conditional puts (writer leases). A clone moves with what it reads
of its ancestors (copied to the same prefixes in the other store).

   ferry volume migrate vm1 --to-store home --wait
   ferry volume migrate vm1 --to-store home --rate 50M --delete-source
   ferry volume migrate vm1 --cancel`,
		Flags: append(apiFlags(),
			&cli.StringFlag{Name: "to-store", Usage: "the store the volume moves to"},
			&cli.StringFlag{Name: "rate", Usage: "bound on the copy, bytes a second (e.g. 100M); default none"},
			&cli.BoolFlag{Name: "delete-source", Usage: "delete the volume's objects in its old store once it switched"},
			&cli.BoolFlag{Name: "cancel", Usage: "stop the volume's move before it switches; the volume stays where it is"},
			&cli.BoolFlag{Name: "wait", Usage: "wait for the move to end, with a progress line on a terminal"},
			&cli.BoolFlag{Name: "progress", Usage: "show progress on stderr when it is a terminal (with --wait)", Value: true},
			jsonFlag(),
		),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef(c, "expected VOLUME, got %d arguments (usage: %s)", c.NArg(), c.Command.UsageText)
			}
			name := c.Args().First()
			cl := apiClient(c)
			if c.Bool("cancel") {
				if c.IsSet("to-store") || c.IsSet("rate") || c.Bool("delete-source") {
					return usagef(c, "--cancel takes no other option")
				}
				in, err := cl.CancelMigration(c.Context, name)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(in)
				}
				if in.Tier != nil && in.Tier.Migration != nil {
					fmt.Printf("migration of %s: %s\n", name, describeMigration(in.Tier.Migration))
				}
				return nil
			}
			req := wire.MigrateRequest{ToStore: c.String("to-store"), DeleteSource: c.Bool("delete-source")}
			if req.ToStore == "" {
				return usagef(c, "--to-store STORE is required (ferry store ls lists the stores)")
			}
			if r := c.String("rate"); r != "" {
				n, err := parseSize(r)
				if err != nil {
					return usagef(c, "--rate: %w", err)
				}
				req.Rate = n
			}
			in, err := cl.Migrate(c.Context, name, req)
			if err != nil {
				return err
			}
			if !c.Bool("wait") {
				if c.Bool("json") {
					return printJSON(in)
				}
				fmt.Printf("migrating %s from store %s to %s in the background (ferry volume info %s shows the progress)\n",
					name, migrationFrom(in), req.ToStore, name)
				return nil
			}
			return waitMigration(c, name)
		},
	}
}

func migrationFrom(in wire.VolumeInfo) string {
	if in.Tier != nil && in.Tier.Migration != nil {
		return in.Tier.Migration.From
	}
	return "?"
}

// describeMigration says where a move stands, in one line.
func describeMigration(mi *wire.MigrationInfo) string {
	s := fmt.Sprintf("%s, %s → %s, %s of %s copied (%.0f%%)", mi.State, mi.From, mi.To,
		formatSize(mi.DoneBytes), formatSize(mi.TotalBytes), mi.Percent)
	if mi.State == "copying" || mi.State == "switching" {
		s += fmt.Sprintf(", %s/s", formatSize(int64(mi.BytesPerSec)))
		if mi.ETASeconds > 0 {
			s += ", about " + (time.Duration(mi.ETASeconds) * time.Second).String() + " left"
		}
	}
	if mi.Error != "" {
		s += ": " + mi.Error
	}
	return s
}

// waitMigration polls the volume until its move ends, showing its
// progress on a terminal.
func waitMigration(c *cli.Context, name string) error {
	return pollVolume(c, name, func(in wire.VolumeInfo) (*pollState, error) {
		var mi *wire.MigrationInfo
		if in.Tier != nil {
			mi = in.Tier.Migration
		}
		if mi == nil {
			return nil, fmt.Errorf("volume %s is not migrating", name)
		}
		st := &pollState{label: "migrate " + name + " to " + mi.To, done: mi.DoneBytes, total: mi.TotalBytes}
		switch mi.State {
		case "done", "failed", "cancelled":
			st.finish = func() error {
				if c.Bool("json") {
					if err := printJSON(in); err != nil {
						return err
					}
				} else {
					fmt.Printf("migration of %s: %s\n", name, describeMigration(mi))
				}
				if mi.State != "done" {
					return fmt.Errorf("migration of %s to store %s %s; the volume stays on store %s: %s", name, mi.To, mi.State, mi.From, mi.Error)
				}
				return nil
			}
		}
		return st, nil
	})
}
