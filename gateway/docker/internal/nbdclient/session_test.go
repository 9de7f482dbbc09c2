package nbdclient

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
)

func sessionConns(c *Client) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil {
		return 0
	}
	return len(c.sess.conns)
}

// Ferry's server allows multi-conn: writes spread over the session's
// connections, and one flush on one of them makes them all durable.
func TestMultiConnFlushCoversAllConnections(t *testing.T) {
	ctx := context.Background()
	dev := mem.New(16 << 20)
	c, err := Dial(ctx, "nbd://"+startServer(t, map[string]device.Device{"v": dev})+"/v", Config{Conns: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := sessionConns(c); n != 3 {
		t.Fatalf("%d connections, want 3", n)
	}
	var wg sync.WaitGroup
	for w := 0; w < 12; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.WriteAt(ctx, pattern(64<<10, w), int64(w)<<20); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	crashed := dev.Crash()
	got := make([]byte, 64<<10)
	for w := 0; w < 12; w++ {
		if err := crashed.ReadAt(ctx, got, int64(w)<<20); err != nil || !bytes.Equal(got, pattern(64<<10, w)) {
			t.Errorf("block %d not durable after the flush (%v)", w, err)
		}
	}
}

// One connection of a session failing replaces the whole session: I/O
// goes on, nothing fails, and everything written reads back.
func TestOneConnectionOfSessionFails(t *testing.T) {
	ctx := context.Background()
	addr := startServer(t, map[string]device.Device{"v": mem.New(16 << 20)})
	c, err := Dial(ctx, "nbd://"+addr+"/v", Config{Conns: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 8; i++ {
		if err := c.WriteAt(ctx, pattern(8192, i), int64(i)*8192); err != nil {
			t.Fatal(err)
		}
	}
	c.mu.Lock()
	c.sess.conns[2].nc.Close()
	c.mu.Unlock()
	for i := 8; i < 16; i++ {
		if err := c.WriteAt(ctx, pattern(8192, i), int64(i)*8192); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, 8192)
	for i := 0; i < 16; i++ {
		if err := c.ReadAt(ctx, got, int64(i)*8192); err != nil || !bytes.Equal(got, pattern(8192, i)) {
			t.Fatalf("block %d: %v", i, err)
		}
	}
	if c.Reconnects() != 1 {
		t.Errorf("%d reconnects, want 1", c.Reconnects())
	}
	if n := sessionConns(c); n != 4 {
		t.Errorf("%d connections after the reconnect, want 4", n)
	}
}

// Past ReplayLimit the client flushes on its own, so a writer that never
// flushes leaves at most about twice the limit undurable.
func TestReplayLimitFlushesOnItsOwn(t *testing.T) {
	ctx := context.Background()
	dev := mem.New(4 << 20)
	const limit = 64 << 10
	c, err := Dial(ctx, "nbd://"+startServer(t, map[string]device.Device{"v": dev})+"/v", Config{ReplayLimit: limit})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const total, bs = 2 << 20, 4096
	for off := 0; off < total; off += bs {
		if err := c.WriteAt(ctx, pattern(bs, off/bs), int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	c.mu.Lock()
	held := c.replayN
	c.mu.Unlock()
	if held > 2*limit+bs {
		t.Errorf("%d bytes held for replay, over twice the limit", held)
	}
	// Everything but the newest 2×limit+bs bytes is durable.
	crashed := dev.Crash()
	got := make([]byte, bs)
	for off := 0; off < total-(2*limit+bs); off += bs {
		if err := crashed.ReadAt(ctx, got, int64(off)); err != nil || !bytes.Equal(got, pattern(bs, off/bs)) {
			t.Fatalf("write at %d not durable without a flush of the caller's: %v", off, err)
		}
	}
}

// A read with a ctx that can be cancelled goes through a buffer of the
// client's; one that cannot lands in the caller's buffer. Both read right.
func TestReadWithAndWithoutCancel(t *testing.T) {
	ctx := context.Background()
	c, err := Dial(ctx, "nbd://"+startServer(t, map[string]device.Device{"v": mem.New(4 << 20)})+"/v", Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := pattern(3<<20+5, 7)
	if err := c.WriteAt(ctx, want, 11); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for name, rctx := range map[string]context.Context{"cancellable": cctx, "not cancellable": context.WithoutCancel(cctx)} {
		got := make([]byte, len(want))
		if err := c.ReadAt(rctx, got, 11); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: read back differs (%v)", name, err)
		}
	}
}
