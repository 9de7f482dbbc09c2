// Package nbdclient is a small pure-Go NBD client for the Docker plugin's
// FUSE data path: fixed newstyle handshake, NBD_OPT_GO, simple replies,
// READ, WRITE, FLUSH, TRIM and WRITE_ZEROES with many requests in flight on
// one connection.
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
//     those writes (up to ReplayLimit bytes; past it, it flushes on its own
//     to bound the copy) and replays them on the new connection before
//     anything else, so a later Flush covers them again.
//
// Lock order: Client.mu only; no other lock is held while taking it.
package nbdclient

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"
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
	// ReplayLimit bounds the bytes of acknowledged, unflushed writes kept
	// for replay; 0 means 64 MiB.
	ReplayLimit int64
	// MaxBackoff caps the wait between redials; 0 means 2 s.
	MaxBackoff time.Duration
}

type request struct {
	cmd    uint16
	handle uint64
	off    uint64
	length uint32
	data   []byte // write payload, or read buffer
	done   chan error
	seq    uint64 // order among acknowledged writes (replay list)
}

// Client is one NBD export, safe for concurrent use.
type Client struct {
	addr, export string
	cfg          Config
	log          *slog.Logger

	size  int64
	flags uint16

	mu         sync.Mutex
	cond       *sync.Cond // signalled when conn changes or closed
	conn       net.Conn   // nil while reconnecting
	gen        int        // connection generation
	pending    map[uint64]*request
	next       uint64
	replay     []*request // acknowledged writes not yet covered by a flush, by seq
	replayN    int64
	wseq       uint64
	writeMu    sync.Mutex // serialises writes to conn (taken without mu)
	closed     bool
	fatal      error
	wg         sync.WaitGroup
	reconnects int
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
	c := &Client{addr: addr, export: export, cfg: cfg, log: cfg.Logger, pending: map[uint64]*request{}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.cond = sync.NewCond(&c.mu)
	conn, size, flags, err := c.handshake(ctx)
	if err != nil {
		return nil, err
	}
	c.size, c.flags = size, flags
	c.conn = conn
	c.wg.Add(1)
	go c.readLoop(conn, 0)
	return c, nil
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
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) error {
	for len(p) > 0 {
		n := min(len(p), MaxRequest)
		buf := make([]byte, n) // the server's data lands here even if ctx ends first
		if err := c.do(ctx, cmdRead, uint64(off), uint32(n), buf); err != nil {
			return err
		}
		copy(p, buf)
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// WriteAt writes p at off.
func (c *Client) WriteAt(ctx context.Context, p []byte, off int64) error {
	for len(p) > 0 {
		n := min(len(p), MaxRequest)
		// A copy: the request may be replayed after the caller's buffer is reused.
		if err := c.do(ctx, cmdWrite, uint64(off), uint32(n), append([]byte(nil), p[:n]...)); err != nil {
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
	if err := c.do(ctx, cmdFlush, 0, 0, nil); err != nil {
		return err
	}
	c.mu.Lock()
	c.dropReplay(covered)
	c.mu.Unlock()
	return nil
}

// dropReplay forgets the acknowledged writes up to seq, which a flush
// covered. Called with mu held.
func (c *Client) dropReplay(seq uint64) {
	i := 0
	for i < len(c.replay) && c.replay[i].seq <= seq {
		c.replayN -= int64(len(c.replay[i].data))
		i++
	}
	c.replay = append([]*request(nil), c.replay[i:]...)
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
		if err := c.do(ctx, cmd, uint64(off), uint32(n), nil); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// do queues one request, sends it when a connection is up and waits for
// its reply. ctx bounds the wait; an abandoned request still completes on
// the wire (its buffers are the client's own).
func (c *Client) do(ctx context.Context, cmd uint16, off uint64, length uint32, data []byte) error {
	r := &request{cmd: cmd, off: off, length: length, data: data, done: make(chan error, 1)}
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
	conn, gen := c.conn, c.gen
	c.mu.Unlock()
	if conn != nil {
		c.send(conn, gen, r)
	}
	select {
	case err := <-r.done:
		if err == nil && cmd == cmdWrite {
			c.mu.Lock()
			c.wseq++
			r.seq = c.wseq
			c.replay = append(c.replay, r)
			c.replayN += int64(len(r.data))
			over := c.replayN > c.cfg.ReplayLimit
			c.mu.Unlock()
			if over {
				return c.Flush(ctx)
			}
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// send writes r to conn unless the connection changed; a failed write
// leaves r pending for the reconnect to resend.
func (c *Client) send(conn net.Conn, gen int, r *request) {
	b := make([]byte, 28, 28+len(r.data))
	binary.BigEndian.PutUint32(b[0:], magicRequest)
	binary.BigEndian.PutUint16(b[4:], 0)
	binary.BigEndian.PutUint16(b[6:], r.cmd)
	binary.BigEndian.PutUint64(b[8:], r.handle)
	binary.BigEndian.PutUint64(b[16:], r.off)
	binary.BigEndian.PutUint32(b[24:], r.length)
	if r.cmd == cmdWrite {
		b = append(b, r.data...)
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.mu.Lock()
	stale := c.gen != gen || c.conn != conn
	c.mu.Unlock()
	if stale {
		return // the reconnect resends it
	}
	if _, err := conn.Write(b); err != nil {
		conn.Close() // the read loop notices and reconnects
	}
}

// readLoop reads replies from conn until it fails, then reconnects.
func (c *Client) readLoop(conn net.Conn, gen int) {
	defer c.wg.Done()
	err := c.readReplies(conn)
	conn.Close()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.conn = nil
	c.gen++
	c.mu.Unlock()
	c.log.Warn("nbd connection lost; reconnecting", "addr", c.addr, "export", c.export, "err", err)
	c.reconnect()
}

func (c *Client) readReplies(conn net.Conn) error {
	var h [16]byte
	for {
		if _, err := io.ReadFull(conn, h[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint32(h[0:]) != magicReply {
			return fmt.Errorf("bad reply magic %#x", binary.BigEndian.Uint32(h[0:]))
		}
		errno := binary.BigEndian.Uint32(h[4:])
		handle := binary.BigEndian.Uint64(h[8:])
		c.mu.Lock()
		r := c.pending[handle]
		c.mu.Unlock()
		if r == nil {
			return fmt.Errorf("reply for unknown handle %d", handle)
		}
		if r.cmd == cmdRead && errno == 0 {
			if _, err := io.ReadFull(conn, r.data); err != nil {
				return err
			}
		}
		// Close (or a refused reconnect) may have failed r meanwhile: only
		// the one who takes it out of pending answers it.
		c.mu.Lock()
		_, still := c.pending[handle]
		delete(c.pending, handle)
		c.mu.Unlock()
		if !still {
			continue
		}
		if errno != 0 {
			r.done <- fmt.Errorf("%s at %d+%d: %w", cmdName(r.cmd), r.off, r.length, Errno(errno))
		} else {
			r.done <- nil
		}
	}
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
		conn, size, _, err := c.handshake(ctx)
		cancel()
		if err == nil && size != c.size {
			conn.Close()
			err = fmt.Errorf("%w: export size changed from %d to %d", ErrRefused, c.size, size)
		}
		if err == nil {
			if err = c.replayWrites(conn); err != nil {
				conn.Close()
			}
		}
		if err == nil {
			c.mu.Lock()
			c.conn = conn
			c.gen++
			gen := c.gen
			c.reconnects++
			var resend []*request
			for _, r := range c.pending {
				resend = append(resend, r)
			}
			c.cond.Broadcast()
			c.mu.Unlock()
			sortByHandle(resend)
			c.log.Info("nbd connection restored", "addr", c.addr, "export", c.export, "attempt", attempt, "resent", len(resend))
			c.wg.Add(1)
			go c.readLoop(conn, gen)
			for _, r := range resend {
				c.send(conn, gen, r)
			}
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
	upto := c.wseq
	c.mu.Unlock()
	if len(replay) == 0 {
		return nil
	}
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	defer conn.SetDeadline(time.Time{})
	for i, r := range replay {
		if err := syncRequest(conn, cmdWrite, uint64(i), r.off, r.data); err != nil {
			return fmt.Errorf("replay write: %w", err)
		}
	}
	if c.flags&tfSendFlush != 0 {
		if err := syncRequest(conn, cmdFlush, uint64(len(replay)), 0, nil); err != nil {
			return fmt.Errorf("replay flush: %w", err)
		}
		c.mu.Lock()
		c.dropReplay(upto)
		c.mu.Unlock()
	}
	return nil
}

// syncRequest sends one request and reads its reply (no read payload).
func syncRequest(conn net.Conn, cmd uint16, handle, off uint64, data []byte) error {
	b := make([]byte, 28, 28+len(data))
	binary.BigEndian.PutUint32(b[0:], magicRequest)
	binary.BigEndian.PutUint16(b[6:], cmd)
	binary.BigEndian.PutUint64(b[8:], handle)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], uint32(len(data)))
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

func sortByHandle(rs []*request) {
	for i := 1; i < len(rs); i++ {
		for j := i; j > 0 && rs[j].handle < rs[j-1].handle; j-- {
			rs[j], rs[j-1] = rs[j-1], rs[j]
		}
	}
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
	conn := c.conn
	c.cond.Broadcast()
	for h, r := range c.pending {
		delete(c.pending, h)
		r.done <- ErrClosed
	}
	c.mu.Unlock()
	if conn != nil {
		c.writeMu.Lock()
		b := make([]byte, 28)
		binary.BigEndian.PutUint32(b[0:], magicRequest)
		binary.BigEndian.PutUint16(b[6:], cmdDisc)
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		conn.Write(b)
		c.writeMu.Unlock()
		conn.Close()
	}
	c.wg.Wait()
	return nil
}
