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
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/gateway/api"
	"github.com/ferry-io/ferry/gateway/volume"
)

// serveFlags are ferry serve's flags; each may also come from FERRY_* env
// or the YAML file named by --config (flag > env > file > default).
func serveFlags() []cli.Flag {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "YAML file with any of these flags as keys (data: /srv/ferry)", EnvVars: []string{"FERRY_CONFIG"}},
		altsrc.NewStringFlag(&cli.StringFlag{Name: "data", Usage: "directory for the catalog and the default local pool", Value: "./ferry-data", EnvVars: []string{"FERRY_DATA"}}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "pool-dir", Usage: "local pool directory (repeat for several; default DATA/pool)", EnvVars: []string{"FERRY_POOL_DIRS"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "api-listen", Usage: "admin API, /metrics and /healthz listen address", Value: "127.0.0.1:9809", EnvVars: []string{"FERRY_API_LISTEN"}}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "pprof", Usage: "serve Go profiles under /debug/pprof/ on the API address", EnvVars: []string{"FERRY_PPROF"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error", Value: "info", EnvVars: []string{"FERRY_LOG_LEVEL"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "shutdown-timeout", Usage: "how long a clean shutdown waits for in-flight requests", Value: 30 * time.Second, EnvVars: []string{"FERRY_SHUTDOWN_TIMEOUT"}}),
	}
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
	// flags are added to ferry serve's flags.
	flags []cli.Flag
	// configure adjusts the volume manager's config before it opens.
	configure func(c *cli.Context, cfg *volume.Config) error
	// listenFlag names the flag holding the frontend's listen address; an
	// empty value disables the frontend.
	listenFlag string
	// frontend builds the protocol server.
	frontend func(c *cli.Context, mgr *volume.Manager, log *slog.Logger, reg prometheus.Registerer) (frontend, error)
}

// serveExtensions is filled by the init functions of the serve_*.go files.
var serveExtensions []serveExtension

func cmdServe() *cli.Command {
	flags := serveFlags()
	return &cli.Command{
		Name:  "serve",
		Usage: "run the gateway",
		Description: `Runs the gateway in the foreground: opens the volumes under --data and
serves them over NBD, with the admin API, /metrics and /healthz on
--api-listen. Everything listens on loopback unless told otherwise.
SIGINT or SIGTERM stops it cleanly: in-flight requests finish, every
volume is flushed, listeners close.

   ferry serve
   ferry serve --data /srv/ferry --nbd-listen 0.0.0.0:10809
   FERRY_DATA=/srv/ferry ferry serve --config /etc/ferry/ferry.yaml`,
		Flags: flags,
		Before: func(c *cli.Context) error {
			if c.String("config") == "" {
				return nil
			}
			return altsrc.InitInputSourceWithContext(flags, altsrc.NewYamlSourceFromFlagFunc("config"))(c)
		},
		Action: runServe,
	}
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

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

func listen(what, addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s listen on %q: %w", what, addr, err)
	}
	return l, nil
}

func runServe(c *cli.Context) error {
	log, err := newLogger(c.String("log-level"))
	if err != nil {
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

	apiL, err := listen("API", c.String("api-listen"))
	if err != nil {
		mgr.Close(context.Background())
		return err
	}
	var handler http.Handler = api.Handler(mgr, reg, log)
	if c.Bool("pprof") {
		mux := http.NewServeMux()
		mux.Handle("/", handler)
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		handler = mux
	}
	httpSrv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() {
		if err := httpSrv.Serve(apiL); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("API server: %w", err)
		}
	}()

	type running struct {
		name string
		fe   frontend
	}
	var fronts []running
	for _, ext := range serveExtensions {
		if ext.frontend == nil {
			continue
		}
		addr := c.String(ext.listenFlag)
		if addr == "" {
			continue
		}
		fe, err := ext.frontend(c, mgr, log, reg)
		if err == nil {
			var l net.Listener
			if l, err = listen(ext.name, addr); err == nil {
				fronts = append(fronts, running{ext.name, fe})
				go func(name string) {
					if err := fe.Serve(ctx, l); err != nil {
						errc <- fmt.Errorf("%s server: %w", name, err)
					}
				}(ext.name)
				log.Info("serving "+ext.name, "addr", l.Addr().String())
			}
		}
		if err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), c.Duration("shutdown-timeout"))
			for _, r := range fronts {
				r.fe.Shutdown(sctx)
			}
			httpSrv.Close()
			mgr.Close(sctx)
			cancel()
			return err
		}
	}
	logEffectiveFlags(c, log)
	log.Info("ferry gateway running", "version", version, "data", dataDir, "api", apiL.Addr().String(),
		"volumes", strings.Join(mustList(ctx, mgr), ","))

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-errc:
		log.Error("server failed; shutting down", "err", runErr)
	}

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

func mustList(ctx context.Context, m *volume.Manager) []string {
	names, _ := m.List(ctx)
	return names
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
