package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/gateway/iscsi"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/apiauth"
)

func init() {
	serveExtensions = append(serveExtensions, serveExtension{
		name:     "iSCSI",
		protocol: wire.ListenerISCSI,
		flags: []cli.Flag{
			altsrc.NewStringFlag(&cli.StringFlag{Name: "iscsi-listen", Usage: "iSCSI listen address (empty to disable)", Value: "127.0.0.1:3260", EnvVars: []string{"FERRY_ISCSI_LISTEN"}}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "iscsi-base-iqn", Usage: "target names are BASE:VOLUME", Value: iscsi.DefaultBaseIQN, EnvVars: []string{"FERRY_ISCSI_BASE_IQN"}}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "iscsi-chap-user", Usage: "CHAP user name for volumes without their own CHAP settings", EnvVars: []string{"FERRY_ISCSI_CHAP_USER"}}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "iscsi-chap-secret", Usage: "CHAP secret for --iscsi-chap-user (prefer the environment variable)", EnvVars: []string{"FERRY_ISCSI_CHAP_SECRET"}}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "iscsi-mutual-chap-user", Usage: "user name the target answers mutual CHAP with, by default", EnvVars: []string{"FERRY_ISCSI_MUTUAL_CHAP_USER"}}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "iscsi-mutual-chap-secret", Usage: "mutual CHAP secret for --iscsi-mutual-chap-user", EnvVars: []string{"FERRY_ISCSI_MUTUAL_CHAP_SECRET"}}),
		},
		listenFlag: "iscsi-listen",
		// Checked before anything binds, as every listener's settings.
		check: func(c *cli.Context, _ bool) error {
			_, err := defaultCHAP(c)
			return err
		},
		frontend: func(c *cli.Context, mgr *volume.Manager, log *slog.Logger, reg prometheus.Registerer) (frontend, error) {
			def, err := defaultCHAP(c)
			if err != nil {
				return nil, err
			}
			needCHAP := !apiauth.IsLoopback(c.String("iscsi-listen"))
			return iscsi.NewServer(mgr, iscsi.Config{
				Logger: log, Registerer: reg, BaseIQN: c.String("iscsi-base-iqn"),
				Access: func(ctx context.Context, vol string) (iscsi.Access, error) {
					return volumeAccess(ctx, mgr, vol, def, needCHAP)
				},
				Reservations: mgr,
			}), nil
		},
		protection: func(c *cli.Context, loopback bool) string {
			s := "volumes' CHAP, initiator and address allow-lists"
			switch {
			case c.String("iscsi-chap-user") != "":
				s += "; gateway default CHAP for volumes without their own"
			case !loopback:
				s += "; CHAP required: volumes without CHAP are refused unless they opt out (--iscsi-without-chap)"
			default:
				s += "; a volume without rules is open to any initiator that reaches this address"
			}
			if loopback {
				s = "loopback only; " + s
			}
			return s
		},
	})
}

// volumeAccess is a volume's iSCSI access rules: its own CHAP settings,
// or the gateway default when it has none, and its allow-list. needCHAP
// (a listener off loopback) refuses a volume that ends up without CHAP,
// unless it opted out.
func volumeAccess(ctx context.Context, mgr interface {
	Access(context.Context, string) (volume.Access, error)
}, vol string, def volume.Access, needCHAP bool) (iscsi.Access, error) {
	a, err := mgr.Access(ctx, vol)
	if err != nil {
		return iscsi.Access{}, err
	}
	if a.CHAPUser == "" {
		a.CHAPUser, a.CHAPSecret, a.MutualUser, a.MutualSecret = def.CHAPUser, def.CHAPSecret, def.MutualUser, def.MutualSecret
	}
	if needCHAP && a.CHAPUser == "" && !a.ISCSIWithoutCHAP {
		return iscsi.Access{}, fmt.Errorf("volume %s has no CHAP, which iSCSI off loopback requires (give it --chap-user/--chap-secret, start ferry serve with --iscsi-chap-user, or opt it out with ferry volume update %s --iscsi-without-chap): %w", vol, vol, volume.ErrDenied)
	}
	return iscsi.Access{
		CHAPUser: a.CHAPUser, CHAPSecret: a.CHAPSecret,
		MutualUser: a.MutualUser, MutualSecret: a.MutualSecret,
		Initiators: a.AllowInitiators,
	}, nil
}

// defaultCHAP is the gateway's default iSCSI CHAP (--iscsi-chap-*), for
// volumes without their own.
func defaultCHAP(c *cli.Context) (volume.Access, error) {
	def := volume.Access{
		CHAPUser: c.String("iscsi-chap-user"), CHAPSecret: c.String("iscsi-chap-secret"),
		MutualUser: c.String("iscsi-mutual-chap-user"), MutualSecret: c.String("iscsi-mutual-chap-secret"),
	}
	if err := def.Validate(); err != nil {
		return volume.Access{}, fmt.Errorf("gateway default iSCSI CHAP (--iscsi-chap-*): %w", err)
	}
	return def, nil
}
