package nbdclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
	"github.com/ferry-io/ferry/gateway/nbd"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/testutil"
)

// startServer runs Ferry's own NBD frontend over devs on loopback.
func startServer(t *testing.T, devs map[string]device.Device) string {
	t.Helper()
	srv := nbd.NewServer(volume.NewStaticExports(devs), nbd.Config{Registerer: prometheus.NewRegistry(), HandshakeTimeout: 5 * time.Second})
	l := testutil.Listen(t)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	return l.Addr().String()
}

// proxy forwards TCP connections to a target that can change, and can cut
// every connection: a gateway restart as the client sees it.
type proxy struct {
	l      net.Listener
	mu     sync.Mutex
	target string
	conns  []net.Conn
	down   bool
}

func newProxy(t *testing.T, target string) *proxy {
	p := &proxy{l: testutil.Listen(t), target: target}
	go func() {
		for {
			c, err := p.l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			target, down := p.target, p.down
			p.mu.Unlock()
			if down {
				c.Close()
				continue
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { io.Copy(s, c); s.Close() }()
			go func() { io.Copy(c, s); c.Close() }()
		}
	}()
	t.Cleanup(func() { p.cut() })
	return p
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) set(target string, down bool) {
	p.mu.Lock()
	p.target, p.down = target, down
	p.mu.Unlock()
}

func (p *proxy) url(export string) string { return "nbd://" + p.l.Addr().String() + "/" + export }

func pattern(n int, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(seed*31 + i*7)
	}
	return b
}

func TestReadWriteFlushTrim(t *testing.T) {
	ctx := context.Background()
	dev := mem.New(64 << 20)
	addr := startServer(t, map[string]device.Device{"v": dev})
	c, err := Dial(ctx, "nbd://"+addr+"/v", Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Size() != 64<<20 {
		t.Fatalf("size %d", c.Size())
	}
	// Unaligned, and larger than one request.
	want := pattern(MaxRequest+12345, 1)
	if err := c.WriteAt(ctx, want, 777); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if err := c.ReadAt(ctx, got, 777); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read back differs")
	}
	// The server saw the flush: a crash keeps the data.
	crashed := dev.Crash()
	if err := crashed.ReadAt(ctx, got, 777); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("flushed data not durable on the server: %v", err)
	}
	if err := c.WriteZeroes(ctx, 777, 4096); err != nil {
		t.Fatal(err)
	}
	if err := c.ReadAt(ctx, got[:4096], 777); err != nil || !bytes.Equal(got[:4096], make([]byte, 4096)) {
		t.Fatalf("zeroes: %v", err)
	}
	if err := c.Trim(ctx, 1<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	// Past the end: the server's errno, not a hang.
	var e Errno
	if err := c.ReadAt(ctx, got[:10], c.Size()-5); !errors.As(err, &e) {
		t.Fatalf("read past end: %v, want an Errno", err)
	}
}

func TestUnknownExportRefused(t *testing.T) {
	addr := startServer(t, map[string]device.Device{"v": mem.New(1 << 20)})
	_, err := Dial(context.Background(), "nbd://"+addr+"/nope", Config{})
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("got %v, want ErrRefused", err)
	}
}

// Many writers and readers in flight while the connection is cut again
// and again: nothing fails, everything written reads back.
func TestReconnectUnderLoad(t *testing.T) {
	ctx := context.Background()
	addr := startServer(t, map[string]device.Device{"v": mem.New(32 << 20)})
	p := newProxy(t, addr)
	c, err := Dial(ctx, p.url("v"), Config{MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stop := make(chan struct{})
	cutterDone := make(chan struct{})
	go func() {
		defer close(cutterDone)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				p.cut()
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				off := int64(w)*(4<<20) + int64(i)*(64<<10)
				data := pattern(64<<10, w*1000+i)
				if err := c.WriteAt(ctx, data, off); err != nil {
					errs <- fmt.Errorf("write %d/%d: %w", w, i, err)
					return
				}
				got := make([]byte, len(data))
				if err := c.ReadAt(ctx, got, off); err != nil {
					errs <- fmt.Errorf("read %d/%d: %w", w, i, err)
					return
				}
				if !bytes.Equal(got, data) {
					errs <- fmt.Errorf("block %d/%d differs", w, i)
					return
				}
				if i%10 == 0 {
					if err := c.Flush(ctx); err != nil {
						errs <- fmt.Errorf("flush: %w", err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-cutterDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if c.Reconnects() == 0 {
		t.Error("no reconnect happened: the test cut nothing")
	}
}

// The server "restarts" having lost writes it acknowledged but never
// flushed: the client replays them, so the next flush covers them. The
// caller reuses its buffers as soon as WriteAt returns (go-fuse does), so
// what is replayed must be the client's copy, whether the write was sent
// from the caller's buffer (a ctx that cannot be cancelled) or from a copy.
func TestReplayAfterServerLostUnflushedWrites(t *testing.T) {
	cctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for name, ctx := range map[string]context.Context{"not cancellable": context.Background(), "cancellable": cctx} {
		t.Run(name, func(t *testing.T) { testReplay(ctx, t) })
	}
}

func testReplay(ctx context.Context, t *testing.T) {
	dev := mem.New(8 << 20)
	p := newProxy(t, startServer(t, map[string]device.Device{"v": dev}))
	c, err := Dial(ctx, p.url("v"), Config{MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	flushed, unflushed := pattern(8192, 1), pattern(3<<20, 2) // more than one request
	if err := c.WriteAt(ctx, flushed, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	buf := bytes.Clone(unflushed)
	if err := c.WriteAt(ctx, buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	copy(buf, pattern(len(buf), 9)) // the caller's buffer, reused
	// Crash: the new server has only what was flushed.
	crashed := dev.Crash()
	got := make([]byte, len(unflushed))
	crashed.ReadAt(ctx, got, 1<<20)
	if bytes.Equal(got, unflushed) {
		t.Fatal("test broken: the crash kept an unflushed write")
	}
	p.set(startServer(t, map[string]device.Device{"v": crashed}), false)
	p.cut()
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		off  int64
		want []byte
	}{{0, flushed}, {1 << 20, unflushed}} {
		got := make([]byte, len(tc.want))
		if err := crashed.ReadAt(ctx, got, tc.off); err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("at %d: the restarted server lacks an acknowledged write (%v)", tc.off, err)
		}
	}
	// And it is durable there now.
	again := crashed.Crash()
	if err := again.ReadAt(ctx, got, 1<<20); err != nil || !bytes.Equal(got, unflushed) {
		t.Error("replayed write not flushed")
	}
}

// countFlushes counts the flushes a device is asked for.
type countFlushes struct {
	device.Device
	n       sync.Mutex
	flushes int
}

func (d *countFlushes) Flush(ctx context.Context) error {
	d.n.Lock()
	d.flushes++
	d.n.Unlock()
	return d.Device.Flush(ctx)
}

// With NoReplay the client keeps no acknowledged write and so never
// flushes on its own; after a reconnect to a server that kept its writes
// (held by the kernel) everything reads back.
func TestNoReplayKeepsNothing(t *testing.T) {
	ctx := context.Background()
	dev := &countFlushes{Device: mem.New(8 << 20)}
	p := newProxy(t, startServer(t, map[string]device.Device{"v": dev}))
	c, err := Dial(ctx, p.url("v"), Config{MaxBackoff: 50 * time.Millisecond, ReplayLimit: 1 << 20, NoReplay: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := pattern(3<<20, 4)
	if err := c.WriteAt(ctx, data, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAt(t.Context(), data[:1<<20], 5<<20); err != nil { // a cancellable ctx: copied first
		t.Fatal(err)
	}
	c.mu.Lock()
	kept, n := len(c.replay), c.replayN
	c.mu.Unlock()
	dev.n.Lock()
	flushes := dev.flushes
	dev.n.Unlock()
	if kept != 0 || n != 0 || flushes != 0 {
		t.Fatalf("NoReplay kept %d writes (%d bytes) and flushed %d times", kept, n, flushes)
	}
	p.cut()
	got := make([]byte, len(data))
	if err := c.ReadAt(ctx, got, 1<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after a reconnect: %v, equal %v", err, bytes.Equal(got, data))
	}
}

// While the server is away, I/O waits; it completes once it is back.
func TestStallWhileServerDown(t *testing.T) {
	ctx := context.Background()
	addr := startServer(t, map[string]device.Device{"v": mem.New(1 << 20)})
	p := newProxy(t, addr)
	c, err := Dial(ctx, p.url("v"), Config{MaxBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p.set(addr, true)
	p.cut()
	done := make(chan error, 1)
	go func() { done <- c.WriteAt(ctx, pattern(4096, 3), 0) }()
	select {
	case err := <-done:
		t.Fatalf("write finished while the server was down: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	p.set(addr, false)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Close fails nothing that completed and returns.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAt(ctx, []byte{1}, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

// Close with requests in flight returns, and so does every request.
func TestCloseWithRequestsInFlight(t *testing.T) {
	ctx := context.Background()
	addr := startServer(t, map[string]device.Device{"v": mem.New(16 << 20)})
	for round := 0; round < 20; round++ {
		c, err := Dial(ctx, "nbd://"+addr+"/v", Config{})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := 0; i < 16; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 256<<10)
				for j := 0; j < 20; j++ {
					if err := c.ReadAt(ctx, buf, int64(i)<<20); err != nil {
						if !errors.Is(err, ErrClosed) {
							t.Errorf("read: %v", err)
						}
						return
					}
				}
			}()
		}
		time.Sleep(time.Duration(round) * time.Millisecond)
		closed := make(chan struct{})
		go func() { c.Close(); wg.Wait(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatal("Close or a request hung")
		}
	}
}
