// Package splicepipe moves a socket's bytes into a pipe with splice(2), so
// that a device can write them into its file from there (device.PipeWriter)
// without the data passing through the process's memory: one copy, pipe
// pages into the page cache, where reading into a buffer and writing it
// out costs two. On loopback and on most NICs the socket's pages go into
// the pipe by reference. Filler does the same into any pipe (the Docker
// plugin's FUSE helper fills go-fuse's pipes with NBD read replies).
//
// Pipes are pooled, and at most MaxPipes exist at once: the kernel charges
// each pipe's capacity to its user (fs.pipe-user-pages-soft), and a user
// over that limit gets one-page pipes everywhere, in other programs too.
package splicepipe

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Capacity is the most a pipe is asked to hold: the size a pipe can be
// given without CAP_SYS_RESOURCE (fs.pipe-max-size). Its 256 slots each
// take one piece of a received packet, so a payload that arrives in many
// small pieces can fill the pipe first (ErrFull).
const Capacity = 1 << 20

// MaxPipes bounds the pipes that exist at once: 4096 pages of the
// default 16384 a user may have in pipes.
const MaxPipes = 16

// ErrFull reports that the pipe ran out of slots before it held what was
// asked; what it holds can still be read out with Drain.
var ErrFull = errors.New("splicepipe: pipe full")

// ErrNoPipe reports that no pipe could be had: MaxPipes are in use, or
// the system refused one of Capacity bytes.
var ErrNoPipe = errors.New("splicepipe: no pipe available")

// Pipe is a pipe a socket fills and a device empties. It implements
// device.Pipe.
type Pipe struct {
	r, w int
	n    int // bytes held
	size int // as asked of F_SETPIPE_SZ
	fill Filler
}

var (
	mu    sync.Mutex
	idle  []*Pipe
	open  int // pipes that exist, idle or not
	size  = Capacity
	limit = MaxPipes
)

// SetSizeForTest makes new pipes hold size bytes (rounded up to a page by
// the kernel) and returns a function that restores the default. For tests
// that need a pipe to fill up.
func SetSizeForTest(n int) (restore func()) {
	mu.Lock()
	defer mu.Unlock()
	old := size
	size = n
	for _, p := range idle {
		p.close()
		open--
	}
	idle = nil
	return func() {
		mu.Lock()
		defer mu.Unlock()
		size = old
		for _, p := range idle {
			p.close()
			open--
		}
		idle = nil
	}
}

// Get returns an empty pipe, or ErrNoPipe.
func Get() (*Pipe, error) {
	mu.Lock()
	if k := len(idle); k > 0 {
		p := idle[k-1]
		idle = idle[:k-1]
		mu.Unlock()
		return p, nil
	}
	if open >= limit {
		mu.Unlock()
		return nil, ErrNoPipe
	}
	open++
	want := size
	mu.Unlock()
	p, err := newPipe(want)
	if err != nil {
		mu.Lock()
		open--
		mu.Unlock()
		return nil, fmt.Errorf("%w: %w", ErrNoPipe, err)
	}
	return p, nil
}

func newPipe(size int) (*Pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("pipe2: %w", err)
	}
	p := &Pipe{r: fds[0], w: fds[1], size: size}
	if _, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, size); err != nil {
		p.close()
		return nil, fmt.Errorf("F_SETPIPE_SZ %d: %w", size, err)
	}
	return p, nil
}

// Put gives p back: to the pool if it is empty, closed otherwise (what it
// still holds is discarded). p must not be used after.
func (p *Pipe) Put() {
	mu.Lock()
	defer mu.Unlock()
	if p.n == 0 && p.size == size && len(idle) < limit {
		idle = append(idle, p)
		return
	}
	p.close()
	open--
}

func (p *Pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// Len is the number of bytes p holds.
func (p *Pipe) Len() int { return p.n }

// Fd is p's read end, for splice(2) into a file. It is non-blocking.
func (p *Pipe) Fd() int { return p.r }

// Took records that n bytes were taken from Fd.
func (p *Pipe) Took(n int) { p.n -= n }

// Write copies b into p (bytes of the payload already read from the
// socket) and returns how many it took: all of them, or fewer with
// ErrFull.
func (p *Pipe) Write(b []byte) (int, error) {
	n, err := Write(p.w, b)
	p.n += n
	return n, err
}

// Fill moves the next n bytes of a stream into p (Filler.Fill) and
// records them; ErrFull: p ran out of slots, holding what was moved.
func (p *Pipe) Fill(br *bufio.Reader, sock syscall.RawConn, n int) error {
	p.fill.Pipe = p.w
	m, err := p.fill.Fill(br, sock, n)
	p.n += m
	return err
}

// Write copies b into the pipe whose (non-blocking) write end is w and
// returns how many bytes it took: all of them, or fewer with ErrFull.
func Write(w int, b []byte) (int, error) {
	done := 0
	for done < len(b) {
		n, err := unix.Write(w, b[done:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return done, ErrFull
		case err != nil:
			return done, fmt.Errorf("pipe write: %w", err)
		}
		done += n
	}
	return done, nil
}

// Filler moves bytes from a socket into a pipe with splice(2). Pipe is the
// pipe's write end, which must be non-blocking. A Filler is reused from
// call to call (it holds the one closure the socket's RawConn needs) and
// is not safe for concurrent use.
type Filler struct {
	Pipe int

	step  func(uintptr) bool
	want  int
	moved int
	err   error
}

// Fill moves the next n bytes of a stream into f.Pipe and returns how many
// it moved: first what br (which may be nil) holds of them, by write(2),
// then the rest spliced from the socket under br (sock). With ErrFull (the
// pipe ran out of slots, or sock is nil: a connection without a
// descriptor) the bytes not moved are still in br and the socket, for the
// caller to read into a buffer after what the pipe holds.
func (f *Filler) Fill(br *bufio.Reader, sock syscall.RawConn, n int) (int, error) {
	moved := 0
	if br != nil {
		if k := min(br.Buffered(), n); k > 0 {
			b, _ := br.Peek(k)
			m, err := Write(f.Pipe, b)
			br.Discard(m)
			moved = m
			if err != nil {
				return moved, err
			}
		}
	}
	if moved == n {
		return moved, nil
	}
	if sock == nil {
		return moved, ErrFull
	}
	m, err := f.fillFrom(sock, n-moved)
	return moved + m, err
}

// fillFrom moves n bytes from the socket behind sock into f.Pipe, waiting
// for them in the runtime's poller (so the socket's deadlines and Close
// end the wait), and returns how many it moved. The error is
// io.ErrUnexpectedEOF if the socket ends first, and ErrFull if the pipe
// runs out of slots (a pipe holds as many pieces of received packets as
// it has pages, however small the pieces).
func (f *Filler) fillFrom(sock syscall.RawConn, n int) (int, error) {
	if f.step == nil {
		f.step = f.spliceIn // one closure per Filler, not one per call
	}
	total := 0
	for total < n {
		f.want = n - total
		err := sock.Read(f.step)
		if err == nil {
			err = f.err
		}
		if err != nil {
			if errors.Is(err, ErrFull) {
				return total, err
			}
			return total, fmt.Errorf("splice from socket: %w", err)
		}
		if f.moved == 0 {
			return total, io.ErrUnexpectedEOF
		}
		total += f.moved
	}
	return total, nil
}

// spliceIn is fillFrom's step on the socket's descriptor: false to wait
// until it is readable.
func (f *Filler) spliceIn(fd uintptr) bool {
	queued := false // bytes were queued on the socket before this splice
	for {
		m, err := unix.Splice(int(fd), nil, f.Pipe, nil, f.want, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			// The socket is empty, or the pipe is full. Bytes queued
			// now may have arrived just after the splice looked, so
			// try once more: failing with bytes queued before it
			// started, the pipe is full.
			if queued {
				f.moved, f.err = 0, ErrFull
				return true
			}
			if q, _ := unix.IoctlGetInt(int(fd), unix.SIOCINQ); q > 0 {
				queued = true
				continue
			}
			return false
		}
		f.moved, f.err = int(m), err
		return true
	}
}

// Read reads from p's read end (what a device without splice does).
func (p *Pipe) Read(b []byte) (int, error) {
	if p.n == 0 {
		return 0, io.EOF
	}
	n, err := read(p.r, b[:min(len(b), p.n)])
	p.n -= n
	return n, err
}

// read is one read(2) from a pipe's read end r that holds data.
func read(r int, b []byte) (int, error) {
	for {
		n, err := unix.Read(r, b)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, fmt.Errorf("pipe read: %w", err)
		case n == 0:
			return 0, io.ErrUnexpectedEOF
		}
		return n, nil
	}
}

// ReadFull reads len(b) bytes from the (non-blocking) read end r of a
// pipe that holds at least that many.
func ReadFull(r int, b []byte) error {
	for done := 0; done < len(b); {
		n, err := read(r, b[done:])
		if err != nil {
			return err
		}
		done += n
	}
	return nil
}

// Drain reads everything p holds into b, which must have room for Len
// bytes, and returns how many bytes that was.
func (p *Pipe) Drain(b []byte) (int, error) {
	if len(b) < p.n {
		return 0, fmt.Errorf("pipe drain: %d bytes into %d: %w", p.n, len(b), io.ErrShortBuffer)
	}
	return io.ReadFull(p, b[:p.n])
}
