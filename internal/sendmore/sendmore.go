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

	// The small buffers of the call in progress, for step: head from seg
	// on, the first of them possibly partly sent (off bytes of it).
	head [][]byte
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
			w.step = w.sendHead
		}
	}
	return w
}

// Write writes bufs, in order, as one message. Empty buffers are skipped.
// On error the connection's state is unknown and it should be closed. bufs
// is not modified or retained.
func (w *Writer) Write(bufs ...[]byte) error {
	last := lastLarge(bufs)
	if w.raw == nil || last < 0 {
		w.nb = append(w.nb[:0], bufs...)
		nb := w.nb // WriteTo consumes it
		_, err := nb.WriteTo(w.conn)
		clear(w.nb)
		return err
	}
	// The small buffers with MSG_MORE, then the large one by the
	// connection's own Write. Copied, not kept: bufs (often the caller's
	// variadic array) does not escape to the heap.
	w.head = append(w.head[:0], bufs[:last]...)
	w.seg, w.off, w.err = 0, 0, nil
	err := w.raw.Write(w.step)
	clear(w.head)
	w.head = w.head[:0]
	if err == nil {
		err = w.err
	}
	if err != nil {
		return err
	}
	_, err = w.conn.Write(bufs[last])
	return err
}

// lastLarge returns the index of the message's large buffer if the message
// is the shape measured to gain — small buffers, then one large buffer that
// ends it — and -1 otherwise. A large buffer with more after it (iSCSI
// Data-In PDUs of 256 KiB each) measured slower sent piecewise than in one
// writev.
func lastLarge(bufs [][]byte) int {
	last := -1
	for i, b := range bufs {
		if len(b) > 0 {
			last = i
		}
	}
	for i, b := range bufs {
		if len(b) >= Large {
			if i == last {
				return i
			}
			return -1
		}
	}
	return -1
}

// sendHead is handed to RawConn.Write: it sends what is left of w.head,
// all with MSG_MORE (the large buffer follows), and reports false when the
// socket is full, to be called again once it drains (deadlines apply while
// it waits).
func (w *Writer) sendHead(fd uintptr) bool {
	for {
		for w.seg < len(w.head) && len(w.head[w.seg]) == w.off {
			w.seg, w.off = w.seg+1, 0
		}
		if w.seg == len(w.head) {
			return true
		}
		k := 0
		for i := w.seg; i < len(w.head) && k < len(w.iov); i++ {
			p := w.head[i]
			if i == w.seg {
				p = p[w.off:]
			}
			if len(p) > 0 {
				w.iov[k] = unix.Iovec{Base: &p[0]}
				w.iov[k].SetLen(len(p))
				k++
			}
		}
		n, errno := sendmsg(fd, w.iov[:k], unix.MSG_MORE|unix.MSG_NOSIGNAL)
		clear(w.iov[:k])
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
			left := len(w.head[w.seg]) - w.off
			if n < left {
				w.off += n
				break
			}
			n -= left
			w.seg, w.off = w.seg+1, 0
		}
	}
}

func sendmsg(fd uintptr, iov []unix.Iovec, flags uintptr) (int, syscall.Errno) {
	var msg unix.Msghdr
	msg.Iov = &iov[0]
	msg.SetIovlen(len(iov))
	n, _, e := unix.Syscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&msg)), flags)
	return int(n), e
}
