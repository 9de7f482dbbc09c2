package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/ferry-io/ferry/gateway/nbd"
	"github.com/ferry-io/ferry/gateway/volume"
)

func init() {
	serveExtensions = append(serveExtensions, serveExtension{
		name: "NBD",
		flags: []cli.Flag{
			altsrc.NewStringFlag(&cli.StringFlag{Name: "nbd-listen", Usage: "NBD listen address (empty to disable)", Value: "127.0.0.1:10809", EnvVars: []string{"FERRY_NBD_LISTEN"}}),
		},
		listenFlag: "nbd-listen",
		frontend: func(c *cli.Context, mgr *volume.Manager, log *slog.Logger, reg prometheus.Registerer) (frontend, error) {
			return nbd.NewServer(mgr, nbd.Config{Logger: log, Registerer: reg}), nil
		},
	})
}
