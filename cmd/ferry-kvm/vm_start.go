package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func cmdVMStart() *cli.Command {
	return &cli.Command{
		Name:      "start",
		Usage:     "start a VM (attach its volumes, launch QEMU)",
		ArgsUsage: "NAME",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("vm start: give the VM's NAME", 2)
			}
			v, err := apiClient(c).Start(c.Context, c.Args().First())
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "VM %s is %s (QEMU pid %d)\n", v.Name, v.State, v.PID)
			return nil
		},
	}
}
