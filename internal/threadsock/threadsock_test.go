package threadsock

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pair returns a Conn taken from one end of a fresh connection over
// network ("tcp" or "unix") and the other end, a plain net.Conn.
func pair(t *testing.T, network string) (*Conn, net.Conn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c, err := Take(nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// Take closed nc: the socket is the Conn's alone.
	if _, err := nc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write on the taken net.Conn: %v, want net.ErrClosed", err)
	}
	return c, peer
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(ents)
}

func TestEchoBothWays(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			c, peer := pair(t, network)
			// More than a socket buffer each way, so that both sides
			// wait for room and for data.
			out := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
			got := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(io.LimitReader(peer, int64(len(out))))
				got <- b
			}()
			if n, err := c.Write(out); n != len(out) || err != nil {
				t.Fatalf("Write: %d, %v", n, err)
			}
			if b := <-got; !bytes.Equal(b, out) {
				t.Fatalf("the peer read %d bytes, not what was written", len(b))
			}
			go peer.Write(out)
			in := make([]byte, len(out))
			if _, err := io.ReadFull(c, in); err != nil || !bytes.Equal(in, out) {
				t.Fatalf("ReadFull: %v (equal: %v)", err, bytes.Equal(in, out))
			}
			if c.LocalAddr().String() != peer.RemoteAddr().String() && network == "tcp" {
				t.Errorf("LocalAddr %v, the peer's RemoteAddr %v", c.LocalAddr(), peer.RemoteAddr())
			}
		})
	}
}

func TestEOFAndCloseWrite(t *testing.T) {
	c, peer := pair(t, "tcp")
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := peer.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("the peer after CloseWrite: %d, %v; want EOF", n, err)
	}
	peer.Write([]byte("ab"))
	peer.Close()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "ab" {
		t.Fatalf("ReadAll after the peer closed: %q, %v", b, err)
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("Read at EOF: %d, %v", n, err)
	}
}

// A Read or Write blocked in poll(2) returns when the Conn is closed from
// another goroutine, and the descriptors are closed after it returns.
func TestCloseWakesWaitsAndReleases(t *testing.T) {
	before := openFDs(t)
	c, peer := pair(t, "tcp")
	readErr := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		readErr <- err
	}()
	writeErr := make(chan error, 1)
	go func() {
		// The peer never reads: this fills the socket and waits.
		_, err := c.Write(make([]byte, 64<<20))
		writeErr <- err
	}()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-readErr:
		t.Fatalf("Read returned before Close: %v", err)
	case err := <-writeErr:
		t.Fatalf("Write returned before Close: %v", err)
	default:
	}
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked for 5 s behind the waiting Read and Write")
	}
	for name, ch := range map[string]chan error{"Read": readErr, "Write": writeErr} {
		select {
		case err := <-ch:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("%s after Close: %v, want net.ErrClosed", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s still blocked 5 s after Close", name)
		}
	}
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.Read(nil); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
	if err := c.SetReadDeadline(time.Now()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("SetReadDeadline after Close: %v", err)
	}
	peer.Close()
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open before, %d after", before, after)
	}
}

func TestReadDeadline(t *testing.T) {
	c, peer := pair(t, "tcp")
	// A deadline set while a Read waits ends it.
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.SetReadDeadline(time.Now())
	select {
	case err := <-done:
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("Read after SetReadDeadline(now): %v, want a timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked 5 s after SetReadDeadline(now)")
	}
	// A passed deadline holds until it is reset, even with data there.
	peer.Write([]byte("a"))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read with the deadline passed: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	if b := make([]byte, 1); func() error { _, err := c.Read(b); return err }() != nil || b[0] != 'a' {
		t.Fatalf("Read after the deadline was reset: %q", b)
	}
	// A future deadline ends a wait no earlier than it.
	start := time.Now()
	c.SetReadDeadline(start.Add(80 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past a future deadline: %v", err)
	}
	if d := time.Since(start); d < 80*time.Millisecond {
		t.Fatalf("the Read ended %v after a deadline 80ms away was set", d)
	}
	// Moved later while a Read waits: the Read waits on.
	c.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	go func() {
		time.Sleep(10 * time.Millisecond)
		c.SetReadDeadline(time.Time{})
		time.Sleep(60 * time.Millisecond)
		peer.Write([]byte("b"))
	}()
	b := make([]byte, 1)
	if _, err := c.Read(b); err != nil || b[0] != 'b' {
		t.Fatalf("Read after its deadline was lifted: %q, %v", b, err)
	}
}

func TestWriteDeadline(t *testing.T) {
	c, _ := pair(t, "unix")
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err := c.Write(make([]byte, 64<<20)) // the peer never reads
	if !errors.Is(err, os.ErrDeadlineExceeded) || n <= 0 || n >= 64<<20 {
		t.Fatalf("Write into a full socket past its deadline: %d, %v; want part written and a timeout", n, err)
	}
}

// RawConn's Read waits as Read does between calls of its function.
func TestRawConn(t *testing.T) {
	c, peer := pair(t, "tcp")
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		peer.Write([]byte("xyz"))
	}()
	calls := 0
	var got []byte
	err = raw.Read(func(fd uintptr) bool {
		calls++
		b := make([]byte, 8)
		n, err := unix.Read(int(fd), b)
		if err == unix.EAGAIN {
			return false
		}
		got = b[:n]
		return true
	})
	if err != nil || string(got) != "xyz" || calls < 2 {
		t.Fatalf("raw Read: %q, %v after %d calls (want xyz after a wait)", got, err, calls)
	}
	var fdSeen uintptr
	if err := raw.Control(func(fd uintptr) { fdSeen = fd }); err != nil || int(fdSeen) != c.fd {
		t.Fatalf("Control: fd %d, %v", fdSeen, err)
	}
	c.Close()
	if err := raw.Control(func(uintptr) {}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Control after Close: %v", err)
	}
}

// Reads, writes, deadline changes and a Close at once: for the race
// detector, and no call may block past the Close.
func TestConcurrentUse(t *testing.T) {
	c, peer := pair(t, "tcp")
	go io.Copy(peer, peer) // the peer echoes
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		for {
			if _, err := c.Write(make([]byte, 4096)); err != nil {
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		b := make([]byte, 65536)
		for {
			if _, err := c.Read(b); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			if c.SetReadDeadline(time.Now().Add(time.Duration(i%3)*time.Millisecond)) != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	time.Sleep(300 * time.Millisecond)
	c.Close()
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(5 * time.Second):
		t.Fatal("calls still running 5 s after Close")
	}
}

func TestTakeRefusesOtherConns(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := Take(a); err == nil {
		t.Fatal("Take of a net.Pipe end: no error")
	}
}

var _ interface {
	net.Conn
	syscall.Conn
	CloseWrite() error
} = (*Conn)(nil)

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("still not %s after 5 s", what)
		}
	}
}

// recv returns what a readAsync read, failing after 5 s.
func recv(t *testing.T, got <-chan []byte) []byte {
	t.Helper()
	select {
	case b := <-got:
		return b
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked after 5 s")
		return nil
	}
}

// readAsync reads into a fresh buffer of n bytes on another goroutine.
func readAsync(c *Conn, n int) <-chan []byte {
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, n)
		k, err := c.Read(b)
		if err != nil {
			got <- []byte("error: " + err.Error())
			return
		}
		got <- b[:k]
	}()
	return got
}

// A Conn whose park reports true parks its reads in the runtime's poller
// (a registered duplicate of the socket, one more descriptor) and stays
// parked; reads still get data, deadlines and Close; Close releases the
// duplicate.
func TestIdleReadsPark(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			c, peer := pair(t, network)
			c.maxHold = time.Hour // parking here is park's doing only
			w := &Waiters{}
			c.SetPark(func() bool { return true }, w)
			before := openFDs(t)
			got := readAsync(c, 16)
			waitFor(t, "parked", c.Parked)
			if w.Parked() != 1 || w.Waiting() != 0 {
				t.Fatalf("%d parked, %d waiting, want 1 and 0", w.Parked(), w.Waiting())
			}
			if n := openFDs(t); n != before+1 {
				t.Fatalf("%d descriptors parked, want %d (the registered duplicate)", n, before+1)
			}
			peer.Write([]byte("hello"))
			if b := recv(t, got); string(b) != "hello" {
				t.Fatalf("parked Read got %q", b)
			}
			if p := c.Parks(); !c.Parked() || p != (Parks{Asked: 1}) {
				t.Fatalf("after a read asked to park: parked %v, %+v, want parked once, asked", c.Parked(), p)
			}
			// A deadline set while a parked read waits ends it.
			got = readAsync(c, 16)
			time.Sleep(10 * time.Millisecond)
			c.SetReadDeadline(time.Now())
			if b := recv(t, got); !bytes.Contains(b, []byte(os.ErrDeadlineExceeded.Error())) {
				t.Fatalf("parked Read after SetReadDeadline(now): %q", b)
			}
			// A deadline set before parking applies too; lifted, reads
			// work again.
			if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Read past the deadline: %v", err)
			}
			c.SetReadDeadline(time.Time{})
			peer.Write([]byte("again"))
			if b := recv(t, readAsync(c, 16)); string(b) != "again" {
				t.Fatalf("Read after lifting the deadline: %q", b)
			}
			// Close ends a parked read with net.ErrClosed and releases
			// both descriptors of the socket.
			got = readAsync(c, 16)
			time.Sleep(10 * time.Millisecond)
			c.Close()
			if b := recv(t, got); !bytes.Contains(b, []byte(net.ErrClosed.Error())) {
				t.Fatalf("parked Read after Close: %q", b)
			}
			if n := openFDs(t); n != before-3 {
				t.Fatalf("%d descriptors after Close, want %d (socket, duplicate and events closed)", n, before-3)
			}
			if w.Parked() != 0 {
				t.Fatalf("%d parked after Close", w.Parked())
			}
		})
	}
}

// A read that finds park false unparks (the duplicate closed) and waits on
// its thread; one that waits past its holds parks all the same.
func TestBusyReadsUnparkAndLongWaitsPark(t *testing.T) {
	c, peer := pair(t, "tcp")
	var mu sync.Mutex
	busy := false
	c.SetPark(func() bool { mu.Lock(); defer mu.Unlock(); return !busy }, nil)
	c.maxHold = time.Hour
	before := openFDs(t)
	got := readAsync(c, 16)
	waitFor(t, "parked", c.Parked)
	peer.Write([]byte("a"))
	recv(t, got)
	mu.Lock()
	busy = true
	mu.Unlock()
	got = readAsync(c, 16)
	waitFor(t, "unparked", func() bool { return !c.Parked() })
	if n := openFDs(t); n != before {
		t.Fatalf("%d descriptors unparked, want %d", n, before)
	}
	peer.Write([]byte("b"))
	if b := recv(t, got); string(b) != "b" {
		t.Fatalf("busy Read got %q", b)
	}
	if c.Parked() {
		t.Fatal("parked after a busy read")
	}
	// Holds short enough to pass: the wait parks.
	c.maxHold = time.Millisecond
	got = readAsync(c, 16)
	waitFor(t, "parked after the holds", c.Parked)
	peer.Write([]byte("c"))
	if b := recv(t, got); string(b) != "c" {
		t.Fatalf("Read parked after its holds got %q", b)
	}
	if p := c.Parks(); p != (Parks{Asked: 1, Long: 1}) {
		t.Fatalf("parked %+v, want once asked and once long", p)
	}
}

// Waiters bounds the Conns whose reads wait on their threads: with one
// place, a second busy Conn's read parks (crowded) and takes the place
// once the first gives it back (by closing).
func TestWaitersBoundThreadWaits(t *testing.T) {
	w := &Waiters{Max: 1}
	a, peerA := pair(t, "tcp")
	b, peerB := pair(t, "tcp")
	for _, c := range []*Conn{a, b} {
		c.maxHold = time.Hour
		c.SetPark(func() bool { return false }, w)
	}
	gotA := readAsync(a, 16)
	waitFor(t, "one place taken", func() bool { return w.Waiting() == 1 })
	gotB := readAsync(b, 16)
	waitFor(t, "B parked", b.Parked)
	if p := b.Parks(); p != (Parks{Crowded: 1}) || a.Parked() || w.Waiting() != 1 || w.Parked() != 1 {
		t.Fatalf("B parked %+v, A parked %v, %d places taken, %d parked; want B crowded out once, A on its thread, 1 place, 1 parked", p, a.Parked(), w.Waiting(), w.Parked())
	}
	peerA.Write([]byte("a"))
	peerB.Write([]byte("b"))
	if x, y := recv(t, gotA), recv(t, gotB); string(x) != "a" || string(y) != "b" {
		t.Fatalf("reads got %q and %q", x, y)
	}
	a.Close()
	if w.Waiting() != 0 {
		t.Fatalf("%d places taken after A closed", w.Waiting())
	}
	gotB = readAsync(b, 16)
	waitFor(t, "B unparked", func() bool { return !b.Parked() })
	if w.Waiting() != 1 || w.Parked() != 0 {
		t.Fatalf("%d places taken, %d parked with B on its thread", w.Waiting(), w.Parked())
	}
	peerB.Write([]byte("c"))
	if y := recv(t, gotB); string(y) != "c" {
		t.Fatalf("B read %q", y)
	}
	b.Close()
	if w.Waiting() != 0 {
		t.Fatalf("%d places taken after both closed", w.Waiting())
	}
}

// With one processor, no Conn waits on its thread: one that has the place
// when the processors fall to one parks at the end of its hold, a second
// finds no place, and the first takes it again once there are two.
func TestWaitersNoneOnOneProcessor(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	w := &Waiters{}
	a, peerA := pair(t, "tcp")
	a.maxHold = time.Hour
	a.SetPark(func() bool { return false }, w)
	gotA := readAsync(a, 16)
	waitFor(t, "A took the place", func() bool { return w.Waiting() == 1 })
	if a.Parked() {
		t.Fatal("A parked with two processors")
	}
	runtime.GOMAXPROCS(1)
	waitFor(t, "A parked once the processors fell to one", a.Parked)
	if w.Waiting() != 0 || a.Parks() != (Parks{Long: 1}) {
		t.Fatalf("%d places taken, A parked %+v; want none taken, A parked once at the end of a hold", w.Waiting(), a.Parks())
	}
	b, peerB := pair(t, "tcp")
	b.maxHold = time.Hour
	b.SetPark(func() bool { return false }, w)
	gotB := readAsync(b, 16)
	waitFor(t, "B parked", b.Parked)
	if w.Waiting() != 0 || b.Parks() != (Parks{Crowded: 1}) {
		t.Fatalf("%d places taken, B parked %+v; want none taken, B crowded out once", w.Waiting(), b.Parks())
	}
	peerA.Write([]byte("a"))
	peerB.Write([]byte("b"))
	if x, y := recv(t, gotA), recv(t, gotB); string(x) != "a" || string(y) != "b" {
		t.Fatalf("reads got %q and %q", x, y)
	}
	b.Close()
	runtime.GOMAXPROCS(2)
	gotA = readAsync(a, 16)
	waitFor(t, "A on its thread again", func() bool { return !a.Parked() && w.Waiting() == 1 })
	peerA.Write([]byte("c"))
	if x := recv(t, gotA); string(x) != "c" {
		t.Fatalf("A read %q", x)
	}
	a.Close()
	if w.Waiting() != 0 || w.Parked() != 0 {
		t.Fatalf("%d places taken, %d parked after both closed", w.Waiting(), w.Parked())
	}
}

// TestQD1ClientProcess is not a test: run by qd1Client, it is a client in
// a process of its own, outside the tested runtime's scheduler. It sends a
// byte on descriptor 3 and waits for the byte back, THREADSOCK_QD1_CLIENT
// times; every 50th time it first writes a byte to descriptor 4, if given.
func TestQD1ClientProcess(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv("THREADSOCK_QD1_CLIENT"))
	if err != nil {
		t.Skip("run by qd1Client")
	}
	conn, poke := os.NewFile(3, "conn"), os.NewFile(4, "poke")
	var b [1]byte
	for i := range n {
		if i%50 == 49 && poke != nil {
			poke.Write([]byte("p"))
			time.Sleep(20 * time.Microsecond)
		}
		if _, err := conn.Write([]byte("q")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, b[:]); err != nil {
			t.Fatal(err)
		}
	}
}

// qd1Client starts TestQD1ClientProcess, n requests, and returns the Conn
// it talks to and, with poke, a net.Conn (in the runtime's poller) that
// receives its pokes.
func qd1Client(t *testing.T, n int, poke bool) (*Conn, net.Conn, *exec.Cmd) {
	t.Helper()
	sock := func() (*os.File, net.Conn) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fds[0]), "ours")
		defer f.Close()
		nc, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		return os.NewFile(uintptr(fds[1]), "theirs"), nc
	}
	theirs, ours := sock()
	c, err := Take(ours)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cmd := exec.Command(os.Args[0], "-test.run=^TestQD1ClientProcess$")
	cmd.Env = append(os.Environ(), "THREADSOCK_QD1_CLIENT="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	cmd.ExtraFiles = []*os.File{theirs}
	var pokes net.Conn
	if poke {
		var f *os.File
		f, pokes = sock()
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
		defer f.Close()
	}
	defer theirs.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return c, pokes, cmd
}

// serveQD1 answers each byte c reads with a byte, until EOF.
func serveQD1(t *testing.T, c *Conn) int {
	t.Helper()
	var b [1]byte
	n := 0
	for {
		if _, err := c.Read(b[:]); err == io.EOF {
			return n
		} else if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(b[:]); err != nil {
			t.Fatal(err)
		}
		n++
	}
}

// With one processor, a read that parks by choice first holds briefly on
// its thread, and a client that sends as soon as it has its reply is
// served so; with two processors no read holds so.
func TestBriefHoldsServeAQueueDepthOneClientOnOneProcessor(t *testing.T) {
	if runtimePoller() < 0 {
		t.Fatal("the runtime's poller was not found in /proc/self/fdinfo")
	}
	for _, procs := range []int{1, 2} {
		func() {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			const n = 2000
			c, _, cmd := qd1Client(t, n, false)
			w := &Waiters{}
			c.SetPark(func() bool { return true }, w)
			if got := serveQD1(t, c); got != n {
				t.Fatalf("%d requests served, want %d", got, n)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatal(err)
			}
			reads, yields := w.Held()
			t.Logf("%d processors: %d of %d reads served by a brief hold, %d holds yielded, parks %+v", procs, reads, n, yields, c.Parks())
			if procs == 1 && reads == 0 {
				t.Fatal("no read was served by a brief hold")
			}
			if procs == 2 && reads+yields != 0 {
				t.Fatalf("%d reads held with two processors", reads+yields)
			}
			if w.Waiting() != 0 {
				t.Fatalf("%d waiters' places taken", w.Waiting())
			}
		}()
	}
}

// A brief hold ends as soon as the runtime's poller has something for
// another goroutine (here, a socket's data), and the read parks.
func TestBriefHoldYieldsToThePoller(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const n = 2000
	c, pokes, cmd := qd1Client(t, n, true)
	w := &Waiters{}
	c.SetPark(func() bool { return true }, w)
	poked := make(chan int)
	go func() {
		got, _ := io.Copy(io.Discard, pokes)
		poked <- int(got)
	}()
	if got := serveQD1(t, c); got != n {
		t.Fatalf("%d requests served, want %d", got, n)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	pokes.Close()
	reads, yields := w.Held()
	t.Logf("%d of %d reads served by a brief hold, %d holds yielded, parks %+v", reads, n, yields, c.Parks())
	if got := <-poked; got != n/50 {
		t.Fatalf("%d pokes received, want %d", got, n/50)
	}
	if yields == 0 || c.Parks().Asked == 0 {
		t.Fatalf("%d holds yielded to the poller, %d reads parked; want some of each", yields, c.Parks().Asked)
	}
}
