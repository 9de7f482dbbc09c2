package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func cmdVolumeResize() *cli.Command {
	return &cli.Command{
		Name:      "resize",
		Usage:     "grow a volume online",
		UsageText: "ferry volume resize NAME --size SIZE",
		Description: `Grows the volume to SIZE while clients stay connected; they see the
new size when they next connect (NBD) or after the capacity-changed
unit attention (iSCSI). Shrinking is refused because it destroys data.

   ferry volume resize vm1 --size 40G`,
		Flags: append(apiFlags(),
			&cli.StringFlag{Name: "size", Aliases: []string{"s"}, Usage: "new size, e.g. 40G"},
			jsonFlag(),
		),
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			size, err := sizeArg(c)
			if err != nil {
				return err
			}
			in, err := apiClient(c).ResizeVolume(c.Context, name, size)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(in)
			}
			fmt.Printf("volume %s is now %s\n", in.Name, formatSize(in.Size))
			return nil
		},
	}
}
