// Package sendmore writes a message gathered from several buffers — small
// headers and a large payload — to a stream socket the way nbdkit does: the
// small pieces with send(2) and MSG_MORE, the large one with a system call
// of its own, instead of one writev(2) over all of them.
//
// Measured on Linux 6.18 (docs/BENCHMARKS.md, "send(MSG_MORE) instead of
// writev"): one writev of a 28-byte reply header and 1 MiB of read data
// cost a minimal C server 12–20 % of its 1 MiB read throughput against the
// header sent with MSG_MORE and the data sent on its own, and moving the
// NBD server to the latter brought its CPU per 1 MiB reply from 1.26×
// nbdkit's to 1.16× (medians of 9 alternating runs). MSG_MORE keeps the header from leaving as a packet of its
// own (the sockets have TCP_NODELAY): the message still leaves as
// full-sized segments.
//
// Only messages of small buffers ending with one large buffer — a reply
// header and its data, a request header and its payload — are sent this
// way. Others go out in one writev: all-small ones, where one system call
// is cheaper than several, and ones with a large buffer before others,
// which measured slower piecewise (iSCSI Data-In PDUs of 256 KiB: 1M reads
// at 0.75–0.93× of tgt against 1.22–1.58× in one writev). So do all
// messages when there is no socket to pass flags to (TLS, pipes in tests).
package sendmore

import (
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Large is the size from which a buffer gets a system call of its own.
const Large = 64 << 10

// Writer writes gathered buffers to one connection. It is not safe for
// concurrent use: callers serialise writes to a connection anyway.
type Writer struct {
	conn net.Conn
	raw  syscall.RawConn // nil: write through conn with writev
	step func(fd uintptr) bool

	// The call in progress, for step: segs from seg on, the last one
	// possibly partly sent (off bytes of it).
	segs [][]byte
	seg  int
	off  int
	err  error

	iov [16]unix.Iovec // a run of small buffers, for one sendmsg
	nb  net.Buffers
}

// New returns a Writer for c. MSG_MORE is used when c is a socket whose
// descriptor can be reached (*net.TCPConn, *net.UnixConn).
func New(c net.Conn) *Writer {
	w := &Writer{conn: c}
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			w.raw = raw
			w.step = w.sendStep
		}
	}
	return w
}

// Write writes bufs, in order, as one message. Empty buffers are skipped.
// On error the connection's state is unknown and it should be closed. bufs
// is not modified or retained.
func (w *Writer) Write(bufs ...[]byte) error {
	if w.raw == nil || !endsLarge(bufs) {
		w.nb = append(w.nb[:0], bufs...)
		nb := w.nb // WriteTo consumes it
		_, err := nb.WriteTo(w.conn)
		clear(w.nb)
		return err
	}
	// Copied, not kept: bufs (often the caller's variadic array) does not
	// escape to the heap.
	w.segs = append(w.segs[:0], bufs...)
	w.seg, w.off, w.err = 0, 0, nil
	err := w.raw.Write(w.step)
	clear(w.segs)
	w.segs = w.segs[:0]
	if err != nil {
		return err
	}
	return w.err
}

// endsLarge reports whether the message is the shape measured to gain:
// small buffers, then one large buffer that ends it. A large buffer with
// more after it (iSCSI Data-In PDUs of 256 KiB each) measured slower sent
// piecewise than in one writev.
func endsLarge(bufs [][]byte) bool {
	last := -1
	for i, b := range bufs {
		if len(b) > 0 {
			last = i
		}
	}
	for i, b := range bufs {
		if len(b) >= Large {
			return i == last
		}
	}
	return false
}

// sendStep is handed to RawConn.Write: it sends what is left of w.segs
// and reports false when the socket is full, to be called again once it
// drains (deadlines apply while it waits).
func (w *Writer) sendStep(fd uintptr) bool {
	for {
		for w.seg < len(w.segs) && len(w.segs[w.seg]) == w.off {
			w.seg, w.off = w.seg+1, 0
		}
		if w.seg == len(w.segs) {
			return true
		}
		// The next call: one large buffer (the rest of it), or the run of
		// small ones up to the next large one.
		var n int
		var errno syscall.Errno
		if b := w.segs[w.seg][w.off:]; len(w.segs[w.seg]) >= Large {
			n, errno = sendto(fd, b, w.flags(w.seg+1))
		} else {
			k, end := 0, w.seg
			for i := w.seg; i < len(w.segs) && len(w.segs[i]) < Large && k < len(w.iov); i++ {
				p := w.segs[i]
				if i == w.seg {
					p = p[w.off:]
				}
				if len(p) > 0 {
					w.iov[k] = unix.Iovec{Base: &p[0]}
					w.iov[k].SetLen(len(p))
					k++
				}
				end = i + 1
			}
			n, errno = sendmsg(fd, w.iov[:k], w.flags(end))
			clear(w.iov[:k])
		}
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			w.err = os.NewSyscallError("sendmsg", errno)
			return true
		}
		// Advance past n bytes.
		for n > 0 {
			left := len(w.segs[w.seg]) - w.off
			if n < left {
				w.off += n
				break
			}
			n -= left
			w.seg, w.off = w.seg+1, 0
		}
	}
}

// flags is MSG_MORE when a non-empty buffer follows segs[from:]'s start.
func (w *Writer) flags(from int) uintptr {
	for _, b := range w.segs[from:] {
		if len(b) > 0 {
			return unix.MSG_MORE | unix.MSG_NOSIGNAL
		}
	}
	return unix.MSG_NOSIGNAL
}

func sendto(fd uintptr, b []byte, flags uintptr) (int, syscall.Errno) {
	n, _, e := unix.Syscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), flags, 0, 0)
	return int(n), e
}

func sendmsg(fd uintptr, iov []unix.Iovec, flags uintptr) (int, syscall.Errno) {
	var msg unix.Msghdr
	msg.Iov = &iov[0]
	msg.SetIovlen(len(iov))
	n, _, e := unix.Syscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&msg)), flags)
	return int(n), e
}
