package docker

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
	"github.com/ferry-io/ferry/gateway/docker/internal/nbdnl"
	"github.com/ferry-io/ferry/gateway/nbd"
	"github.com/ferry-io/ferry/gateway/volume"
)

// fakeKernel stands in for drivers/block/nbd.c with one device and one
// connection: it sends I/O on the socket it was given; when the socket
// fails it shuts it down, marks the link dead and multicasts LINK_DEAD
// (unless quiet: a lost event), and requests wait for a Reconfigure and
// are then resent (the kernel requeues them). A Reconfigure while the link
// is alive is dropped and reported as success, as the kernel does, and one
// that does not repeat the backend identifier is refused.
type fakeKernel struct {
	index  int
	quiet  bool
	events chan []int

	mu        sync.Mutex
	cond      *sync.Cond
	conn      net.Conn
	dev       nbdDevice
	dead      bool
	connected bool
	reconfigs int
	dropped   int // reconfigures while the link was alive
	handle    uint64
}

func newFakeKernel(index int, quiet bool) *fakeKernel {
	k := &fakeKernel{index: index, quiet: quiet, events: make(chan []int, 8)}
	k.cond = sync.NewCond(&k.mu)
	return k
}

func (k *fakeKernel) Connect(ctx context.Context, conn net.Conn, dev nbdDevice) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.connected {
		return 0, errors.New("busy")
	}
	k.conn, k.dev, k.connected, k.dead = conn, dev, true, false
	return k.index, nil
}

func (k *fakeKernel) Reconfigure(ctx context.Context, index int, backend string, conn net.Conn) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if index != k.index || !k.connected {
		return errors.New("not configured")
	}
	if k.dev.Backend != "" && backend != k.dev.Backend {
		return errors.New("must specify backend") // nbd_genl_reconfigure, 5.15+
	}
	if !k.dead {
		k.dropped++
		return nil // nbd_reconnect_socket: -ENOSPC, reported as 0
	}
	k.conn, k.dead = conn, false
	k.reconfigs++
	k.cond.Broadcast()
	return nil
}

func (k *fakeKernel) Disconnect(ctx context.Context, index int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.connected = false
	k.cond.Broadcast()
	return nil
}

func (k *fakeKernel) Connected(ctx context.Context, index int) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return index == k.index && k.connected, nil
}

func (k *fakeKernel) LinkDead(ctx context.Context) ([]int, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case d := <-k.events:
		return d, nil
	}
}

func (k *fakeKernel) Close() error { return nil }

func (k *fakeKernel) reconfigured() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.reconfigs
}

// markDead is nbd_mark_nsock_dead: shut the socket down, notify.
func (k *fakeKernel) markDead(conn net.Conn) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if conn != k.conn || k.dead {
		return
	}
	k.dead = true
	tc := conn.(*net.TCPConn)
	tc.CloseRead()
	tc.CloseWrite()
	if !k.quiet {
		k.events <- []int{k.index}
	}
}

// do sends one request and waits for its reply, resending it on the new
// socket after a reconnect.
func (k *fakeKernel) do(cmd uint16, off uint64, data []byte, read bool) error {
	for {
		k.mu.Lock()
		for k.dead && k.connected {
			k.cond.Wait()
		}
		if !k.connected {
			k.mu.Unlock()
			return errors.New("disconnected")
		}
		conn := k.conn
		k.handle++
		h := k.handle
		k.mu.Unlock()
		err := roundTrip(conn, cmd, h, off, data, read)
		if err == nil {
			return nil
		}
		var se serverError
		if errors.As(err, &se) {
			return err
		}
		k.markDead(conn)
	}
}

type serverError uint32

func (e serverError) Error() string { return fmt.Sprintf("server error %d", uint32(e)) }

func roundTrip(conn net.Conn, cmd uint16, handle, off uint64, data []byte, read bool) error {
	req := binary.BigEndian.AppendUint32(nil, 0x25609513)
	req = binary.BigEndian.AppendUint16(req, 0)
	req = binary.BigEndian.AppendUint16(req, cmd)
	req = binary.BigEndian.AppendUint64(req, handle)
	req = binary.BigEndian.AppendUint64(req, off)
	req = binary.BigEndian.AppendUint32(req, uint32(len(data)))
	if !read {
		req = append(req, data...)
	}
	if _, err := conn.Write(req); err != nil {
		return err
	}
	var rep [16]byte
	if _, err := io.ReadFull(conn, rep[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint32(rep[:]) != 0x67446698 || binary.BigEndian.Uint64(rep[8:]) != handle {
		return errors.New("bad reply")
	}
	if e := binary.BigEndian.Uint32(rep[4:]); e != 0 {
		return serverError(e)
	}
	if read {
		_, err := io.ReadFull(conn, data)
		return err
	}
	return nil
}

func (k *fakeKernel) write(p []byte, off uint64) error { return k.do(1, off, p, false) }
func (k *fakeKernel) read(p []byte, off uint64) error  { return k.do(0, off, p, true) }
func (k *fakeKernel) flush() error                     { return k.do(3, 0, nil, false) }

// gateway is Ferry's NBD server over one device on a fixed loopback
// address that can be stopped and started again (a gateway restart).
type gateway struct {
	t    *testing.T
	addr string
	devs map[string]device.Device
	srv  *nbd.Server
	done chan error
}

func startGateway(t *testing.T, devs map[string]device.Device) *gateway {
	g := &gateway{t: t, addr: "127.0.0.1:0", devs: devs}
	g.start()
	t.Cleanup(g.stop)
	return g
}

func (g *gateway) start() {
	g.t.Helper()
	var l net.Listener
	var err error
	for i := 0; i < 100; i++ { // the old listener's port may take a moment to free
		if l, err = net.Listen("tcp", g.addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		g.t.Fatal(err)
	}
	g.addr = l.Addr().String()
	g.srv = nbd.NewServer(volume.NewStaticExports(g.devs), nbd.Config{Registerer: prometheus.NewRegistry(), HandshakeTimeout: 5 * time.Second})
	g.done = make(chan error, 1)
	go func(srv *nbd.Server, done chan error) { done <- srv.Serve(context.Background(), l) }(g.srv, g.done)
}

func (g *gateway) stop() {
	if g.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g.srv.Shutdown(ctx)
	<-g.done
	g.srv = nil
}

func pattern(n, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(seed*31 + i*7)
	}
	return b
}

// runKeeper starts KeepNBD with k and waits for it to be ready.
func runKeeper(t *testing.T, cfg NBDKeepConfig) (cancel func() error) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	cfg.Ready = pw
	done := make(chan error, 1)
	go func() { done <- KeepNBD(ctx, cfg) }()
	line := make([]byte, 64)
	n, err := pr.Read(line)
	if err != nil {
		stop()
		t.Fatalf("keeper not ready: %v (%v)", err, <-done)
	}
	if got := string(line[:n]); got != "ready 3\n" {
		t.Fatalf("keeper said %q", got)
	}
	var once sync.Once
	var res error
	cancel = func() error {
		once.Do(func() { stop(); res = <-done })
		return res
	}
	t.Cleanup(func() { cancel() })
	return cancel
}

func testKeeperReconnects(t *testing.T, quiet bool) {
	dev := mem.New(16 << 20)
	g := startGateway(t, map[string]device.Device{"v": dev})
	k := newFakeKernel(3, quiet)
	cfg := NBDKeepConfig{NBDURL: "nbd://" + g.addr + "/v", Timeout: 30 * time.Second, DeadTimeout: 120 * time.Second, Backend: "ferry:v", kernel: k, checkEvery: time.Hour, minBackoff: 5 * time.Millisecond, maxBackoff: 50 * time.Millisecond}
	if quiet {
		cfg.checkEvery = 10 * time.Millisecond
	}
	stop := runKeeper(t, cfg)
	if k.dev.Size != 16<<20 || k.dev.Backend != "ferry:v" || k.dev.Timeout != 30*time.Second || k.dev.DeadTimeout != 120*time.Second {
		t.Fatalf("connected with %+v", k.dev)
	}
	if k.dev.Flags&nbdnl.FlagSendFlush == 0 || k.dev.Flags&nbdnl.FlagReadOnly != 0 {
		t.Fatalf("transmission flags %#x: want the gateway's (flush, not read-only)", k.dev.Flags)
	}
	a := pattern(1<<20, 1)
	if err := k.write(a, 0); err != nil {
		t.Fatal(err)
	}
	if err := k.flush(); err != nil {
		t.Fatal(err)
	}
	for round := 1; round <= 3; round++ {
		g.stop() // closes the keeper's socket: the kernel marks the link dead on its next request
		b := pattern(64<<10, round+1)
		errc := make(chan error, 1)
		go func() { errc <- k.write(b, uint64(round)<<20) }()
		g.start()
		if err := <-errc; err != nil {
			t.Fatalf("round %d: write across the gateway restart: %v", round, err)
		}
		got := make([]byte, len(b))
		if err := k.read(got, uint64(round)<<20); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("round %d: read back after reconnect: %v", round, err)
		}
		if n := k.reconfigured(); n != round {
			t.Fatalf("round %d: %d reconfigures", round, n)
		}
	}
	got := make([]byte, len(a))
	if err := k.read(got, 0); err != nil || !bytes.Equal(got[:1<<20], a[:1<<20]) {
		t.Fatalf("data written before the restarts: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("keeper: %v", err)
	}
	if ok, _ := k.Connected(context.Background(), 3); ok {
		t.Fatal("the keeper left the device connected when stopped")
	}
}

// The keeper reconnects on LINK_DEAD, across repeated gateway restarts,
// with the I/O in flight completing on the new socket.
func TestKeeperReconnectsOnLinkDead(t *testing.T) { testKeeperReconnects(t, false) }

// With the events lost, the periodic check finds the shut-down socket.
func TestKeeperReconnectsWithoutEvents(t *testing.T) { testKeeperReconnects(t, true) }

// A late LINK_DEAD for a link already replaced (or another device's)
// does not make the keeper hand the kernel a socket it would drop: the
// keeper would then watch a socket the kernel does not use and miss the
// next real link death.
func TestKeeperIgnoresEventForLiveLink(t *testing.T) {
	g := startGateway(t, map[string]device.Device{"v": mem.New(1 << 20)})
	k := newFakeKernel(3, false)
	handled := make(chan struct{}, 8)
	runKeeper(t, NBDKeepConfig{NBDURL: "nbd://" + g.addr + "/v", kernel: k, checkEvery: time.Hour, minBackoff: 5 * time.Millisecond, maxBackoff: 50 * time.Millisecond,
		eventDone: func() { handled <- struct{}{} }})
	k.events <- []int{3}
	k.events <- []int{4}
	<-handled
	<-handled
	// A real link death after them (events are handled in order) is
	// still restored: the write completes.
	g.stop()
	errc := make(chan error, 1)
	go func() { errc <- k.write(pattern(4096, 9), 0) }()
	g.start()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.dropped != 0 || k.reconfigs != 1 {
		t.Fatalf("%d reconfigures for a live link, %d for the dead one; want 0 and 1", k.dropped, k.reconfigs)
	}
}

// A device disconnected by someone else ends the keeper with ErrNBDGone.
func TestKeeperExitsWhenDeviceGone(t *testing.T) {
	g := startGateway(t, map[string]device.Device{"v": mem.New(1 << 20)})
	k := newFakeKernel(3, false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- KeepNBD(ctx, NBDKeepConfig{NBDURL: "nbd://" + g.addr + "/v", kernel: k, checkEvery: 10 * time.Millisecond, Ready: pw})
	}()
	io.ReadFull(pr, make([]byte, 8))
	k.Disconnect(ctx, 3)
	if err := <-done; !errors.Is(err, ErrNBDGone) {
		t.Fatalf("keeper returned %v, want ErrNBDGone", err)
	}
}

// A device disconnected while its link is down (the gateway away) ends
// the keeper rather than leave it redialing for nothing.
func TestKeeperExitsWhenDeviceGoneWhileReconnecting(t *testing.T) {
	g := startGateway(t, map[string]device.Device{"v": mem.New(1 << 20)})
	k := newFakeKernel(3, false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- KeepNBD(ctx, NBDKeepConfig{NBDURL: "nbd://" + g.addr + "/v", kernel: k, checkEvery: time.Hour, minBackoff: 5 * time.Millisecond, maxBackoff: 20 * time.Millisecond, Ready: pw})
	}()
	io.ReadFull(pr, make([]byte, 8))
	g.stop()
	errc := make(chan error, 1)
	go func() { errc <- k.write(pattern(512, 1), 0) }() // meets the dead link
	k.mu.Lock()
	for !k.dead {
		k.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		k.mu.Lock()
	}
	k.mu.Unlock()
	k.Disconnect(ctx, 3)
	if err := <-done; !errors.Is(err, ErrNBDGone) {
		t.Fatalf("keeper returned %v, want ErrNBDGone", err)
	}
	if err := <-errc; err == nil {
		t.Fatal("a write to a disconnected device succeeded")
	}
}

// A read-only volume's device is connected read-only; an unknown export
// is refused before any device is configured.
func TestKeeperReadOnlyAndRefused(t *testing.T) {
	g := startGateway(t, map[string]device.Device{"v": mem.New(1 << 20)})
	k := newFakeKernel(3, false)
	runKeeper(t, NBDKeepConfig{NBDURL: "nbd://" + g.addr + "/v", ReadOnly: true, kernel: k, checkEvery: time.Hour})
	if k.dev.Flags&(nbdnl.FlagReadOnly|nbdnl.FlagHasFlags) != nbdnl.FlagReadOnly|nbdnl.FlagHasFlags {
		t.Fatalf("read-only volume connected with flags %#x", k.dev.Flags)
	}
	k2 := newFakeKernel(4, false)
	err := KeepNBD(context.Background(), NBDKeepConfig{NBDURL: "nbd://" + g.addr + "/nope", kernel: k2})
	if err == nil || k2.connected {
		t.Fatalf("unknown export: %v, connected %v", err, k2.connected)
	}
}

// A helper names itself ready on fd 3, runs in a session of its own, and
// is stopped by SIGTERM; one that exits without a word is an error that
// names its log.
func TestStartHelper(t *testing.T) {
	dir := t.TempDir()
	h, line, err := startHelper(context.Background(), []string{"sh", "-c"}, []string{`echo "started $$" >&2; echo "ready 7" >&3; trap 'exit 0' TERM; while :; do sleep 0.05; done`}, filepath.Join(dir, "logs", "v.log"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if line != "ready 7" {
		t.Fatalf("line %q", line)
	}
	a := &Attachment{HelperPID: h.pid, HelperStart: h.start}
	if !helperAlive(a) {
		t.Fatal("helper not alive")
	}
	if sid, _ := unix.Getsid(h.pid); sid != h.pid {
		t.Errorf("helper in session %d, not its own", sid)
	}
	stopHelperProcess(a, nil, "test helper")
	if helperAlive(a) {
		t.Fatal("helper still alive after stop")
	}
	logb, _ := os.ReadFile(filepath.Join(dir, "logs", "v.log"))
	if !strings.Contains(string(logb), fmt.Sprintf("started %d", h.pid)) {
		t.Fatalf("log: %q", logb)
	}
	_, _, err = startHelper(context.Background(), []string{"sh", "-c", "exit 3"}, nil, filepath.Join(dir, "logs", "w.log"), 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "w.log") {
		t.Fatalf("a helper that exited: %v", err)
	}
}

// At start, an nbd device of one of the plugin's volumes that no recorded
// attachment holds is disconnected; devices of other volumes, of another
// plugin (host ID) on this host, of other backends, and the recorded ones
// are left alone.
func TestNBDSweep(t *testing.T) {
	root := t.TempDir()
	for dev, backend := range map[string]string{
		"nbd0":  "ferry:h1:a",     // recorded
		"nbd1":  "ferry:h1:b",     // left by a crash
		"nbd2":  "ferry:h1:other", // not one of this plugin's volumes
		"nbd3":  "rbd:pool/img",
		"nbd5":  "ferry:h2:b", // another plugin on this host
		"nbd12": "ferry:h1:c", // left by a crash
	} {
		os.MkdirAll(filepath.Join(root, "block", dev), 0o755)
		if err := os.WriteFile(filepath.Join(root, "block", dev, "backend"), []byte(backend+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(root, "block", "nbd4"), 0o755) // not connected: no backend file
	var got []int
	n := &NBDAttacher{sysRoot: root, disconnect: func(ctx context.Context, index int) error {
		got = append(got, index)
		return nil
	}}
	zero := 0
	keep := []*Attachment{{Method: MethodNBD, NBDIndex: &zero}, {Method: MethodFUSE}}
	if err := n.Sweep(context.Background(), "h1", map[string]bool{"a": true, "b": true, "c": true}, keep); err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, []int{1, 12}) {
		t.Fatalf("disconnected %v, want [1 12]", got)
	}
}
