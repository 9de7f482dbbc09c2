// Package nbdclient is a small pure-Go NBD client for the Docker plugin's
// FUSE data path: fixed newstyle handshake, NBD_OPT_GO, simple replies,
// READ, WRITE, FLUSH, TRIM and WRITE_ZEROES with many requests in flight on
// one connection, or on several when the server allows multi-conn.
//
// Contract:
//   - ReadAt/WriteAt never return short; a request past the export's size
//     fails with the server's errno.
//   - A dead connection is a stall, not an error: the client redials with
//     backoff, redoes the handshake and resends every request the server
//     had not answered. Only an error reply from the server, a refused
//     handshake (no such export, access denied) or Close fail a request.
//   - Durability follows NBD: a write is durable once a Flush that started
//     after it returned has returned. Because a gateway that crashed may
//     have lost writes it acknowledged but had not flushed, the client keeps
//     those writes (past ReplayLimit bytes it starts a flush of its own,
//     and past twice that writes wait for it, to bound the copy) and
//     replays them on the new connection before
//     anything else, so a later Flush covers them again. A server whose
//     acknowledged writes are held by the client's own kernel cannot lose
//     them without the client (Config.NoReplay): then nothing is kept.
//
// ReadToPipe reads into a pipe instead of a buffer: the reply's data is
// spliced from the socket, for the FUSE helper to splice on to /dev/fuse.
//
// Lock order: Client.mu and Client.wmu are never held together.
package nbdclient

import (
	"bufio"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferry-io/ferry/internal/bufpool"
	"github.com/ferry-io/ferry/internal/sendmore"
	"github.com/ferry-io/ferry/internal/splicepipe"
)

const (
	magicNBD      = 0x4e42444d41474943 // "NBDMAGIC"
	magicOption   = 0x49484156454f5054 // "IHAVEOPT"
	magicOptReply = 0x3e889045565a9
	magicRequest  = 0x25609513
	magicReply    = 0x67446698

	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1
	clientFixed       = 1 << 0
	clientNoZeroes    = 1 << 1

	optGo         = 7
	repAck        = 1
	repInfo       = 3
	infoExport    = 0
	repErrUnknown = 6 | 1<<31
	repErrPolicy  = 2 | 1<<31

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6

	tfSendFlush  = 1 << 2
	tfMultiConn  = 1 << 8
	tfSendTrim   = 1 << 5
	tfSendZeroes = 1 << 6

	// MaxRequest is the largest read or write sent as one request; larger
	// ones are split.
	MaxRequest = 8 << 20
)

// Errors callers branch on.
var (
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("nbd client closed")
	// ErrRefused: the server refused the export (unknown, access denied);
	// redialing will not help.
	ErrRefused = errors.New("nbd export refused")
)

// Errno is an error reply from the server.
type Errno uint32

func (e Errno) Error() string { return fmt.Sprintf("nbd server error %d", uint32(e)) }

// Config configures a Client.
type Config struct {
	// Dial opens a connection; nil dials TCP.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Logger receives reconnects; nil discards.
	Logger *slog.Logger
	// ReplayLimit is the bytes of acknowledged, unflushed writes kept for
	// replay past which the client starts a flush of its own; writes wait
	// for it only past twice this. 0 means 64 MiB.
	ReplayLimit int64
	// NoReplay keeps no copy of acknowledged writes: for a server whose
	// acknowledged writes outlive its process and are lost only with the
	// kernel, when that kernel is this client's own (a gateway on the same
	// host reporting this boot id in wire.Volume.WritesHeldBy), since
	// what would lose them ends the client too. Requests not yet answered
	// are still resent after a reconnect.
	NoReplay bool
	// MaxBackoff caps the wait between redials; 0 means 2 s.
	MaxBackoff time.Duration
	// Conns is how many connections to open when the server allows
	// multi-conn (a flush on one covers writes completed on all); 0
	// means 4, like nbdfuse. Requests go to them in turn.
	Conns int
}

type request struct {
	cmd    uint16
	handle uint64
	off    uint64
	length uint32
	data   []byte // write payload (the caller's until acknowledged, then the client's copy), or read buffer
	done   chan error
	seq    uint64    // order among acknowledged writes (replay list)
	pooled bool      // data came from the buffer pool (internal/bufpool)
	pipe   *pipeDest // where a read's data goes instead of data (ReadToPipe)
}

// pipeDest is a pipe a read's data is spliced into (ReadToPipe).
type pipeDest struct {
	w, r    int  // the pipe's ends: w to fill, r to take the data back out
	moved   int  // bytes of the reply in the pipe
	spilled bool // the pipe ran out of slots: the data goes to request.data
}

// Client is one NBD export, safe for concurrent use.
//
// It talks to the server over a session of one or more connections
// (Config.Conns, when the server allows multi-conn). Requests are sent by
// flat combining: the caller that finds nobody sending on its connection
// writes everything queued there (one writev for many requests under
// load), so no goroutine hand-off sits on the request path; replies are
// read by one goroutine per connection through a buffered reader. When any
// connection of a session fails, the whole session is closed and, once
// all its readers have stopped, a new one is dialled: the replay of
// unflushed writes then runs alone, before any other request.
type Client struct {
	addr, export string
	cfg          Config
	log          *slog.Logger

	size  int64
	flags uint16

	mu         sync.Mutex
	cond       *sync.Cond // signalled when the session changes or the client closes
	sess       *session   // nil while reconnecting
	pending    map[uint64]*request
	next       uint64
	rr         int        // the connection the next request goes to
	replay     []*request // acknowledged writes not yet covered by a flush, by seq
	replayN    int64
	replaying  bool          // reconnect is resending replay's buffers: keep them out of the pool
	autoFlush  chan struct{} // non-nil while a flush started for ReplayLimit runs; closed when it ends
	wseq       uint64
	closed     bool
	fatal      error
	wg         sync.WaitGroup
	reconnects int
}

// session is one set of connections; it lives until one of them fails.
type session struct {
	conns   []*conn
	readers sync.WaitGroup // its read loops
	dead    bool           // torn down (under Client.mu)
}

// conn is one connection of a session. outq, spareq and sending are
// guarded by Client.mu; wmu serialises writes to nc and guards iov and hdrs.
type conn struct {
	sess    *session
	nc      net.Conn
	outq    []*request // pending requests not yet written, in order
	spareq  []*request // the other half of outq's double buffer
	sending bool       // a caller is writing outq to nc
	wmu     sync.Mutex
	iov     [][]byte
	hdrs    []byte
	sw      *sendmore.Writer
}

// Reconnects says how often a lost connection was restored.
func (c *Client) Reconnects() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reconnects
}

// ParseURL splits nbd://HOST:PORT/EXPORT.
func ParseURL(s string) (addr, export string, err error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "nbd" || u.Host == "" {
		return "", "", fmt.Errorf("not an nbd://HOST:PORT/EXPORT URL: %q", s)
	}
	addr = u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "10809")
	}
	return addr, strings.TrimPrefix(u.Path, "/"), nil
}

// Dial connects to the export at rawURL (nbd://HOST:PORT/EXPORT).
func Dial(ctx context.Context, rawURL string, cfg Config) (*Client, error) {
	addr, export, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	if cfg.Dial == nil {
		cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	if cfg.ReplayLimit == 0 {
		cfg.ReplayLimit = 64 << 20
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 2 * time.Second
	}
	if cfg.Conns <= 0 {
		cfg.Conns = 4
	}
	c := &Client{addr: addr, export: export, cfg: cfg, log: cfg.Logger, pending: map[uint64]*request{}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.cond = sync.NewCond(&c.mu)
	nc, size, flags, err := c.handshake(ctx)
	if err != nil {
		return nil, err
	}
	c.size, c.flags = size, flags
	s, err := c.dialSession(ctx, nc)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.start(s)
	c.mu.Unlock()
	return c, nil
}

// dialSession opens the session's further connections next to first
// (only if the server allows multi-conn).
func (c *Client) dialSession(ctx context.Context, first net.Conn) (*session, error) {
	s := &session{}
	s.conns = append(s.conns, &conn{sess: s, nc: first, sw: sendmore.New(first)})
	if c.flags&tfMultiConn == 0 {
		return s, nil
	}
	for len(s.conns) < c.cfg.Conns {
		nc, size, _, err := c.handshake(ctx)
		if err == nil && size != c.size {
			nc.Close()
			err = fmt.Errorf("%w: export size changed from %d to %d", ErrRefused, c.size, size)
		}
		if err != nil {
			for _, cn := range s.conns {
				cn.nc.Close()
			}
			return nil, err
		}
		s.conns = append(s.conns, &conn{sess: s, nc: nc, sw: sendmore.New(nc)})
	}
	return s, nil
}

// start makes s the session and starts its read loops. Called with mu held.
func (c *Client) start(s *session) {
	c.sess = s
	for _, cn := range s.conns {
		s.readers.Add(1)
		c.wg.Add(1)
		go c.readLoop(cn)
	}
}

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.size }

// handshake dials and negotiates the export with NBD_OPT_GO.
func (c *Client) handshake(ctx context.Context) (net.Conn, int64, uint16, error) {
	conn, err := c.cfg.Dial(ctx, c.addr)
	if err != nil {
		return nil, 0, 0, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(30 * time.Second))
	}
	size, flags, err := negotiate(conn, c.export)
	if err != nil {
		conn.Close()
		return nil, 0, 0, err
	}
	conn.SetDeadline(time.Time{})
	return conn, size, flags, nil
}

// Negotiate does the fixed newstyle handshake for export on a fresh
// connection (NBD_OPT_GO) and returns the export's size and transmission
// flags; the connection is then in the transmission phase, ready to be
// handed to another NBD client (the kernel's). A refused export wraps
// ErrRefused.
func Negotiate(conn net.Conn, export string) (size int64, flags uint16, err error) {
	return negotiate(conn, export)
}

func negotiate(conn net.Conn, export string) (int64, uint16, error) {
	var hello [18]byte
	if _, err := io.ReadFull(conn, hello[:]); err != nil {
		return 0, 0, fmt.Errorf("read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hello[0:]) != magicNBD || binary.BigEndian.Uint64(hello[8:]) != magicOption {
		return 0, 0, fmt.Errorf("%w: not a newstyle NBD server", ErrRefused)
	}
	sflags := binary.BigEndian.Uint16(hello[16:])
	if sflags&flagFixedNewstyle == 0 {
		return 0, 0, fmt.Errorf("%w: server lacks fixed newstyle", ErrRefused)
	}
	cflags := uint32(clientFixed)
	if sflags&flagNoZeroes != 0 {
		cflags |= clientNoZeroes
	}
	b := binary.BigEndian.AppendUint32(nil, cflags)
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint16(data, 0) // no info requests: the server sends NBD_INFO_EXPORT anyway
	b = binary.BigEndian.AppendUint64(b, magicOption)
	b = binary.BigEndian.AppendUint32(b, optGo)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	if _, err := conn.Write(b); err != nil {
		return 0, 0, fmt.Errorf("send NBD_OPT_GO: %w", err)
	}
	var size int64 = -1
	var flags uint16
	for {
		var h [20]byte
		if _, err := io.ReadFull(conn, h[:]); err != nil {
			return 0, 0, fmt.Errorf("read option reply: %w", err)
		}
		if binary.BigEndian.Uint64(h[0:]) != magicOptReply {
			return 0, 0, fmt.Errorf("bad option reply magic")
		}
		typ := binary.BigEndian.Uint32(h[12:])
		n := binary.BigEndian.Uint32(h[16:])
		if n > 64<<10 {
			return 0, 0, fmt.Errorf("option reply too large (%d bytes)", n)
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(conn, p); err != nil {
			return 0, 0, fmt.Errorf("read option reply: %w", err)
		}
		switch {
		case typ == repInfo:
			if len(p) >= 12 && binary.BigEndian.Uint16(p) == infoExport {
				size = int64(binary.BigEndian.Uint64(p[2:]))
				flags = binary.BigEndian.Uint16(p[10:])
			}
		case typ == repAck:
			if size < 0 {
				return 0, 0, fmt.Errorf("server sent no export size")
			}
			return size, flags, nil
		case typ&(1<<31) != 0:
			return 0, 0, fmt.Errorf("%w: export %q: %s (reply %#x)", ErrRefused, export, p, typ)
		}
	}
}

// ReadAt reads len(p) bytes at off.
//
// With a ctx that cannot be cancelled (ctx.Done() == nil, as from
// context.WithoutCancel) the server's data lands in p itself; otherwise in
// a buffer of the client's, copied to p, because an abandoned request
// still completes on the wire after ReadAt returned.
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) error {
	direct := ctx.Done() == nil
	for len(p) > 0 {
		n := min(len(p), MaxRequest)
		buf := p[:n]
		if !direct {
			buf = make([]byte, n)
		}
		if err := c.do(ctx, cmdRead, uint64(off), uint32(n), buf, false); err != nil {
			return err
		}
		if !direct {
			copy(p, buf)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// ReadToPipe reads len(p) bytes at off into a pipe, so that they can be
// spliced on (to /dev/fuse) without passing through the process's memory:
// the socket's pages move into the pipe by reference. w and r are the
// pipe's write and read ends, non-blocking; it must be empty and have room
// for len(p) bytes. inPipe reports where the data is: in the pipe, or in
// p when the pipe ran out of slots (it holds one piece of a received
// packet per page, however small the piece; it is then empty), when the
// connection cannot splice, when ctx can be cancelled (an abandoned
// request would fill the pipe after ReadToPipe returned) or when p is
// larger than one request. After an error the pipe may hold part of the
// data and must be discarded.
func (c *Client) ReadToPipe(ctx context.Context, w, r int, p []byte, off int64) (inPipe bool, err error) {
	if ctx.Done() != nil || len(p) > MaxRequest {
		return false, c.ReadAt(ctx, p, off)
	}
	pd := &pipeDest{w: w, r: r}
	if err := c.doRequest(ctx, &request{cmd: cmdRead, off: uint64(off), length: uint32(len(p)), data: p, pipe: pd, done: make(chan error, 1)}); err != nil {
		return false, err
	}
	return !pd.spilled, nil
}

// WriteAt writes p at off.
//
// The client keeps a copy of each acknowledged write for replay (see
// Config.ReplayLimit), unless Config.NoReplay. With a ctx that cannot be
// cancelled the request goes out from p itself, which stays valid until
// WriteAt returns, and is copied once the server acknowledged it: the
// copy then reads what the socket write has just read, and the send does
// not read a copy that missed the cache. Otherwise p is copied first, because an abandoned
// request still goes out, or is resent, after WriteAt returned.
func (c *Client) WriteAt(ctx context.Context, p []byte, off int64) error {
	direct := ctx.Done() == nil
	for len(p) > 0 {
		n := min(len(p), MaxRequest)
		buf, pooled := p[:n], false
		if !direct {
			buf, pooled = bufpool.Get(n), true
			copy(buf, p[:n])
		}
		if err := c.do(ctx, cmdWrite, uint64(off), uint32(n), buf, pooled); err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// Flush makes every write that returned before it started durable.
func (c *Client) Flush(ctx context.Context) error {
	if c.flags&tfSendFlush == 0 {
		return nil
	}
	c.mu.Lock()
	covered := c.wseq
	c.mu.Unlock()
	if err := c.do(ctx, cmdFlush, 0, 0, nil, false); err != nil {
		return err
	}
	c.mu.Lock()
	c.dropReplay(covered)
	c.mu.Unlock()
	return nil
}

// dropReplay forgets the acknowledged writes up to seq, which a flush
// covered, and recycles their buffers unless a reconnect is resending
// them. Called with mu held.
func (c *Client) dropReplay(seq uint64) {
	i := 0
	for i < len(c.replay) && c.replay[i].seq <= seq {
		r := c.replay[i]
		c.replayN -= int64(len(r.data))
		if r.pooled && !c.replaying {
			bufpool.Put(r.data)
		}
		r.data = nil
		i++
	}
	if i > 0 {
		c.replay = append([]*request(nil), c.replay[i:]...)
	}
}

// Trim tells the server the range is unused (contents undefined after).
func (c *Client) Trim(ctx context.Context, off, length int64) error {
	if c.flags&tfSendTrim == 0 {
		return nil
	}
	return c.ranged(ctx, cmdTrim, off, length)
}

// WriteZeroes makes the range read as zeroes.
func (c *Client) WriteZeroes(ctx context.Context, off, length int64) error {
	if c.flags&tfSendZeroes == 0 {
		zero := make([]byte, min(length, MaxRequest))
		for length > 0 {
			n := min(length, int64(len(zero)))
			if err := c.WriteAt(ctx, zero[:n], off); err != nil {
				return err
			}
			off, length = off+n, length-n
		}
		return nil
	}
	return c.ranged(ctx, cmdWriteZeroes, off, length)
}

func (c *Client) ranged(ctx context.Context, cmd uint16, off, length int64) error {
	for length > 0 {
		n := min(length, 1<<30)
		if err := c.do(ctx, cmd, uint64(off), uint32(n), nil, false); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// do queues one request, sends it when a connection is up and waits for
// its reply. ctx bounds the wait; an abandoned request still completes on
// the wire (its buffers are the client's own).
func (c *Client) do(ctx context.Context, cmd uint16, off uint64, length uint32, data []byte, pooled bool) error {
	return c.doRequest(ctx, &request{cmd: cmd, off: off, length: length, data: data, pooled: pooled, done: make(chan error, 1)})
}

// doRequest is do for a request already made.
func (c *Client) doRequest(ctx context.Context, r *request) error {
	cmd := r.cmd
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	if c.fatal != nil {
		err := c.fatal
		c.mu.Unlock()
		return err
	}
	c.next++
	r.handle = c.next
	c.pending[r.handle] = r
	if s := c.sess; s != nil {
		cn := s.conns[c.rr%len(s.conns)]
		c.rr++
		cn.outq = append(cn.outq, r)
		c.sendQueued(cn)
	}
	c.mu.Unlock()
	select {
	case err := <-r.done:
		if err == nil && cmd == cmdWrite {
			return c.acknowledged(ctx, r)
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// acknowledged keeps a completed write for replay. Past ReplayLimit bytes
// it starts a flush (one at a time) without waiting for it; past twice
// that, the write waits for the flush, which bounds the memory held.
func (c *Client) acknowledged(ctx context.Context, r *request) error {
	if c.cfg.NoReplay {
		if r.pooled { // every byte is in the server's hands: it replied
			bufpool.Put(r.data)
		}
		return nil
	}
	if !r.pooled { // sent from the caller's buffer, which is theirs again on return
		buf := bufpool.Get(len(r.data))
		copy(buf, r.data)
		r.data, r.pooled = buf, true
	}
	c.mu.Lock()
	c.wseq++
	r.seq = c.wseq
	c.replay = append(c.replay, r)
	c.replayN += int64(len(r.data))
	if c.replayN <= c.cfg.ReplayLimit {
		c.mu.Unlock()
		return nil
	}
	ch := c.autoFlush
	if ch == nil && c.closed {
		c.mu.Unlock()
		return nil
	}
	if ch == nil {
		ch = make(chan struct{})
		c.autoFlush = ch
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			err := c.Flush(context.Background())
			if err != nil && !errors.Is(err, ErrClosed) {
				c.log.Warn("flush for the replay limit", "export", c.export, "err", err)
			}
			c.mu.Lock()
			c.autoFlush = nil
			c.mu.Unlock()
			close(ch)
		}()
	}
	wait := c.replayN > 2*c.cfg.ReplayLimit
	c.mu.Unlock()
	if !wait {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// maxCombine bounds how many batches one caller writes for others before
// it hands the rest to a goroutine of its own.
const maxCombine = 8

// sendQueued writes cn's queue unless another caller is doing so (it
// then takes these too). Called with mu held; releases it while writing.
// A failed write closes the connection; its requests stay pending for the
// reconnect to resend. One sender per connection at a time (cn.sending)
// also means a request's buffer is never written by two senders at once:
// a request is resent only on a later session, after its readers stopped,
// and a sender of the old session that still holds it writes it first.
func (c *Client) sendQueued(cn *conn) {
	if cn.sending {
		return
	}
	cn.sending = true
	for rounds := 0; len(cn.outq) > 0 && !cn.sess.dead && !c.closed; rounds++ {
		if rounds == maxCombine {
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				c.mu.Lock()
				cn.sending = false
				c.sendQueued(cn)
				c.mu.Unlock()
			}()
			return
		}
		q := cn.outq
		cn.outq = cn.spareq[:0]
		c.mu.Unlock()
		cn.wmu.Lock()
		err := cn.writeRequests(q)
		cn.wmu.Unlock()
		if err != nil {
			cn.nc.Close() // its read loop notices and the session ends
		}
		c.mu.Lock()
		clear(q)
		cn.spareq = q[:0]
	}
	cn.sending = false
}

// writeRequests writes q as one message: one writev, or, when q ends
// with its only large write, the headers with MSG_MORE and that payload in
// a call of its own (sendmore). Called with wmu held.
func (cn *conn) writeRequests(q []*request) error {
	hdrs := cn.hdrs[:0]
	for _, r := range q {
		hdrs = appendHeader(hdrs, r.cmd, r.handle, r.off, r.length)
	}
	cn.hdrs = hdrs
	iov := cn.iov[:0]
	start := 0
	for i, r := range q {
		if r.cmd != cmdWrite {
			continue
		}
		iov = append(iov, hdrs[start:(i+1)*28], r.data)
		start = (i + 1) * 28
	}
	if start < len(hdrs) {
		iov = append(iov, hdrs[start:])
	}
	err := cn.sw.Write(iov...)
	clear(iov)
	cn.iov = iov[:0]
	return err
}

func appendHeader(b []byte, cmd uint16, handle, off uint64, length uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, magicRequest)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, cmd)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

// readLoop reads replies from cn until it fails; then it ends cn's
// session, and the first to do so starts the reconnect.
func (c *Client) readLoop(cn *conn) {
	defer c.wg.Done()
	err := c.readReplies(cn.nc)
	cn.nc.Close()
	c.mu.Lock()
	s := cn.sess
	first := !s.dead && !c.closed
	if first {
		s.dead = true
		c.sess = nil
		for _, o := range s.conns {
			o.nc.Close()
			o.outq = o.outq[:0] // all of it is pending: the reconnect resends it
		}
		c.wg.Add(1)
	}
	c.mu.Unlock()
	s.readers.Done()
	if first {
		c.log.Warn("nbd connection lost; reconnecting", "addr", c.addr, "export", c.export, "err", err)
		go func() {
			defer c.wg.Done()
			s.readers.Wait() // no old reader still fills or answers a request
			c.reconnect()
		}()
	}
}

func (c *Client) readReplies(conn net.Conn) error {
	br := bufio.NewReaderSize(conn, 64<<10)
	var h [16]byte
	var raw syscall.RawConn // nil: data for pipes is copied, not spliced
	if sc, ok := conn.(syscall.Conn); ok {
		raw, _ = sc.SyscallConn()
	}
	var fill splicepipe.Filler
	for {
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint32(h[0:]) != magicReply {
			return fmt.Errorf("bad reply magic %#x", binary.BigEndian.Uint32(h[0:]))
		}
		errno := binary.BigEndian.Uint32(h[4:])
		handle := binary.BigEndian.Uint64(h[8:])
		// Only the one who takes r out of pending answers it: Close (or
		// a refused reconnect) may have failed it already. A read's data
		// goes into its buffer only after it is taken out, so that no
		// one fails it (and its caller reuses the buffer) meanwhile.
		c.mu.Lock()
		r := c.pending[handle]
		delete(c.pending, handle)
		c.mu.Unlock()
		if r == nil {
			return fmt.Errorf("reply for unknown handle %d", handle)
		}
		if r.cmd == cmdRead && errno == 0 {
			var err error
			if r.pipe != nil && !r.pipe.spilled {
				err = readToPipe(br, raw, &fill, r)
			} else {
				_, err = io.ReadFull(br, r.data)
			}
			if err != nil {
				c.mu.Lock()
				if c.closed {
					r.done <- ErrClosed
				} else {
					c.pending[handle] = r // resent after the reconnect
				}
				c.mu.Unlock()
				return err
			}
		}
		if errno != 0 {
			r.done <- fmt.Errorf("%s at %d+%d: %w", cmdName(r.cmd), r.off, r.length, Errno(errno))
		} else {
			r.done <- nil
		}
	}
}

// readToPipe moves a read reply's data into r.pipe: what br holds of it
// by write(2), the rest spliced from the socket (raw). Bytes a reply on a
// lost connection already moved are skipped. Should the pipe run out of
// slots (or the connection have no descriptor), it spills: what the pipe
// holds is read back into r.data and the rest follows it there.
func readToPipe(br *bufio.Reader, raw syscall.RawConn, fill *splicepipe.Filler, r *request) error {
	p := r.pipe
	left := int(r.length) - p.moved
	if p.moved > 0 { // resent after a lost connection had moved these
		if _, err := br.Discard(p.moved); err != nil {
			return err
		}
	}
	fill.Pipe = p.w
	m, err := fill.Fill(br, raw, left)
	p.moved += m
	if err == nil || !errors.Is(err, splicepipe.ErrFull) {
		return err
	}
	// Spill: from here on the request's data goes to r.data, also when
	// it is resent after a lost connection.
	p.spilled = true
	if err := splicepipe.ReadFull(p.r, r.data[:p.moved]); err != nil {
		return fmt.Errorf("take a read back out of its pipe: %w", err)
	}
	_, err = io.ReadFull(br, r.data[p.moved:])
	return err
}

func cmdName(cmd uint16) string {
	switch cmd {
	case cmdRead:
		return "read"
	case cmdWrite:
		return "write"
	case cmdFlush:
		return "flush"
	case cmdTrim:
		return "trim"
	case cmdWriteZeroes:
		return "write zeroes"
	}
	return fmt.Sprintf("command %d", cmd)
}

// reconnect redials until it succeeds (or the export is refused, or the
// client closes), replays acknowledged unflushed writes, then resends what
// was pending.
func (c *Client) reconnect() {
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		if closed {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		nc, size, _, err := c.handshake(ctx)
		if err == nil && size != c.size {
			nc.Close()
			err = fmt.Errorf("%w: export size changed from %d to %d", ErrRefused, c.size, size)
		}
		if err == nil {
			if err = c.replayWrites(nc); err != nil {
				nc.Close()
			}
		}
		var s *session
		if err == nil {
			s, err = c.dialSession(ctx, nc)
		}
		cancel()
		if err == nil {
			c.mu.Lock()
			if c.closed {
				c.mu.Unlock()
				for _, cn := range s.conns {
					cn.nc.Close()
				}
				return
			}
			c.reconnects++
			resend := make([]*request, 0, len(c.pending))
			for _, r := range c.pending {
				resend = append(resend, r)
			}
			slices.SortFunc(resend, func(a, b *request) int { return cmp.Compare(a.handle, b.handle) })
			for i, r := range resend {
				cn := s.conns[i%len(s.conns)]
				cn.outq = append(cn.outq, r)
			}
			c.cond.Broadcast()
			c.start(s)
			for _, cn := range s.conns {
				c.sendQueued(cn)
			}
			c.mu.Unlock()
			c.log.Info("nbd connection restored", "addr", c.addr, "export", c.export, "attempt", attempt, "resent", len(resend))
			return
		}
		if errors.Is(err, ErrRefused) {
			c.log.Error("nbd export refused on reconnect; failing its I/O", "export", c.export, "err", err)
			c.mu.Lock()
			c.fatal = err
			for h, r := range c.pending {
				delete(c.pending, h)
				r.done <- err
			}
			c.mu.Unlock()
			return
		}
		c.log.Debug("nbd redial failed", "addr", c.addr, "attempt", attempt, "err", err)
		c.mu.Lock()
		if !c.closed {
			t := time.AfterFunc(backoff, func() { c.mu.Lock(); c.cond.Broadcast(); c.mu.Unlock() })
			c.cond.Wait()
			t.Stop()
		}
		c.mu.Unlock()
		backoff = min(backoff*2, c.cfg.MaxBackoff)
	}
}

// replayWrites resends, on a fresh connection and before anything else,
// the writes the old server acknowledged but no flush covered, one after
// another in their original order, and flushes them.
func (c *Client) replayWrites(conn net.Conn) error {
	c.mu.Lock()
	replay := append([]*request(nil), c.replay...)
	datas := make([][]byte, len(replay))
	for i, r := range replay {
		datas[i] = r.data // a racing Flush may drop r (and nil r.data) meanwhile
	}
	upto := c.wseq
	c.replaying = len(replay) > 0
	c.mu.Unlock()
	if len(replay) == 0 {
		return nil
	}
	defer func() {
		c.mu.Lock()
		c.replaying = false
		c.mu.Unlock()
	}()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	defer conn.SetDeadline(time.Time{})
	for i, r := range replay {
		if err := syncRequest(conn, cmdWrite, uint64(i), r.off, datas[i]); err != nil {
			return fmt.Errorf("replay write: %w", err)
		}
	}
	if c.flags&tfSendFlush != 0 {
		if err := syncRequest(conn, cmdFlush, uint64(len(replay)), 0, nil); err != nil {
			return fmt.Errorf("replay flush: %w", err)
		}
		c.mu.Lock()
		c.replaying = false
		c.dropReplay(upto)
		c.mu.Unlock()
	}
	return nil
}

// syncRequest sends one request and reads its reply (no read payload).
func syncRequest(conn net.Conn, cmd uint16, handle, off uint64, data []byte) error {
	b := appendHeader(make([]byte, 0, 28+len(data)), cmd, handle, off, uint32(len(data)))
	b = append(b, data...)
	if _, err := conn.Write(b); err != nil {
		return err
	}
	var h [16]byte
	if _, err := io.ReadFull(conn, h[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint32(h[0:]) != magicReply || binary.BigEndian.Uint64(h[8:]) != handle {
		return fmt.Errorf("unexpected reply")
	}
	if e := binary.BigEndian.Uint32(h[4:]); e != 0 {
		return Errno(e)
	}
	return nil
}

// Close ends the connection (sending NBD_CMD_DISC) and fails what is
// still pending with ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	s := c.sess
	c.cond.Broadcast()
	if s != nil {
		for _, cn := range s.conns {
			cn.outq = cn.outq[:0]
		}
	}
	c.mu.Unlock()
	if s != nil {
		for _, cn := range s.conns {
			// A sender blocked on a server that stopped reading gives
			// up within a second; then the disconnect goes out whole.
			cn.nc.SetWriteDeadline(time.Now().Add(time.Second))
			cn.wmu.Lock()
			cn.nc.Write(appendHeader(nil, cmdDisc, 0, 0, 0))
			cn.wmu.Unlock()
			cn.nc.Close()
		}
	}
	// Only now, with no sender left on a connection, do the requests
	// still waiting fail: a write may be going out from its caller's
	// buffer (WriteAt), which is the caller's again once it returns.
	c.mu.Lock()
	for h, r := range c.pending {
		delete(c.pending, h)
		r.done <- ErrClosed
	}
	c.mu.Unlock()
	c.wg.Wait()
	return nil
}
