package nbdclient

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
	"github.com/ferry-io/ferry/internal/testutil"
)

// newPipe returns a non-blocking pipe of size bytes (its write and read
// ends), closed at the end of the test.
func newPipe(t *testing.T, size int) (w, r int) {
	t.Helper()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	if _, err := unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, size); err != nil {
		t.Fatal(err)
	}
	return fds[1], fds[0]
}

// drainPipe reads everything the pipe's read end r holds.
func drainPipe(t *testing.T, r int) []byte {
	t.Helper()
	var out []byte
	b := make([]byte, 64<<10)
	for {
		n, err := unix.Read(r, b)
		if err == unix.EAGAIN || n == 0 {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b[:n]...)
	}
}

func pipeClient(t *testing.T, url string) *Client {
	t.Helper()
	c, err := Dial(context.Background(), url, Config{Conns: 1, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A read's data lands in the pipe, not in the buffer passed along; where
// the pipe cannot take it, or the context can be cancelled, it lands in
// the buffer and the pipe stays empty.
func TestReadToPipe(t *testing.T) {
	ctx := context.Background()
	c := pipeClient(t, "nbd://"+startServer(t, map[string]device.Device{"v": mem.New(8 << 20)})+"/v")
	want := pattern(4<<20, 3)
	if err := c.WriteAt(ctx, want, 0); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{128 << 10, 1 << 20, 1<<20 - 4096 + 17} {
		w, r := newPipe(t, 1<<20)
		buf := bytes.Repeat([]byte{0xAA}, n)
		inPipe, err := c.ReadToPipe(ctx, w, r, buf, 4096+int64(n))
		if err != nil || !inPipe {
			t.Fatalf("%d bytes: inPipe %v, err %v", n, inPipe, err)
		}
		if got := drainPipe(t, r); !bytes.Equal(got, want[4096+n:4096+2*n]) {
			t.Fatalf("%d bytes: the pipe held %d bytes, not the data asked for", n, len(got))
		}
		if !bytes.Equal(buf, bytes.Repeat([]byte{0xAA}, n)) {
			t.Fatalf("%d bytes: the data went through the buffer too", n)
		}
	}

	// A one-page pipe has 1 slot: the reply spills into the buffer.
	w, r := newPipe(t, 4096)
	buf := make([]byte, 1<<20)
	inPipe, err := c.ReadToPipe(ctx, w, r, buf, 12345)
	if err != nil || inPipe {
		t.Fatalf("one-page pipe: inPipe %v, err %v; want the data in the buffer", inPipe, err)
	}
	if !bytes.Equal(buf, want[12345:12345+1<<20]) {
		t.Fatal("spilled read: the buffer does not hold the data")
	}
	if got := drainPipe(t, r); len(got) != 0 {
		t.Fatalf("spilled read left %d bytes in the pipe", len(got))
	}

	// A context that can be cancelled reads into the buffer.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, r = newPipe(t, 1<<20)
	clear(buf)
	if inPipe, err := c.ReadToPipe(cctx, w, r, buf, 0); err != nil || inPipe {
		t.Fatalf("cancellable context: inPipe %v, err %v", inPipe, err)
	}
	if !bytes.Equal(buf, want[:1<<20]) {
		t.Fatal("cancellable context: the buffer does not hold the data")
	}
}

// cutOnceProxy forwards connections to addr; the first carries limit
// bytes back to the client and then breaks.
func cutOnceProxy(t *testing.T, addr string, limit int64) string {
	l := testutil.Listen(t)
	go func() {
		for first := true; ; first = false {
			cn, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				cn.Close()
				continue
			}
			go func() { io.Copy(s, cn); s.Close() }()
			go func(cut bool) {
				if cut {
					io.CopyN(cn, s, limit)
				} else {
					io.Copy(cn, s)
				}
				cn.Close()
				s.Close()
			}(first)
		}
	}()
	return "nbd://" + l.Addr().String() + "/v"
}

// The connection dies partway through a read's data, part of it already
// in the pipe: after the reconnect the resent reply's first bytes are
// skipped and the data is read once, in order: in the pipe, or, should
// the pipe run out of slots (through the proxy, replies arrive in pieces
// of a few KiB), in the buffer with the pipe left empty.
func TestReadToPipeAcrossReconnect(t *testing.T) {
	ctx := context.Background()
	addr := startServer(t, map[string]device.Device{"v": mem.New(8 << 20)})
	want := pattern(2<<20, 9)
	if err := pipeClient(t, "nbd://"+addr+"/v").WriteAt(ctx, want, 0); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		n, cut     int
		wantInPipe bool
	}{
		{512 << 10, 300 << 10, true}, // fits the pipe's slots
		{1 << 20, 600 << 10, false},  // a 1 MiB pipe's slots hold some 970 KiB of such pieces
	} {
		// The handshake is a few hundred bytes: the cut falls in the data.
		c := pipeClient(t, cutOnceProxy(t, addr, int64(tc.cut)))
		w, r := newPipe(t, 1<<20)
		buf := make([]byte, tc.n)
		inPipe, err := c.ReadToPipe(ctx, w, r, buf, 1<<20)
		if err != nil {
			t.Fatalf("%d bytes: %v", tc.n, err)
		}
		if c.Reconnects() == 0 {
			t.Fatalf("%d bytes: no reconnect: the connection was not cut mid-reply", tc.n)
		}
		got := drainPipe(t, r)
		if !inPipe {
			if len(got) != 0 {
				t.Fatalf("%d bytes: in the buffer, but %d bytes left in the pipe", tc.n, len(got))
			}
			got = buf
		}
		if !bytes.Equal(got, want[1<<20:1<<20+tc.n]) {
			t.Fatalf("%d bytes: %d bytes, not the data read once (in the pipe: %v)", tc.n, len(got), inPipe)
		}
		if tc.wantInPipe && !inPipe {
			t.Fatalf("%d bytes: spilled into the buffer", tc.n)
		}
	}
}
