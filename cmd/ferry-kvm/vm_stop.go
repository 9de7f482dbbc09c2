package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/kvm/wire"
)

func cmdVMStop() *cli.Command {
	return &cli.Command{
		Name:      "stop",
		Usage:     "power a VM down (ACPI), quitting QEMU after a timeout",
		ArgsUsage: "NAME",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "force", Usage: "quit QEMU at once (like pulling the plug)"},
			&cli.DurationFlag{Name: "timeout", Usage: "wait this long for the guest to power off (default: the daemon's --stop-timeout)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("vm stop: give the VM's NAME", 2)
			}
			v, err := apiClient(c).Stop(c.Context, c.Args().First(), wire.StopRequest{Force: c.Bool("force"), TimeoutSeconds: int(c.Duration("timeout").Seconds())})
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "VM %s is %s\n", v.Name, v.State)
			return nil
		},
	}
}
