package iscsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-io/ferry/gateway/volume"
)

// DefaultBaseIQN prefixes every target name: a volume NAME is the target
// DefaultBaseIQN + ":" + NAME.
const DefaultBaseIQN = "iqn.2026-11.io.ferry"

// Access is who may log in to one volume's target.
type Access struct {
	// CHAPUser and CHAPSecret, when set, require the initiator to
	// authenticate with CHAP.
	CHAPUser, CHAPSecret string
	// MutualUser and MutualSecret, when set, are what the target answers
	// an initiator's mutual CHAP challenge with.
	MutualUser, MutualSecret string
	// Initiators, when not empty, lists the initiator IQNs allowed in.
	Initiators []string
}

func (a Access) allows(initiator string) bool {
	return len(a.Initiators) == 0 || slices.Contains(a.Initiators, initiator)
}

// Config configures a Server.
type Config struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// BaseIQN prefixes target names (default DefaultBaseIQN).
	BaseIQN string
	// Access returns the access rules for a volume; nil lets every
	// initiator in without authentication.
	Access func(ctx context.Context, volume string) (Access, error)
	// MaxConns bounds concurrent connections (default 256).
	MaxConns int
	// LoginTimeout bounds the login phase (default 15s).
	LoginTimeout time.Duration
}

// Server serves volumes as iSCSI targets.
type Server struct {
	cfg     Config
	exports volume.Exports
	log     *slog.Logger
	m       metrics

	mu     sync.Mutex
	ls     []net.Listener
	conns  map[*conn]struct{}
	closed bool
	wg     sync.WaitGroup
	tsih   uint16
}

// NewServer returns a server for exports.
func NewServer(exports volume.Exports, cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.BaseIQN == "" {
		cfg.BaseIQN = DefaultBaseIQN
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 256
	}
	if cfg.LoginTimeout <= 0 {
		cfg.LoginTimeout = 15 * time.Second
	}
	return &Server{cfg: cfg, exports: exports, log: cfg.Logger, m: newMetrics(cfg.Registerer), conns: map[*conn]struct{}{}}
}

// TargetName is the IQN of a volume's target.
func (s *Server) TargetName(vol string) string { return s.cfg.BaseIQN + ":" + vol }

// volumeOf returns the volume a target name names.
func (s *Server) volumeOf(target string) (string, bool) {
	v, ok := strings.CutPrefix(target, s.cfg.BaseIQN+":")
	return v, ok && v != ""
}

func (s *Server) access(ctx context.Context, vol string) (Access, error) {
	if s.cfg.Access == nil {
		return Access{}, nil
	}
	return s.cfg.Access(ctx, vol)
}

// Serve accepts connections on l until Shutdown or ctx ends.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.ls = append(s.ls, l)
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("iscsi: accept: %w", err)
		}
		s.mu.Lock()
		if s.closed || len(s.conns) >= s.cfg.MaxConns {
			s.mu.Unlock()
			s.log.Warn("iSCSI connection refused: too many connections", "remote", nc.RemoteAddr().String())
			nc.Close()
			continue
		}
		c := newConn(s, nc)
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.m.conns.Inc()
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				s.m.conns.Dec()
			}()
			defer func() {
				if r := recover(); r != nil {
					s.m.panics.Inc()
					s.log.Error("iSCSI connection panicked; closed it", "remote", c.remote, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
					c.nc.Close()
				}
			}()
			c.serve(ctx)
		}()
	}
}

// Shutdown stops accepting, closes every connection after its commands in
// flight finish, and waits for them (or ctx).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	for _, l := range s.ls {
		l.Close()
	}
	for c := range s.conns {
		c.shutdown()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.nc.Close()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}

func (s *Server) nextTSIH() uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tsih++
	if s.tsih == 0 {
		s.tsih = 1
	}
	return s.tsih
}

type metrics struct {
	conns    prometheus.Gauge
	panics   prometheus.Counter
	logins   *prometheus.CounterVec
	commands *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) metrics {
	m := metrics{
		conns:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_iscsi_connections", Help: "Open iSCSI connections."}),
		panics:   prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_iscsi_panics_total", Help: "iSCSI connections ended by a recovered panic."}),
		logins:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_iscsi_logins_total", Help: "iSCSI logins by result."}, []string{"result"}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_iscsi_commands_total", Help: "SCSI commands by status."}, []string{"status"}),
	}
	if reg != nil {
		reg.MustRegister(m.conns, m.panics, m.logins, m.commands)
	}
	return m
}
