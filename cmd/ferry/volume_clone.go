package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func cmdVolumeClone() *cli.Command {
	return &cli.Command{
		Name:      "clone",
		Usage:     "make a writable volume from a snapshot, at once and without copying",
		UsageText: "ferry volume clone VOLUME@SNAPSHOT NEW [--json]",
		Description: `The clone shares the snapshot's data: nothing is copied, and it is
served at once. The clone and its parent change independently; the
snapshot and the parent volume can be removed while the clone lives. A
clone of an S3-backed volume reads the snapshot's objects in the bucket;
a clone of a local volume is a reflink of the snapshot's file in the same
pool directory (XFS or btrfs).

   ferry volume snapshot create db nightly
   ferry volume clone db@nightly db-test`,
		Flags: append(apiFlags(), jsonFlag()),
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return usagef(c, "expected VOLUME@SNAPSHOT and NEW, got %d arguments (usage: %s)", c.NArg(), c.Command.UsageText)
			}
			in, err := apiClient(c).Clone(c.Context, c.Args().Get(0), c.Args().Get(1))
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(in)
			}
			fmt.Printf("cloned %s as %s (%s)\n", c.Args().Get(0), in.Name, formatSize(in.Size))
			printAttach(in)
			return nil
		},
	}
}
