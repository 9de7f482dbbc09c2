package nbd

import (
	"bytes"
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
)

// stallDevice blocks reads at offset 0 (writes, if writes is set) until
// release is closed, telling started when one begins.
type stallDevice struct {
	device.Device
	started chan struct{}
	release chan struct{}
	writes  bool
}

func (d stallDevice) stall(write bool, off int64) {
	if off == 0 && write == d.writes {
		d.started <- struct{}{}
		<-d.release
	}
}

func (d stallDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.stall(false, off)
	return d.Device.ReadAt(ctx, p, off)
}

func (d stallDevice) WriteAt(ctx context.Context, p []byte, off int64) error {
	d.stall(true, off)
	return d.Device.WriteAt(ctx, p, off)
}

// stallServer serves a stallDevice with the given number of workers and
// returns it with a client attached without structured replies.
func stallServer(t *testing.T, workers int) (stallDevice, *testServer, *rawClient) {
	t.Helper()
	dev := stallDevice{mem.New(1 << 20), make(chan struct{}, 1), make(chan struct{}), false}
	ts := startServerConfig(t, map[string]device.Device{"v": dev}, Config{Workers: workers})
	rc := dialRaw(t, ts.addr)
	rc.attach("v", false)
	return dev, ts, rc
}

// stalledServer serves dev with the given number of workers and an inline
// budget of an hour (the watchdog never passes the turn on), and returns it
// with a client attached without structured replies and a func that ends
// every stall. That func is also a cleanup registered after the server's,
// so it runs first: a failure ends the stalled request and the server can
// stop.
func stalledServer(t *testing.T, dev stallDevice, workers int) (*testServer, *rawClient, func()) {
	t.Helper()
	ts := startServerConfig(t, map[string]device.Device{"v": dev}, Config{Workers: workers, InlineBudget: time.Hour})
	release := sync.OnceFunc(func() { close(dev.release) })
	t.Cleanup(release)
	rc := dialRaw(t, ts.addr)
	rc.attach("v", false)
	return ts, rc, release
}

// TestSlowInlineRequestHandsOffTheTurn: a request that the reading worker
// executes inline (nothing else was buffered) and that then stalls must
// not hold up a request sent after it: the inline watchdog passes the
// reading turn on, so the second request is answered first.
func TestSlowInlineRequestHandsOffTheTurn(t *testing.T) {
	for _, workers := range []int{2, 16} {
		dev, ts, rc := stallServer(t, workers)
		for round := range 3 {
			rc.send(cmdRead, 0, 1, 0, 4096, nil)
			<-dev.started // executing now, with no other request buffered
			rc.send(cmdRead, 0, 2, 4096, 4096, nil)
			if r := rc.recv(4096); r.handle != 2 || r.errno != 0 {
				t.Fatalf("workers %d round %d: first reply %v, want handle 2 while handle 1 stalls", workers, round, r)
			}
			dev.release <- struct{}{}
			if r := rc.recv(4096); r.handle != 1 || r.errno != 0 {
				t.Fatalf("workers %d round %d: second reply %v, want handle 1", workers, round, r)
			}
		}
		close(dev.release)
		ts.stop(t)
	}
}

// TestSlowBatchHandsOffTheTurn: a batch of small requests runs keeping
// the reading turn; when one of them stalls, a request sent after the
// batch is still read and answered (the watchdog passes the turn on, and
// the rest of the batch runs concurrently).
func TestSlowBatchHandsOffTheTurn(t *testing.T) {
	for _, workers := range []int{2, 16} {
		dev, ts, rc := stallServer(t, workers)
		for round := range 3 {
			// Four reads in one write: read as one batch, the first of
			// which stalls.
			var msg []byte
			for i := range 4 {
				msg = append(msg, encodeRequest(request{typ: cmdRead, handle: uint64(10 + i), offset: uint64(i) * 4096, length: 4096})...)
			}
			rc.write(msg)
			<-dev.started
			rc.send(cmdRead, 0, 99, 64<<10, 4096, nil)
			seen := map[uint64]bool{}
			for !seen[99] {
				r := rc.recv(4096)
				if r.errno != 0 || r.handle == 10 {
					t.Fatalf("workers %d round %d: reply %v while handle 10 stalls", workers, round, r)
				}
				seen[r.handle] = true
			}
			dev.release <- struct{}{}
			for len(seen) < 5 {
				r := rc.recv(4096)
				if r.errno != 0 || seen[r.handle] {
					t.Fatalf("workers %d round %d: reply %v", workers, round, r)
				}
				seen[r.handle] = true
			}
		}
		close(dev.release)
		ts.stop(t)
	}
}

// TestLargeWritePassesTheTurnWhenMoreWaits: a large write with another
// request waiting behind it in the socket passes the reading turn on
// before it runs, as nbdkit's threads do, so the next payload is read
// while this one is written. The next header is read alone after a large
// payload (so that a large payload goes straight into its own buffer), so
// the reader must ask the socket, not its buffer, whether more waits. With
// an inline budget of an hour the watchdog cannot be what hands the turn
// on.
func TestLargeWritePassesTheTurnWhenMoreWaits(t *testing.T) {
	for _, workers := range []int{2, 16} {
		dev := stallDevice{mem.New(1 << 20), make(chan struct{}, 1), make(chan struct{}), true}
		ts, rc, release := stalledServer(t, dev, workers)
		for round := range 3 {
			// One write(2) holding both requests: the large payload's last
			// bytes and the next header arrive together. The payload is
			// larger than the reader's buffer, so its end is read straight
			// into its own buffer and the next header stays in the socket.
			payload := make([]byte, 2*ioBufferSize)
			msg := encodeRequest(request{typ: cmdWrite, handle: 1, length: uint32(len(payload))})
			msg = append(msg, payload...)
			msg = append(msg, encodeRequest(request{typ: cmdRead, handle: 2, offset: 768 << 10, length: 4096})...)
			rc.write(msg)
			<-dev.started
			if r := rc.recv(4096); r.handle != 2 || r.errno != 0 {
				t.Fatalf("workers %d round %d: first reply %v, want handle 2 while the large write stalls", workers, round, r)
			}
			dev.release <- struct{}{}
			if r := rc.recv(0); r.handle != 1 || r.errno != 0 {
				t.Fatalf("workers %d round %d: second reply %v, want handle 1", workers, round, r)
			}
		}
		release()
		ts.stop(t)
	}
}

// TestLargeReadsRunOnExecutors: a read of dispatchedRead bytes is handed to
// an executor, so the reader goes on at once: with an inline budget of an
// hour (the watchdog cannot pass the turn), a small read sent while the
// large one stalls is answered first. More large reads than a connection
// has executors queue for them and are all answered, with their data; and
// a shutdown while one stalls still answers it.
func TestLargeReadsRunOnExecutors(t *testing.T) {
	for _, workers := range []int{2, 16} {
		dev := stallDevice{mem.New(4 << 20), make(chan struct{}, 1), make(chan struct{}), false}
		want := pattern(4<<20, 3)
		if err := dev.Device.WriteAt(context.Background(), want, 0); err != nil {
			t.Fatal(err)
		}
		ts, rc, release := stalledServer(t, dev, workers)
		for round := range 3 {
			rc.send(cmdRead, 0, 1, 0, dispatchedRead, nil)
			<-dev.started
			rc.send(cmdRead, 0, 2, 4096, 4096, nil)
			if r := rc.recv(4096); r.handle != 2 || r.errno != 0 {
				t.Fatalf("workers %d round %d: first reply %v, want handle 2 while the large read stalls", workers, round, r)
			}
			dev.release <- struct{}{}
			if r := rc.recv(dispatchedRead); r.handle != 1 || r.errno != 0 || !bytes.Equal(r.data, want[:dispatchedRead]) {
				t.Fatalf("workers %d round %d: second reply handle %d errno %d, want handle 1 with the data", workers, round, r.handle, r.errno)
			}
		}
		// Twice as many large reads as executors at most, none stalling.
		n := 2 * ts.srv.executors
		for i := range n {
			off := 4096 + uint64(i%3)<<20
			rc.send(cmdRead, 0, uint64(100+i), off, dispatchedRead, nil)
		}
		for range n {
			r := rc.recv(dispatchedRead)
			off := 4096 + (int(r.handle)-100)%3<<20
			if r.errno != 0 || r.handle < 100 || r.handle >= uint64(100+n) || !bytes.Equal(r.data, want[off:off+dispatchedRead]) {
				t.Fatalf("workers %d: reply handle %d errno %d, or wrong data", workers, r.handle, r.errno)
			}
		}
		rc.send(cmdRead, 0, 7, 0, dispatchedRead, nil)
		<-dev.started
		stopped := make(chan struct{})
		go func() {
			defer close(stopped)
			ts.stop(t)
		}()
		time.Sleep(50 * time.Millisecond)
		release()
		if r := rc.recv(dispatchedRead); r.handle != 7 || r.errno != 0 || !bytes.Equal(r.data, want[:dispatchedRead]) {
			t.Fatalf("workers %d: reply during shutdown handle %d errno %d, want handle 7 with the data", workers, r.handle, r.errno)
		}
		<-stopped
		if !rc.closed() {
			t.Fatalf("workers %d: connection open after shutdown", workers)
		}
	}
}

// blockDevice blocks every read until release is closed, telling started
// when each begins.
type blockDevice struct {
	device.Device
	started chan struct{}
	release chan struct{}
}

func (d blockDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.started <- struct{}{}
	<-d.release
	return d.Device.ReadAt(ctx, p, off)
}

// TestReadsThatWaitForTheDiskGetMoreExecutors: once a dispatched read has
// taken longer than slowRead (it waited for the disk), reads that find every
// executor busy start extra executors, up to Workers, so that as many reads
// wait for the disk at once as the client sent; without the slow read they
// queue for the first executors.
func TestReadsThatWaitForTheDiskGetMoreExecutors(t *testing.T) {
	const workers = 16
	dev := blockDevice{mem.New(16 << 20), make(chan struct{}, workers), make(chan struct{})}
	ts := startServerConfig(t, map[string]device.Device{"v": dev}, Config{Workers: workers})
	release := sync.OnceFunc(func() { close(dev.release) })
	t.Cleanup(release)
	rc := dialRaw(t, ts.addr)
	rc.attach("v", false)
	base := ts.srv.executors
	if base >= workers {
		t.Skipf("%d executors already (GOMAXPROCS %d)", base, runtime.GOMAXPROCS(0))
	}
	// One slow read first.
	rc.send(cmdRead, 0, 1, 0, dispatchedRead, nil)
	<-dev.started
	time.Sleep(2 * slowRead)
	dev.release <- struct{}{}
	if r := rc.recv(dispatchedRead); r.handle != 1 || r.errno != 0 {
		t.Fatalf("reply %v, want handle 1", r)
	}
	n := base + 2
	for i := range n {
		rc.send(cmdRead, 0, uint64(10+i), uint64(i%15)<<20, dispatchedRead, nil)
	}
	for i := range n {
		select {
		case <-dev.started:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d reads started; the rest wait for %d busy executors", i, n, base)
		}
	}
	release()
	for range n {
		if r := rc.recv(dispatchedRead); r.errno != 0 {
			t.Fatalf("reply %v", r)
		}
	}
	ts.stop(t)
}
