package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/internal/buildinfo"
)

func cmdVersion() *cli.Command {
	return &cli.Command{
		Name:      "version",
		Usage:     "print the version, commit and Go version",
		UsageText: "ferry version [--json]",
		Flags:     []cli.Flag{jsonFlag()},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef(c, "version takes no arguments")
			}
			in := buildinfo.Read()
			if c.Bool("json") {
				return printJSON(in)
			}
			fmt.Println(in)
			return nil
		},
	}
}
