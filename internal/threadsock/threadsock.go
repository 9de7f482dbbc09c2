// Package threadsock serves a connected socket outside the Go runtime's
// network poller: a Conn waits for its socket with poll(2) on the calling
// goroutine's thread, as a thread-per-connection C server waits in
// recv(2), instead of parking the goroutine in the poller.
//
// Why: while a socket is registered with the runtime's poller (epoll,
// edge-triggered), every arrival of data wakes the thread waiting in
// epoll_wait, whether or not a goroutine waits for that socket, and that
// thread is whichever one went idle last. With the client on the same
// CPUs (loopback), those wake-ups land on the client's CPU and take it
// from the client (docs/BENCHMARKS.md, "who takes fio's CPU"). A Conn's
// socket is not registered: only the goroutine reading it is woken, by
// the socket itself, when it waits.
//
// The cost: a goroutine waiting in poll(2) keeps its thread, and its
// processor until the runtime's monitor takes the processor back for
// other goroutines (as in any blocking system call), so a goroutine made
// runnable meanwhile may wait for the monitor's next check (20 µs to
// 10 ms), and an idle connection would hold a thread. SetPark lets a
// Conn's reads wait in the poller again when its owner says so (gateway/nbd:
// a client that waits for each reply) and when it is idle, and bounds how
// many Conns wait on their threads at once (Waiters). With one processor,
// where no Conn waits on its thread so, a read about to park first holds
// briefly, for as long as nothing else in the process is ready to run
// (Brief holds).
package threadsock

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is a stream socket (TCP or Unix) served outside the runtime's
// poller. It implements net.Conn and syscall.Conn, and CloseWrite. Read
// and Write may be called concurrently with each other, and Close,
// SetDeadline, SetReadDeadline and SetWriteDeadline with anything; like a
// net.Conn's, concurrent Reads (or Writes) must be serialised by the
// caller.
type Conn struct {
	// mu guards fd's lifetime: every system call on fd holds it for
	// reading, Close takes it for writing to close fd once they are done.
	// A call blocked in poll(2) is woken by Close's shutdown(2), or by a
	// deadline's event.
	mu     sync.RWMutex
	fd     int
	closed atomic.Bool

	local, remote net.Addr
	rd, wr        deadline

	// One poll set per direction (a Read and a Write may wait at once):
	// the socket and its deadline's event.
	rp, wp [2]unix.PollFd

	// Parking (SetPark): park is asked by a Read about to wait; reg,
	// while parked, is a duplicate of the socket registered with the
	// runtime's poller, which such Reads wait through. The reading
	// goroutine parks and unparks; regMu guards reg against Close and
	// SetReadDeadline.
	park  func() bool
	regMu sync.Mutex
	reg   net.Conn
	// Reads that parked: park said so; no waiter's place was free; or
	// they waited past their holds.
	askedParks, crowdedParks, longParks atomic.Uint64
	// waiters bounds the Conns waiting on their threads (SetPark);
	// placed: this one has a place (the reading goroutine's, and
	// Close's once reads are done).
	waiters *Waiters
	placed  bool
	// oneProc caches waiters.lost() (one processor), asked again every
	// 64th call of onePerhaps (runtime.GOMAXPROCS takes the scheduler's
	// lock); procChecks counts those calls.
	oneProc    bool
	procChecks uint32
	// maxHold is lastHold (tests lower or raise it).
	maxHold time.Duration

	// Brief holds (hold), with one processor: hp is the poll set (the
	// socket, the read deadline's event, the runtime's poller; Fd -1
	// without a poller); holdOff counts the waits that park without
	// holding since a hold found other work ready.
	hp      [3]unix.PollFd
	holdOff uint32
}

// deadline is one direction's deadline: when (Unix nanoseconds, 0 for
// none) and an eventfd that is readable while waiters must look at it
// again (written when the deadline changes, read empty by the wait that
// sees it, which then looks at the deadline).
type deadline struct {
	at atomic.Int64
	ev int
}

// Take moves nc's socket out of the runtime's poller: it returns a Conn on
// a duplicate of nc's descriptor and closes nc (which takes the socket out
// of the poller; the duplicate keeps the connection open). nc must be a
// *net.TCPConn or *net.UnixConn with no deadline set and no call in
// progress. On error nc is left as it was.
func Take(nc net.Conn) (*Conn, error) {
	switch nc.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return nil, fmt.Errorf("threadsock: %T is not a TCP or Unix socket", nc)
	}
	raw, err := nc.(syscall.Conn).SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("threadsock: %w", err)
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, fmt.Errorf("threadsock: %w", err)
	}
	if derr != nil {
		return nil, fmt.Errorf("threadsock: duplicate the socket: %w", derr)
	}
	c := &Conn{fd: fd, local: nc.LocalAddr(), remote: nc.RemoteAddr(), rd: deadline{ev: -1}, wr: deadline{ev: -1}, maxHold: lastHold}
	for _, d := range []*deadline{&c.rd, &c.wr} {
		ev, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			c.release()
			return nil, fmt.Errorf("threadsock: eventfd: %w", err)
		}
		d.ev = ev
	}
	// The duplicate shares the open file, so it is non-blocking too, as
	// the waits below need.
	c.rp = [2]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(c.rd.ev), Events: unix.POLLIN}}
	c.wp = [2]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}, {Fd: int32(c.wr.ev), Events: unix.POLLIN}}
	c.hp = [3]unix.PollFd{c.rp[0], c.rp[1], {Fd: int32(runtimePoller()), Events: unix.POLLIN}}
	nc.Close()
	return c, nil
}

// release closes the descriptors.
func (c *Conn) release() {
	for _, fd := range []int{c.fd, c.rd.ev, c.wr.ev} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// errClosed is what calls on a closed Conn return, as a net.Conn's do.
var errClosed = net.ErrClosed

// opError wraps err as net's calls do, so that callers testing for
// net.ErrClosed, os.ErrDeadlineExceeded or a timeout find them.
func (c *Conn) opError(op string, err error) error {
	if err == nil {
		return nil
	}
	if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: op, Net: c.local.Network(), Source: c.local, Addr: c.remote, Err: err}
}

// A wait holds its goroutine's processor for at most firstHold before it
// lets the others run (runtime.Gosched), then twice as long, and so on up
// to lastHold, after which it waits without a bound (or, for a read of a
// Conn that parks, in the runtime's poller: SetPark): a goroutine blocked in
// a system call keeps its processor until the runtime's monitor takes it
// back, which takes up to 10 ms when the monitor has been idle, and with
// one processor (a gateway on one CPU) every other goroutine, among them
// the ones whose replies the client waits for, would wait that long.
// Waits for a busy client end within the first hold; an idle connection's
// costs a few wake-ups before it sleeps (about 13 ms of holds).
const (
	firstHold = 50 * time.Microsecond
	lastHold  = 10 * time.Millisecond
)

// errPark is what a read's wait returns when its holds have passed and the
// Conn parks its waits (SetPark): the read then waits in the runtime's
// poller, holding no thread.
var errPark = errors.New("threadsock: park")

// left returns how long until the deadline (negative: none), and false
// once it has passed.
func (d *deadline) left() (time.Duration, bool) {
	at := d.at.Load()
	if at == 0 {
		return -1, true
	}
	l := time.Until(time.Unix(0, at))
	return l, l > 0
}

// seen clears the deadline's event, once a wait has seen it.
func (d *deadline) seen() {
	var b [8]byte
	unix.Read(d.ev, b[:])
}

// wait blocks the calling thread until fd is ready in the direction of p
// (rp or wp), the direction's deadline passes, or the Conn is closed; with
// park, it returns errPark once the last hold has passed instead of
// waiting without a bound. Called with mu held for reading.
func (c *Conn) wait(p *[2]unix.PollFd, d *deadline, park bool) error {
	hold := firstHold
	for {
		if c.closed.Load() {
			return errClosed
		}
		limit, ok := d.left()
		if !ok {
			return os.ErrDeadlineExceeded
		}
		if hold > c.maxHold && park {
			return errPark
		}
		bounded := hold <= c.maxHold && (limit < 0 || hold < limit)
		if bounded {
			limit = hold
		}
		var ts *unix.Timespec
		if limit >= 0 {
			t := unix.NsecToTimespec(int64(limit))
			ts = &t
		}
		p[0].Revents, p[1].Revents = 0, 0
		n, err := unix.Ppoll(p[:], ts, nil)
		if err != nil && err != unix.EINTR {
			return err
		}
		if n == 0 && bounded {
			if park && c.placed && c.waiters.lost() {
				return errPark // the place must go (Waiters): park now
			}
			runtime.Gosched()
			hold *= 2
			continue
		}
		if p[1].Revents != 0 {
			// The deadline changed: look at it again.
			d.seen()
		}
		if p[0].Revents != 0 {
			return nil
		}
	}
}

// Brief holds: with one processor (GOMAXPROCS 1, a gateway on one CPU), a
// read that SetPark's function says to park (a client that waits for
// each reply) first waits for its socket in ppoll(2) on its thread without
// telling the runtime (a raw system call), for up to holdTimes holds of
// holdFor each, and parks only if no request came meanwhile.
//
// Why: parked, each request costs the poller's round trip, and a wait in
// an ordinary system call longer than the runtime monitor's 20 µs tick
// makes the monitor take the only processor back and keeps it waking
// every 20 µs: measured on one CPU, 0.72-0.85 of its sleeps and 13 µs of
// CPU per 4k request at queue depth 1.
//
// The cost, and its bound: while a raw call waits, the processor is the
// connection's, and no other goroutine runs. So a hold starts only after
// runtime.Gosched has let every runnable goroutine run, and it ends as
// soon as the runtime's poller has an event to collect (runtimePoller:
// another connection's request, an S3 reply, an API call), after which the
// read parks, and the next holdBackoff reads park without holding. What the
// poller does not see (a timer falling due, a goroutine coming back from a
// system call on another thread) waits at most holdFor, as behind any
// goroutine that computes for that long.
const (
	holdFor     = 50 * time.Microsecond
	holdTimes   = 4
	holdBackoff = 64
)

// holds reports whether a read about to park holds briefly first.
func (c *Conn) holds() bool {
	if c.hp[2].Fd < 0 || c.waiters == nil {
		return false
	}
	one := c.onePerhaps()
	if c.holdOff > 0 {
		c.holdOff--
		return false
	}
	return one
}

// onePerhaps reports whether the Conn's Waiters has fallen to one processor
// (lost), as last asked: every 64th call asks again. Called by the reading
// goroutine.
func (c *Conn) onePerhaps() bool {
	if c.procChecks++; c.procChecks%64 == 1 {
		c.oneProc = c.waiters.lost()
	}
	return c.oneProc
}

// hold waits for the socket as Brief holds says: nil once it is readable,
// errPark when the read must park (the holds passed, or other work is
// ready), or the wait's error. Called by Read, with mu held for reading,
// the socket not registered with the poller.
func (c *Conn) hold() error {
	for range holdTimes {
		runtime.Gosched()
		if c.closed.Load() {
			return errClosed
		}
		limit, ok := c.rd.left()
		if !ok {
			return os.ErrDeadlineExceeded
		}
		if limit < 0 || limit > holdFor {
			limit = holdFor
		}
		ts := unix.NsecToTimespec(int64(limit))
		p := &c.hp
		p[0].Revents, p[1].Revents, p[2].Revents = 0, 0, 0
		_, _, e := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
		switch {
		case e != 0 && e != unix.EINTR:
			return e
		case p[0].Revents != 0:
			return nil
		case p[2].Revents != 0:
			c.waiters.yields.Add(1)
			c.holdOff = holdBackoff
			return errPark
		case p[1].Revents != 0:
			c.rd.seen()
		}
	}
	return errPark
}

// Read reads what the socket holds, waiting for at least one byte.
func (c *Conn) Read(b []byte) (int, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for {
		if c.closed.Load() {
			return 0, c.opError("read", errClosed)
		}
		if at := c.rd.at.Load(); at != 0 && time.Now().UnixNano() >= at {
			return 0, c.opError("read", os.ErrDeadlineExceeded)
		}
		n, err := unix.Read(c.fd, b)
		switch {
		case err == unix.EAGAIN && c.park != nil:
			why := &c.askedParks
			if c.park() {
				if c.holds() {
					c.unpark()
					if err := c.hold(); err == nil {
						c.waiters.held.Add(1)
						continue
					} else if err != errPark {
						return 0, c.opError("read", err)
					}
				}
			} else {
				if c.place() {
					c.unpark()
					if err := c.wait(&c.rp, &c.rd, true); err == nil {
						continue
					} else if err != errPark {
						return 0, c.opError("read", err)
					}
					why = &c.longParks
				} else {
					why = &c.crowdedParks
				}
			}
			c.unplace()
			if n, err, ok := c.readParked(b, why); ok {
				return n, err
			}
			// Not parked: wait here.
			if err := c.wait(&c.rp, &c.rd, false); err != nil {
				return 0, c.opError("read", err)
			}
		case err == unix.EAGAIN:
			if err := c.wait(&c.rp, &c.rd, false); err != nil {
				return 0, c.opError("read", err)
			}
		case err == unix.EINTR:
		case err != nil:
			return 0, c.opError("read", err)
		case n == 0 && len(b) > 0:
			return 0, io.EOF
		default:
			return n, nil
		}
	}
}

// Write writes all of b, waiting for room in the socket as needed.
func (c *Conn) Write(b []byte) (int, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	done := 0
	for done < len(b) {
		if c.closed.Load() {
			return done, c.opError("write", errClosed)
		}
		if at := c.wr.at.Load(); at != 0 && time.Now().UnixNano() >= at {
			return done, c.opError("write", os.ErrDeadlineExceeded)
		}
		n, err := unix.Write(c.fd, b[done:])
		switch {
		case err == unix.EAGAIN:
			if err := c.wait(&c.wp, &c.wr, false); err != nil {
				return done, c.opError("write", err)
			}
		case err == unix.EINTR:
		case err != nil:
			return done, c.opError("write", err)
		default:
			done += n
		}
	}
	return done, nil
}

// Close shuts the socket down, which ends calls blocked on it, and closes
// it once they have returned. Later calls fail with net.ErrClosed.
func (c *Conn) Close() error {
	if c.closed.Swap(true) {
		return c.opError("close", errClosed)
	}
	// Wakes a poll(2) on the socket in another thread; closing the
	// descriptor would not.
	unix.Shutdown(c.fd, unix.SHUT_RDWR)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.unpark()
	c.unplace()
	c.release()
	return nil
}

// CloseWrite shuts down the writing side of the socket (TCP FIN).
func (c *Conn) CloseWrite() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed.Load() {
		return c.opError("close", errClosed)
	}
	return c.opError("close", unix.Shutdown(c.fd, unix.SHUT_WR))
}

// LocalAddr returns the socket's local address.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the socket's peer address.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets both deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the deadline of reads, also of one waiting now; the
// zero time means none.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.set(&c.rd, t) }

// SetWriteDeadline sets the deadline of writes, also of one waiting now;
// the zero time means none.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.set(&c.wr, t) }

func (c *Conn) set(d *deadline, t time.Time) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed.Load() {
		return c.opError("set", errClosed)
	}
	var at int64
	if !t.IsZero() {
		at = max(t.UnixNano(), 1)
	}
	d.at.Store(at)
	if d == &c.rd {
		c.regMu.Lock()
		if c.reg != nil {
			c.reg.SetReadDeadline(t)
		}
		c.regMu.Unlock()
	}
	// Wake a waiter to look at it.
	one := [8]byte{1}
	unix.Write(d.ev, one[:])
	return nil
}

// SyscallConn returns a raw connection whose Read and Write wait as the
// Conn's do.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return rawConn{c}, nil }

type rawConn struct{ c *Conn }

func (r rawConn) Control(f func(fd uintptr)) error {
	r.c.mu.RLock()
	defer r.c.mu.RUnlock()
	if r.c.closed.Load() {
		return errClosed
	}
	f(uintptr(r.c.fd))
	return nil
}

func (r rawConn) Read(f func(fd uintptr) bool) error {
	return r.c.raw(f, &r.c.rp, &r.c.rd)
}

func (r rawConn) Write(f func(fd uintptr) bool) error {
	return r.c.raw(f, &r.c.wp, &r.c.wr)
}

// raw calls f until it reports done, waiting in the direction of p between
// calls, as syscall.RawConn's Read and Write do.
func (c *Conn) raw(f func(fd uintptr) bool, p *[2]unix.PollFd, d *deadline) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for {
		if c.closed.Load() {
			return errClosed
		}
		if f(uintptr(c.fd)) {
			return nil
		}
		if err := c.wait(p, d, false); err != nil {
			return err
		}
	}
}

// Waiters bounds how many Conns' reads wait on their threads at once
// (SetPark): each such wait may keep its processor (GOMAXPROCS) until the
// runtime's monitor takes it back, and with as many waits as processors
// a goroutine made runnable, a reply for a client, would wait for that.
// A Conn takes a place when a read is about to wait on its thread and
// gives it back when it parks or closes; a read that finds none free
// parks. The zero Waiters allows one fewer than GOMAXPROCS: none with one
// processor, where a wait on the thread keeps every other goroutine
// (other connections, the API, uploads) from running until the runtime's
// monitor takes the processor back, which measured up to tens of
// milliseconds: of two clients at queue depth 1, one got 110-3200 requests
// a second against 11300-12000 with every read parked. A Conn with a place
// gives it up within 64 waits, or at the end of a hold, once the bound has
// fallen so. It also counts its Conns that are parked (Parked).
type Waiters struct {
	// Max, when positive, is the bound instead (and no read holds
	// briefly: Brief holds).
	Max    int
	n      atomic.Int32
	parked atomic.Int32
	// Totals of its Conns' brief holds (Held).
	held, yields atomic.Uint64
}

// Held reports how many reads of the Conns given w were served by a brief
// hold (one processor only), and how many such holds ended because other
// work was ready.
func (w *Waiters) Held() (reads, yields uint64) { return w.held.Load(), w.yields.Load() }

// Waiting reports how many places are taken.
func (w *Waiters) Waiting() int { return int(w.n.Load()) }

// Parked reports how many of the Conns given w (SetPark) are parked: their
// reads wait in the runtime's poller.
func (w *Waiters) Parked() int { return int(w.parked.Load()) }

// parkedBy adds d to the parked count of w, if there is one.
func (w *Waiters) parkedBy(d int32) {
	if w != nil {
		w.parked.Add(d)
	}
}

func (w *Waiters) take() bool {
	limit := int32(w.Max)
	if limit <= 0 {
		limit = int32(runtime.GOMAXPROCS(0) - 1)
	}
	if w.n.Add(1) > limit {
		w.n.Add(-1)
		return false
	}
	return true
}

// lost reports whether the processors have fallen to one: a place taken
// must be given back, and reads about to park hold briefly first (Brief
// holds; not with Max set).
func (w *Waiters) lost() bool {
	return w.Max <= 0 && runtime.GOMAXPROCS(0) < 2
}

// place reports whether the Conn may wait on its thread: it has a place
// that it may keep, or took one. Called by the reading goroutine.
func (c *Conn) place() bool {
	if c.waiters == nil {
		return true
	}
	if c.placed {
		// Whether the processors fell to one is asked every 64 waits
		// (onePerhaps), and at the end of each hold (wait).
		if !c.onePerhaps() {
			return true
		}
		c.unplace()
		return false
	}
	c.placed = c.waiters.take()
	return c.placed
}

// unplace gives the Conn's place back, if it has one.
func (c *Conn) unplace() {
	if c.placed {
		c.placed = false
		c.waiters.n.Add(-1)
	}
}

// SetPark makes the Conn's reads park while park reports true: a Read
// that finds the socket empty then waits in the runtime's poller, holding
// neither its thread nor its processor, as a net.Conn's does; while park
// reports false it waits in poll(2) on its thread, and parks only once its
// holds have passed (about 13 ms without data: the connection went idle).
// Parking registers a duplicate of the socket with the poller, which
// stays registered, and later reads wait through it, until a read finds
// park false; so park should change its mind seldom (a few system calls
// each time).
//
// Why: the poller's wake-ups are what a busy connection saves by waiting
// on its own thread, but some clients are served sooner through the
// poller (the caller knows which: gateway/nbd's conn.parkReads), and an
// idle connection should not hold a thread.
//
// The reads that would wait on their thread are bounded by w (nil: not
// bounded): one that finds no place free parks.
//
// park is called by the reading goroutine only. SetPark must be called
// before the Conn is used.
func (c *Conn) SetPark(park func() bool, w *Waiters) { c.park, c.waiters = park, w }

// Parked reports whether the Conn's reads wait in the runtime's poller.
func (c *Conn) Parked() bool {
	c.regMu.Lock()
	defer c.regMu.Unlock()
	return c.reg != nil
}

// Parks counts the times a Conn's reads parked, by cause.
type Parks struct {
	Asked   uint64 // park reported true
	Crowded uint64 // no waiter's place was free
	Long    uint64 // a read waited past its holds
}

// Parks reports how many times the Conn's reads have parked, by cause.
func (c *Conn) Parks() Parks {
	return Parks{Asked: c.askedParks.Load(), Crowded: c.crowdedParks.Load(), Long: c.longParks.Load()}
}

// readParked reads b through the poller, registering the socket with it
// first if it is not (and counting why). ok is false if it could not be registered (the
// caller waits in poll(2) instead). Called by Read, with mu held for
// reading.
func (c *Conn) readParked(b []byte, why *atomic.Uint64) (n int, err error, ok bool) {
	c.regMu.Lock()
	reg := c.reg
	if reg == nil {
		var rerr error
		if reg, rerr = c.register(); rerr != nil {
			c.regMu.Unlock()
			return 0, nil, false
		}
		c.reg = reg
		c.waiters.parkedBy(1)
		why.Add(1)
	}
	c.regMu.Unlock()
	n, err = reg.Read(b)
	if c.closed.Load() {
		// Close's shutdown ended the wait (EOF, or data read first).
		return 0, c.opError("read", errClosed), true
	}
	if err != nil && err != io.EOF {
		var oe *net.OpError
		if errors.As(err, &oe) {
			err = oe.Err
		}
		err = c.opError("read", err)
	}
	return n, err, true
}

// register returns a duplicate of the socket registered with the runtime's
// poller, with the read deadline. Called with regMu held.
func (c *Conn) register() (net.Conn, error) {
	fd, err := unix.FcntlInt(uintptr(c.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "threadsock")
	defer f.Close() // FileConn duplicates it again
	reg, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	if at := c.rd.at.Load(); at != 0 {
		reg.SetReadDeadline(time.Unix(0, at))
	}
	return reg, nil
}

// unpark takes the socket out of the poller again, if parked. Only the
// reading goroutine and Close (once reads are done) set reg, so they may
// look at it without regMu: a busy read's wait costs no lock.
func (c *Conn) unpark() {
	if c.reg == nil {
		return
	}
	c.regMu.Lock()
	defer c.regMu.Unlock()
	if c.reg != nil {
		c.reg.Close()
		c.reg = nil
		c.waiters.parkedBy(-1)
	}
}
