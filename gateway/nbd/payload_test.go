package nbd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/local"
	"github.com/ferry-io/ferry/backends/mem"
	"github.com/ferry-io/ferry/internal/splicepipe"
)

// Large payloads and replies: payloads that arrive in pieces, part in the
// buffered reader and part still in the socket, waits in the poller
// between pieces, sizes on both sides of largeReply (from which replies
// bypass the buffered writer), pipelined, all read back, once in a reply
// larger than the socket's buffers.
//
// Devices: one without device.PipeWriter (payloads in buffers), one with
// it and Config.SpliceWrites (payloads up to splicepipe.Capacity spliced
// from the socket into a pipe and from there into the file), the same
// with one-page pipes, which run out of slots (the payload then goes to a
// buffer after all), and one with it but SpliceWrites off (Config's zero
// value: buffers only).
func TestLargePayloadsArriveInPieces(t *testing.T) {
	t.Run("buffer", func(t *testing.T) {
		largePayloadsArriveInPieces(t, mem.New(16<<20), true)
	})
	t.Run("pipe", func(t *testing.T) {
		d := newPipeDevice(t, 16<<20)
		largePayloadsArriveInPieces(t, d, true)
		if d.piped.Load() == 0 {
			t.Fatal("no payload went through a pipe")
		}
	})
	t.Run("pipe-full", func(t *testing.T) {
		defer splicepipe.SetSizeForTest(4096)()
		largePayloadsArriveInPieces(t, newPipeDevice(t, 16<<20), true)
	})
	t.Run("pipe-device-splice-off", func(t *testing.T) {
		d := newPipeDevice(t, 16<<20)
		largePayloadsArriveInPieces(t, d, false)
		if n := d.piped.Load(); n != 0 {
			t.Fatalf("%d payloads went through a pipe with SpliceWrites off", n)
		}
	})
}

// pipeDevice is a local device that counts the writes it took from a pipe.
type pipeDevice struct {
	*local.Device
	piped atomic.Int64
	fail  atomic.Bool // take half the pipe, then fail with EIO
	crash atomic.Bool // take half the pipe, then panic
	// delay makes each write from a pipe take that long; running and
	// overlap count the writes from pipes under way at once, and the most
	// there were.
	delay            time.Duration
	running, overlap atomic.Int32
}

func newPipeDevice(t *testing.T, size int64) *pipeDevice {
	d, err := local.Create(filepath.Join(t.TempDir(), "v.img"), size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return &pipeDevice{Device: d}
}

func (d *pipeDevice) WriteFromPipe(ctx context.Context, src device.Pipe, off int64, n int) error {
	d.piped.Add(1)
	now := d.running.Add(1)
	defer d.running.Add(-1)
	for {
		m := d.overlap.Load()
		if now <= m || d.overlap.CompareAndSwap(m, now) {
			break
		}
	}
	time.Sleep(d.delay)
	if d.crash.Load() {
		io.CopyN(io.Discard, src, int64(n/2))
		panic("injected")
	}
	if d.fail.Load() {
		io.CopyN(io.Discard, src, int64(n/2))
		return fmt.Errorf("injected: %w", syscall.EIO)
	}
	return d.Device.WriteFromPipe(ctx, src, off, n)
}

// Requests whose payload went into a pipe and that then fail (out of
// range, a FUA write's flush, the device's own error halfway through the
// pipe) are answered with their errno, and the stream stays in step: the
// next request is served.
func TestPipeWriteErrors(t *testing.T) {
	d := newPipeDevice(t, 4<<20)
	ts := startServerConfig(t, map[string]device.Device{"v": d}, Config{SpliceWrites: true})
	rc := dialRaw(t, ts.addr)
	rc.attach("v", true)
	data := pattern(1<<20, 5)
	if r := rc.do(cmdWrite, cmdFlagFUA, 1<<20, 1<<20, data); r.errno != 0 {
		t.Fatalf("FUA write through a pipe: %v", r)
	}
	if r := rc.do(cmdWrite, 0, 4<<20-4096, 1<<20, data); r.errno != errInval {
		t.Fatalf("write past the end through a pipe: %v, want EINVAL", r)
	}
	d.fail.Store(true)
	if r := rc.do(cmdWrite, 0, 0, 1<<20, pattern(1<<20, 6)); r.errno != errIO {
		t.Fatalf("write failing halfway through the pipe: %v, want EIO", r)
	}
	d.fail.Store(false)
	d.crash.Store(true)
	if r := rc.do(cmdWrite, 0, 0, 1<<20, pattern(1<<20, 7)); r.errno != errIO {
		t.Fatalf("write whose device panics halfway through the pipe: %v, want EIO", r)
	}
	d.crash.Store(false)
	if r := rc.do(cmdRead, 0, 1<<20, 1<<20, nil); r.errno != 0 || !bytes.Equal(r.data, data) {
		t.Fatalf("read after the failures: %v, equal %v", r, bytes.Equal(r.data, data))
	}
	if n := d.piped.Load(); n != 3 {
		t.Fatalf("%d writes went through a pipe, want 3 (the out-of-range one is refused before)", n)
	}
}

// A spliced payload is written into the device before the next request
// is read (conn.writeNow), so pipelined large writes to a fast device are
// written one at a time, by the holder of the reading turn. Once one takes
// longer than slowWrite, the writes after it are written after the turn
// is passed on, and overlap. Either way every byte lands.
func TestSplicedWritesBeforeTheTurnPasses(t *testing.T) {
	// Fast: no write counts as slow, however loaded the machine. Slow:
	// every write takes four times what counts as slow.
	for _, tc := range []struct {
		name      string
		delay     time.Duration
		slowWrite time.Duration
		overlap   func(int32) bool
		want      string
	}{
		{"fast", 0, time.Hour, func(n int32) bool { return n == 1 }, "1"},
		{"slow", 4 * slowWrite, slowWrite, func(n int32) bool { return n >= 2 }, "at least 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newPipeDevice(t, 16<<20)
			d.delay = tc.delay
			ts := startServerConfig(t, map[string]device.Device{"v": d}, Config{SpliceWrites: true, slowWrite: tc.slowWrite})
			rc := dialRaw(t, ts.addr)
			rc.attach("v", true)
			const n, size = 8, 1 << 20
			want := make([]byte, n*size)
			var msg []byte
			for i := range n {
				data := pattern(size, byte(i+1))
				copy(want[i*size:], data)
				msg = append(msg, encodeRequest(request{typ: cmdWrite, handle: uint64(i), offset: uint64(i * size), length: size})...)
				msg = append(msg, data...)
			}
			done := make(chan struct{})
			go func() { // the replies, while the requests are still going out
				defer close(done)
				for range n {
					if r := rc.recv(0); r.errno != 0 {
						t.Errorf("write %d: errno %d", r.handle, r.errno)
					}
				}
			}()
			rc.write(msg)
			<-done
			if got := d.piped.Load(); got != n {
				t.Fatalf("%d writes went through a pipe, want %d", got, n)
			}
			if got := d.overlap.Load(); !tc.overlap(got) {
				t.Fatalf("at most %d writes from pipes ran at once, want %s", got, tc.want)
			}
			if r := rc.do(cmdRead, 0, 0, n*size, nil); r.errno != 0 || !bytes.Equal(r.data, want) {
				t.Fatalf("read back: errno %d, equal %v", r.errno, bytes.Equal(r.data, want))
			}
		})
	}
}

func largePayloadsArriveInPieces(t *testing.T, dev device.Device, splice bool) {
	ts := startServerConfig(t, map[string]device.Device{"v": dev}, Config{SpliceWrites: splice})
	rc := dialRaw(t, ts.addr)
	rc.attach("v", true)
	rng := rand.New(rand.NewPCG(3, 4))
	sizes := []int{4096, largeReply - 512, largeReply, largeReply + 512, 1 << 20, 4 << 20}
	want := make([]byte, 16<<20)
	var off uint64
	for round := range 3 {
		var msg []byte
		var handles []uint64
		for i, n := range sizes {
			if off+uint64(n) > uint64(len(want)) {
				off = 0
			}
			data := pattern(n, byte(round*16+i))
			copy(want[off:], data)
			h := uint64(round*100 + i)
			msg = append(msg, encodeRequest(request{typ: cmdWrite, handle: h, offset: off, length: uint32(n)})...)
			msg = append(msg, data...)
			handles = append(handles, h)
			off += uint64(n) + 512 // unaligned offsets too
		}
		// Send it all in pieces of random sizes, pausing now and then so
		// the server finds the socket empty in the middle of a payload.
		for len(msg) > 0 {
			k := min(len(msg), 1+rng.IntN(200<<10))
			rc.write(msg[:k])
			msg = msg[k:]
			if rng.IntN(4) == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		for range handles {
			if r := rc.recv(0); r.errno != 0 {
				t.Fatalf("round %d: write %d failed: %v", round, r.handle, r)
			}
		}
	}
	// One reply larger than the socket's buffers (written in several
	// writev calls, the first one partial), then smaller ones.
	if r := rc.do(cmdRead, 0, 0, uint32(len(want)), nil); r.errno != 0 || !bytes.Equal(r.data, want) {
		t.Fatalf("read back all of it: errno %d, equal %v", r.errno, bytes.Equal(r.data, want))
	}
	for o := 0; o < len(want); o += 3 << 20 {
		n := min(3<<20, len(want)-o)
		r := rc.do(cmdRead, 0, uint64(o), uint32(n), nil)
		if r.errno != 0 || !bytes.Equal(r.data, want[o:o+n]) {
			t.Fatalf("read back at %d: errno %d, equal %v", o, r.errno, bytes.Equal(r.data, want[o:o+n]))
		}
	}
}

// A connection that stops in the middle of a large payload does not hold
// up Shutdown, and the write it never finished sending is not applied.
//
// Twice: a 2 MiB payload going into a buffer, a 1 MiB one into a pipe.
func TestShutdownInTheMiddleOfALargePayload(t *testing.T) {
	t.Run("buffer", func(t *testing.T) { shutdownInTheMiddleOfALargePayload(t, mem.New(4<<20), 2<<20) })
	t.Run("pipe", func(t *testing.T) { shutdownInTheMiddleOfALargePayload(t, newPipeDevice(t, 4<<20), 1<<20) })
}

func shutdownInTheMiddleOfALargePayload(t *testing.T, dev device.Device, size int) {
	ts := startServerConfig(t, map[string]device.Device{"v": dev}, Config{SpliceWrites: true})
	rc := dialRaw(t, ts.addr)
	rc.attach("v", true)
	if r := rc.do(cmdWrite, 0, 0, 4096, pattern(4096, 9)); r.errno != 0 {
		t.Fatal(r)
	}
	rc.send(cmdWrite, 0, 7, 1<<20, uint32(size), pattern(size/2, 1)) // half of it
	time.Sleep(100 * time.Millisecond)                               // the server waits for the rest
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with a payload half sent: %v after %v", err, time.Since(start))
	}
	if !rc.closed() {
		t.Fatal("connection open after Shutdown")
	}
	got := make([]byte, size)
	if err := dev.ReadAt(context.Background(), got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, size)) {
		t.Fatal("a write whose payload never arrived in full was applied")
	}
}
