package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
	"github.com/ferry-io/ferry/gateway/volume"
	ftu "github.com/ferry-io/ferry/internal/testutil"
)

type testServer struct {
	srv  *Server
	addr string
	reg  *prometheus.Registry
	exp  *volume.StaticExports
	done chan error
}

func startServer(t *testing.T, devs map[string]device.Device) *testServer {
	t.Helper()
	return startServerConfig(t, devs, Config{})
}

// threadPerConn makes the servers the tests start serve their connections
// outside the runtime's poller (Config.ThreadPerConn): TestThreadPerConn
// runs the other tests so.
var threadPerConn bool

// startServerConfig is startServer with a config (TLS, ...).
func startServerConfig(t *testing.T, devs map[string]device.Device, cfg Config) *testServer {
	t.Helper()
	reg := prometheus.NewRegistry()
	exp := volume.NewStaticExports(devs)
	cfg.Registerer, cfg.HandshakeTimeout = reg, 5*time.Second
	cfg.ThreadPerConn = cfg.ThreadPerConn || threadPerConn
	srv := NewServer(exp, cfg)
	l := ftu.Listen(t)
	ts := &testServer{srv: srv, addr: l.Addr().String(), reg: reg, exp: exp, done: make(chan error, 1)}
	go func() { ts.done <- srv.Serve(context.Background(), l) }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

// stop shuts the server down and checks Serve returned nil; idempotent.
func (ts *testServer) stop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if ts.done != nil {
		if err := <-ts.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		ts.done = nil
	}
}

func (ts *testServer) uri(name string) string { return "nbd://" + ts.addr + "/" + name }

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// checkNoLeaks waits for the goroutine count to return to base.
func checkNoLeaks(t *testing.T, baseG, baseFD int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		g, fd := runtime.NumGoroutine(), openFDs()
		if g <= baseG && fd <= baseFD {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("leak: goroutines %d (was %d), fds %d (was %d)\n%s", g, baseG, fd, baseFD, buf[:n])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}

func TestReadWriteFlushTrimZeroes(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			dev := mem.New(1 << 20)
			ts := startServer(t, map[string]device.Device{"v": dev})
			rc := dialRaw(t, ts.addr)
			rc.attach("v", structured)
			if rc.size != 1<<20 || rc.flags != transmitFlags {
				t.Fatalf("size %d flags %#x", rc.size, rc.flags)
			}
			data := pattern(8192, 3)
			if r := rc.do(cmdWrite, cmdFlagFUA, 4096, 8192, data); r.errno != 0 {
				t.Fatalf("write: %v", r)
			}
			if r := rc.do(cmdRead, 0, 4096, 8192, nil); r.errno != 0 || !bytes.Equal(r.data, data) {
				t.Fatalf("read back: %v equal=%v", r, bytes.Equal(r.data, data))
			}
			if r := rc.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 {
				t.Fatalf("flush: %v", r)
			}
			if r := rc.do(cmdTrim, 0, 4096, 4096, nil); r.errno != 0 {
				t.Fatalf("trim: %v", r)
			}
			if r := rc.do(cmdWriteZeroes, cmdFlagNoHole, 8192, 1024, nil); r.errno != 0 {
				t.Fatalf("zeroes: %v", r)
			}
			want := append(make([]byte, 4096+1024), data[4096+1024:]...)
			if r := rc.do(cmdRead, 0, 4096, 8192, nil); !bytes.Equal(r.data, want) {
				t.Fatalf("after trim+zero: %v", r)
			}
			if r := rc.do(cmdCache, 0, 0, 4096, nil); r.errno != 0 {
				t.Fatalf("cache: %v", r)
			}
			if structured {
				r := rc.do(cmdBlockStatus, 0, 0, 1<<20, nil)
				if r.errno != 0 || len(r.status) < 2 {
					t.Fatalf("block status: %v %v", r, r.status)
				}
				var total uint32
				for i := 0; i < len(r.status); i += 2 {
					total += r.status[i]
				}
				if total != 1<<20 {
					t.Fatalf("block status covers %d bytes, want %d: %v", total, 1<<20, r.status)
				}
				if r.status[1] != stateHole|stateZero {
					t.Errorf("first extent of a mostly empty device: flags %d", r.status[1])
				}
				if r := rc.do(cmdBlockStatus, cmdFlagReqOne, 0, 1<<20, nil); len(r.status) != 2 {
					t.Errorf("REQ_ONE: %d descriptors", len(r.status)/2)
				}
			} else if r := rc.do(cmdBlockStatus, 0, 0, 4096, nil); r.errno != errInval {
				t.Fatalf("block status without structured replies: %v", r)
			}
			rc.send(cmdDisc, 0, 1, 0, 0, nil)
			if !rc.closed() {
				t.Fatal("server kept the connection open after DISC")
			}
		})
	}
}

// Bad requests get an errno and the connection keeps working.
func TestBadRequestsAnsweredNotDropped(t *testing.T) {
	ts := startServer(t, map[string]device.Device{"v": mem.New(1 << 20)})
	rc := dialRaw(t, ts.addr)
	rc.attach("v", true)
	cases := []struct {
		name    string
		typ     uint16
		flags   uint16
		off     uint64
		length  uint32
		payload []byte
		want    uint32
	}{
		{"read past end", cmdRead, 0, 1<<20 - 512, 1024, nil, errInval},
		{"read at huge offset", cmdRead, 0, 1 << 63, 512, nil, errInval},
		{"write past end", cmdWrite, 0, 1 << 20, 512, make([]byte, 512), errInval},
		{"write too large", cmdWrite, 0, 0, maxPayload + 1, make([]byte, maxPayload+1), errInval},
		{"read too large", cmdRead, 0, 0, maxPayload + 1, nil, errInval},
		{"trim past end", cmdTrim, 0, 1 << 19, 1 << 20, nil, errInval},
		{"zeroes past end", cmdWriteZeroes, 0, 1 << 20, 1, nil, errInval},
		{"unknown command", 99, 0, 0, 0, nil, errInval},
		{"unknown flag", cmdWrite, 1 << 9, 0, 512, make([]byte, 512), errInval},
		{"fast zero not advertised", cmdWriteZeroes, cmdFlagFastZero, 0, 512, nil, errInval},
		{"zero-length block status", cmdBlockStatus, 0, 0, 0, nil, errInval},
		{"zero-length read", cmdRead, 0, 0, 0, nil, 0},
		{"zero-length write", cmdWrite, 0, 1 << 20, 0, nil, 0},
	}
	for _, c := range cases {
		r := rc.do(c.typ, c.flags, c.off, c.length, c.payload)
		if r.errno != c.want {
			t.Errorf("%s: errno %d, want %d", c.name, r.errno, c.want)
		}
	}
	// Still serving.
	if r := rc.do(cmdWrite, 0, 0, 512, pattern(512, 1)); r.errno != 0 {
		t.Fatalf("write after bad requests: %v", r)
	}
	if got := testutil.ToFloat64(ts.srv.m.errors[numCommands]); got != 1 {
		t.Errorf("unknown-command error counter %v, want 1", got)
	}
}

// errDevice fails every operation with err, or panics when err is nil.
type errDevice struct {
	device.Device
	err error
}

func (d errDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	if d.err == nil {
		panic("injected")
	}
	return d.err
}

func (d errDevice) WriteAt(ctx context.Context, p []byte, off int64) error {
	if d.err == nil {
		panic("injected")
	}
	return d.err
}

func TestDeviceErrorsMapToErrno(t *testing.T) {
	ts := startServer(t, map[string]device.Device{
		"eio":    errDevice{mem.New(1 << 20), errors.New("disk on fire")},
		"nospc":  errDevice{mem.New(1 << 20), fmt.Errorf("pool: %w", device.ErrNoSpace)},
		"ro":     errDevice{mem.New(1 << 20), device.ErrReadOnly},
		"panics": errDevice{mem.New(1 << 20), nil},
	})
	for name, want := range map[string]uint32{"eio": errIO, "nospc": errNoSpc, "ro": errPerm, "panics": errIO} {
		for _, structured := range []bool{false, true} {
			rc := dialRaw(t, ts.addr)
			rc.attach(name, structured)
			if r := rc.do(cmdWrite, 0, 0, 512, make([]byte, 512)); r.errno != want {
				t.Errorf("%s write: errno %d, want %d", name, r.errno, want)
			}
			if r := rc.do(cmdRead, 0, 0, 512, nil); r.errno != want {
				t.Errorf("%s read (structured %v): errno %d, want %d", name, structured, r.errno, want)
			}
			if r := rc.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 {
				t.Errorf("%s: connection unusable after error: %v", name, r)
			}
		}
	}
	if got := testutil.ToFloat64(ts.srv.m.panics); got != 4 {
		t.Errorf("ferry_nbd_panics_total = %v, want 4", got)
	}
}

func TestNegotiation(t *testing.T) {
	ts := startServer(t, map[string]device.Device{"a": mem.New(4096), "b": mem.New(8192)})

	rc := dialRaw(t, ts.addr)
	typ, p := rc.option(optList, nil)
	if len(typ) != 3 || typ[0] != repServer || string(p[0][4:]) != "a" || string(p[1][4:]) != "b" || typ[2] != repAck {
		t.Fatalf("LIST: %v %q", typ, p)
	}
	if typ, _ := rc.option(optList, []byte("x")); typ[0] != repErrInvalid {
		t.Errorf("LIST with data: %#x", typ[0])
	}
	if typ, _ := rc.option(optGo, goData("nope")); typ[0] != repErrUnknown {
		t.Errorf("GO unknown export: %#x", typ[0])
	}
	if typ, _ := rc.option(optInfo, goData("b")); typ[len(typ)-1] != repAck {
		t.Errorf("INFO: %v", typ)
	}
	if typ, _ := rc.option(optGo, []byte{0, 0, 0, 9, 'a'}); typ[0] != repErrInvalid {
		t.Errorf("GO with a truncated name: %#x", typ[0])
	}
	if typ, _ := rc.option(optSetMetaContext, metaData("a", metaContextAllocation)); typ[0] != repErrInvalid {
		t.Errorf("SET_META_CONTEXT before structured replies: %#x", typ[0])
	}
	if typ, p := rc.option(optListMetaContext, metaData("a")); len(typ) != 2 || string(p[0][4:]) != metaContextAllocation {
		t.Errorf("LIST_META_CONTEXT: %v %q", typ, p)
	}
	if typ, _ := rc.option(optListMetaContext, metaData("a", "qemu:dirty-bitmap:x")); len(typ) != 1 || typ[0] != repAck {
		t.Errorf("LIST_META_CONTEXT unknown namespace: %v", typ)
	}
	if typ, _ := rc.option(optStartTLS, nil); typ[0] != repErrUnsup {
		t.Errorf("STARTTLS: %#x", typ[0])
	}
	if typ, _ := rc.option(12345, []byte("junk")); typ[0] != repErrUnsup {
		t.Errorf("unknown option: %#x", typ[0])
	}
	if typ, _ := rc.option(optGo, goData("a")); typ[len(typ)-1] != repAck {
		t.Errorf("GO after errors: %v", typ)
	}

	// NBD_OPT_EXPORT_NAME for an unknown export can only be refused by
	// closing; a known one enters transmission.
	rc = dialRaw(t, ts.addr)
	rc.write(append(append(binary64(magicOption), binary32(optExportName, 4)...), "nope"...))
	if !rc.closed() {
		t.Error("EXPORT_NAME for an unknown export left the connection open")
	}
	rc = dialRaw(t, ts.addr)
	rc.write(append(append(binary64(magicOption), binary32(optExportName, 1)...), 'b'))
	var er [10]byte
	rc.read(er[:])
	if size := uint64(er[7]) | uint64(er[6])<<8; size != 8192 {
		t.Errorf("EXPORT_NAME size %d", size)
	}
	if r := rc.do(cmdWrite, 0, 0, 4, []byte("abcd")); r.errno != 0 {
		t.Errorf("write after EXPORT_NAME: %v", r)
	}

	// ABORT is acknowledged and ends the connection.
	rc = dialRaw(t, ts.addr)
	if typ, _ := rc.option(optAbort, nil); typ[0] != repAck {
		t.Errorf("ABORT: %#x", typ[0])
	}
	if !rc.closed() {
		t.Error("ABORT left the connection open")
	}
}

func binary64(v uint64) []byte {
	b := make([]byte, 8)
	for i := range 8 {
		b[i] = byte(v >> (56 - 8*i))
	}
	return b
}

func binary32(vs ...uint32) []byte {
	var b []byte
	for _, v := range vs {
		b = append(b, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	return b
}

// A bad magic ends that connection only; others keep being served, and
// nothing leaks once clients are gone.
func TestMalformedAndAbruptClientsDoNotLeak(t *testing.T) {
	// Warm up the runtime's network poller so its descriptor is not
	// counted as a leak.
	startServer(t, nil).stop(t)
	baseG, baseFD := runtime.NumGoroutine(), openFDs()
	func() {
		ts := startServer(t, map[string]device.Device{"v": mem.New(1 << 24)})
		defer ts.stop(t)
		good := dialRaw(t, ts.addr)
		good.attach("v", true)

		bad := dialRaw(t, ts.addr)
		bad.attach("v", false)
		bad.write(bytes.Repeat([]byte{0xff}, requestHeaderSize))
		if !bad.closed() {
			t.Error("bad request magic did not close the connection")
		}
		bad.c.Close()

		// Disconnect in the middle of a write payload, and with requests
		// in flight.
		for range 20 {
			c := dialRaw(t, ts.addr)
			c.attach("v", true)
			c.send(cmdWrite, 0, 1, 0, 1<<20, make([]byte, 4096))
			for i := range 8 {
				c.send(cmdRead, 0, uint64(i), 0, 65536, nil)
			}
			c.c.Close()
		}
		// Garbage during negotiation.
		for range 20 {
			c := dialRaw(t, ts.addr)
			c.write([]byte("GET / HTTP/1.1\r\n\r\n"))
			c.closed()
			c.c.Close()
		}
		// Many connections at once, each doing real work.
		var wg sync.WaitGroup
		for i := range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := dialRaw(t, ts.addr)
				c.attach("v", i%2 == 0)
				data := pattern(4096, byte(i))
				if r := c.do(cmdWrite, 0, uint64(i)*4096, 4096, data); r.errno != 0 {
					t.Errorf("conn %d write: %v", i, r)
				}
				if r := c.do(cmdRead, 0, uint64(i)*4096, 4096, nil); !bytes.Equal(r.data, data) {
					t.Errorf("conn %d read back differs", i)
				}
				c.send(cmdDisc, 0, 0, 0, 0, nil)
				c.closed()
				c.c.Close()
			}()
		}
		wg.Wait()
		if r := good.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 {
			t.Fatalf("the well-behaved client was disturbed: %v", r)
		}
		good.c.Close()
		deadline := time.Now().Add(5 * time.Second)
		for ts.exp.Attached("v") != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d attachments left after every client went away", ts.exp.Attached("v"))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	checkNoLeaks(t, baseG, baseFD)
}

// A FLUSH on one connection makes writes acknowledged on another durable
// (the multi-conn promise).
func TestFlushCoversOtherConnections(t *testing.T) {
	dev := mem.New(1 << 20)
	ts := startServer(t, map[string]device.Device{"v": dev})
	a, b := dialRaw(t, ts.addr), dialRaw(t, ts.addr)
	a.attach("v", false)
	b.attach("v", true)
	data := pattern(65536, 9)
	if r := a.do(cmdWrite, 0, 0, 65536, data); r.errno != 0 {
		t.Fatal(r)
	}
	if r := b.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 {
		t.Fatal(r)
	}
	after := dev.Crash()
	got := make([]byte, 65536)
	if err := after.ReadAt(context.Background(), got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("write on connection A not durable after FLUSH on connection B (err %v)", err)
	}
}

// Shutdown answers requests already read, then closes; a forced removal
// (revocation) closes the connection at once.
func TestShutdownAndRevoke(t *testing.T) {
	ts := startServer(t, map[string]device.Device{"v": mem.New(1 << 20)})
	rc := dialRaw(t, ts.addr)
	rc.attach("v", false)
	for i := range 16 {
		rc.send(cmdWrite, 0, uint64(i), uint64(i)*4096, 4096, pattern(4096, byte(i)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The first reply proves the server is reading; the rest were sent
	// before Shutdown and must all be answered.
	first := rc.recv(0)
	time.Sleep(100 * time.Millisecond)
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{first.handle: true}
	for len(seen) < 16 {
		r := rc.recv(0)
		if r.errno != 0 {
			t.Fatalf("write %d failed during shutdown: %v", r.handle, r)
		}
		seen[r.handle] = true
	}
	if !rc.closed() {
		t.Fatal("connection open after Shutdown")
	}

	revoked := make(chan struct{})
	exp := &revokingExports{dev: mem.New(1 << 20), revoked: revoked}
	srv := NewServer(exp, Config{ThreadPerConn: threadPerConn})
	l := ftu.Listen(t)
	go srv.Serve(context.Background(), l)
	defer srv.Shutdown(context.Background())
	c := dialRaw(t, l.Addr().String())
	c.attach("v", false)
	close(revoked)
	if !c.closed() {
		t.Fatal("revoked attachment left the connection open")
	}
}

type revokingExports struct {
	dev     device.Device
	revoked chan struct{}
}

func (e *revokingExports) List(context.Context, volume.Client) ([]string, error) {
	return []string{"v"}, nil
}
func (e *revokingExports) Attach(ctx context.Context, name string, client volume.Client) (*volume.Attachment, error) {
	if name != "v" {
		return nil, volume.ErrNotFound
	}
	return volume.NewAttachment(name, e.dev, e.revoked, nil), nil
}

// Real clients: nbdinfo sees every capability, qemu-io round-trips data,
// nbdsh with libnbd's strict checks off sends out-of-range requests and
// gets EINVAL without losing the connection.
func TestRealClients(t *testing.T) {
	ts := startServer(t, map[string]device.Device{"v": mem.New(64 << 20)})
	nbdinfo := ftu.RequireTool(t, "nbdinfo")
	out, err := exec.Command(nbdinfo, "--json", ts.uri("v")).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo: %v\n%s", err, out)
	}
	for _, want := range []string{`"export-size": 67108864`, `"can_flush": true`, `"can_fua": true`, `"can_trim": true`,
		`"can_zero": true`, `"can_multi_conn": true`, `"base:allocation"`, `"structured": true`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("nbdinfo output lacks %s:\n%s", want, out)
		}
	}
	qemuIO := ftu.RequireTool(t, "qemu-io")
	out, err = exec.Command(qemuIO, "-f", "raw", "-c", "write -P 0x33 1M 3M", "-c", "read -P 0x33 1M 3M",
		"-c", "discard 2M 1M", "-c", "read -P 0 2M 1M", "-c", "write -z 3M 64k", "-c", "read -P 0 3M 64k", ts.uri("v")).CombinedOutput()
	if err != nil || strings.Contains(string(out), "fail") {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	script := `
h.set_strict_mode(0)
for off, n in [(64*1024*1024, 512), (64*1024*1024-512, 1024), (2**62, 4096)]:
    try:
        h.pread(n, off)
        raise SystemExit("out-of-range read at %d succeeded" % off)
    except nbd.Error as e:
        assert e.errnum == errno.EINVAL, e
try:
    h.pwrite(b"x" * 1024, 64*1024*1024 - 512)
    raise SystemExit("out-of-range write succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
h.pwrite(b"y" * 4096, 0, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 0) == b"y" * 4096
print("ok")
`
	cmd := ftu.Nbdsh(t, "-u", ts.uri("v"), "-c", "import errno", "-c", script)
	out, err = cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok") {
		t.Fatalf("nbdsh bad-input script: %v\n%s", err, out)
	}
}

// denyingExports refuses one export to every client, as a volume's access
// rules refuse a client they do not admit.
type denyingExports struct {
	volume.Exports
	denied string
}

func (e denyingExports) List(ctx context.Context, c volume.Client) ([]string, error) {
	names, err := e.Exports.List(ctx, c)
	return slices.DeleteFunc(names, func(n string) bool { return n == e.denied }), err
}

func (e denyingExports) Attach(ctx context.Context, name string, c volume.Client) (*volume.Attachment, error) {
	if c.Protocol != volume.ProtoNBD || !strings.HasPrefix(c.Remote, "127.0.0.1:") {
		return nil, fmt.Errorf("client %+v not described as an NBD client: %w", c, volume.ErrInvalid)
	}
	if name == e.denied {
		return nil, fmt.Errorf("attach %q: %w", name, volume.ErrDenied)
	}
	return e.Exports.Attach(ctx, name, c)
}

// An export the volume's rules refuse answers GO and INFO with
// NBD_REP_ERR_POLICY, is left out of LIST, and EXPORT_NAME closes.
func TestAccessDenied(t *testing.T) {
	exp := denyingExports{volume.NewStaticExports(map[string]device.Device{"a": mem.New(4096), "secret": mem.New(4096)}), "secret"}
	srv := NewServer(exp, Config{ThreadPerConn: threadPerConn})
	l := ftu.Listen(t)
	go srv.Serve(context.Background(), l)
	defer srv.Shutdown(context.Background())

	rc := dialRaw(t, l.Addr().String())
	if typ, p := rc.option(optList, nil); len(typ) != 2 || string(p[0][4:]) != "a" {
		t.Errorf("LIST shows a refused export: %v %q", typ, p)
	}
	for _, opt := range []uint32{optInfo, optGo} {
		typ, p := rc.option(opt, goData("secret"))
		if len(typ) != 1 || typ[0] != repErrPolicy || !strings.Contains(string(p[0]), "access denied") {
			t.Errorf("option %d for a refused export: %#x %q", opt, typ, p)
		}
	}
	if typ, _ := rc.option(optGo, goData("a")); typ[len(typ)-1] != repAck {
		t.Errorf("GO of an allowed export after a refusal: %v", typ)
	}
	rc = dialRaw(t, l.Addr().String())
	rc.write(append(append(binary64(magicOption), binary32(optExportName, 6)...), "secret"...))
	if !rc.closed() {
		t.Error("EXPORT_NAME of a refused export left the connection open")
	}
}
