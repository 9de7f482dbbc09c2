package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/ferry-io/ferry/gateway/iscsi"
	"github.com/ferry-io/ferry/gateway/volume"
)

func init() {
	serveExtensions = append(serveExtensions, serveExtension{
		name: "iSCSI",
		flags: []cli.Flag{
			altsrc.NewStringFlag(&cli.StringFlag{Name: "iscsi-listen", Usage: "iSCSI listen address (empty to disable)", Value: "127.0.0.1:3260", EnvVars: []string{"FERRY_ISCSI_LISTEN"}}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "iscsi-base-iqn", Usage: "target names are BASE:VOLUME", Value: iscsi.DefaultBaseIQN, EnvVars: []string{"FERRY_ISCSI_BASE_IQN"}}),
		},
		listenFlag: "iscsi-listen",
		frontend: func(c *cli.Context, mgr *volume.Manager, log *slog.Logger, reg prometheus.Registerer) (frontend, error) {
			return iscsi.NewServer(mgr, iscsi.Config{Logger: log, Registerer: reg, BaseIQN: c.String("iscsi-base-iqn")}), nil
		},
	})
}
