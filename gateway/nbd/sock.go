package nbd

import (
	"io"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Large payloads and replies (largeReply and up) move between a plain
// socket (not TLS) and their buffers with raw system calls, ones the Go
// scheduler does not see. The socket is non-blocking, so a call never
// waits: it moves what fits and returns, and the goroutine waits for the
// socket in the runtime's poller as before (syscall.RawConn, deadlines
// included). What the scheduler would add is its syscall state, in which
// a call longer than 20 µs — a 1 MiB reply takes ~200 µs — has the runtime
// hand the goroutine's processor to another thread and wake it (futex),
// then find a processor again when the call returns, often on another
// CPU, away from the buffer it just filled. A copy into or out of a
// socket holds the thread no longer than any other stretch of Go code.
// Small requests keep the ordinary calls: theirs are short, and
// alternating runs measured no gain for them (docs/BENCHMARKS.md).

// readPayload fills p with a WRITE's payload: what the buffered reader
// holds, then the rest straight from the socket.
func (c *conn) readPayload(p []byte) error {
	if c.raw == nil || len(p) < largeReply {
		_, err := io.ReadFull(c.br, p)
		return err
	}
	n, err := c.br.Read(p[:min(len(p), c.br.Buffered())])
	if err != nil {
		return err
	}
	for p = p[n:]; len(p) > 0; {
		c.rd = rawOp{a: p}
		err := c.raw.Read(c.readFn)
		n, serr := c.rd.n, c.rd.err
		c.rd = rawOp{}
		if err != nil {
			return err
		}
		if serr != nil {
			if serr == io.EOF {
				return io.ErrUnexpectedEOF
			}
			return serr
		}
		p = p[n:]
	}
	return nil
}

// rawOp is the state of one raw read or write, kept in the connection so
// that the function handed to syscall.RawConn is made once, not per call
// (a closure passed through an interface is allocated).
type rawOp struct {
	a, b []byte
	n    int
	err  error
}

// readStep is the RawConn.Read function: one read(2) into c.rd.a.
func (c *conn) readStep(fd uintptr) bool {
	p := c.rd.a
	for {
		k, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			c.rd.n = int(k)
			if k == 0 {
				c.rd.err = io.EOF
			}
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait in the poller, deadlines included
		}
		c.rd.err = os.NewSyscallError("read", e)
		return true
	}
}

// useRaw sets up raw system calls for a plain socket.
func (c *conn) useRaw() {
	if c.tls != nil {
		return
	}
	sc, ok := c.rw.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	c.raw, c.readFn, c.writeFn = raw, c.readStep, c.writeStep
}

// writeRaw writes all of a then all of b (either may be empty). Only
// holders of wmu call it.
func (c *conn) writeRaw(a, b []byte) error {
	c.wr = rawOp{a: a, b: b}
	err := c.raw.Write(c.writeFn)
	serr := c.wr.err
	c.wr = rawOp{} // hold no buffer past the call
	c.iov = [2]unix.Iovec{}
	if err != nil {
		return err
	}
	return serr
}

// writeStep is the RawConn.Write function: writev(2) until c.wr is sent
// or the socket is full.
func (c *conn) writeStep(fd uintptr) bool {
	for len(c.wr.a)+len(c.wr.b) > 0 {
		nv := 0
		for _, p := range [2][]byte{c.wr.a, c.wr.b} {
			if len(p) > 0 {
				c.iov[nv] = unix.Iovec{Base: &p[0]}
				c.iov[nv].SetLen(len(p))
				nv++
			}
		}
		k, _, e := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&c.iov[0])), uintptr(nv))
		switch e {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			c.wr.err = os.NewSyscallError("writev", e)
			return true
		}
		if n := int(k); n >= len(c.wr.a) {
			c.wr.a, c.wr.b = nil, c.wr.b[n-len(c.wr.a):]
		} else {
			c.wr.a = c.wr.a[n:]
		}
	}
	return true
}
