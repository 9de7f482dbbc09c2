package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/gateway/api"
	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/apiauth"
	"github.com/ferry-io/ferry/internal/buildinfo"
	"github.com/ferry-io/ferry/internal/cliconf"
	"github.com/ferry-io/ferry/internal/cpusched"
	"github.com/ferry-io/ferry/internal/sdnotify"
)

// serveFlags are ferry serve's flags; each may also come from FERRY_* env
// or the YAML file named by --config (flag > env > file > default).
func serveFlags() []cli.Flag {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "YAML file with any of these flags as keys (data: /srv/ferry); docs/ferry.yaml is a commented sample", EnvVars: []string{"FERRY_CONFIG"}},
		altsrc.NewStringFlag(&cli.StringFlag{Name: "data", Usage: "directory for the catalog and the default local pool", Value: "./ferry-data", EnvVars: []string{"FERRY_DATA"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "pool-dir", Usage: "local pool directory (repeat for several; default DATA/pool)", EnvVars: []string{"FERRY_POOL_DIRS"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "api-listen", Usage: "admin API, /metrics, /healthz and /readyz listen address", Value: "127.0.0.1:9809", EnvVars: []string{"FERRY_API_LISTEN"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "pprof", Usage: "serve Go profiles under /debug/pprof/ on the API address", EnvVars: []string{"FERRY_PPROF"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error", Value: "info", EnvVars: []string{"FERRY_LOG_LEVEL"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-format", Usage: "text (key=value lines) or json (one JSON object a line)", Value: "text", EnvVars: []string{"FERRY_LOG_FORMAT"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "cpu-sched", Usage: "CPU scheduling policy for every thread of the gateway: inherit (as started), normal (the kernel's default) or batch (woken threads do not preempt: more large-write throughput on CPUs shared with clients, for latency at queue depth 1; docs/NBD.md)", Value: string(cpusched.Inherit), EnvVars: []string{"FERRY_CPU_SCHED"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "shutdown-timeout", Usage: "how long a clean shutdown waits for in-flight requests", Value: 30 * time.Second, EnvVars: []string{"FERRY_SHUTDOWN_TIMEOUT"}}),
	}
	flags = append(flags, apiSecurityFlags()...)
	for _, ext := range serveExtensions {
		flags = append(flags, ext.flags...)
	}
	return flags
}

// frontend is a protocol server the gateway runs on one listener.
type frontend interface {
	Serve(ctx context.Context, l net.Listener) error
	Shutdown(ctx context.Context) error
}

// serveExtension plugs a part of the gateway into `ferry serve` from its
// own file (serve_nbd.go, serve_iscsi.go, ...): its flags, an optional
// adjustment of the volume manager's config, and an optional frontend.
type serveExtension struct {
	// name is used in logs and errors ("NBD").
	name string
	// protocol names the frontend's listener in the API (wire.ListenerNBD).
	protocol string
	// flags are added to ferry serve's flags.
	flags []cli.Flag
	// configure adjusts the volume manager's config before it opens.
	configure func(c *cli.Context, cfg *volume.Config) error
	// listenFlag names the flag holding the frontend's listen address; an
	// empty value disables the frontend.
	listenFlag string
	// frontend builds the protocol server.
	frontend func(c *cli.Context, mgr *volume.Manager, log *slog.Logger, reg prometheus.Registerer) (frontend, error)
	// protection says what guards the frontend's listener.
	protection func(c *cli.Context, loopback bool) string
	// check, when set, refuses a configuration before anything listens
	// (e.g. a listener off loopback without the protection it needs).
	check func(c *cli.Context, loopback bool) error
}

// serveExtensions is filled by the init functions of the serve_*.go files.
var serveExtensions []serveExtension

func cmdServe() *cli.Command {
	flags := serveFlags()
	return &cli.Command{
		Name:  "serve",
		Usage: "run the gateway (NBD, iSCSI and the admin API)",
		Description: `Runs the gateway in the foreground: opens the volumes under --data and
serves them over NBD (--nbd-listen) and iSCSI (--iscsi-listen), with the
admin API, /metrics, /healthz and /readyz on --api-listen. Everything
listens on loopback unless told otherwise; its first log lines say what
listens where and what protects it. SIGINT or SIGTERM stops it cleanly:
in-flight requests finish, every volume is flushed, listeners close.

   ferry serve
   FERRY_ISCSI_CHAP_SECRET=$(cat /etc/ferry/chap-secret) ferry serve --data /srv/ferry \
       --nbd-listen 0.0.0.0:10809 --nbd-tls-cert /etc/ferry/nbd.crt --nbd-tls-key /etc/ferry/nbd.key \
       --iscsi-listen 0.0.0.0:3260 --iscsi-chap-user ferry
   psktool -u alice -p /etc/ferry/keys.psk && ferry serve --nbd-listen 0.0.0.0:10809 --nbd-tls-psk /etc/ferry/keys.psk
   FERRY_DATA=/srv/ferry ferry serve --config /etc/ferry/ferry.yaml --log-format json`,
		Flags:  flags,
		Before: configFile(flags),
		Action: runServe,
	}
}

// configFile and newLogger are shared with ferry docker-plugin and
// ferry-kvm (package cliconf).
var (
	configFile = cliconf.ConfigFile
	newLogger  = cliconf.NewLogger
)

// lockDataDir takes an exclusive lock so two gateways never share a data
// directory. The lock dies with the process, so kill -9 needs no cleanup.
func lockDataDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("data directory %s is in use by another ferry serve (lock: %w)", dir, err)
	}
	return f, nil
}

// plannedListener is one address ferry serve will listen on.
type plannedListener struct {
	name     string // "API", "NBD", "iSCSI"
	protocol string // wire.ListenerAPI, ...
	flag     string
	addr     string
	ext      *serveExtension // nil for the API
	l        net.Listener
}

// planListeners gathers and checks every listen address before anything
// binds, so that the first error reported is the one to fix.
func planListeners(c *cli.Context) ([]*plannedListener, error) {
	ps := []*plannedListener{{name: "API", protocol: wire.ListenerAPI, flag: "api-listen", addr: c.String("api-listen")}}
	if ps[0].addr == "" {
		return nil, fmt.Errorf("--api-listen is empty: the gateway needs its admin API (e.g. 127.0.0.1:9809)")
	}
	for i := range serveExtensions {
		ext := &serveExtensions[i]
		if ext.frontend == nil {
			continue
		}
		if addr := c.String(ext.listenFlag); addr != "" {
			ps = append(ps, &plannedListener{name: ext.name, protocol: ext.protocol, flag: ext.listenFlag, addr: addr, ext: ext})
		}
	}
	seen := map[string]string{}
	for _, p := range ps {
		if err := checkListenAddr(p.addr); err != nil {
			return nil, fmt.Errorf("--%s %q: %w", p.flag, p.addr, err)
		}
		if p.ext != nil && p.ext.check != nil {
			if err := p.ext.check(c, apiauth.IsLoopback(p.addr)); err != nil {
				return nil, err
			}
		}
		if _, port, _ := net.SplitHostPort(p.addr); port != "0" {
			if other, ok := seen[p.addr]; ok {
				return nil, fmt.Errorf("--%s and --%s are both %s: give each listener its own port", other, p.flag, p.addr)
			}
			seen[p.addr] = p.flag
		}
	}
	return ps, nil
}

// checkListenAddr checks a host:port listen address without binding it.
func checkListenAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("not a listen address: want HOST:PORT such as 127.0.0.1:10809, 0.0.0.0:10809 or [::1]:10809")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	if host == "" || net.ParseIP(host) != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := net.DefaultResolver.LookupHost(ctx, host); err != nil {
		return fmt.Errorf("host %q does not resolve (use an IP address such as 127.0.0.1 or 0.0.0.0)", host)
	}
	return nil
}

func runServe(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef(c, "serve takes no arguments, got %q", c.Args().First())
	}
	log, err := newLogger(c.String("log-level"), c.String("log-format"))
	if err != nil {
		return err
	}
	planned, err := planListeners(c)
	if err != nil {
		return err
	}
	if err := applyCPUSched(c, log); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	dataDir := c.String("data")
	lock, err := lockDataDir(dataDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	allLoopback := true
	for _, p := range planned {
		allLoopback = allLoopback && apiauth.IsLoopback(p.addr)
	}
	apiSec, err := planAPISecurity(c, dataDir, allLoopback, log)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	cfg := volume.Config{
		DataDir:    dataDir,
		PoolDirs:   c.StringSlice("pool-dir"),
		Logger:     log,
		Registerer: reg,
	}
	for _, ext := range serveExtensions {
		if ext.configure != nil {
			if err := ext.configure(c, &cfg); err != nil {
				return err
			}
		}
	}
	mgr, err := volume.Open(ctx, cfg)
	if err != nil {
		return err
	}

	// Bind every listener, then serve: the API can then name them all.
	type running struct {
		name string
		fe   frontend
		l    net.Listener
	}
	var fronts []running
	abort := func(err error) error {
		for _, p := range planned {
			if p.l != nil {
				p.l.Close()
			}
		}
		sctx, cancel := context.WithTimeout(context.Background(), c.Duration("shutdown-timeout"))
		defer cancel()
		mgr.Close(sctx)
		return err
	}
	gw := api.Gateway{Build: wire.Build(buildinfo.Read()), Started: time.Now().UTC(), ISCSIBaseIQN: c.String("iscsi-base-iqn"),
		ISCSIDefaultCHAPUser: c.String("iscsi-chap-user")}
	if gw.ISCSIDefaultCHAPUser != "" {
		gw.ISCSIDefaultMutualUser = c.String("iscsi-mutual-chap-user")
	}
	for _, p := range planned {
		if p.l, err = net.Listen("tcp", p.addr); err != nil {
			return abort(fmt.Errorf("%s listen on %q (--%s): %w", p.name, p.addr, p.flag, err))
		}
		lo := apiauth.IsLoopback(p.addr)
		prot := apiSec.summary
		if p.ext != nil {
			fe, err := p.ext.frontend(c, mgr, log, reg)
			if err != nil {
				return abort(err)
			}
			fronts = append(fronts, running{p.name, fe, p.l})
			prot = p.ext.protection(c, lo)
		}
		gw.Listeners = append(gw.Listeners, wire.Listener{Protocol: p.protocol, Address: p.l.Addr().String(), Loopback: lo, Protection: prot})
		level := slog.LevelInfo
		if !lo {
			level = slog.LevelWarn
		}
		log.Log(ctx, level, "listening", "protocol", p.protocol, "addr", p.l.Addr().String(), "loopback", lo, "protection", prot)
	}

	var handler http.Handler = api.Handler(api.Config{Manager: mgr, Gatherer: reg, Logger: log, Gateway: gw})
	if c.Bool("pprof") {
		mux := http.NewServeMux()
		mux.Handle("/", handler)
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		handler = mux
	}
	httpSrv := &http.Server{Handler: apiSec.wrap(handler), ReadHeaderTimeout: 10 * time.Second, TLSConfig: apiSec.tls}
	errc := make(chan error, 1+len(fronts))
	go func() {
		serve := httpSrv.Serve
		if apiSec.tls != nil {
			serve = func(l net.Listener) error { return httpSrv.ServeTLS(l, "", "") }
		}
		if err := serve(planned[0].l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("API server: %w", err)
		}
	}()
	for _, r := range fronts {
		go func() {
			if err := r.fe.Serve(ctx, r.l); err != nil {
				errc <- fmt.Errorf("%s server: %w", r.name, err)
			}
		}()
	}
	logEffectiveFlags(c, log)
	names := mgr.Names(ctx)
	log.Info("ferry gateway running", "version", gw.Build.Version, "commit", gw.Build.Commit, "data", dataDir,
		"volumes", strings.Join(names, ","))
	if _, err := sdnotify.Ready(fmt.Sprintf("serving %d volumes", len(names))); err != nil {
		log.Warn("could not tell systemd the gateway is ready", "err", err)
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-errc:
		log.Error("server failed; shutting down", "err", runErr)
	}

	sdnotify.Stopping("draining requests and flushing volumes")
	sctx, cancel := context.WithTimeout(context.Background(), c.Duration("shutdown-timeout"))
	defer cancel()
	for _, r := range fronts {
		if err := r.fe.Shutdown(sctx); err != nil {
			log.Warn(r.name+" shutdown", "err", err)
		}
	}
	httpSrv.Shutdown(sctx)
	if err := mgr.Close(sctx); err != nil {
		log.Error("flushing volumes at shutdown", "err", err)
		if runErr == nil {
			runErr = err
		}
	}
	log.Info("stopped")
	return runErr
}

// applyCPUSched puts every thread of the gateway under --cpu-sched.
func applyCPUSched(c *cli.Context, log *slog.Logger) error {
	p, err := cpusched.Parse(c.String("cpu-sched"))
	if err != nil {
		return fmt.Errorf("--cpu-sched: %w", err)
	}
	if p == cpusched.Inherit {
		return nil
	}
	n, err := cpusched.Apply(p)
	if err != nil {
		return fmt.Errorf("--cpu-sched %s: %w", p, err)
	}
	log.Info("CPU scheduling policy set", "policy", p, "threads", n)
	return nil
}

// logEffectiveFlags logs, at debug level, the value every serve flag ended
// up with after flags, env and config file were merged. Flags whose names
// say they hold a secret are never printed.
func logEffectiveFlags(c *cli.Context, log *slog.Logger) {
	if !log.Enabled(c.Context, slog.LevelDebug) {
		return
	}
	var attrs []any
	for _, f := range c.Command.Flags {
		name := f.Names()[0]
		if !c.IsSet(name) {
			continue
		}
		v := fmt.Sprint(c.Value(name))
		if strings.Contains(name, "secret") || strings.Contains(name, "key") || strings.Contains(name, "password") {
			v = "(set)"
		}
		attrs = append(attrs, name, v)
	}
	log.Debug("effective configuration", attrs...)
}
