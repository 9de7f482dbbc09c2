package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/gateway/nbd"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/apiauth"
	"github.com/ferry-io/ferry/internal/tlspsk"
)

// maxNBDPoll bounds --nbd-poll: polls are for clients that send their
// next request within microseconds.
const maxNBDPoll = 10 * time.Millisecond

// NBD TLS modes (--nbd-tls).
const (
	nbdTLSAuto    = "auto"
	nbdTLSRequire = "require"
	nbdTLSAllow   = "allow"
	nbdTLSOff     = "off"
)

func init() {
	serveExtensions = append(serveExtensions, serveExtension{
		name:     "NBD",
		protocol: wire.ListenerNBD,
		flags: []cli.Flag{
			altsrc.NewStringFlag(&cli.StringFlag{Name: "nbd-listen", Usage: "NBD listen address (empty to disable)", Value: "127.0.0.1:10809", EnvVars: []string{"FERRY_NBD_LISTEN"}}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "nbd-tls", Value: nbdTLSAuto, EnvVars: []string{"FERRY_NBD_TLS"},
				Usage: "NBD TLS (NBD_OPT_STARTTLS): require, allow (clients choose), off; auto is require off loopback, allow on loopback when a certificate or PSK file is given, off otherwise"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "nbd-tls-cert", EnvVars: []string{"FERRY_NBD_TLS_CERT"}, Usage: "PEM certificate (chain) of the NBD server; with --nbd-tls-key"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "nbd-tls-key", EnvVars: []string{"FERRY_NBD_TLS_KEY"}, Usage: "PEM private key of --nbd-tls-cert"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "nbd-tls-ca", EnvVars: []string{"FERRY_NBD_TLS_CA"},
				Usage: "PEM certificate authority: NBD clients must then present a certificate it signed (its common name is the client's TLS identity)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "nbd-tls-psk", EnvVars: []string{"FERRY_NBD_TLS_PSK"},
				Usage: "pre-shared keys for NBD TLS 1.3 (identity:hexkey lines, as psktool writes and nbdkit --tls-psk and QEMU tls-creds-psk read; not accessible to others); the identity is the client's TLS identity"}),
			altsrc.NewBoolFlag(&cli.BoolFlag{Name: "nbd-splice-writes", EnvVars: []string{"FERRY_NBD_SPLICE_WRITES"},
				Usage: "move large NBD write payloads (64 KiB to 1 MiB, without TLS) from the socket into local volumes' files with splice(2): less CPU, but higher tail latency in this project's loopback benchmarks (docs/NBD.md)"}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "nbd-poll", EnvVars: []string{"FERRY_NBD_POLL"},
				Usage: "how long a connection with no request in flight watches for the client's next request before sleeping, e.g. 50us (0, the default: never; at most 10ms): lower latency for clients with one request at a time on other machines, for some of the gateway's CPU; with clients on the gateway's own CPUs it can cost more than it saves (docs/NBD.md, \"Polling\")"}),
			altsrc.NewBoolFlag(&cli.BoolFlag{Name: "nbd-thread-per-connection", Value: true, EnvVars: []string{"FERRY_NBD_THREAD_PER_CONNECTION"},
				Usage: "serve each plain NBD connection (up to 64 at once; not TLS) from a thread that waits on its socket itself while the client keeps requests in flight, outside Go's network poller, as nbdkit does (quiet and idle connections wait in the poller, and every one on a gateway confined to one CPU, where a quiet one first holds its thread briefly while nothing else is ready): faster large writes from clients on the gateway's own CPUs; false serves every connection through the poller (docs/NBD.md, \"A thread per connection\")"}),
		},
		listenFlag: "nbd-listen",
		frontend: func(c *cli.Context, mgr *volume.Manager, log *slog.Logger, reg prometheus.Registerer) (frontend, error) {
			cfg, _, err := nbdTLS(c, apiauth.IsLoopback(c.String("nbd-listen")))
			if err != nil {
				return nil, err
			}
			cfg.Logger, cfg.Registerer = log, reg
			cfg.SpliceWrites = c.Bool("nbd-splice-writes")
			cfg.Poll = c.Duration("nbd-poll") // checked
			cfg.ThreadPerConn = c.Bool("nbd-thread-per-connection")
			return nbd.NewServer(mgr, cfg), nil
		},
		protection: func(c *cli.Context, loopback bool) string {
			_, summary, _ := nbdTLS(c, loopback)
			return summary
		},
		check: func(c *cli.Context, loopback bool) error {
			if d := c.Duration("nbd-poll"); d < 0 || d > maxNBDPoll {
				return usagef(c, "--nbd-poll %v: give 0 (never poll) to %v; a poll holds a CPU for that long", d, maxNBDPoll)
			}
			_, _, err := nbdTLS(c, loopback)
			return err
		},
	})
}

// nbdTLS reads the NBD TLS flags into the server's config and says what
// protects the listener.
func nbdTLS(c *cli.Context, loopback bool) (nbd.Config, string, error) {
	var cfg nbd.Config
	mode := c.String("nbd-tls")
	cert, key, ca, psk := c.String("nbd-tls-cert"), c.String("nbd-tls-key"), c.String("nbd-tls-ca"), c.String("nbd-tls-psk")
	switch mode {
	case nbdTLSAuto:
		switch {
		case !loopback:
			mode = nbdTLSRequire
		case cert != "" || psk != "":
			mode = nbdTLSAllow
		default:
			mode = nbdTLSOff
		}
	case nbdTLSRequire, nbdTLSAllow, nbdTLSOff:
	default:
		return cfg, "", fmt.Errorf("--nbd-tls %q: use require, allow, off or auto", mode)
	}
	if (cert == "") != (key == "") {
		return cfg, "", fmt.Errorf("--nbd-tls-cert and --nbd-tls-key go together: give both or neither")
	}
	if mode != nbdTLSOff && cert == "" && psk == "" {
		why := "--nbd-tls " + mode
		if c.String("nbd-tls") == nbdTLSAuto {
			why = "NBD listens off loopback (" + c.String("nbd-listen") + "), so it requires TLS by default, and"
		}
		return cfg, "", fmt.Errorf("%s needs a certificate or a PSK file: give --nbd-tls-cert and --nbd-tls-key (and --nbd-tls-ca to require client certificates), or --nbd-tls-psk FILE (psktool's identity:hexkey lines), or --nbd-tls off to serve NBD in the clear on a trusted network", why)
	}
	summary := "volumes' address allow-lists; volumes with CHAP or an initiator list only to allowed addresses"
	if loopback {
		summary = "loopback only; " + summary
	}
	if mode == nbdTLSOff {
		if !loopback {
			summary = "no TLS (--nbd-tls off): " + summary + "; a volume without rules is open to anyone who reaches this address"
		}
		return cfg, summary, nil
	}
	if ca != "" && cert == "" {
		return cfg, "", fmt.Errorf("--nbd-tls-ca needs --nbd-tls-cert and --nbd-tls-key: client certificates are checked in an X.509 TLS session")
	}
	var kinds []string
	if psk != "" {
		keys, err := tlspsk.ReadKeyFile(psk)
		if err != nil {
			return cfg, "", fmt.Errorf("--nbd-tls-psk: %w", err)
		}
		cfg.PSK = &tlspsk.Config{Key: keys.Lookup}
		n := fmt.Sprintf("%d identities", len(keys))
		if len(keys) == 1 {
			n = "1 identity"
		}
		kinds = append(kinds, "PSK ("+n+")")
	}
	cfg.RequireTLS = mode == nbdTLSRequire
	if cert != "" {
		kp, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return cfg, "", fmt.Errorf("--nbd-tls-cert/--nbd-tls-key: %w", err)
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}
		x509Kind := "X.509 certificate"
		if ca != "" {
			pem, err := os.ReadFile(ca)
			if err != nil {
				return cfg, "", fmt.Errorf("--nbd-tls-ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return cfg, "", fmt.Errorf("--nbd-tls-ca %s holds no PEM certificate", ca)
			}
			cfg.TLS.ClientCAs = pool
			cfg.TLS.ClientAuth = tls.RequireAndVerifyClientCert
			x509Kind += " with client certificates"
		}
		kinds = append([]string{x509Kind}, kinds...)
	}
	tlsSummary := "TLS required: " + strings.Join(kinds, " and ")
	if mode == nbdTLSAllow {
		tlsSummary = "TLS offered: " + strings.Join(kinds, " and ") + "; clients may also connect in the clear"
	}
	return cfg, tlsSummary + "; " + summary, nil
}
