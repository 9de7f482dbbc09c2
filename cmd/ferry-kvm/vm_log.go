package main

import (
	"github.com/urfave/cli/v2"
)

func cmdVMLog() *cli.Command {
	return &cli.Command{
		Name:      "log",
		Usage:     "print a VM's serial console output (kept in a ring file by the daemon)",
		ArgsUsage: "NAME",
		Flags:     []cli.Flag{&cli.Int64Flag{Name: "bytes", Value: 64 << 10, Usage: "print at most the last `N` bytes"}},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("vm log: give the VM's NAME", 2)
			}
			b, err := apiClient(c).Log(c.Context, c.Args().First(), c.Int64("bytes"))
			if err != nil {
				return err
			}
			_, err = c.App.Writer.Write(b)
			return err
		},
	}
}
