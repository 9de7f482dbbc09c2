package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/semaphore"
	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/bufpool"
	"github.com/ferry-io/ferry/internal/sendmore"
	"github.com/ferry-io/ferry/internal/splicepipe"
	"github.com/ferry-io/ferry/internal/threadsock"
)

const (
	ioBufferSize = 256 << 10
	// largeReply is the payload size from which a reply bypasses the
	// buffered writer.
	largeReply = 64 << 10
)

// conn is one client connection.
type conn struct {
	s  *Server
	nc net.Conn // the socket: deadlines and Close
	// rw carries the protocol: nc, or the TLS session over it after
	// NBD_OPT_STARTTLS. br reads from it through src.
	rw     net.Conn
	src    *cappedReader
	br     *bufio.Reader
	tls    tlsConn // set by STARTTLS
	tlsID  string  // the client certificate's subject common name or PSK identity
	remote string
	log    *slog.Logger

	// Negotiated state.
	noZeroes   bool
	structured bool
	metaAlloc  bool
	metaExport string

	// Transmission state.
	ctx    context.Context // for device calls; ends when the connection dies
	cancel context.CancelFunc
	dev    device.Device
	sem    *semaphore.Weighted
	// Set when large write payloads go from the socket (raw) into a pipe
	// and from there into the device (splice(2)): a plain socket and a
	// device.PipeWriter.
	pw device.PipeWriter
	// Set when large reads may be answered from a view of the device's
	// memory (sendView): a plain socket, whose sends only the kernel
	// copies from, and a device.Viewer.
	viewer device.Viewer
	// raw is the socket under rw (TCP or Unix, plain or under TLS): to
	// ask how many bytes wait in it (waiting) and to splice from; nil if
	// nc has none.
	raw syscall.RawConn
	// waiting's step on raw's descriptor and its answer: one closure
	// per connection, not one allocated per call. With the turn.
	inqStep func(fd uintptr)
	inq     int

	// Polling (poll), with the turn: how many more requests are read
	// without polling, and how many the last miss made that (doubling
	// with each miss in a row, up to maxPollBackoff; a hit clears it);
	// how many requests were read since the last time the reader found
	// nothing buffered; and whether the last request read was large (a
	// READ or WRITE of smallBelow or more).
	pollSkip, pollBackoff, round int
	lastLarge                    bool
	// active counts the requests taken from the stream (next) whose
	// handling has not ended (handle), when the connection may poll or
	// is threaded (countActive, set before the workers start).
	active      atomic.Int32
	countActive bool
	// With the turn, when threaded: how many requests were taken, and the
	// count when one was last taken while another was in progress (its
	// client keeps more than one in flight). See parkReads.
	taken, overlapAt uint64

	turn     chan struct{}           // holds the reading turn while no worker has it
	inflight sync.WaitGroup          // batch remainders and large reads running on their own goroutines
	rdone    bool                    // with the turn: no more requests will be read
	hdr      [requestHeaderSize]byte // with the turn

	// Large reads go to executors (dispatch), unless the socket is
	// served outside the runtime's poller (threaded, set by takeSocket
	// before the workers start): there a reply waiting for room in the
	// socket keeps its processor, and the executors reading the next
	// replies wait for it (pinned 1M QD8 reads 0.77-0.81x of running
	// them like other large requests).
	threaded  bool
	exec      executors
	slowReads atomic.Bool // the last dispatched read's device read took more than slowRead
	// slowWrites: the last spliced write took more than slowWrite, so
	// spliced payloads are written after the turn is passed on, not
	// before (writeNow).
	slowWrites atomic.Bool

	wmu    sync.Mutex
	bw     *bufio.Writer
	queued atomic.Int32 // replies waiting for wmu
	werr   error        // first reply write error, under wmu
	// Under wmu: a reply's header and prefix are copied here, so that
	// sending a reply allocates nothing, and sw sends large ones.
	whdr []byte
	sw   *sendmore.Writer

	dmu      sync.Mutex
	stopping bool // under dmu: Shutdown asked the reader to stop

	// Payload bytes moved, for the disconnect log line.
	readBytes, writtenBytes atomic.Int64
}

// cappedReader is br's source: a read can be capped once.
type cappedReader struct {
	r    io.Reader
	next int // when > 0, the most the next read returns
}

func (c *cappedReader) Read(p []byte) (int, error) {
	if c.next > 0 && len(p) > c.next {
		p = p[:c.next]
	}
	c.next = 0
	return c.r.Read(p)
}

func newConn(s *Server, nc net.Conn) *conn {
	remote := nc.RemoteAddr().String()
	src := &cappedReader{r: nc}
	return &conn{
		s:      s,
		nc:     nc,
		rw:     nc,
		src:    src,
		br:     bufio.NewReaderSize(src, ioBufferSize),
		remote: remote,
		log:    s.log.With("remote", remote),
	}
}

// Drain makes the reader stop at the next request boundary (or
// in the middle of a payload it has not finished receiving, which was never
// acknowledged). Requests already read complete and are answered.
func (c *conn) Drain() {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.stopping = true
	c.nc.SetReadDeadline(time.Now())
}

func (c *conn) setReadDeadline(t time.Time) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if !c.stopping {
		c.nc.SetReadDeadline(t)
	}
}

func (c *conn) isStopping() bool {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	return c.stopping
}

// Close ends the connection at once.
func (c *conn) Close() {
	c.dmu.Lock()
	nc := c.nc
	c.dmu.Unlock()
	nc.Close()
}

// takeSocket serves a plain socket outside the runtime's poller from now
// on (Config.ThreadPerConn), if the server has room for one more such
// connection; it is called once negotiation is done, before any other
// goroutine of the connection uses the socket. It returns the function
// that gives the room back.
func (c *conn) takeSocket() (release func()) {
	if !c.s.cfg.ThreadPerConn || c.rw != c.nc {
		return func() {}
	}
	if c.s.threadConns.Add(1) > int32(c.s.cfg.MaxThreadConns) {
		c.s.threadConns.Add(-1)
		return func() {}
	}
	free := func() { c.s.threadConns.Add(-1) }
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.stopping {
		// Drain set a read deadline on the socket, which Take does
		// not carry over.
		return free
	}
	tc, err := threadsock.Take(c.nc)
	if err != nil {
		c.log.Warn("serving the connection through the runtime's poller", "err", err)
		return free
	}
	tc.SetPark(c.parkReads, &c.s.waiters)
	c.nc, c.rw, c.src.r = tc, tc, tc
	c.threaded = true
	c.countActive = true
	if threadedHook != nil {
		threadedHook(c, tc)
	}
	c.s.m.threadConns.Inc()
	return func() {
		c.s.m.threadConns.Dec()
		free()
	}
}

// threadedHook, when set (tests), is called with each connection
// takeSocket takes out of the poller, and its socket.
var threadedHook func(*conn, *threadsock.Conn)

// quietRequests is how many requests in a row a threaded connection
// takes with no other in progress before it counts as quiet (parkReads).
const quietRequests = 64

// parkReads reports whether a threaded connection's reads wait for the
// socket in the runtime's poller (threadsock.Conn.SetPark), rather than in
// ppoll(2) on their own thread. The connection is quiet when its client
// sent each of its last quietRequests requests only after the reply to the
// one before (queue depth 1), and quiet reads park: with the client on
// the gateway's CPUs, 4k QD1 requests measured 0.73-0.90x of the poller's
// rate waiting on their own thread (the runtime's idle threads look at the
// poller before they sleep); busy ones do not (the poller's wake-ups of
// the client's CPU are what they save).
//
// A read that waits past its holds parks either way (an idle connection
// holds no thread), and so does one that finds no place free in the
// server's threadsock.Waiters: with one processor there is none, since a
// wait there keeps the only processor from every other connection. With
// one processor a quiet read holds briefly before it parks, while nothing
// else is ready (threadsock's Brief holds).
// Called by the holder of the turn, reading.
func (c *conn) parkReads() bool {
	return c.taken-c.overlapAt > quietRequests
}

// Serve runs the connection to its end.
func (c *conn) Serve(parent context.Context) {
	defer c.Close()
	if tc, ok := c.nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	c.setReadDeadline(time.Now().Add(c.s.cfg.HandshakeTimeout))
	c.nc.SetWriteDeadline(time.Now().Add(c.s.cfg.HandshakeTimeout))
	// Device calls outlive a cancelled Serve context: a graceful shutdown
	// lets requests already read finish.
	c.ctx, c.cancel = context.WithCancel(context.WithoutCancel(parent))
	defer c.cancel()
	att, err := c.handshake(c.ctx)
	if err != nil {
		if !errors.Is(err, errAbort) && !errors.Is(err, io.EOF) && !c.isStopping() {
			c.log.Info("negotiation ended", "err", err)
		}
		return
	}
	defer att.Detach()
	c.setReadDeadline(time.Time{})
	c.nc.SetWriteDeadline(time.Time{})
	defer c.takeSocket()()
	start := time.Now()
	c.log.Info("NBD client attached", "export", att.Name, "structured", c.structured)
	defer func() {
		c.log.Info("NBD client detached", "export", att.Name, "read_bytes", c.readBytes.Load(),
			"written_bytes", c.writtenBytes.Load(), "duration", time.Since(start).Round(time.Millisecond).String())
	}()

	if rev := att.Revoked(); rev != nil {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			select {
			case <-rev:
				c.log.Warn("volume removed by force; closing connection", "export", att.Name)
				c.cancel()
				c.Close()
			case <-stop:
			}
		}()
	}
	c.dev = att.Dev
	if sc, ok := c.nc.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			c.raw = raw
			c.inqStep = func(fd uintptr) { c.inq, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }
			if pw, ok := c.dev.(device.PipeWriter); ok && c.s.cfg.SpliceWrites && c.rw == c.nc {
				c.pw = pw
			}
			if v, ok := c.dev.(device.Viewer); ok && c.rw == c.nc {
				c.viewer = v
			}
		}
	}
	c.sem = semaphore.NewWeighted(c.s.cfg.MaxInflightBytes)
	c.countActive = c.countActive || c.s.cfg.Poll > 0
	c.bw = bufio.NewWriterSize(c.rw, ioBufferSize)
	c.sw = sendmore.New(c.rw)
	c.transmit()
	c.wmu.Lock()
	werr := c.werr
	if werr == nil {
		werr = c.bw.Flush()
	}
	c.wmu.Unlock()
	if werr == nil {
		c.linger()
	}
}

// linger half-closes the connection and discards what the client still
// sends for a moment, so closing with unread requests in the socket does
// not reset the connection and destroy replies the client has yet to read.
func (c *conn) linger() {
	if c.tls != nil {
		c.tls.CloseWrite() // close_notify; the socket stays open for reading
	}
	// TCP only (a plain socket or one taken out of the poller).
	hc, ok := c.nc.(interface{ CloseWrite() error })
	if _, isUnix := c.nc.LocalAddr().(*net.UnixAddr); !ok || isUnix || hc.CloseWrite() != nil {
		return
	}
	c.nc.SetReadDeadline(time.Now().Add(time.Second))
	io.CopyN(io.Discard, c.nc, 64<<20)
}

// transmit serves requests until DISC, a protocol error, or shutdown.
//
// A fixed set of workers shares one reading turn (a token in c.turn). The
// worker holding it reads the next request, then:
//   - when it is a read of 1 MiB or more, hands it to an executor
//     (dispatch) and goes on reading;
//   - when it is large or slow and more request bytes are already
//     buffered, passes the turn on and executes it concurrently with the
//     others, like nbdkit's threads;
//   - otherwise executes it — with the small requests already buffered
//     behind it, as one batch — while keeping the turn, and goes straight
//     back to reading. A request or batch that takes longer than one to
//     two InlineBudgets hands the turn to another worker from a watchdog
//     timer, so a slow request never holds up the ones behind it for
//     long.
//
// At low queue depth a request then costs no goroutine wake-up at all, and
// at high depth requests still run concurrently and complete out of order.
func (c *conn) transmit() {
	c.turn = make(chan struct{}, 1)
	c.turn <- struct{}{}
	c.exec.wake.L = &c.exec.mu
	var wg sync.WaitGroup
	for range c.s.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.worker()
		}()
	}
	wg.Wait()
	c.exec.mu.Lock() // only workers dispatch
	c.exec.closed = true
	c.exec.wake.Broadcast()
	c.exec.mu.Unlock()
	c.inflight.Wait()
}

// dispatch hands a read of dispatchedRead bytes or more to an executor
// and returns at once, so the holder of the reading turn goes on reading
// while the read runs: nbdkit's structure (a reader thread, worker
// threads), for the one kind of request where it measured better here.
// Such a read takes a few hundred microseconds to copy from the page cache
// and send, long enough for a goroutine hand-off to be cheap beside it.
// Run inline, it ran on the thread the client's request had woken, which
// on loopback the kernel tends to put on the client's own CPU (a socket
// wake-up is synchronous); a scheduler trace (perf sched) showed the
// client and that thread taking turns on one CPU while the other idled.
// Alternating runs against nbdkit on the same file (docs/BENCHMARKS.md):
// 1M QD8 reads 0.86–0.93× inline, 0.93–0.96× dispatched; 2M 0.90–0.92×
// against 1.00–1.02×; 1M QD1 and QD16 level. Smaller reads lost (256 KiB
// QD16: 1.05–1.15× inline, 0.85–0.91× dispatched; 512 KiB level), and
// so did 1M writes dispatched the same way (0.88–0.91× against 0.91–0.98×).
//
// Executors start on demand, at most Server.executors, and end with the
// connection; when all are busy, reads queue for them. A few busy
// executors taking queued reads without sleeping did better than one per
// read (Server.executors). But reads that wait for the disk want as many
// in flight as the client sends: once a dispatched read has taken longer
// than slowRead, reads that find every executor busy start extra ones, up
// to Workers, which end when the queue is empty (1M QD16 random reads
// from a cold page cache: level with the old way, 0.96-1.03x of nbdkit,
// where four executors alone made 0.82-0.89x).
// Only the holder of the turn calls dispatch.
func (c *conn) dispatch(w work) {
	c.inflight.Add(1)
	x := &c.exec
	x.mu.Lock()
	x.queue = append(x.queue, w)
	switch {
	case x.idle > 0:
		x.idle-- // taken off here, so the next read does not count it
		x.wake.Signal()
	case x.n < c.s.cfg.Workers && (x.n < c.s.executors || c.slowReads.Load()):
		x.n++
		go c.executor(x.n > c.s.executors)
	}
	x.mu.Unlock()
}

// executor runs dispatched reads until the connection ends. An extra
// executor (one beyond Server.executors, started while reads wait for the
// disk) ends as soon as no read waits for it.
func (c *conn) executor(extra bool) {
	x := &c.exec
	x.mu.Lock()
	for {
		for len(x.queue) == 0 && !x.closed && !extra {
			x.idle++
			x.wake.Wait()
		}
		if len(x.queue) == 0 {
			x.n--
			x.mu.Unlock()
			return
		}
		w := x.queue[0]
		n := copy(x.queue, x.queue[1:])
		x.queue[n] = work{}
		x.queue = x.queue[:n]
		x.mu.Unlock()
		w.req.dispatched = true
		c.handle(w.req, w.buf)
		c.inflight.Done()
		x.mu.Lock()
	}
}

// executors is a connection's queue of dispatched reads and the
// goroutines that run them.
type executors struct {
	mu     sync.Mutex
	wake   sync.Cond // an idle executor waits here for a read
	queue  []work
	idle   int  // executors waiting on wake, not yet signalled
	n      int  // executors running
	closed bool // no more reads come
}

// work is one request taken from the stream, with its buffer.
type work struct {
	req request
	buf []byte
}

const (
	// maxBatch bounds the requests one worker takes from the buffer.
	maxBatch = 16
	// smallBelow: a READ or WRITE shorter than this, with no flags, is
	// small (taken into batches). 64 KiB ones were too until they
	// measured faster passing the turn on like larger ones (fio 64 KiB
	// QD32 random reads +10–17 %, writes +3–22 %, alternating runs).
	smallBelow = 64 << 10
	// largeWrite: a WRITE of more than this is large: it passes the turn
	// on when more waits in the socket, the next header is read alone,
	// and its payload may be spliced.
	largeWrite = 64 << 10
	// viewedRead is the smallest READ answered from a view of the
	// device when it lends one (sendView); at least largeReply, so the
	// view goes to the kernel, not through the buffered writer. Measured
	// against the buffer path (fio, page cache warm, alternating runs):
	// 1M QD8 reads +20 %, 256 KiB QD16 +18 %, 128 KiB QD16 +11–16 %, but
	// 64 KiB QD32 2–7 % slower (the mincore(2) call costs more than the
	// copy it saves).
	viewedRead = 128 << 10
	// dispatchedRead is the smallest READ handed to an executor
	// (conn.dispatch).
	dispatchedRead = 1 << 20
	// slowRead is how long a dispatched read runs before the reads are
	// taken to wait for the disk (from the page cache, 1 MiB takes a few
	// hundred microseconds).
	slowRead = 2 * time.Millisecond
	// maxPollBackoff is the most requests a connection reads without
	// polling after polls that missed (conn.poll).
	maxPollBackoff = 1024
	// slowWrite is how long a spliced write runs before writes are
	// taken to wait for the disk (or for dirty-page throttling), and are
	// no longer written before the turn is passed on (writeNow).
	slowWrite = 2 * time.Millisecond
)

// batchable reports whether the next request is a small READ, or a small
// WRITE whose payload is already buffered, with no flags: one that costs
// no system call to take and a few microseconds to run.
func (c *conn) batchable() bool {
	if c.br.Buffered() < requestHeaderSize {
		return false
	}
	b, _ := c.br.Peek(requestHeaderSize)
	req, err := decodeRequest(b)
	if err != nil || !small(req) {
		return false
	}
	return req.typ == cmdRead || c.br.Buffered() >= requestHeaderSize+int(req.length)
}

// waiting reports whether request bytes wait in the socket, beyond what
// br holds (SIOCINQ: one system call, asked only after a large write).
func (c *conn) waiting() bool {
	if c.raw == nil {
		return false
	}
	c.inq = 0
	c.raw.Control(c.inqStep)
	return c.inq > 0
}

// small reports whether req is a READ or WRITE shorter than smallBelow
// with no flags: a few microseconds of work once its payload is in.
func small(req request) bool {
	return req.flags == 0 && req.length < smallBelow && (req.typ == cmdRead || req.typ == cmdWrite)
}

// runBatch executes a batch in order and flushes the replies once. If the
// batch runs past the inline budget, the rest of it runs concurrently.
func (c *conn) runBatch(batch []work) {
	if len(batch) == 1 {
		c.handle(batch[0].req, batch[0].buf)
		return
	}
	start := time.Now()
	for i := range batch {
		if i > 0 && time.Since(start) > c.s.cfg.InlineBudget {
			for _, w := range batch[i:] {
				c.inflight.Add(1)
				go func() {
					defer c.inflight.Done()
					c.handle(w.req, w.buf)
				}()
			}
			break
		}
		batch[i].req.batched = true
		c.handle(batch[i].req, batch[i].buf)
	}
	c.flushBuffered()
}

// flushBuffered sends whatever replies wait in the buffered writer.
func (c *conn) flushBuffered() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil || c.bw.Buffered() == 0 {
		return
	}
	if err := c.bw.Flush(); err != nil {
		c.werr = err
		c.Close()
	}
}

func (c *conn) worker() {
	hold := false // this worker has the reading turn
	defer func() {
		if r := recover(); r != nil {
			c.s.m.panics.Inc()
			c.log.Error("panic reading requests; closing connection", "panic", r, "stack", string(debug.Stack()))
			if hold {
				c.rdone = true
				c.turn <- struct{}{}
			}
			c.Close()
		}
	}()
	var batch []work
	// owned is the generation of the inline request holding the turn, 0
	// if none. Whoever clears it passes the turn, so the turn is passed
	// once per generation.
	//
	// A watchdog timer per worker hands the turn on when one request runs
	// inline past the budget. Arming a timer for every request would wake
	// the runtime's poller or another thread each time (two to three
	// system calls per request at queue depth 1), so the watchdog ticks
	// once per budget period only while requests run inline and stops when
	// it finds none: a request seen running at two ticks in a row has run
	// at least one period, and loses the turn.
	var owned, last atomic.Uint64
	var armed atomic.Bool
	var gen uint64
	period := c.s.cfg.InlineBudget
	var budget *time.Timer
	budget = time.AfterFunc(time.Hour, func() {
		g := owned.Load()
		if g != 0 && last.Swap(g) != g {
			budget.Reset(period) // a new request since the last tick
			return
		}
		if g != 0 && owned.CompareAndSwap(g, 0) {
			c.turn <- struct{}{}
		}
		last.Store(0)
		armed.Store(false)
		// A request that started after the load above found the timer
		// still armed and did not arm it.
		if owned.Load() != 0 && armed.CompareAndSwap(false, true) {
			budget.Reset(period)
		}
	})
	budget.Stop()
	defer budget.Stop()
	for {
		if !hold {
			<-c.turn
			hold = true
		}
		if c.rdone {
			c.turn <- struct{}{}
			return
		}
		req, buf, ok := c.next()
		if !ok {
			c.rdone = true
			c.turn <- struct{}{}
			return
		}
		if req.typ == cmdRead && req.length >= dispatchedRead && !c.threaded {
			c.dispatch(work{req, buf})
			continue
		}
		batch = append(batch[:0], work{req, buf})
		if c.br.Buffered() > 0 || (req.typ == cmdWrite && req.length > largeWrite && c.waiting()) {
			if !small(req) {
				// A large or slow request with more queued behind
				// it: pass the turn on first, so the next ones are
				// read and run meanwhile. (A large write's payload
				// is read past br, so br cannot tell: the socket is
				// asked.)
				hold = false
				c.turn <- struct{}{}
				c.runBatch(batch)
				continue
			}
			// A queue of small requests is building: take those already
			// in the buffer along (no system call needed) and run them
			// as one batch with one flush.
			for len(batch) < maxBatch && c.batchable() {
				r, b, ok := c.next()
				if !ok {
					break
				}
				batch = append(batch, work{r, b})
			}
		}
		// The request or batch runs inline, keeping the turn (handing it
		// to another worker would wake another thread for each batch,
		// which on two CPUs shared with the clients cost more than the
		// overlap bought: docs/BENCHMARKS.md); the watchdog passes the
		// turn on if it runs past the budget.
		gen++
		g := gen
		owned.Store(g)
		if armed.CompareAndSwap(false, true) {
			budget.Reset(period)
		}
		c.runBatch(batch)
		clear(batch)
		hold = owned.CompareAndSwap(g, 0)
	}
}

// next reads the next request that needs executing, with its payload for a
// write or a buffer for a read. It answers requests that fail validation
// before any I/O itself. ok is false once the connection is done reading;
// otherwise handle must be called for the request.
//
// Only the holder of the reading turn calls next.
func (c *conn) next() (req request, buf []byte, ok bool) {
	req, buf, ok = c.take()
	if ok && c.countActive {
		if c.active.Add(1) > 1 {
			c.overlapAt = c.taken
		}
		c.taken++
	}
	return req, buf, ok
}

// take is next without counting the request as active.
func (c *conn) take() (req request, buf []byte, ok bool) {
	for !c.rdone {
		if c.br.Buffered() == 0 {
			if c.round <= 1 && !c.lastLarge {
				c.poll()
			}
			c.round = 0
		}
		c.round++
		if _, err := io.ReadFull(c.br, c.hdr[:]); err != nil {
			if !errors.Is(err, io.EOF) && !c.isStopping() && !errors.Is(err, net.ErrClosed) {
				c.log.Info("connection ended", "err", err)
			}
			break
		}
		req, err := decodeRequest(c.hdr[:])
		if err != nil {
			// Without a valid magic the stream cannot be resynchronised.
			c.log.Warn("protocol error; closing connection", "err", err)
			break
		}
		c.lastLarge = (req.typ == cmdRead || req.typ == cmdWrite) && req.length >= smallBelow
		c.s.m.requests[c.s.m.cmd(req.typ)].Inc()
		switch req.typ {
		case cmdDisc:
			c.rdone = true
			return req, nil, false
		case cmdWrite:
			if req.length > maxPayload {
				if _, err := io.CopyN(io.Discard, c.br, int64(req.length)); err != nil {
					c.rdone = true
					return req, nil, false
				}
				c.replyError(req, errInval, "write larger than the maximum payload")
				continue
			}
			if err := c.sem.Acquire(c.ctx, int64(req.length)); err != nil {
				c.rdone = true
				return req, nil, false
			}
			pipe, buf, err := c.readPayload(int(req.length))
			if err != nil {
				c.sem.Release(int64(req.length))
				if !c.isStopping() {
					c.log.Info("connection ended in a write payload", "err", err)
				}
				c.rdone = true
				return req, nil, false
			}
			if req.length > largeWrite {
				// The next request is likely as large: read its
				// header alone, so that its payload goes straight
				// into its buffer or pipe, not partly through br (one
				// copy less: 5 % of the CPU of 1 MiB writes).
				c.src.next = requestHeaderSize
			}
			if pipe != nil && !c.slowWrites.Load() {
				if errno, _ := c.validate(req); errno == 0 {
					c.writeNow(&req, pipe)
					return req, nil, true
				}
			}
			req.pipe = pipe
			return req, buf, true
		case cmdRead:
			if req.length > maxPayload {
				c.replyError(req, errInval, "read larger than the maximum payload")
				continue
			}
			if err := c.sem.Acquire(c.ctx, int64(req.length)); err != nil {
				c.rdone = true
				return req, nil, false
			}
			if c.viewer != nil && req.length >= viewedRead {
				// handle takes a buffer only if the device lends no
				// view.
				req.view = true
				return req, nil, true
			}
			return req, bufpool.Get(int(req.length)), true
		default:
			return req, nil, true
		}
	}
	c.rdone = true
	return request{}, nil, false
}

// poll watches the socket for up to Config.Poll for the client's next
// request, when br holds none, the last request came alone (nothing was
// buffered behind it) and was not a large READ or WRITE, and no request of
// this connection is in flight: the client has all its replies and may
// send the next at once, as a client with one request in flight does.
// Found there, the request is read without the reader going to sleep in
// the runtime's poller and being woken again: on this project's two vCPUs
// the sleep, the idle CPU and the wake-up across CPUs cost more than a
// small request. (After a bunch of requests, or a large one, the client
// takes a while to send more; polls there measured slower. With the
// client on the same CPUs, any poll takes CPU the client needs: hence off
// by default. docs/NBD.md, "Polling".)
//
// A poll that misses (the client paused longer) makes the connection skip
// polling for the next request, then the next two, four, and so on up to
// maxPollBackoff requests while it keeps missing; a hit starts over. So a
// client that pauses between requests costs a poll now and then, not one
// per request. At most Server.maxPollers connections poll at once, and a
// poll yields its processor between looks. Only the holder of the turn
// polls.
func (c *conn) poll() {
	if c.s.cfg.Poll <= 0 || c.raw == nil || c.active.Load() != 0 {
		return
	}
	if c.pollSkip > 0 {
		c.pollSkip--
		return
	}
	if c.s.pollers.Add(1) > c.s.maxPollers {
		c.s.pollers.Add(-1)
		return
	}
	defer c.s.pollers.Add(-1)
	deadline := time.Now().Add(c.s.cfg.Poll)
	for !c.waiting() {
		if time.Now().After(deadline) {
			c.pollBackoff = min(max(1, 2*c.pollBackoff), maxPollBackoff)
			c.pollSkip = c.pollBackoff
			c.s.m.pollMiss.Inc()
			return
		}
		runtime.Gosched()
	}
	c.pollBackoff = 0
	c.s.m.pollHit.Inc()
}

// readPayload reads a write's payload of n bytes: into a pipe when the
// device takes its writes from one and the payload fits (readIntoPipe),
// otherwise into a buffer.
func (c *conn) readPayload(n int) (*splicepipe.Pipe, []byte, error) {
	if c.pw != nil && n > largeWrite && n <= splicepipe.Capacity {
		p, buf, err := c.readIntoPipe(n)
		if !errors.Is(err, splicepipe.ErrNoPipe) {
			return p, buf, err
		}
	}
	buf := bufpool.Get(n)
	if _, err := io.ReadFull(c.br, buf); err != nil {
		bufpool.Put(buf)
		return nil, nil, err
	}
	return nil, buf, nil
}

// readIntoPipe reads a write's payload of n bytes into a pipe: what br
// holds of it, then the rest straight from the socket. If the pipe fills
// up first (the payload came in many small pieces), the payload ends up in
// a buffer instead (buf). splicepipe.ErrNoPipe: no pipe could be had,
// nothing was read.
func (c *conn) readIntoPipe(n int) (p *splicepipe.Pipe, buf []byte, err error) {
	p, err = splicepipe.Get()
	if err != nil {
		return nil, nil, err
	}
	err = p.Fill(c.br, c.raw, n)
	if errors.Is(err, splicepipe.ErrFull) {
		buf = bufpool.Get(n)
		m, err := p.Drain(buf)
		p.Put()
		if err == nil {
			_, err = io.ReadFull(c.br, buf[m:])
		}
		if err != nil {
			bufpool.Put(buf)
			return nil, nil, err
		}
		return nil, buf, nil
	}
	if err != nil {
		p.Put()
		return nil, nil, err
	}
	return p, nil, nil
}

// writeNow writes a valid WRITE's payload from its pipe into the device
// before the reading turn is passed on, keeps the device's answer in req
// for execute, and gives the pipe and its share of the in-flight bytes
// back.
//
// Written after the turn is passed on, as other large requests are, a
// spliced payload stays in its pipe while another worker is woken and
// the next request is read; the pipe holds the socket's pages all that
// time, and on loopback those are the client's, which it cannot reuse
// until they come back (scripts/bench: fio's CPU per 1 MiB write 232–265
// µs against about 205 with the buffer path, and p99 latency up to twice
// nbdkit's). Written here, the pages come back as soon as the file has
// them, and the next request is read right after: fio 1M QD8 writes
// 0.93–1.03× of nbdkit with every process on both CPUs and 1.02–1.06×
// with the server on a CPU of its own (against 0.91–0.96× and 0.83–0.87×
// with the buffer path), and p99 latency below nbdkit's in both
// (docs/BENCHMARKS.md). Only while writes are fast: one that takes
// longer than slowWrite (the disk, or dirty-page throttling) held up the
// reading of this connection's requests for that long, so the writes
// after it are written after the turn is passed on (execute), until one
// of those is fast again.
//
// A panic in the device is the request's error (EIO), as in handle, not
// the reader's: the connection goes on.
func (c *conn) writeNow(req *request, p *splicepipe.Pipe) {
	req.written = true
	defer func() {
		if r := recover(); r != nil {
			c.panicked(*req, r)
			req.werr = errors.New("internal error")
		}
		p.Put()
		c.sem.Release(int64(req.length))
	}()
	req.werr = c.writePipe(p, int64(req.offset), int(req.length))
}

// writePipe writes n bytes from p into the device at off, and records
// whether that took longer than slowWrite (writeNow or execute).
func (c *conn) writePipe(p *splicepipe.Pipe, off int64, n int) error {
	start := time.Now()
	err := c.pw.WriteFromPipe(c.ctx, p, off, n)
	c.slowWrites.Store(time.Since(start) > c.s.cfg.slowWrite)
	return err
}

// panicked counts and logs a panic recovered while handling req.
func (c *conn) panicked(req request, r any) {
	c.s.m.panics.Inc()
	c.log.Error("panic handling request", "command", commandName(req.typ), "panic", r, "stack", string(debug.Stack()))
}

// handle executes one request and sends its reply.
func (c *conn) handle(req request, buf []byte) {
	replied := false
	defer func() {
		if c.countActive {
			c.active.Add(-1)
		}
		if buf != nil {
			bufpool.Put(buf)
		}
		if buf != nil || req.view {
			c.sem.Release(int64(req.length))
		}
		if req.pipe != nil {
			req.pipe.Put()
			c.sem.Release(int64(req.length))
		}
		if r := recover(); r != nil {
			c.panicked(req, r)
			if !replied {
				c.replyError(req, errIO, "internal error")
			}
		}
	}()
	if req.view {
		if c.sendView(req) {
			replied = true
			return
		}
		buf = bufpool.Get(int(req.length))
	}
	errno, msg := c.execute(req, buf)
	replied = true
	if errno != 0 {
		c.replyError(req, errno, msg)
		return
	}
	switch req.typ {
	case cmdRead:
		c.replyRead(req, buf)
	case cmdBlockStatus:
		// execute already sent the reply.
	default:
		c.reply(req, 0, nil)
	}
}

// replyRead sends a READ's data.
func (c *conn) replyRead(req request, data []byte) {
	c.s.m.readB.Add(float64(len(data)))
	c.readBytes.Add(int64(len(data)))
	if c.structured {
		c.replyData(req, data)
	} else {
		c.reply(req, 0, data)
	}
}

// sendView answers a READ from a view of the device's memory
// (device.Viewer): the kernel copies the page cache straight into the
// socket, where a buffer costs a copy more. It reports false, having sent
// nothing, when the request is not a valid read (execute then answers
// with the error) or the device lends no view (the data is not all in
// memory): the read then goes through a buffer.
//
// Only the kernel touches a view's bytes (the reply is large, so send
// hands them to write(2) without copying them into the buffered writer).
// A page evicted meanwhile and unreadable fails that write with EFAULT,
// and the connection closes as on any failed reply write: the client sees
// the connection end, never wrong data.
func (c *conn) sendView(req request) bool {
	if errno, _ := c.validate(req); errno != 0 {
		return false
	}
	b, done, ok := c.viewer.View(int64(req.offset), int(req.length))
	if !ok {
		return false
	}
	if req.dispatched {
		c.slowReads.Store(false) // in memory: no disk wait
	}
	c.replyRead(req, b)
	done()
	return true
}

// allowedFlags lists the command flags each command accepts; others are
// refused with EINVAL so a client never believes a flag was honoured.
var allowedFlags = [numCommands]uint16{
	cmdRead:        cmdFlagDF | cmdFlagFUA,
	cmdWrite:       cmdFlagFUA,
	cmdFlush:       cmdFlagFUA,
	cmdTrim:        cmdFlagFUA,
	cmdCache:       0,
	cmdWriteZeroes: cmdFlagFUA | cmdFlagNoHole,
	cmdBlockStatus: cmdFlagReqOne,
}

// execute performs req and returns an NBD errno (0 for success) with a
// message for structured error replies. For BLOCK_STATUS it sends the reply.
func (c *conn) execute(req request, buf []byte) (uint32, string) {
	if errno, msg := c.validate(req); errno != 0 {
		return errno, msg
	}
	ctx := c.ctx
	dev := c.dev
	off, n := int64(req.offset), int64(req.length)
	var err error
	switch req.typ {
	case cmdRead:
		if req.dispatched {
			start := time.Now()
			err = dev.ReadAt(ctx, buf, off)
			c.slowReads.Store(time.Since(start) > slowRead)
		} else if n > 0 {
			err = dev.ReadAt(ctx, buf, off)
		}
	case cmdWrite:
		if req.written {
			err = req.werr
		} else if req.pipe != nil {
			err = c.writePipe(req.pipe, off, int(n))
		} else if n > 0 {
			err = dev.WriteAt(ctx, buf, off)
		}
		c.s.m.writeB.Add(float64(n))
		c.writtenBytes.Add(n)
	case cmdFlush:
		err = dev.Flush(ctx)
	case cmdTrim:
		if n > 0 {
			err = dev.Trim(ctx, off, n)
		}
	case cmdWriteZeroes:
		if n > 0 {
			err = dev.WriteZeroes(ctx, off, n, req.flags&cmdFlagNoHole == 0)
		}
	case cmdCache:
		// Advisory; the local pool has nothing to prefetch into.
	case cmdBlockStatus:
		if !c.structured || !c.metaAlloc {
			return errInval, "base:allocation was not negotiated"
		}
		if n == 0 {
			return errInval, "zero-length block status"
		}
		var ext []device.Extent
		if ext, err = dev.Extents(ctx, off, n); err == nil {
			c.replyBlockStatus(req, ext)
			return 0, ""
		}
	}
	if err == nil && req.flags&cmdFlagFUA != 0 && req.typ != cmdRead && req.typ != cmdFlush {
		err = dev.Flush(ctx)
	}
	if err != nil {
		errno := errnoFor(err)
		if errno == errIO {
			c.log.Warn("I/O error", "command", commandName(req.typ), "offset", off, "length", n, "err", err)
		}
		return errno, err.Error()
	}
	return 0, ""
}

// validate checks req's command, flags and range, and returns the NBD
// errno (0 for a valid request) with a message for a refused one.
func (c *conn) validate(req request) (uint32, string) {
	if int(req.typ) >= numCommands || req.typ == cmdDisc {
		return errInval, fmt.Sprintf("unknown command %d", req.typ)
	}
	if req.flags&^allowedFlags[req.typ] != 0 {
		return errInval, fmt.Sprintf("flags %#x not valid for %s", req.flags, commandName(req.typ))
	}
	if req.typ != cmdFlush {
		if req.offset > 1<<62 || device.CheckRange(c.dev.Size(), int64(req.offset), int64(req.length)) != nil {
			return errInval, fmt.Sprintf("range %d+%d beyond the export's end", req.offset, req.length)
		}
	}
	return 0, ""
}

// errnoFor maps a device error to the NBD errno a client should see.
func errnoFor(err error) uint32 {
	switch {
	case errors.Is(err, device.ErrOutOfRange):
		return errInval
	case errors.Is(err, device.ErrNoSpace):
		return errNoSpc
	case errors.Is(err, device.ErrReadOnly):
		return errPerm
	case errors.Is(err, device.ErrClosed), errors.Is(err, context.Canceled), errors.Is(err, volume.ErrNotFound):
		return errShutdown
	default:
		return errIO
	}
}

// replyError answers req with errno, as a structured error chunk where the
// client expects structured replies to this command.
func (c *conn) replyError(req request, errno uint32, msg string) {
	c.s.m.errors[c.s.m.cmd(req.typ)].Inc()
	if c.structured && (req.typ == cmdRead || req.typ == cmdBlockStatus) {
		if len(msg) > 4096 {
			msg = msg[:4096]
		}
		p := make([]byte, 6, 6+len(msg))
		binary.BigEndian.PutUint32(p[0:4], errno)
		binary.BigEndian.PutUint16(p[4:6], uint16(len(msg)))
		c.structuredChunk(req, replyTypeError, p, []byte(msg))
		return
	}
	c.reply(req, errno, nil)
}

// reply sends a simple reply.
func (c *conn) reply(req request, errno uint32, data []byte) {
	var h [simpleReplyHeaderSize]byte
	binary.BigEndian.PutUint32(h[0:4], magicReply)
	binary.BigEndian.PutUint32(h[4:8], errno)
	binary.BigEndian.PutUint64(h[8:16], req.handle)
	c.send(req, h[:], nil, data)
}

// replyData sends a read's data as one NBD_REPLY_TYPE_OFFSET_DATA chunk.
func (c *conn) replyData(req request, data []byte) {
	var off [8]byte
	binary.BigEndian.PutUint64(off[:], req.offset)
	c.structuredChunk(req, replyTypeOffsetData, off[:], data)
}

func (c *conn) replyBlockStatus(req request, ext []device.Extent) {
	p := make([]byte, 4, 4+8*min(len(ext), maxBlockStatusExtents))
	binary.BigEndian.PutUint32(p, metaContextAllocID)
	var last uint32
	var pending int64
	flushDesc := func() {
		for pending > 0 {
			n := min(pending, 1<<31)
			p = binary.BigEndian.AppendUint32(p, uint32(n))
			p = binary.BigEndian.AppendUint32(p, last)
			pending -= n
		}
	}
	for _, e := range ext {
		var st uint32
		if e.Flags&device.ExtentHole != 0 {
			st |= stateHole | stateZero
		}
		if e.Flags&device.ExtentZero != 0 {
			st |= stateZero
		}
		if pending > 0 && st != last {
			flushDesc()
			if req.flags&cmdFlagReqOne != 0 || len(p) >= 4+8*maxBlockStatusExtents {
				break
			}
		}
		last = st
		pending += e.Length
	}
	flushDesc()
	if req.flags&cmdFlagReqOne != 0 && len(p) > 12 {
		p = p[:12]
	}
	c.structuredChunk(req, replyTypeBlockStatus, p, nil)
}

// structuredChunk sends one structured reply chunk (always the last one
// for its handle) made of prefix and data.
func (c *conn) structuredChunk(req request, typ uint16, prefix, data []byte) {
	var h [structuredHeaderSize]byte
	binary.BigEndian.PutUint32(h[0:4], magicStructured)
	binary.BigEndian.PutUint16(h[4:6], replyFlagDone)
	binary.BigEndian.PutUint16(h[6:8], typ)
	binary.BigEndian.PutUint64(h[8:16], req.handle)
	binary.BigEndian.PutUint32(h[16:20], uint32(len(prefix)+len(data)))
	c.send(req, h[:], prefix, data)
}

// send writes one reply. Replies batch in the buffered writer; whoever
// writes last while nobody else waits flushes, so a burst of completions
// costs one system call.
//
// A batched request never flushes: the worker running the batch flushes
// once at its end (see flushIdle).
func (c *conn) send(req request, hdr, prefix, data []byte) {
	c.queued.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	last := c.queued.Add(-1) == 0
	if c.werr != nil {
		return
	}
	// hdr and prefix live on the callers' stacks: copying them here keeps
	// them there (a slice handed to the writer escapes to the heap).
	c.whdr = append(append(c.whdr[:0], hdr...), prefix...)
	var err error
	if len(data) >= largeReply {
		// Large read data goes out from its own buffer instead of
		// through a copy into the buffered writer: the header with
		// MSG_MORE, then the data in a call of its own (sendmore).
		if err = c.bw.Flush(); err == nil {
			err = c.sw.Write(c.whdr, data)
		}
	} else {
		c.bw.Write(c.whdr)
		_, err = c.bw.Write(data)
		if err == nil && last && !req.batched {
			err = c.bw.Flush()
		}
	}
	if err != nil {
		c.werr = err
		if !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrDeadlineExceeded) {
			c.log.Info("reply write failed; closing connection", "err", err)
		}
		c.Close()
	}
}
