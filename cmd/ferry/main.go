// Command ferry is the Ferry storage gateway: `ferry serve` runs the
// daemon; the other commands manage it through its admin API.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/ferry-io/ferry/internal/buildinfo"
)

func newApp() *cli.App {
	app := &cli.App{
		Name:    "ferry",
		Usage:   "pool local disks and S3 into thin block volumes served over NBD and iSCSI",
		Version: buildinfo.Read().Version,
		Description: `Run the gateway, then manage volumes from another shell:

   ferry serve                                  # local pool under ./ferry-data
   ferry volume create vm1 --size 20G
   ferry volume url vm1                         # nbd://127.0.0.1:10809/vm1
   qemu-img info nbd://127.0.0.1:10809/vm1`,
		Commands: []*cli.Command{
			cmdServe(),
			cmdStatus(),
			cmdVolume(),
			cmdPool(),
			cmdStore(),
			cmdDockerPlugin(),
			cmdVersion(),
			cmdCompletion(),
			cmdConsole(),
		},
		EnableBashCompletion: true,
	}
	strictUsage(app)
	return app
}

func main() {
	cli.VersionPrinter = func(c *cli.Context) { fmt.Fprintln(c.App.Writer, buildinfo.Read()) }
	err := newApp().Run(interspersed(newApp(), os.Args))
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "ferry:", err)
	var ue *usageError
	if errors.As(err, &ue) {
		os.Exit(2)
	}
	os.Exit(1)
}
