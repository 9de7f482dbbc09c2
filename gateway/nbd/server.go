// Package nbd is Ferry's NBD frontend: a fixed-newstyle NBD server that
// serves every volume of a volume.Exports as an export of the same name.
//
// It negotiates NBD_OPT_GO/INFO/LIST/ABORT/EXPORT_NAME, structured replies
// and the base:allocation meta context, and handles READ, WRITE, FLUSH,
// FUA, TRIM, WRITE_ZEROES (honouring NO_HOLE), CACHE, BLOCK_STATUS and DISC
// with many requests in flight per connection, replies completing out of
// order. See docs/NBD.md.
package nbd

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-io/ferry/gateway/internal/acceptor"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/threadsock"
	"github.com/ferry-io/ferry/internal/tlspsk"
)

// Config tunes a Server. The zero value is usable.
type Config struct {
	// TLS, when set, lets clients upgrade with NBD_OPT_STARTTLS. Its
	// ClientAuth decides whether clients must present certificates; a
	// verified certificate's subject common name is the client's TLS
	// identity, which volumes' access rules can name.
	TLS *tls.Config
	// PSK, when set, lets clients upgrade with NBD_OPT_STARTTLS to TLS 1.3
	// with a pre-shared key (internal/tlspsk); the PSK identity is the
	// client's TLS identity. With TLS set too, a client whose ClientHello
	// offers a pre-shared key gets the PSK server, any other crypto/tls.
	PSK *tlspsk.Config
	// RequireTLS refuses every option but STARTTLS and ABORT before TLS
	// (NBD_REP_ERR_TLS_REQD): the server's "forced TLS" mode.
	RequireTLS bool
	// Logger receives connection-level events; nil discards them.
	Logger *slog.Logger
	// Registerer receives the server's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// HandshakeTimeout bounds option haggling; default 30s.
	HandshakeTimeout time.Duration
	// MaxInflightBytes bounds the request payloads and read buffers one
	// connection holds at once; default 128 MiB.
	MaxInflightBytes int64
	// MaxConns bounds concurrent connections; default 1024.
	MaxConns int
	// InlineBudget is how long a worker may execute a request while
	// keeping the reading turn before another worker takes over reading
	// (between one and two budgets: a watchdog checks once per budget);
	// default 200µs.
	InlineBudget time.Duration
	// SpliceWrites lets a write payload of more than 64 KiB and at most
	// 1 MiB on a plain socket (not TLS) go from the socket into a pipe and
	// from the pipe into a device that implements device.PipeWriter: one
	// copy instead of two; such a payload is written before the next
	// request is read while writes are fast (conn.writeNow). Off by
	// default: on loopback the pipe holds the client's pages until the
	// file has them, and in some states of the machine's memory (after 4k
	// random writes, in scripts/bench) that made the client's sends cost
	// almost twice as much and 1M writes' p99 latency five times nbdkit's
	// (docs/NBD.md).
	SpliceWrites bool
	// Poll is how long a connection with no request in flight watches
	// its socket for the client's next request before its reader goes to
	// sleep (conn.poll); 0, the default, never. It saves the sleep and the
	// wake-up, which on a virtual machine's idle CPUs cost more than a
	// small request: 4k QD1 with the client on a CPU of its own, 1.1-2x
	// the IOPS. But the poll takes a CPU for up to Poll, and with the
	// client on the same CPUs 4k QD32 reads measured 0.62-1.06x of the
	// default (docs/NBD.md, "Polling"): for clients on other machines and a
	// gateway with CPU to spare. A connection stops polling for a while
	// when its client pauses longer, and at most half the processors (at
	// least one) poll at once.
	Poll time.Duration
	// ThreadPerConn serves each plain connection (TCP or Unix, not TLS),
	// up to MaxThreadConns at once, outside the Go runtime's network
	// poller once it is attached (internal/threadsock): while its client
	// keeps requests in flight, its reader waits for the client in
	// ppoll(2) on its own thread, as nbdkit's does in recv(2), and the
	// socket's arrivals wake no other thread; while the client waits for
	// each reply, or sends nothing, its reads park in the poller again
	// (conn.parkReads), and with one processor they always do, a quiet
	// connection's after a brief hold (threadsock's Brief holds). With the
	// client on the gateway's CPUs, 1M QD8 writes measured 1.14-1.27x of
	// the poller's rate, other workloads level (docs/NBD.md, "A thread
	// per connection"). ferry serve turns it on by default.
	ThreadPerConn bool
	// MaxThreadConns bounds the connections ThreadPerConn serves at once
	// (each holds a thread while it waits); the rest use the poller.
	// Default 64.
	MaxThreadConns int
	// Workers is the number of requests one connection executes at once,
	// and at most as many again reads of 1 MiB or more (they have
	// executors of their own); default 16.
	Workers int

	// slowWrite overrides the slowWrite constant, for tests.
	slowWrite time.Duration
}

// Server serves a set of exports over NBD.
type Server struct {
	exports volume.Exports
	cfg     Config
	log     *slog.Logger
	m       *metrics

	acc *acceptor.Acceptor
	// executors is how many goroutines one connection runs large reads
	// on while they come from the page cache (conn.dispatch).
	executors int
	// pollers counts the connections polling (conn.poll), at most
	// maxPollers at once.
	pollers    atomic.Int32
	maxPollers int32
	// threadConns counts the connections served outside the runtime's
	// poller (Config.ThreadPerConn).
	threadConns atomic.Int32
	// waiters bounds the threaded connections whose reads wait on their
	// threads at once (one fewer than the processors, at least one);
	// the others' reads park in the poller (threadsock.Waiters).
	waiters threadsock.Waiters
}

// NewServer returns a server for exports.
func NewServer(exports volume.Exports, cfg Config) *Server {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 30 * time.Second
	}
	if cfg.MaxInflightBytes <= 0 {
		cfg.MaxInflightBytes = 128 << 20
	}
	if cfg.MaxInflightBytes < maxPayload {
		cfg.MaxInflightBytes = maxPayload
	}
	if cfg.InlineBudget <= 0 {
		cfg.InlineBudget = 200 * time.Microsecond
	}
	if cfg.slowWrite <= 0 {
		cfg.slowWrite = slowWrite
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 16
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 1024
	}
	if cfg.MaxThreadConns <= 0 {
		cfg.MaxThreadConns = 64
	}
	if cfg.TLS != nil && cfg.PSK != nil && !cfg.TLS.SessionTicketsDisabled {
		// STARTTLS routes a ClientHello that carries pre_shared_key to
		// the PSK server; a certificate client resuming a crypto/tls
		// session carries its ticket there too and would be refused.
		// With both kinds of client on one port, no tickets.
		cfg.TLS = cfg.TLS.Clone()
		cfg.TLS.SessionTicketsDisabled = true
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		exports: exports,
		cfg:     cfg,
		log:     log.With("frontend", "nbd"),
		// Twice the processors. More lost: 16 for 1M QD8 reads on two CPUs,
		// 0.81-0.87x of nbdkit against 0.90-0.97x with 4 (likely because
		// each read then wakes an idle executor, where a few busy ones
		// take the next read from the queue without sleeping).
		executors:  min(cfg.Workers, max(4, 2*runtime.GOMAXPROCS(0))),
		maxPollers: int32(max(1, runtime.GOMAXPROCS(0)/2)),
	}
	s.m = newMetrics(cfg.Registerer, &s.waiters)
	s.acc = acceptor.New(acceptor.Config{Name: "nbd", Logger: s.log, MaxConns: cfg.MaxConns, Conns: s.m.conns, Refused: s.m.refused, Panics: s.m.panics})
	return s
}

// Serve accepts connections on l until ctx ends or Shutdown is called, and
// then returns nil. It closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	return s.acc.Serve(ctx, l, func(nc net.Conn) acceptor.Conn { return newConn(s, nc) })
}

// Shutdown stops accepting, lets every connection finish the requests it
// has already read, sends their replies and closes it. When ctx ends first,
// the remaining connections are closed at once and ctx's error returned.
func (s *Server) Shutdown(ctx context.Context) error { return s.acc.Shutdown(ctx) }

// metrics are the server's Prometheus series, resolved once so the request
// path does no label lookups.
type metrics struct {
	conns    prometheus.Gauge
	refused  prometheus.Counter
	panics   prometheus.Counter
	requests [numCommands + 1]prometheus.Counter
	errors   [numCommands + 1]prometheus.Counter
	readB    prometheus.Counter
	writeB   prometheus.Counter
	// polls found the next request (hit) or gave up (miss).
	pollHit, pollMiss prometheus.Counter
	// threadConns: connections served outside the runtime's poller;
	// waiting and parked: those whose reads wait on their thread, or in
	// the poller (read from the server's Waiters when scraped).
	threadConns     prometheus.Gauge
	waiting, parked prometheus.GaugeFunc
}

// newMetrics makes the server's series; w is the server's Waiters, whose
// counts two gauges read when scraped.
func newMetrics(reg prometheus.Registerer, w *threadsock.Waiters) *metrics {
	conns := prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_nbd_connections", Help: "Open NBD connections."})
	refused := prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_nbd_connections_refused_total", Help: "NBD connections refused at the connection limit."})
	panics := prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_nbd_panics_total", Help: "Panics recovered while serving NBD connections."})
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_nbd_requests_total", Help: "NBD requests by command."}, []string{"command"})
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_nbd_request_errors_total", Help: "NBD requests answered with an error, by command."}, []string{"command"})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_nbd_bytes_total", Help: "NBD payload bytes by direction."}, []string{"direction"})
	polls := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_nbd_polls_total", Help: "Times an NBD connection with no request in flight watched its socket for the next one, by whether it came (hit) or the poll gave up (miss)."}, []string{"result"})
	threadConns := prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_nbd_thread_connections", Help: "NBD connections served by a thread of their own, outside the runtime's network poller (--nbd-thread-per-connection)."})
	waiting := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_nbd_thread_waiting_connections", Help: "Of ferry_nbd_thread_connections, those whose reads wait for requests on their own thread (at most one fewer than GOMAXPROCS: none with one processor)."},
		func() float64 { return float64(w.Waiting()) })
	parked := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_nbd_thread_parked_connections", Help: "Of ferry_nbd_thread_connections, those whose reads wait for requests in the runtime's network poller."},
		func() float64 { return float64(w.Parked()) })
	holds := func(outcome string, f func() uint64) prometheus.CounterFunc {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ferry_nbd_thread_brief_holds_total",
			Help:        "With one processor, waits of quiet NBD connections for their next request on their own thread before they park, by whether the request came (served) or other work was ready first (yielded). docs/NBD.md.",
			ConstLabels: prometheus.Labels{"outcome": outcome}}, func() float64 { return float64(f()) })
	}
	held := holds("served", func() uint64 { r, _ := w.Held(); return r })
	yielded := holds("yielded", func() uint64 { _, y := w.Held(); return y })
	m := &metrics{conns: conns, refused: refused, panics: panics, readB: bytes.WithLabelValues("read"), writeB: bytes.WithLabelValues("write"),
		pollHit: polls.WithLabelValues("hit"), pollMiss: polls.WithLabelValues("miss"), threadConns: threadConns,
		waiting: waiting, parked: parked}
	for i := range m.requests {
		name := "unknown"
		if i < numCommands {
			name = commandNames[i]
		}
		m.requests[i] = reqs.WithLabelValues(name)
		m.errors[i] = errs.WithLabelValues(name)
	}
	if reg != nil {
		reg.MustRegister(conns, refused, panics, reqs, errs, bytes, polls, threadConns, waiting, parked, held, yielded)
	}
	return m
}

func (m *metrics) cmd(typ uint16) int {
	if int(typ) < numCommands {
		return int(typ)
	}
	return numCommands
}
