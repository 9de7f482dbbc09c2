package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
)

func cmdVolumeSnapshot() *cli.Command {
	return &cli.Command{
		Name:  "snapshot",
		Usage: "create, list and remove snapshots of a volume (read-only exports VOLUME@SNAPSHOT)",
		Description: `A snapshot holds every write acknowledged before it was created (the
volume is flushed first) and is readable as a read-only export named
VOLUME@SNAPSHOT: nbd://HOST:10809/vm1@before, or the iSCSI target
BASE:vm1:before. It shares the volume's data; only what later writes
replace is kept for it. An S3-backed volume's snapshot is a recovery
point kept by name; a local volume's is a reflink of its file, so its
pool must be on a file system that shares blocks between files (XFS with
reflink, the mkfs.xfs default, or btrfs: see ferry pool info). ONLY IT
KEEPS in ls is what removing the snapshot would free.

   ferry volume snapshot create vm1 before-upgrade
   ferry volume snapshot ls vm1
   nbdcopy nbd://127.0.0.1:10809/vm1@before-upgrade vm1-before.img
   ferry volume snapshot rm vm1 before-upgrade`,
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "snapshot a volume now",
				UsageText: "ferry volume snapshot create VOLUME SNAPSHOT [--json]",
				Flags:     append(apiFlags(), jsonFlag()),
				Action: func(c *cli.Context) error {
					vol, snap, err := volSnapArgs(c)
					if err != nil {
						return err
					}
					sn, err := apiClient(c).CreateSnapshot(c.Context, vol, snap)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(sn)
					}
					if sn.RecoveryPoint != 0 {
						fmt.Printf("snapshot %s created (recovery point %d); read it as %s\n", sn.Export, sn.RecoveryPoint, sn.Export)
					} else {
						fmt.Printf("snapshot %s created; read it as %s\n", sn.Export, sn.Export)
					}
					return nil
				},
			},
			{
				Name:      "ls",
				Aliases:   []string{"list"},
				Usage:     "list a volume's snapshots",
				UsageText: "ferry volume snapshot ls VOLUME [--json]",
				Flags:     append(apiFlags(), jsonFlag()),
				Action: func(c *cli.Context) error {
					vol, err := nameArg(c)
					if err != nil {
						return err
					}
					list, err := apiClient(c).Snapshots(c.Context, vol)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(list)
					}
					w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(w, "SNAPSHOT\tEXPORT\tSIZE\tCREATED\tONLY IT KEEPS")
					for _, sn := range list {
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", sn.Name, sn.Export, formatSize(sn.Size),
							sn.Created.Local().Format("2006-01-02 15:04:05"), formatSize(sn.ExclusiveBytes))
					}
					return w.Flush()
				},
			},
			{
				Name:      "rm",
				Aliases:   []string{"remove"},
				Usage:     "remove a snapshot (refused while a client reads it)",
				UsageText: "ferry volume snapshot rm VOLUME SNAPSHOT",
				Flags:     apiFlags(),
				Action: func(c *cli.Context) error {
					vol, snap, err := volSnapArgs(c)
					if err != nil {
						return err
					}
					if err := apiClient(c).RemoveSnapshot(c.Context, vol, snap); err != nil {
						return err
					}
					fmt.Printf("snapshot %s@%s removed\n", vol, snap)
					return nil
				},
			},
		},
	}
}

// volSnapArgs reads VOLUME SNAPSHOT, or VOLUME@SNAPSHOT.
func volSnapArgs(c *cli.Context) (vol, snap string, err error) {
	switch c.NArg() {
	case 1:
		if v, s, ok := strings.Cut(c.Args().First(), "@"); ok {
			return v, s, nil
		}
	case 2:
		return c.Args().Get(0), c.Args().Get(1), nil
	}
	return "", "", usagef(c, "expected VOLUME SNAPSHOT (usage: %s)", c.Command.UsageText)
}
