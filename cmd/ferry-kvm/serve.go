package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
	"golang.org/x/sys/unix"

	gwclient "github.com/ferry-io/ferry/gateway/api/client"
	gwire "github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/apiauth"
	"github.com/ferry-io/ferry/internal/cliconf"
	"github.com/ferry-io/ferry/kvm"
)

func serveFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "read flags from this YAML `FILE` (keys named like the flags)", EnvVars: []string{"FERRY_KVM_CONFIG"}},
		altsrc.NewStringFlag(&cli.StringFlag{Name: "gateway", Usage: "the Ferry gateway's admin API `ADDR` (host:port or URL)", Value: "127.0.0.1:9809", EnvVars: []string{"FERRY_KVM_GATEWAY"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "gateway-token-file", Usage: "read the gateway API's bearer token from `FILE`", EnvVars: []string{"FERRY_KVM_GATEWAY_TOKEN_FILE"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "listen", Usage: "serve ferry-kvm's API, /healthz and /metrics on `ADDR`", Value: "127.0.0.1:9810", EnvVars: []string{"FERRY_KVM_LISTEN"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "state", Usage: "keep VM state files, QMP sockets and serial logs in `DIR`", Value: "./ferry-kvm-data", EnvVars: []string{"FERRY_KVM_STATE"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "host-id", Usage: "name this host to the gateway; VM disks are attached as HOSTID:VM (default: the host name)", EnvVars: []string{"FERRY_KVM_HOST_ID"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "qemu", Usage: "the QEMU `BINARY`", Value: "qemu-system-x86_64", EnvVars: []string{"FERRY_KVM_QEMU"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "migration-address", Usage: "incoming live migrations listen on this `HOST` (default: --listen's host)", EnvVars: []string{"FERRY_KVM_MIGRATION_ADDRESS"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "reconnect-delay", Usage: "QEMU's NBD reconnect-delay: guest I/O waits this long for a restarted gateway before it fails", Value: 60 * time.Second, EnvVars: []string{"FERRY_KVM_RECONNECT_DELAY"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "stop-timeout", Usage: "how long `vm stop` waits for an ACPI powerdown before it quits QEMU", Value: 60 * time.Second, EnvVars: []string{"FERRY_KVM_STOP_TIMEOUT"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "nbd-tls-x509-dir", EnvVars: []string{"FERRY_KVM_NBD_TLS_X509_DIR"},
			Usage: "QEMU's NBD disks negotiate TLS with X.509: `DIR` holds ca-cert.pem (the gateway's CA) and, if the gateway asks for one, client-cert.pem and client-key.pem (QEMU tls-creds-x509)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "nbd-tls-psk-dir", EnvVars: []string{"FERRY_KVM_NBD_TLS_PSK_DIR"},
			Usage: "QEMU's NBD disks negotiate TLS with a pre-shared key: `DIR` holds keys.psk with --nbd-tls-psk-user's line (QEMU tls-creds-psk)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "nbd-tls-psk-user", EnvVars: []string{"FERRY_KVM_NBD_TLS_PSK_USER"},
			Usage: "the PSK identity (`USER`) of --nbd-tls-psk-dir"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "nbd-tls-hostname", EnvVars: []string{"FERRY_KVM_NBD_TLS_HOSTNAME"},
			Usage: "with --nbd-tls-x509-dir: the `NAME` the gateway's certificate must carry (default: the host of its NBD address)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "api-tls-cert", EnvVars: []string{"FERRY_KVM_API_TLS_CERT"},
			Usage: "PEM certificate (chain) `FILE` for HTTPS on --listen; with --api-tls-key"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "api-tls-key", EnvVars: []string{"FERRY_KVM_API_TLS_KEY"},
			Usage: "PEM private key `FILE` of --api-tls-cert"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "peer-ca", EnvVars: []string{"FERRY_KVM_PEER_CA"},
			Usage: "PEM certificate authority `FILE` for https:// migration destinations (default: the system's)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "api-auth", Value: apiauth.ModeAuto, EnvVars: []string{"FERRY_KVM_API_AUTH"},
			Usage: "API authentication: auto (a bearer token as soon as --listen or --migration-address is off loopback), token (always), none (never; refused off loopback unless --api-auth-insecure)"}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "api-auth-insecure", EnvVars: []string{"FERRY_KVM_API_AUTH_INSECURE"},
			Usage: "allow --api-auth none off loopback (anyone who reaches the API can then run, stop and migrate every VM)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "api-token-file", EnvVars: []string{"FERRY_KVM_API_TOKEN_FILE"},
			Usage: "`FILE` holding the API token, created (mode 0600, 256 random bits) on first start (default STATE/api-token)"}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "metrics-public", EnvVars: []string{"FERRY_KVM_METRICS_PUBLIC"},
			Usage: "serve /metrics without the API token (/healthz never needs it)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error", Value: "info", EnvVars: []string{"FERRY_LOG_LEVEL"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-format", Usage: "text or json", Value: "text", EnvVars: []string{"FERRY_LOG_FORMAT"}}),
	}
}

func cmdServe() *cli.Command {
	flags := serveFlags()
	return &cli.Command{
		Name:  "serve",
		Usage: "run the ferry-kvm daemon",
		Description: `Runs VMs under QEMU with their disks on a Ferry gateway's volumes, and
serves the API the vm commands use. VMs keep running when the daemon
stops or dies; the next start finds them again. See docs/KVM.md.

   ferry-kvm serve --gateway 127.0.0.1:9809 --listen 127.0.0.1:9810 --state /var/lib/ferry-kvm`,
		Flags:  flags,
		Before: cliconf.ConfigFile(flags),
		Action: runServe,
	}
}

func runServe(c *cli.Context) error {
	log, err := cliconf.NewLogger(c.String("log-level"), c.String("log-format"))
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	if err := checkDurations(c.Duration("reconnect-delay"), c.Duration("stop-timeout")); err != nil {
		return cli.Exit(err.Error(), 2)
	}
	state, err := filepath.Abs(c.String("state"))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(state, 0o755); err != nil {
		return fmt.Errorf("--state: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(state, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("--state %s is used by another ferry-kvm (%w)", state, err)
	}
	hostID := c.String("host-id")
	if hostID == "" {
		if hostID, err = os.Hostname(); err != nil {
			return fmt.Errorf("--host-id not given and no host name: %w", err)
		}
	}
	var nbdTLS *kvm.NBDTLS
	if t := (kvm.NBDTLS{X509Dir: c.String("nbd-tls-x509-dir"), PSKDir: c.String("nbd-tls-psk-dir"), PSKUser: c.String("nbd-tls-psk-user"), Hostname: c.String("nbd-tls-hostname")}); t != (kvm.NBDTLS{}) {
		if err := t.Check(); err != nil {
			return cli.Exit(err.Error(), 2)
		}
		nbdTLS = &t
	}
	var opts []gwclient.Option
	gatewayToken := ""
	if f := c.String("gateway-token-file"); f != "" {
		tok, err := gwire.ReadTokenFile(f)
		if err != nil {
			return fmt.Errorf("--gateway-token-file: %w", err)
		}
		opts = append(opts, gwclient.WithToken(tok))
		gatewayToken = tok
	}
	listen := c.String("listen")
	migAddr := c.String("migration-address")
	if migAddr == "" {
		if h, _, err := net.SplitHostPort(listen); err == nil && h != "" && h != "0.0.0.0" && h != "::" {
			migAddr = h
		} else {
			migAddr = "127.0.0.1"
		}
	}
	useToken, err := apiauth.NeedToken(c.String("api-auth"), c.Bool("api-auth-insecure"),
		apiauth.IsLoopback(listen) && apiauth.IsLoopback(migAddr))
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	token, authSummary := "", "none (loopback only)"
	if !apiauth.IsLoopback(listen) || !apiauth.IsLoopback(migAddr) {
		authSummary = "none (--api-auth none --api-auth-insecure): anyone who reaches the API can run every VM"
	}
	if useToken {
		path := c.String("api-token-file")
		if path == "" {
			path = filepath.Join(state, kvm.TokenFile)
		}
		var created bool
		if token, created, err = apiauth.LoadOrCreateToken(path); err != nil {
			return err
		}
		if created {
			log.Info("created the API token; the CLI passes it with --token-file, FERRY_KVM_TOKEN_FILE or FERRY_KVM_TOKEN", "file", path)
		}
		authSummary = "token (file " + path + ")"
		if c.Bool("metrics-public") {
			authSummary += "; /metrics open"
		}
	}
	var srvTLS, peerTLS *tls.Config
	if cert, key := c.String("api-tls-cert"), c.String("api-tls-key"); cert != "" || key != "" {
		if cert == "" || key == "" {
			return cli.Exit("--api-tls-cert and --api-tls-key go together: give both or neither", 2)
		}
		if srvTLS, err = apiauth.ServerTLS(cert, key); err != nil {
			return fmt.Errorf("--api-tls-cert/--api-tls-key: %w", err)
		}
		authSummary += "; TLS"
	}
	if f := c.String("peer-ca"); f != "" {
		if peerTLS, err = apiauth.CAConfig(f); err != nil {
			return fmt.Errorf("--peer-ca: %w", err)
		}
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", listen, err)
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	gw := gwclient.New(c.String("gateway"), opts...)
	m, err := kvm.New(ctx, kvm.Config{
		Gateway:        gw,
		GatewayAddr:    c.String("gateway"),
		APIAddr:        apiAddr(l.Addr(), c.String("migration-address")),
		APIToken:       token,
		GatewayToken:   gatewayToken,
		StateDir:       state,
		HostID:         hostID,
		QEMU:           c.String("qemu"),
		MigrationAddr:  migAddr,
		ReconnectDelay: c.Duration("reconnect-delay"),
		StopTimeout:    c.Duration("stop-timeout"),
		NBDTLS:         nbdTLS,
		PeerTLS:        peerTLS,
		Logger:         log,
		Registerer:     reg,
	})
	if err != nil {
		return err
	}
	defer m.Close()
	go m.Run(ctx)
	h := kvm.Handler(m, reg, log)
	if token != "" {
		h = kvm.RequireToken(h, token, c.Bool("metrics-public"))
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Info("ferry-kvm ready", "listen", l.Addr().String(), "gateway", c.String("gateway"), "host_id", hostID, "state", state, "api_auth", authSummary, "nbd_tls", nbdTLS != nil)
	go warnMissing(ctx, log, c.String("qemu"), c.String("gateway"), gw)
	if srvTLS != nil {
		l = tls.NewListener(l, srvTLS)
	}
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("ferry-kvm stopped; VMs keep running")
	return nil
}

// apiAddr is the API address other hosts reach this daemon at: the
// listening address, or the migration address's host with its port when
// listening on every address; "" when neither says.
func apiAddr(l net.Addr, migAddr string) string {
	h, p, err := net.SplitHostPort(l.String())
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(h); ip != nil && ip.IsUnspecified() {
		if migAddr == "" {
			return ""
		}
		h = migAddr
	}
	return net.JoinHostPort(h, p)
}

// checkDurations refuses what QEMU and vm stop cannot use. QEMU's NBD
// reconnect-delay is whole seconds (and 0 would mean "the default" here).
func checkDurations(reconnect, stop time.Duration) error {
	if reconnect < time.Second || reconnect%time.Second != 0 {
		return fmt.Errorf("--reconnect-delay %s: give whole seconds, at least 1s (QEMU's NBD reconnect-delay is in seconds)", reconnect)
	}
	if stop <= 0 {
		return fmt.Errorf("--stop-timeout %s: give how long vm stop waits for an ACPI powerdown, more than 0s", stop)
	}
	return nil
}

// warnMissing says at start what would make every VM start fail: a QEMU
// binary that is not there, a gateway that does not answer. Neither
// stops the daemon (running VMs need it; a gateway may come up later).
func warnMissing(ctx context.Context, log *slog.Logger, qemu, gatewayAddr string, gw *gwclient.Client) {
	if _, err := exec.LookPath(qemu); err != nil {
		log.Warn("QEMU not found: VMs cannot start until it is installed (qemu-system-x86) or --qemu names it", "qemu", qemu, "err", err)
	}
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := gw.Status(hctx)
	switch {
	case err == nil || ctx.Err() != nil:
	case errors.Is(err, gwire.ErrUnauthenticated):
		log.Warn("the gateway refuses this daemon's token: VMs cannot start until --gateway-token-file holds the gateway's api-token", "gateway", gatewayAddr, "err", err)
	default:
		log.Warn("the gateway does not answer: VMs cannot start until it does (is ferry serve running? --gateway)", "gateway", gatewayAddr, "err", err)
	}
}
