package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func cmdVMRm() *cli.Command {
	return &cli.Command{
		Name:      "rm",
		Usage:     "remove a stopped VM and its volumes",
		ArgsUsage: "NAME",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "keep-disks", Usage: "keep the VM's volumes on the gateway"}},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("vm rm: give the VM's NAME", 2)
			}
			if err := apiClient(c).Remove(c.Context, c.Args().First(), c.Bool("keep-disks")); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "removed VM %s\n", c.Args().First())
			return nil
		},
	}
}
