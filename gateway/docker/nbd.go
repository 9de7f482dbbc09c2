package docker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/gateway/docker/internal/nbdclient"
	"github.com/ferry-io/ferry/gateway/docker/internal/nbdnl"
)

// NBD attach method defaults.
const (
	// DefaultNBDTimeout is the kernel's I/O timeout: a request unanswered
	// this long marks the link dead and is requeued (with one connection
	// and a timeout set, the kernel retries rather than fails it).
	DefaultNBDTimeout = 30 * time.Second
	// DefaultNBDDeadTimeout is how long I/O waits for the keeper to
	// reconnect a dead link before it fails.
	DefaultNBDDeadTimeout = 120 * time.Second
	// nbdBlockSize is the logical block size given to the kernel.
	nbdBlockSize = 4096
)

// nbdDevice is what the kernel is told about an export at CONNECT.
type nbdDevice struct {
	Size        uint64
	Flags       uint16 // transmission flags
	Timeout     time.Duration
	DeadTimeout time.Duration
	Backend     string
}

// nbdKernel is the kernel's NBD client as the keeper drives it: the
// netlink family in production (netlinkKernel), a fake in tests. Sockets
// are passed after the NBD handshake; the kernel keeps its own reference,
// so the caller's conn may be closed when a call returns.
type nbdKernel interface {
	// Connect configures a free device to use conn and returns its index.
	Connect(ctx context.Context, conn net.Conn, dev nbdDevice) (int, error)
	// Reconfigure gives device index conn in place of its dead socket;
	// backend repeats the identifier given at Connect.
	Reconfigure(ctx context.Context, index int, backend string, conn net.Conn) error
	// Disconnect disconnects device index.
	Disconnect(ctx context.Context, index int) error
	// Connected reports whether device index is configured.
	Connected(ctx context.Context, index int) (bool, error)
	// LinkDead waits for the next LINK_DEAD events and returns the
	// devices they name; an error may mean events were lost.
	LinkDead(ctx context.Context) ([]int, error)
	Close() error
}

// netlinkKernel is nbdKernel over generic netlink.
type netlinkKernel struct {
	c *nbdnl.Conn
	w *nbdnl.Watcher
}

func dialNBDKernel() (*netlinkKernel, error) {
	c, err := nbdnl.Dial()
	if err != nil {
		return nil, err
	}
	w, err := c.WatchLinkDead()
	if err != nil {
		c.Close()
		return nil, err
	}
	return &netlinkKernel{c: c, w: w}, nil
}

// withFD runs fn with conn's descriptor, valid only during fn.
func withFD(conn net.Conn, fn func(fd int) error) error {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return fmt.Errorf("a %T has no descriptor to give the kernel", conn)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

func (k *netlinkKernel) Connect(ctx context.Context, conn net.Conn, dev nbdDevice) (int, error) {
	index := -1
	err := withFD(conn, func(fd int) error {
		var err error
		index, err = k.c.Connect(ctx, nbdnl.Config{
			Index:           -1,
			Size:            dev.Size,
			BlockSize:       nbdBlockSize,
			ServerFlags:     dev.Flags,
			Timeout:         dev.Timeout,
			DeadConnTimeout: dev.DeadTimeout,
			Backend:         dev.Backend,
			Sockets:         []int{fd},
		})
		return err
	})
	return index, err
}

func (k *netlinkKernel) Reconfigure(ctx context.Context, index int, backend string, conn net.Conn) error {
	return withFD(conn, func(fd int) error { return k.c.Reconfigure(ctx, index, backend, fd) })
}

func (k *netlinkKernel) Disconnect(ctx context.Context, index int) error {
	return k.c.Disconnect(ctx, index)
}

func (k *netlinkKernel) Connected(ctx context.Context, index int) (bool, error) {
	ds, err := k.c.Status(ctx, index)
	if err != nil {
		return false, err
	}
	for _, d := range ds {
		if d.Index == index {
			return d.Connected, nil
		}
	}
	return false, nil
}

func (k *netlinkKernel) LinkDead(ctx context.Context) ([]int, error) { return k.w.Next(ctx) }

func (k *netlinkKernel) Close() error {
	k.w.Close()
	return k.c.Close()
}

// socketShut reports whether conn's socket was shut down in both
// directions or closed: what the kernel does to a socket as it marks the
// link dead (kernel_sock_shutdown). The keeper never shuts its sockets
// down itself, so this is the kernel's verdict, seen from user space.
func socketShut(conn net.Conn) bool {
	shut := false
	err := withFD(conn, func(fd int) error {
		p := []unix.PollFd{{Fd: int32(fd)}}
		if _, err := unix.Poll(p, 0); err != nil {
			return err
		}
		shut = p[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0
		return nil
	})
	return err == nil && shut
}

// NBDKeepConfig configures KeepNBD.
type NBDKeepConfig struct {
	// NBDURL is the export, nbd://HOST:PORT/NAME.
	NBDURL   string
	ReadOnly bool
	// Timeout and DeadTimeout: see DefaultNBDTimeout, DefaultNBDDeadTimeout.
	Timeout, DeadTimeout time.Duration
	// Backend names the device's backend in /sys/block/nbdN/backend.
	Backend string
	// Ready receives "ready INDEX" once the device is connected; may be nil.
	Ready io.WriteCloser
	// Lease, when set, is renewed while the keeper runs.
	Lease  *Lease
	Logger *slog.Logger

	// For tests: the kernel (nil: netlink), how often to check the
	// device and its socket (0: 5 s), and the redial backoff bounds
	// (0: 200 ms .. 2 s).
	kernel                 nbdKernel
	checkEvery             time.Duration
	minBackoff, maxBackoff time.Duration
	// eventDone, when set, is called after each LINK_DEAD batch is handled.
	eventDone func()
}

// ErrNBDGone: the device was disconnected by someone other than its
// keeper.
var ErrNBDGone = errors.New("nbd device disconnected behind the keeper's back")

// dialExport connects to the export and does the NBD handshake.
func dialExport(ctx context.Context, rawURL string) (net.Conn, int64, uint16, error) {
	addr, export, err := nbdclient.ParseURL(rawURL)
	if err != nil {
		return nil, 0, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, 0, 0, err
	}
	dl, _ := ctx.Deadline()
	conn.SetDeadline(dl)
	size, flags, err := nbdclient.Negotiate(conn, export)
	if err != nil {
		conn.Close()
		return nil, 0, 0, err
	}
	conn.SetDeadline(time.Time{})
	return conn, size, flags, nil
}

// KeepNBD connects a kernel NBD device to the export and keeps it
// connected until ctx ends, then disconnects it. It is what `ferry
// docker-plugin nbd-keep` runs: one process per attached volume, of its
// own, so that a plugin crash leaves the data path alone.
//
// When the link dies (the kernel multicasts LINK_DEAD; a check every few
// seconds catches a lost event), it redials with backoff until the
// gateway answers, redoes the handshake and hands the kernel the new
// socket (RECONFIGURE): I/O waits meanwhile, up to DeadTimeout.
func KeepNBD(ctx context.Context, cfg NBDKeepConfig) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.kernel == nil {
		k, err := dialNBDKernel()
		if err != nil {
			return err
		}
		cfg.kernel = k
	}
	defer cfg.kernel.Close()
	if cfg.checkEvery == 0 {
		cfg.checkEvery = 5 * time.Second
	}
	if cfg.minBackoff == 0 {
		cfg.minBackoff = 200 * time.Millisecond
	}
	if cfg.maxBackoff == 0 {
		cfg.maxBackoff = 2 * time.Second
	}
	k, log := cfg.kernel, cfg.Logger
	conn, size, flags, err := dialExport(ctx, cfg.NBDURL)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", cfg.NBDURL, err)
	}
	if cfg.ReadOnly {
		flags |= nbdnl.FlagHasFlags | nbdnl.FlagReadOnly
	}
	index, err := k.Connect(ctx, conn, nbdDevice{Size: uint64(size), Flags: flags, Timeout: cfg.Timeout, DeadTimeout: cfg.DeadTimeout, Backend: cfg.Backend})
	if err != nil {
		conn.Close()
		return err
	}
	log = log.With("device", fmt.Sprintf("/dev/nbd%d", index))
	log.Info("nbd device connected", "nbd", cfg.NBDURL, "size", size, "flags", fmt.Sprintf("%#x", flags))
	if cfg.Ready != nil {
		fmt.Fprintf(cfg.Ready, "ready %d\n", index)
		cfg.Ready.Close()
	}
	if cfg.Lease != nil {
		lctx, stop := context.WithCancel(ctx)
		defer stop()
		go cfg.Lease.renew(lctx, log)
	}
	kp := &keeper{cfg: cfg, k: k, log: log, index: index, conn: conn}
	err = kp.run(ctx)
	kp.conn.Close()
	return err
}

// keeper is KeepNBD's state after the device is connected.
type keeper struct {
	cfg   NBDKeepConfig
	k     nbdKernel
	log   *slog.Logger
	index int
	conn  net.Conn // the socket the kernel uses (our reference to it)
}

func (kp *keeper) run(ctx context.Context) error {
	events := make(chan []int, 16)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go func() {
		for {
			dead, err := kp.k.LinkDead(wctx)
			if wctx.Err() != nil {
				return
			}
			if err != nil {
				kp.log.Warn("nbd events; checking the device every few seconds meanwhile", "err", err)
				select {
				case <-wctx.Done():
					return
				case <-time.After(time.Second):
				}
				continue
			}
			select {
			case events <- dead:
			default: // a reconnect is under way; the check covers the rest
			}
		}
	}()
	t := time.NewTicker(kp.cfg.checkEvery)
	defer t.Stop()
	shutBefore := false
	for {
		select {
		case <-ctx.Done():
			return kp.disconnect()
		case dead := <-events:
			// The event may be late, for a socket already replaced: act
			// only once the current socket is shut down too.
			if contains(dead, kp.index) && kp.waitShut(ctx, time.Second) {
				if err := kp.reconnect(ctx, "link dead"); err != nil {
					return err
				}
				shutBefore = false
			}
			if kp.cfg.eventDone != nil {
				kp.cfg.eventDone()
			}
		case <-t.C:
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			ok, err := kp.k.Connected(cctx, kp.index)
			cancel()
			if ctx.Err() != nil {
				continue
			}
			if err != nil {
				kp.log.Warn("nbd status", "err", err)
				continue
			}
			if !ok {
				kp.log.Error("nbd device is no longer connected; keeper exiting")
				return ErrNBDGone
			}
			// Seen shut at two checks in a row: the kernel surely marked
			// the link dead, and the event was lost.
			shut := socketShut(kp.conn)
			if shut && shutBefore {
				if err := kp.reconnect(ctx, "socket shut down (no link-dead event seen)"); err != nil {
					return err
				}
				shut = false
			}
			shutBefore = shut
		}
	}
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// waitShut waits up to d for the current socket to be shut down.
func (kp *keeper) waitShut(ctx context.Context, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if socketShut(kp.conn) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// reconnect redials with backoff until the gateway answers and the kernel
// takes the new socket, or ctx ends. It logs the loss and the recovery
// once each. A device no longer configured (disconnected meanwhile) ends
// it with ErrNBDGone.
func (kp *keeper) reconnect(ctx context.Context, why string) error {
	start := time.Now()
	kp.log.Warn("nbd link to the gateway lost; reconnecting (I/O waits)", "why", why, "dead_timeout", kp.cfg.DeadTimeout)
	backoff := kp.cfg.minBackoff
	var last error
	for attempt := 1; ; attempt++ {
		conn, _, _, err := dialExport(ctx, kp.cfg.NBDURL)
		if err == nil {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = kp.k.Reconfigure(rctx, kp.index, kp.cfg.Backend, conn)
			cancel()
			if err == nil {
				kp.conn.Close()
				kp.conn = conn
				kp.log.Info("nbd link restored", "attempts", attempt, "down_for", time.Since(start).Round(time.Millisecond))
				return nil
			}
			conn.Close()
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ok, cerr := kp.k.Connected(cctx, kp.index)
		cancel()
		if cerr == nil && !ok {
			kp.log.Error("nbd device is no longer connected; keeper exiting", "err", err)
			return ErrNBDGone
		}
		if errors.Is(err, nbdclient.ErrRefused) && !errors.Is(last, nbdclient.ErrRefused) {
			kp.log.Error("the gateway refuses the export (volume removed?); still trying", "err", err)
		}
		last = err
		kp.log.Debug("nbd redial", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, kp.cfg.maxBackoff)
	}
}

// disconnect ends the device (the driver unmounted the file system
// first).
func (kp *keeper) disconnect() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := kp.k.Disconnect(ctx, kp.index); err != nil {
		return err
	}
	kp.log.Info("nbd device disconnected")
	return nil
}

// NBDAttacher attaches volumes with the kernel's NBD client, configured
// over netlink by a keeper process per volume (KeeperCommand: see
// KeepNBD), which reconnects the device when the gateway comes back.
type NBDAttacher struct {
	// LogDir receives one log file per keeper.
	LogDir string
	// KeeperCommand runs KeepNBD; it gets --nbd URL --backend ID
	// --timeout D --dead-timeout D [--read-only] and, with GatewayAddr,
	// --gateway ADDR --volume NAME --host-id ID appended.
	KeeperCommand []string
	// GatewayAddr is the gateway's admin API, for the keepers' renewals.
	GatewayAddr string
	// Timeout, DeadTimeout: 0 means DefaultNBDTimeout, DefaultNBDDeadTimeout.
	Timeout, DeadTimeout time.Duration
	Logger               *slog.Logger

	// For tests: where sysfs is ("" for /sys), and how a device is
	// disconnected (nil: netlink).
	sysRoot    string
	disconnect func(ctx context.Context, index int) error
}

var (
	_ Candidate = (*NBDAttacher)(nil)
	_ Sweeper   = (*NBDAttacher)(nil)
)

// Method implements Attacher.
func (n *NBDAttacher) Method() string { return MethodNBD }

func (n *NBDAttacher) log() *slog.Logger {
	if n.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return n.Logger
}

// Available loads the nbd module when it is not, and checks that its
// netlink family answers; it needs root.
func (n *NBDAttacher) Available() error {
	if os.Geteuid() != 0 {
		return errors.New("the kernel nbd client needs root")
	}
	if _, err := os.Stat("/sys/module/nbd"); err != nil {
		if _, err := run(context.Background(), "modprobe", "nbd"); err != nil {
			return fmt.Errorf("no nbd module: %w", err)
		}
	}
	c, err := nbdnl.Dial()
	if err != nil {
		return err
	}
	return c.Close()
}

// nbdBackend names a gateway volume's device attached for host in
// /sys/block/nbdN/backend: ferry:HOST:GATEWAY-NAME (the host ID keeps two
// plugins on one host, as in the acceptance tests, apart).
func nbdBackend(host, gateway string) string { return "ferry:" + host + ":" + gateway }

// Attach implements Attacher: it starts the volume's keeper and waits for
// it to name the device.
func (n *NBDAttacher) Attach(ctx context.Context, spec AttachSpec) (*Attachment, error) {
	timeout, dead := n.timeouts()
	args := []string{"--nbd", spec.NBDURL, "--backend", nbdBackend(spec.HostID, spec.Gateway), "--timeout", timeout.String(), "--dead-timeout", dead.String()}
	if spec.ReadOnly {
		args = append(args, "--read-only")
	}
	if n.GatewayAddr != "" && spec.HostID != "" {
		args = append(args, "--gateway", n.GatewayAddr, "--volume", spec.Gateway, "--host-id", spec.HostID)
	}
	h, line, err := startHelper(ctx, n.KeeperCommand, args, filepath.Join(n.LogDir, spec.Gateway+".log"), 60*time.Second)
	if err != nil {
		return nil, fmt.Errorf("nbd keeper for %s: %w", spec.Gateway, err)
	}
	index, err := strconv.Atoi(strings.TrimPrefix(line, "ready "))
	if err != nil || !strings.HasPrefix(line, "ready ") {
		h.kill()
		return nil, fmt.Errorf("nbd keeper for %s said %q, not ready INDEX", spec.Gateway, line)
	}
	a := &Attachment{Method: MethodNBD, NBDURL: spec.NBDURL, Device: fmt.Sprintf("/dev/nbd%d", index), NBDIndex: &index, NBDBackend: nbdBackend(spec.HostID, spec.Gateway), HelperPID: h.pid, HelperStart: h.start}
	// A device the kernel made just now (past nbds_max) may take a moment
	// to show in /dev.
	for i := 0; ; i++ {
		if _, err := os.Stat(a.Device); err == nil {
			break
		} else if i == 100 {
			n.Detach(context.WithoutCancel(ctx), a)
			return nil, fmt.Errorf("%s did not appear: %w", a.Device, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if spec.ReadOnly {
		if _, err := run(ctx, "blockdev", "--setro", a.Device); err != nil {
			n.Detach(context.WithoutCancel(ctx), a)
			return nil, err
		}
	}
	return a, nil
}

func (n *NBDAttacher) timeouts() (time.Duration, time.Duration) {
	timeout, dead := n.Timeout, n.DeadTimeout
	if timeout == 0 {
		timeout = DefaultNBDTimeout
	}
	if dead == 0 {
		dead = DefaultNBDDeadTimeout
	}
	return timeout, dead
}

// ours reports whether device index still serves the attachment: its
// sysfs backend (5.15+; absent before) names the volume.
func (a *Attachment) nbdOurs() bool {
	if a.NBDIndex == nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/sys/block/nbd%d/backend", *a.NBDIndex))
	if err != nil {
		return true // no backend file: an older kernel, or not connected
	}
	return a.NBDBackend == "" || strings.TrimSpace(string(b)) == a.NBDBackend
}

// Detach implements Attacher: the keeper disconnects the device as it
// stops; a device still connected after (the keeper was gone) is
// disconnected here.
func (n *NBDAttacher) Detach(ctx context.Context, a *Attachment) error {
	if err := stopHelperProcess(a, n.log(), "nbd keeper"); err != nil {
		return err
	}
	if a.NBDIndex == nil {
		return nil
	}
	c, err := nbdnl.Dial()
	if err != nil {
		return fmt.Errorf("check %s is disconnected: %w", a.Device, err)
	}
	defer c.Close()
	ds, err := c.Status(ctx, *a.NBDIndex)
	if err != nil {
		return err
	}
	for _, d := range ds {
		if d.Index == *a.NBDIndex && d.Connected && a.nbdOurs() {
			n.log().Info("nbd device still connected after its keeper stopped; disconnecting", "device", a.Device)
			return c.Disconnect(ctx, *a.NBDIndex)
		}
	}
	return nil
}

// Healthy implements Attacher: the keeper runs and the device is
// connected to this volume.
func (n *NBDAttacher) Healthy(ctx context.Context, a *Attachment) error {
	if !helperAlive(a) {
		return fmt.Errorf("its nbd keeper (pid %d) is gone, so a lost link would not be restored", a.HelperPID)
	}
	if a.NBDIndex == nil {
		return errors.New("no nbd device recorded")
	}
	c, err := nbdnl.Dial()
	if err != nil {
		return err
	}
	defer c.Close()
	ds, err := c.Status(ctx, *a.NBDIndex)
	if err != nil {
		return err
	}
	for _, d := range ds {
		if d.Index == *a.NBDIndex && d.Connected {
			if !a.nbdOurs() {
				return fmt.Errorf("%s serves another backend", a.Device)
			}
			return nil
		}
	}
	return fmt.Errorf("%s is not connected", a.Device)
}

// helper is a started helper process.
type helper struct {
	pid   int
	start uint64
	cmd   *exec.Cmd
	done  chan error
}

func (h *helper) kill() {
	h.cmd.Process.Kill()
	<-h.done
}

// startHelper starts command+args as a helper process in a session of its
// own, logging to logPath, and waits for its first line on fd 3 (its
// readiness), which it returns.
func startHelper(ctx context.Context, command, args []string, logPath string, timeout time.Duration) (*helper, string, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
		return nil, "", err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, "", err
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, "", err
	}
	defer pr.Close()
	cmd := exec.Command(command[0], append(append([]string(nil), command[1:]...), args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{pw} // fd 3: "ready ..."
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return nil, "", fmt.Errorf("start: %w", err)
	}
	pw.Close()
	h := &helper{pid: cmd.Process.Pid, start: procStart(cmd.Process.Pid), cmd: cmd, done: make(chan error, 1)}
	go func() { h.done <- cmd.Wait() }() // reaps it while this process lives
	type result struct {
		line string
		err  error
	}
	ready := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(pr).ReadString('\n')
		line = strings.TrimSpace(line)
		if line != "" {
			err = nil
		}
		ready <- result{line, err}
	}()
	select {
	case r := <-ready:
		if r.err != nil {
			h.kill()
			return nil, "", fmt.Errorf("failed to start (%v); see %s", r.err, logPath)
		}
		return h, r.line, nil
	case <-ctx.Done():
		h.kill()
		return nil, "", ctx.Err()
	case <-time.After(timeout):
		h.kill()
		return nil, "", fmt.Errorf("not ready after %s; see %s", timeout, logPath)
	}
}

// stopHelperProcess ends the attachment's helper with SIGTERM and waits
// for it (60 s, then SIGKILL).
func stopHelperProcess(a *Attachment, log *slog.Logger, what string) error {
	if !helperAlive(a) {
		return nil
	}
	syscall.Kill(a.HelperPID, syscall.SIGTERM)
	deadline := time.Now().Add(60 * time.Second)
	for helperAlive(a) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if helperAlive(a) {
		syscall.Kill(a.HelperPID, syscall.SIGKILL)
		if log != nil {
			log.Warn(what+" did not stop within 60s of SIGTERM; killed", "pid", a.HelperPID)
		}
	}
	return nil
}

// Sweep implements Sweeper: an nbd device connected to one of the
// plugin's volumes for this host (its backend file says
// "ferry:HOST:GATEWAY-NAME") that no recorded attachment holds was left by
// a crash between attaching and saving the state; it is disconnected, and
// its keeper, finding it gone, exits (and stops renewing the volume's
// gateway attachment).
func (n *NBDAttacher) Sweep(ctx context.Context, host string, known map[string]bool, keep []*Attachment) error {
	root := n.sysRoot
	if root == "" {
		root = "/sys"
	}
	files, err := filepath.Glob(filepath.Join(root, "block", "nbd*", "backend"))
	if err != nil || len(files) == 0 {
		return err
	}
	kept := map[int]bool{}
	for _, a := range keep {
		if a.Method == MethodNBD && a.NBDIndex != nil {
			kept[*a.NBDIndex] = true
		}
	}
	disconnect := n.disconnect
	var errs []error
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // disconnected meanwhile
		}
		gw, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "ferry:"+host+":")
		index, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(filepath.Dir(f)), "nbd"))
		if !ok || err != nil || !known[gw] || kept[index] {
			continue
		}
		if disconnect == nil {
			c, err := nbdnl.Dial()
			if err != nil {
				return err
			}
			defer c.Close()
			disconnect = c.Disconnect
		}
		n.log().Warn("disconnecting an nbd device of this plugin's that its state does not record (a crash while attaching)", "device", fmt.Sprintf("/dev/nbd%d", index), "gateway_volume", gw)
		if err := disconnect(ctx, index); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
