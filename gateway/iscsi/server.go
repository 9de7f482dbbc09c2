package iscsi

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-io/ferry/gateway/internal/acceptor"
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

// allows reports whether the allow-list lets initiator in; iSCSI names
// compare without regard to case (RFC 3722).
func (a Access) allows(initiator string) bool {
	return len(a.Initiators) == 0 || slices.ContainsFunc(a.Initiators, func(s string) bool { return strings.EqualFold(s, initiator) })
}

// ReservationStore keeps each volume's SCSI persistent reservations, so
// that registrations made with APTPL survive a gateway restart.
type ReservationStore interface {
	LoadPR(ctx context.Context, volume string) ([]byte, error)
	SavePR(ctx context.Context, volume string, state []byte) error
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
	// Reservations, when set, persists persistent-reservation state;
	// without it, APTPL is refused.
	Reservations ReservationStore
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

	acc *acceptor.Acceptor

	mu    sync.Mutex
	tsih  uint16
	units map[string]*unit // by volume name
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
	s := &Server{cfg: cfg, exports: exports, log: cfg.Logger.With("frontend", "iscsi"), m: newMetrics(cfg.Registerer), units: map[string]*unit{}}
	s.acc = acceptor.New(acceptor.Config{Name: "iscsi", Logger: s.log, MaxConns: cfg.MaxConns, Conns: s.m.conns, Refused: s.m.refused, Panics: s.m.panics})
	return s
}

// TargetName is the IQN of a volume's target: BASE:VOLUME, and for a
// snapshot export VOLUME@SNAPSHOT (an IQN has no '@') BASE:VOLUME:SNAPSHOT.
func (s *Server) TargetName(vol string) string {
	return s.cfg.BaseIQN + ":" + strings.Replace(vol, "@", ":", 1)
}

// volumeOf returns the export a target name names.
func (s *Server) volumeOf(target string) (string, bool) {
	v, ok := strings.CutPrefix(target, s.cfg.BaseIQN+":")
	return strings.Replace(v, ":", "@", 1), ok && v != ""
}

func (s *Server) access(ctx context.Context, vol string) (Access, error) {
	if s.cfg.Access == nil {
		return Access{}, nil
	}
	return s.cfg.Access(ctx, vol)
}

// Serve accepts connections on l until ctx ends or Shutdown is called, and
// then returns nil. It closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	return s.acc.Serve(ctx, l, func(nc net.Conn) acceptor.Conn { return newConn(s, nc) })
}

// Shutdown stops accepting, closes every connection after its commands in
// flight are answered, and waits for them; when ctx ends first the rest
// are closed at once.
func (s *Server) Shutdown(ctx context.Context) error { return s.acc.Shutdown(ctx) }

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
	refused  prometheus.Counter
	panics   prometheus.Counter
	logins   *prometheus.CounterVec
	cmdGood  prometheus.Counter // commands by status, resolved once
	cmdCheck prometheus.Counter
	// Digest errors, by the segment that failed.
	headerDigest, dataDigest prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) metrics {
	m := metrics{
		conns:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_iscsi_connections", Help: "Open iSCSI connections."}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_iscsi_connections_refused_total", Help: "iSCSI connections refused at the connection limit."}),
		panics:  prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_iscsi_panics_total", Help: "iSCSI connections ended by a recovered panic."}),
		logins:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_iscsi_logins_total", Help: "iSCSI logins by result."}, []string{"result"}),
	}
	commands := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_iscsi_commands_total", Help: "SCSI commands by status."}, []string{"status"})
	m.cmdGood, m.cmdCheck = commands.WithLabelValues("good"), commands.WithLabelValues("check_condition")
	digestErrs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_iscsi_digest_errors_total", Help: "iSCSI PDUs received with a wrong CRC32C digest, by segment (header: the connection ends; data: the PDU is rejected)."}, []string{"segment"})
	m.headerDigest, m.dataDigest = digestErrs.WithLabelValues("header"), digestErrs.WithLabelValues("data")
	if reg != nil {
		reg.MustRegister(m.conns, m.refused, m.panics, m.logins, commands, digestErrs)
	}
	return m
}
