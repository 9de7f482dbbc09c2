package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func cmdVolumeRm() *cli.Command {
	return &cli.Command{
		Name:      "rm",
		Aliases:   []string{"remove"},
		Usage:     "remove a volume and its data",
		UsageText: "ferry volume rm NAME [--force]",
		Description: `Removes the volume and frees its space. A volume with connected clients
is refused unless --force, which disconnects them first.`,
		Flags: append(apiFlags(),
			&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "disconnect connected clients and remove anyway"},
		),
		Action: func(c *cli.Context) error {
			name, err := nameArg(c)
			if err != nil {
				return err
			}
			if err := apiClient(c).RemoveVolume(c.Context, name, c.Bool("force")); err != nil {
				return err
			}
			fmt.Printf("removed volume %s\n", name)
			return nil
		},
	}
}
