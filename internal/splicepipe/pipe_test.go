package splicepipe

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// socketPair returns both ends of a loopback TCP connection and the
// server end's RawConn.
func socketPair(t *testing.T) (client, server net.Conn, raw syscall.RawConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	raw, err = server.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return client, server, raw
}

// mustGet returns a pipe that goes back to the pool when the test ends.
func mustGet(t *testing.T) *Pipe {
	t.Helper()
	p, err := Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Put)
	return p
}

func data(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed+1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// A payload that arrives in pieces, with pauses that leave the socket
// empty, ends up whole in the pipe, the bytes after it staying in the
// socket. Or, if the kernel collapsed the socket's queue into pieces
// smaller than a page (as it does when the queue nears its limit), the
// pipe may run out of slots first: then what it holds and what is left
// in the socket make the payload.
func TestFillWaitsForPieces(t *testing.T) {
	client, server, raw := socketPair(t)
	want := data(Capacity, 1)
	go func() {
		r := rand.New(rand.NewPCG(7, 8))
		rest := append(append([]byte(nil), want...), "next"...)
		for len(rest) > 0 {
			k := min(len(rest), 1+r.IntN(100<<10))
			client.Write(rest[:k])
			rest = rest[k:]
			time.Sleep(time.Duration(r.IntN(2)) * time.Millisecond)
		}
	}()
	p := mustGet(t)
	err := p.Fill(nil, raw, len(want))
	if err != nil && !errors.Is(err, ErrFull) {
		t.Fatal(err)
	}
	if err == nil && p.Len() != len(want) {
		t.Fatalf("Len = %d, want %d", p.Len(), len(want))
	}
	got := make([]byte, len(want))
	n, derr := p.Drain(got)
	if derr != nil {
		t.Fatal(derr)
	}
	if err != nil {
		t.Logf("pipe full after %d bytes", n)
		if _, err := io.ReadFull(server, got[n:]); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("payload differs")
	}
	next := make([]byte, 4)
	if _, err := io.ReadFull(server, next); err != nil || string(next) != "next" {
		t.Fatalf("the bytes after the payload: %q, %v", next, err)
	}
}

// A socket that ends in the middle of the payload: io.ErrUnexpectedEOF.
func TestFillEndOfStream(t *testing.T) {
	client, _, raw := socketPair(t)
	client.Write(data(1000, 2))
	client.Close()
	p := mustGet(t)
	if err := p.Fill(nil, raw, 4096); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Fill from a socket that ended: %v, want io.ErrUnexpectedEOF", err)
	}
	if p.Len() != 1000 {
		t.Fatalf("Len = %d, want the 1000 bytes that came", p.Len())
	}
}

// The socket's read deadline ends the wait.
func TestFillDeadline(t *testing.T) {
	client, server, raw := socketPair(t)
	client.Write(data(100, 3))
	server.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	p := mustGet(t)
	if err := p.Fill(nil, raw, 4096); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Fill past the deadline: %v", err)
	}
}

// A pipe that runs out of slots says so instead of waiting, and what it
// took can be drained: with the rest still in the socket, nothing is lost.
func TestFillFullPipe(t *testing.T) {
	defer SetSizeForTest(4096)()
	client, server, raw := socketPair(t)
	client.(*net.TCPConn).SetNoDelay(true)
	want := data(256<<10, 4)
	go func() {
		for b := want; len(b) > 0; b = b[1000:] { // many small packets
			client.Write(b[:min(1000, len(b))])
			if len(b) <= 1000 {
				break
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	p := mustGet(t)
	err := p.Fill(nil, raw, len(want))
	if !errors.Is(err, ErrFull) {
		t.Fatalf("Fill into a one-page pipe: %v, want ErrFull", err)
	}
	got := make([]byte, len(want))
	n, err := p.Drain(got)
	if err != nil || n == 0 || n >= len(want) {
		t.Fatalf("Drain: %d bytes, %v", n, err)
	}
	if _, err := io.ReadFull(server, got[n:]); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the pipe's bytes and the socket's do not make the payload")
	}
	// Write reports how much it took when the pipe fills.
	k, err := p.Write(want[:64<<10])
	if !errors.Is(err, ErrFull) || k == 0 || k >= 64<<10 || p.Len() != k {
		t.Fatalf("Write into a one-page pipe: took %d, %v, Len %d", k, err, p.Len())
	}
	if n, err := p.Drain(got); err != nil || n != k || !bytes.Equal(got[:k], want[:k]) {
		t.Fatalf("Drain after Write: %d, %v", n, err)
	}
}

// Fill takes what a buffered reader already holds first and the rest from
// the socket under it, leaving the reader in step with the stream. With no
// socket to splice from, it moves the buffered bytes and says ErrFull, the
// rest still readable through the reader.
func TestFillThroughBufferedReader(t *testing.T) {
	client, server, raw := socketPair(t)
	want := data(300<<10, 9)
	go client.Write(append(append([]byte("head"), want...), "next"...))
	br := bufio.NewReaderSize(server, 64<<10)
	head := make([]byte, 4)
	if _, err := io.ReadFull(br, head); err != nil || string(head) != "head" {
		t.Fatalf("head: %q, %v", head, err)
	}
	if br.Buffered() == 0 {
		t.Fatal("the reader holds none of the payload; the test would not test it")
	}
	p := mustGet(t)
	if err := p.Fill(br, raw, len(want)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := p.Drain(got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("payload through the pipe differs (%v)", err)
	}
	next := make([]byte, 4)
	if _, err := io.ReadFull(br, next); err != nil || string(next) != "next" {
		t.Fatalf("the bytes after the payload: %q, %v", next, err)
	}

	// No socket to splice from: the buffered bytes, then ErrFull.
	go client.Write(want)
	br.Reset(server)
	if _, err := br.Peek(1); err != nil {
		t.Fatal(err)
	}
	k := br.Buffered()
	err := p.Fill(br, nil, len(want))
	if !errors.Is(err, ErrFull) || p.Len() != k || k >= len(want) {
		t.Fatalf("Fill with no socket: %v, Len %d, %d were buffered", err, p.Len(), k)
	}
	n, err := p.Drain(got)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(br, got[n:]); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the pipe's bytes and the reader's do not make the payload (%v)", err)
	}
}

// At most MaxPipes exist; a pipe given back is reused, and one given
// back holding data is closed, not reused.
func TestPoolLimit(t *testing.T) {
	defer SetSizeForTest(Capacity)()
	var ps []*Pipe
	for range MaxPipes {
		p, err := Get()
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	if _, err := Get(); !errors.Is(err, ErrNoPipe) {
		t.Fatalf("pipe %d: %v, want ErrNoPipe", MaxPipes+1, err)
	}
	dirty := ps[0]
	if _, err := dirty.Write([]byte("left over")); err != nil {
		t.Fatal(err)
	}
	dirty.Put()
	p, err := Get()
	if err != nil {
		t.Fatalf("after a pipe was closed: %v", err)
	}
	if p == dirty || p.Len() != 0 {
		t.Fatal("a pipe given back with data in it was reused")
	}
	p.Put()
	if q, _ := Get(); q != p {
		t.Fatal("an empty pipe given back was not reused")
	}
	ps[0] = p
	for _, p := range ps {
		p.Put()
	}
}

// Filling and emptying a pooled pipe allocates nothing.
func TestNoAllocation(t *testing.T) {
	client, _, raw := socketPair(t)
	want := data(64<<10, 5)
	buf := make([]byte, len(want))
	allocs := testing.AllocsPerRun(50, func() {
		client.Write(want)
		p, err := Get()
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Fill(nil, raw, len(want)); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Drain(buf); err != nil {
			t.Fatal(err)
		}
		p.Put()
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per fill and drain", allocs)
	}
}
