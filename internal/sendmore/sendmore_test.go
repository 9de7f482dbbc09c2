package sendmore

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		done <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-done
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	c.(*net.TCPConn).SetNoDelay(true)
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func fill(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// Messages of every shape arrive whole and in order, also when the reader
// is slow enough that the socket fills and sends are partial.
func TestMessagesArriveWhole(t *testing.T) {
	sizes := []int{0, 1, 16, 28, Large - 1, Large, Large + 1, 1 << 20, 3<<20 + 5}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, slow := range []bool{false, true} {
		c, s := tcpPair(t)
		w := New(c)
		if w.raw == nil {
			t.Fatal("a TCP connection should use MSG_MORE")
		}
		var want bytes.Buffer
		var msgs [][][]byte
		for i := range 15 {
			var msg [][]byte
			for range 1 + rng.IntN(8) {
				b := fill(sizes[rng.IntN(len(sizes))], byte(i))
				msg = append(msg, b)
				want.Write(b)
			}
			msgs = append(msgs, msg)
		}
		// A run of small buffers longer than the iovec array, then a
		// large one.
		var run [][]byte
		for i := range 40 {
			run = append(run, fill(1+i%30, byte(i)))
		}
		run = append(run, fill(3<<20, 9))
		msgs = append(msgs, run)
		want.Write(bytes.Join(run, nil))
		// Small buffers that fill the socket before the large one, so
		// sends of them are partial too.
		run = nil
		for i := range 100 {
			run = append(run, fill(Large-1-i, byte(i)))
		}
		run = append(run, fill(Large, 7))
		msgs = append(msgs, run)
		want.Write(bytes.Join(run, nil))
		got := make(chan []byte, 1)
		go func() {
			var buf bytes.Buffer
			p := make([]byte, 16<<10)
			for {
				if slow {
					time.Sleep(20 * time.Microsecond)
				}
				n, err := s.Read(p)
				buf.Write(p[:n])
				if err != nil {
					got <- buf.Bytes()
					return
				}
			}
		}()
		for _, m := range msgs {
			if err := w.Write(m...); err != nil {
				t.Fatal(err)
			}
		}
		c.CloseWrite()
		if b := <-got; !bytes.Equal(b, want.Bytes()) {
			t.Fatalf("slow=%v: received %d bytes, not the %d written in order", slow, len(b), want.Len())
		}
	}
}

// Only a message that ends with its one large buffer is sent piecewise.
func TestShapes(t *testing.T) {
	small, large := fill(28, 1), fill(Large, 2)
	for _, c := range []struct {
		bufs [][]byte
		want int
	}{
		{[][]byte{small, large}, 1},
		{[][]byte{small, small, large, nil, {}}, 2},
		{[][]byte{large}, 0},
		{[][]byte{small, small}, -1},
		{[][]byte{small, large, small}, -1},
		{[][]byte{small, large, small, large}, -1},
		{[][]byte{large, large}, -1},
		{nil, -1},
	} {
		if got := lastLarge(c.bufs); got != c.want {
			t.Errorf("%d buffers: large buffer sent alone %d, want %d", len(c.bufs), got, c.want)
		}
	}
}

// Write deadlines hold while the socket is full, and a closed connection
// is an error, not a hang.
func TestDeadlineAndClose(t *testing.T) {
	c, _ := tcpPair(t)
	w := New(c)
	c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	big := fill(48<<20, 1) // more than both socket buffers hold
	err := w.Write(fill(28, 0), big)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a peer that never reads: %v, want the deadline", err)
	}
	c.Close()
	if err := w.Write(fill(28, 0), big); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("a closed connection: %v", err)
	}
}

// Without a socket (a pipe here; TLS in use) the buffers go out through
// the connection's own Write.
func TestFallback(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w := New(a)
	if w.raw != nil {
		t.Fatal("a pipe has no socket")
	}
	msg := [][]byte{fill(28, 1), fill(Large, 2)}
	go w.Write(msg...)
	got := make([]byte, 28+Large)
	if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, bytes.Join(msg, nil)) {
		t.Fatalf("fallback: %v", err)
	}
}

// Sending a reply allocates nothing.
func TestNoAllocation(t *testing.T) {
	c, s := tcpPair(t)
	w := New(c)
	hdr, data := fill(28, 1), fill(1<<20, 2)
	go io.Copy(io.Discard, s)
	w.Write(hdr, data) // first use sizes the Writer's slices
	w.Write(hdr, fill(100, 1))
	if n := testing.AllocsPerRun(50, func() {
		if err := w.Write(hdr, data); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("%v allocations per large message", n)
	}
}
