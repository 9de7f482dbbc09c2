package main

import (
	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/kvm/client"
)

func apiFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "api", Usage: "the ferry-kvm daemon's `ADDR`", Value: "127.0.0.1:9810", EnvVars: []string{"FERRY_KVM_API"}},
	}
}

func apiClient(c *cli.Context) *client.Client { return client.New(c.String("api")) }

func cmdVM() *cli.Command {
	return &cli.Command{
		Name:  "vm",
		Usage: "manage VMs on a ferry-kvm daemon",
		Flags: apiFlags(),
		Subcommands: []*cli.Command{
			cmdVMCreate(), cmdVMLs(), cmdVMInfo(), cmdVMStart(), cmdVMStop(), cmdVMRm(),
			cmdVMConsole(), cmdVMLog(), cmdVMMigrate(),
		},
	}
}
