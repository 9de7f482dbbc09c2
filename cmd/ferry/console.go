package main

import (
	"bufio"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/appliance/console"
)

func consoleFlags() []cli.Flag {
	d := console.DefaultPaths()
	return []cli.Flag{
		&cli.StringFlag{Name: "data", Usage: "the gateway's data directory (the data disk)", Value: d.Data, EnvVars: []string{"FERRY_DATA"}},
		&cli.StringFlag{Name: "api", Usage: "the gateway's admin API", Value: d.API, EnvVars: []string{"FERRY_API"}},
	}
}

func consolePaths(c *cli.Context) console.Paths {
	p := console.DefaultPaths()
	p.Data = c.String("data")
	p.State = p.Data + "/appliance"
	p.TokenFile = p.Data + "/api-token"
	p.API = c.String("api")
	return p
}

func cmdConsole() *cli.Command {
	return &cli.Command{
		Name:      "console",
		Usage:     "the appliance's console: status screen and menu (appliance/README.md)",
		UsageText: "ferry console [--once] [--tty /dev/tty1]",
		Description: `Shows the Ferry appliance's status (addresses, gateway health, data
disk, API token, NBD certificate fingerprint, iSCSI CHAP credentials, pool
and volumes) and a menu: static network settings, DHCP again, rotate the
API token, set the default iSCSI CHAP secret, restart the gateway, shut
down. The appliance runs it on tty1 and the serial port
(ferry-console@.service). It runs as root on the appliance.

   ferry console --once          # print the status screen and exit`,
		Flags: append(consoleFlags(),
			&cli.BoolFlag{Name: "once", Usage: "print the status screen once and exit"},
			&cli.StringFlag{Name: "tty", Usage: "terminal to use instead of standard input and output"},
			&cli.DurationFlag{Name: "ready-wait", Usage: "how long to wait for the gateway before the first screen", Value: 2 * time.Minute},
		),
		Subcommands: []*cli.Command{cmdConsoleFirstboot()},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef(c, "console takes no arguments (did you mean ferry console firstboot?)")
			}
			in, out := os.Stdin, os.Stdout
			if t := c.String("tty"); t != "" {
				f, err := os.OpenFile(t, os.O_RDWR, 0)
				if err != nil {
					return fmt.Errorf("--tty: %w", err)
				}
				defer f.Close()
				in, out = f, f
			}
			con := &console.Console{Paths: consolePaths(c), Sys: console.Systemd{}, In: bufio.NewReader(in), Out: out, ReadyWait: c.Duration("ready-wait")}
			if c.Bool("once") {
				con.Once(c.Context)
				return nil
			}
			return con.Run(c.Context)
		},
	}
}
