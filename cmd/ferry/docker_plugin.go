package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/ferry-io/ferry/gateway/api/client"
	"github.com/ferry-io/ferry/gateway/docker"
)

func dockerPluginFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "read flags from this YAML `FILE` (keys named like the flags)", EnvVars: []string{"FERRY_DOCKER_CONFIG"}},
		altsrc.NewStringFlag(&cli.StringFlag{Name: "gateway", Usage: "the gateway's admin API `ADDR` (host:port or URL)", Value: "127.0.0.1:9809", EnvVars: []string{"FERRY_GATEWAY"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "socket", Usage: "serve the plugin protocol on this unix socket `PATH`; Docker finds /run/docker/plugins/NAME.sock as driver NAME", Value: "/run/docker/plugins/ferry.sock", EnvVars: []string{"FERRY_DOCKER_SOCKET"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "state-dir", Usage: "keep the state file, FUSE mount points and helper logs in `DIR`", Value: "/var/lib/ferry-docker", EnvVars: []string{"FERRY_DOCKER_STATE_DIR"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "mount-root", Usage: "mount volumes at `DIR`/NAME (default STATE-DIR/mounts)", EnvVars: []string{"FERRY_DOCKER_MOUNT_ROOT"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "attach", Usage: "how volumes become block devices here: nbd (kernel NBD client, reconnects), iscsi (open-iscsi), fuse (FUSE + loop device), or auto (the first of these that works)", Value: "auto", EnvVars: []string{"FERRY_DOCKER_ATTACH"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "host-id", Usage: "name this host to the gateway's attachments (default: the host name)", EnvVars: []string{"FERRY_DOCKER_HOST_ID"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "stale-check", Usage: "drop mount counts Docker never undid (a container stopped while the plugin was down) once no container has used the volume for this long; 0 never", Value: docker.DefaultStaleCheck, EnvVars: []string{"FERRY_DOCKER_STALE_CHECK"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "nbd-timeout", Usage: "nbd method: the kernel's I/O timeout; a request unanswered this long marks the link dead and is retried on the next connection", Value: docker.DefaultNBDTimeout, EnvVars: []string{"FERRY_NBD_TIMEOUT"}}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "nbd-dead-timeout", Usage: "nbd method: how long I/O waits for a lost gateway connection to come back before it fails", Value: docker.DefaultNBDDeadTimeout, EnvVars: []string{"FERRY_NBD_DEAD_TIMEOUT"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "nbd-address", Usage: "dial the gateway's NBD listener at `HOST:PORT` instead of the address it reports (NAT)", EnvVars: []string{"FERRY_NBD_ADDRESS"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "iscsi-portal", Usage: "log in at this iSCSI portal `HOST:PORT` instead of the one the gateway reports (NAT)", EnvVars: []string{"FERRY_ISCSI_PORTAL"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "iscsi-chap-user", Usage: "iscsi method: CHAP user for volumes that require CHAP (default: the volume's CHAP user)", EnvVars: []string{"FERRY_ISCSI_CHAP_USER"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "iscsi-chap-secret", Usage: "iscsi method: CHAP secret for volumes that require CHAP (prefer the environment or the config file to the command line)", EnvVars: []string{"FERRY_ISCSI_CHAP_SECRET"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "iscsi-mutual-chap-user", Usage: "iscsi method: the name targets must answer mutual CHAP with (default: the volume's mutual CHAP user)", EnvVars: []string{"FERRY_ISCSI_MUTUAL_CHAP_USER"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "iscsi-mutual-chap-secret", Usage: "iscsi method: authenticate every target with mutual CHAP and this secret; volumes without mutual CHAP are refused (prefer the environment or the config file to the command line)", EnvVars: []string{"FERRY_ISCSI_MUTUAL_CHAP_SECRET"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error", Value: "info", EnvVars: []string{"FERRY_LOG_LEVEL"}}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-format", Usage: "text (key=value lines) or json (one JSON object a line)", Value: "text", EnvVars: []string{"FERRY_LOG_FORMAT"}}),
	}, configurableTokenFlags()...)
}

// configurableTokenFlags are tokenFlags that the config file may set too.
func configurableTokenFlags() []cli.Flag {
	var out []cli.Flag
	for _, f := range tokenFlags() {
		out = append(out, altsrc.NewStringFlag(f.(*cli.StringFlag)))
	}
	return out
}

// gatewayClient is the admin API client of the plugin and its helpers.
// The plugin hands its token (and CA) to the helpers it starts through
// their environment, which only they and root can read, never their
// command line.
func gatewayClient(c *cli.Context, forHelpers bool) (*client.Client, error) {
	opts, err := apiOptions(c)
	if err != nil {
		return nil, err
	}
	if forHelpers {
		t, _ := apiToken(c)
		if t != "" {
			os.Setenv("FERRY_TOKEN", t)
		}
		if ca := c.String("api-ca"); ca != "" {
			os.Setenv("FERRY_API_CA", ca)
		}
	}
	return client.New(c.String("gateway"), opts...), nil
}

func cmdDockerPlugin() *cli.Command {
	flags := dockerPluginFlags()
	return &cli.Command{
		Name:  "docker-plugin",
		Usage: "run the Docker volume plugin (docker volume create -d ferry)",
		Description: `Runs Ferry's Docker volume plugin on this Docker host, talking to a
gateway's admin API (--gateway). Docker finds it by its socket: the default
/run/docker/plugins/ferry.sock makes the driver "ferry". Volumes are
attached as block devices by the kernel's NBD client (nbd: a keeper
process per volume reconnects it when the gateway restarts), by open-iscsi
(iscsi), or by FUSE + a loop device (fuse); --attach auto picks the first
that works here and says why. They are formatted on first use only when
empty, and mounted under --mount-root.
Stopping or killing the plugin leaves mounted volumes working; the next
start reconciles its state with what is mounted. See docs/DOCKER.md.

   ferry docker-plugin --gateway 10.0.0.5:9809
   docker volume create -d ferry -o size=20G pgdata
   docker run -v pgdata:/var/lib/postgresql/data postgres

Options (-o): size (default 10G), store (an S3 store on the gateway),
fstype (ext4, default, or xfs), readonly (true or false), from
(VOLUME@SNAPSHOT: a clone of a gateway snapshot).`,
		Flags:  flags,
		Before: configFile(flags),
		Action: runDockerPlugin,
		Subcommands: []*cli.Command{{
			Name:   "fuse-serve",
			Usage:  "serve one volume as a FUSE file (started by the plugin, one per attached volume)",
			Hidden: true,
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "nbd", Required: true, Usage: "the volume's NBD URL"},
				&cli.StringFlag{Name: "dir", Required: true, Usage: "mount the FUSE file system here"},
				&cli.BoolFlag{Name: "read-only"},
				&cli.StringFlag{Name: "gateway", Usage: "renew the volume's attachment at this admin API"},
				&cli.StringFlag{Name: "volume", Usage: "the gateway volume's name"},
				&cli.StringFlag{Name: "host-id", Usage: "this host's name in the attachment"},
				&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"FERRY_LOG_LEVEL"}},
				&cli.StringFlag{Name: "pprof", EnvVars: []string{"FERRY_FUSE_PPROF"}, Usage: "serve Go profiles on this address (127.0.0.1:0 picks a port, logged)"},
				&cli.IntFlag{Name: "nbd-conns", EnvVars: []string{"FERRY_FUSE_NBD_CONNS"}, Usage: "NBD connections when the gateway allows multi-conn (0: 4)"},
				&cli.StringFlag{Name: "replay-limit", EnvVars: []string{"FERRY_FUSE_REPLAY_LIMIT"}, Usage: "unflushed written bytes kept for replay after a gateway crash before flushing on its own (0: 64M)"},
				&cli.BoolFlag{Name: "always-replay", EnvVars: []string{"FERRY_FUSE_ALWAYS_REPLAY"}, Usage: "keep unflushed writes for replay even when the gateway holds them in this host's kernel"},
			}, tokenFlags()...),
			Action: runFUSEServe,
		}, {
			Name:   "nbd-keep",
			Usage:  "connect one volume's kernel NBD device and keep it connected (started by the plugin, one per attached volume)",
			Hidden: true,
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "nbd", Required: true, Usage: "the volume's NBD URL"},
				&cli.StringFlag{Name: "backend", Usage: "the device's backend identifier"},
				&cli.DurationFlag{Name: "timeout", Value: docker.DefaultNBDTimeout},
				&cli.DurationFlag{Name: "dead-timeout", Value: docker.DefaultNBDDeadTimeout},
				&cli.BoolFlag{Name: "read-only"},
				&cli.StringFlag{Name: "gateway", Usage: "renew the volume's attachment at this admin API"},
				&cli.StringFlag{Name: "volume", Usage: "the gateway volume's name"},
				&cli.StringFlag{Name: "host-id", Usage: "this host's name in the attachment"},
				&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"FERRY_LOG_LEVEL"}},
			}, tokenFlags()...),
			Action: runNBDKeep,
		}},
	}
}

func runDockerPlugin(c *cli.Context) error {
	log, err := newLogger(c.String("log-level"), c.String("log-format"))
	if err != nil {
		return usagef(c, "%v", err)
	}
	iscsi := &docker.ISCSIAttacher{
		CHAPUser:     c.String("iscsi-chap-user"),
		CHAPSecret:   c.String("iscsi-chap-secret"),
		MutualUser:   c.String("iscsi-mutual-chap-user"),
		MutualSecret: c.String("iscsi-mutual-chap-secret"),
		Logger:       log,
	}
	if err := iscsi.CheckCredentials(); err != nil {
		return usagef(c, "%v", err)
	}
	state, err := filepath.Abs(c.String("state-dir"))
	if err != nil {
		return err
	}
	mountRoot := c.String("mount-root")
	if mountRoot == "" {
		mountRoot = filepath.Join(state, "mounts")
	}
	// Real paths: reconciling compares them with /proc/self/mountinfo,
	// which shows no symlinks.
	if state, err = realDir(state); err != nil {
		return err
	}
	if mountRoot, err = realDir(mountRoot); err != nil {
		return err
	}
	hostID := c.String("host-id")
	if hostID == "" {
		if hostID, err = os.Hostname(); err != nil {
			return fmt.Errorf("--host-id not given and no host name: %w", err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	fuse := &docker.FUSEAttacher{
		Root:          filepath.Join(state, "fuse"),
		LogDir:        filepath.Join(state, "logs"),
		HelperCommand: []string{self, "docker-plugin", "fuse-serve"},
		GatewayAddr:   c.String("gateway"),
		Logger:        log,
	}
	nbd := &docker.NBDAttacher{
		LogDir:        filepath.Join(state, "logs"),
		KeeperCommand: []string{self, "docker-plugin", "nbd-keep"},
		GatewayAddr:   c.String("gateway"),
		Timeout:       c.Duration("nbd-timeout"),
		DeadTimeout:   c.Duration("nbd-dead-timeout"),
		Logger:        log,
	}
	attacher, why, err := docker.PickAttacher(c.String("attach"), nbd, iscsi, fuse)
	if err != nil {
		switch c.String("attach") {
		case docker.MethodAuto, docker.MethodFUSE, docker.MethodNBD, docker.MethodISCSI:
			return err
		}
		return usagef(c, "%v", err)
	}
	log.Info("attach method", "method", attacher.Method(), "why", why)
	staleCheck := c.Duration("stale-check")
	if staleCheck == 0 {
		staleCheck = -1 // never
	}
	unlock, err := docker.LockStateDir(state)
	if err != nil {
		return err
	}
	defer unlock()
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	gw, err := gatewayClient(c, true)
	if err != nil {
		return err
	}
	iscsi.Target = func(ctx context.Context, name string) (string, error) {
		in, err := gw.Volume(ctx, name)
		if err != nil {
			return "", err
		}
		if in.Attach.ISCSI == nil {
			return "", errors.New("the gateway serves no iSCSI listener")
		}
		return in.Attach.ISCSI.Target, nil
	}
	d, err := docker.NewDriver(ctx, docker.Config{
		Gateway:    gw,
		StateDir:   state,
		MountRoot:  mountRoot,
		HostID:     hostID,
		Attacher:   attacher,
		Endpoints:  docker.Endpoints{API: c.String("gateway"), NBD: c.String("nbd-address"), ISCSI: c.String("iscsi-portal")},
		StaleCheck: staleCheck,
		Logger:     log,
	})
	if err != nil {
		return err
	}
	defer d.Close()
	log.Info("ferry docker-plugin ready", "gateway", c.String("gateway"), "host_id", hostID, "state_dir", state, "mount_root", mountRoot)
	return docker.Serve(ctx, c.String("socket"), docker.Handler(d, log), log)
}

// realDir creates dir and returns its absolute path without symlinks.
func realDir(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// helperStart prepares a data-path helper process (fuse-serve,
// nbd-keep): its logger, and a context that SIGINT or SIGTERM ends.
func helperStart(c *cli.Context) (*slog.Logger, context.Context, context.CancelFunc, error) {
	log, err := newLogger(c.String("log-level"), "text")
	if err != nil {
		return nil, nil, nil, err
	}
	log = log.With("nbd", c.String("nbd"))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	// Its plugin may die: a closed stdout must not kill the data path.
	signal.Ignore(syscall.SIGPIPE, syscall.SIGHUP)
	// The kernel's OOM killer should pick almost anything before the
	// data path of mounted volumes.
	os.WriteFile("/proc/self/oom_score_adj", []byte("-900"), 0)
	return log, ctx, stop, nil
}

func runFUSEServe(c *cli.Context) error {
	log, ctx, stop, err := helperStart(c)
	if err != nil {
		return err
	}
	defer stop()
	ready := os.NewFile(3, "ready")
	cfg := docker.FUSEConfig{NBDURL: c.String("nbd"), Dir: c.String("dir"), ReadOnly: c.Bool("read-only"), Ready: ready, PprofAddr: c.String("pprof"), Logger: log}
	cfg.NBD.Conns = c.Int("nbd-conns")
	cfg.AlwaysReplay = c.Bool("always-replay")
	if s := c.String("replay-limit"); s != "" {
		n, err := parseSize(s)
		if err != nil {
			return fmt.Errorf("--replay-limit: %w", err)
		}
		cfg.NBD.ReplayLimit = n
	}
	if cfg.Lease, err = helperLease(c, docker.MethodFUSE); err != nil {
		return err
	}
	err = docker.ServeFUSE(ctx, cfg)
	if err != nil {
		log.Error("fuse-serve", "err", err)
	}
	return err
}

// helperLease is the attachment a data-path helper renews at the gateway
// (--gateway), or nil without one.
func helperLease(c *cli.Context, method string) (*docker.Lease, error) {
	if c.String("gateway") == "" {
		return nil, nil
	}
	gw, err := gatewayClient(c, false)
	if err != nil {
		return nil, err
	}
	return &docker.Lease{Gateway: gw, Volume: c.String("volume"), Host: c.String("host-id"), Protocol: method, ReadOnly: c.Bool("read-only")}, nil
}

func runNBDKeep(c *cli.Context) error {
	log, ctx, stop, err := helperStart(c)
	if err != nil {
		return err
	}
	defer stop()
	cfg := docker.NBDKeepConfig{
		NBDURL:      c.String("nbd"),
		ReadOnly:    c.Bool("read-only"),
		Timeout:     c.Duration("timeout"),
		DeadTimeout: c.Duration("dead-timeout"),
		Backend:     c.String("backend"),
		Ready:       os.NewFile(3, "ready"),
		Logger:      log,
	}
	if cfg.Lease, err = helperLease(c, docker.MethodNBD); err != nil {
		return err
	}
	err = docker.KeepNBD(ctx, cfg)
	if err != nil {
		log.Error("nbd-keep", "err", err)
	}
	return err
}
