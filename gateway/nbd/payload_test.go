package nbd

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
)

// Large payloads and replies: payloads that arrive in pieces, part in the
// buffered reader and part still in the socket, waits in the poller
// between pieces, sizes on both sides of largeReply (from which replies
// bypass the buffered writer), pipelined, all read back, once in a reply
// larger than the socket's buffers.
func TestLargePayloadsArriveInPieces(t *testing.T) {
	ts := startServer(t, map[string]device.Device{"v": mem.New(16 << 20)})
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
func TestShutdownInTheMiddleOfALargePayload(t *testing.T) {
	dev := mem.New(4 << 20)
	ts := startServer(t, map[string]device.Device{"v": dev})
	rc := dialRaw(t, ts.addr)
	rc.attach("v", true)
	if r := rc.do(cmdWrite, 0, 0, 4096, pattern(4096, 9)); r.errno != 0 {
		t.Fatal(r)
	}
	rc.send(cmdWrite, 0, 7, 1<<20, 2<<20, pattern(1<<20, 1)) // half of it
	time.Sleep(100 * time.Millisecond)                       // the server waits for the rest
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with a payload half sent: %v after %v", err, time.Since(start))
	}
	if !rc.closed() {
		t.Fatal("connection open after Shutdown")
	}
	got := make([]byte, 2<<20)
	if err := dev.ReadAt(context.Background(), got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, 2<<20)) {
		t.Fatal("a write whose payload never arrived in full was applied")
	}
}
