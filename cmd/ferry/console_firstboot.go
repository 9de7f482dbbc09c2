package main

import (
	"os"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/appliance/console"
)

func cmdConsoleFirstboot() *cli.Command {
	return &cli.Command{
		Name:      "firstboot",
		Usage:     "create the appliance's missing state before the gateway starts",
		UsageText: "ferry console firstboot",
		Description: `Run by ferry-firstboot.service on every boot of the appliance, before
ferry.service: applies a NoCloud seed (a disk labelled cidata) once per
instance-id, creates the self-signed NBD TLS certificate and the default
iSCSI CHAP credentials in DATA/appliance unless they exist, and installs
the static network settings kept there. Does only what is missing.`,
		Flags: consoleFlags(),
		Action: func(c *cli.Context) error {
			return console.Firstboot(c.Context, consolePaths(c), os.Stdout)
		},
	}
}
