package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/gateway/nbd"
	"github.com/ferry-io/ferry/gateway/volume"
)

func init() {
	serveExtensions = append(serveExtensions, serveExtension{
		name:     "NBD",
		protocol: wire.ListenerNBD,
		flags: []cli.Flag{
			altsrc.NewStringFlag(&cli.StringFlag{Name: "nbd-listen", Usage: "NBD listen address (empty to disable)", Value: "127.0.0.1:10809", EnvVars: []string{"FERRY_NBD_LISTEN"}}),
		},
		listenFlag: "nbd-listen",
		frontend: func(c *cli.Context, mgr *volume.Manager, log *slog.Logger, reg prometheus.Registerer) (frontend, error) {
			return nbd.NewServer(mgr, nbd.Config{Logger: log, Registerer: reg}), nil
		},
		protection: func(c *cli.Context, loopback bool) string {
			if loopback {
				return "loopback only; volumes' address allow-lists; volumes with CHAP or an initiator list only to allowed addresses"
			}
			return "volumes' address allow-lists only (no NBD TLS yet): a volume without rules is open to anyone who reaches this address; volumes with CHAP or an initiator list only to allowed addresses"
		},
	})
}
