package iscsi

import (
	"bytes"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
)

// Commands in flight with recycled buffers and tasks and kept workers:
// writes of many sizes and patterns, 16 at a time (each in a region of its
// own, so their order does not matter), and writes through R2T; every
// block then reads back as written, and once the initiator hangs up the
// connection's workers are gone.
func TestCommandsInFlightKeepTheirData(t *testing.T) {
	const size, slots = 64 << 20, 16
	ts := startServer(t, Config{}, map[string]device.Device{"v": mem.New(size)})
	before := runtime.NumGoroutine()
	bi := &benchInitiator{b: t, data: make([]byte, 1<<20), out: make([]byte, 0, bhsLen+1<<20)}
	bi.login(ts.addr)
	want := make([]byte, size)
	rng := rand.New(rand.NewPCG(3, 4))
	fill := func(n int) {
		for i := range bi.data[:n] {
			bi.data[i] = byte(rng.Uint32())
		}
	}
	for range 40 {
		for slot := range slots {
			n := (1 + rng.IntN(64)) * 4096 // up to 256 KiB: immediate data
			off := slot*(size/slots) + rng.IntN((size/slots-n)/blockSize)*blockSize
			fill(n)
			copy(want[off:], bi.data[:n])
			bi.send(true, uint32(off/blockSize), n)
		}
		for range slots {
			bi.recv()
		}
	}
	for range 8 { // 1 MiB: immediate data, then Data-Out after R2Ts
		off := rng.IntN((size-1<<20)/blockSize) * blockSize
		fill(1 << 20)
		copy(want[off:], bi.data)
		bi.send(true, uint32(off/blockSize), 1<<20)
		bi.recv()
	}
	for off := 0; off < size; off += 1 << 20 {
		clear(bi.data)
		bi.send(false, uint32(off/blockSize), 1<<20)
		bi.recv()
		if !bytes.Equal(bi.data, want[off:off+1<<20]) {
			t.Fatalf("MiB at %d differs from what was written", off)
		}
	}
	bi.nc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines after the connection ended, %d before it:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}
