// Command ferry is the Ferry storage gateway: `ferry serve` runs the
// daemon; the other commands manage it through its admin API.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newApp() *cli.App {
	return &cli.App{
		Name:    "ferry",
		Usage:   "pool local disks and S3 into thin block volumes served over NBD and iSCSI",
		Version: version,
		Description: `Run the gateway, then manage volumes from another shell:

   ferry serve                                  # local pool under ./ferry-data
   ferry volume create vm1 --size 20G
   qemu-img info nbd://127.0.0.1:10809/vm1`,
		Commands: []*cli.Command{
			cmdServe(),
			cmdVolume(),
			cmdPool(),
			cmdStore(),
			cmdCompletion(),
		},
		EnableBashCompletion: true,
	}
}

func main() {
	if err := newApp().Run(interspersed(newApp(), os.Args)); err != nil {
		fmt.Fprintln(os.Stderr, "ferry:", err)
		os.Exit(1)
	}
}
