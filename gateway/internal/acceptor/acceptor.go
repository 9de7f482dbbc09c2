// Package acceptor is what every frontend's server shares: accepting
// connections on any number of listeners, a connection limit, tracking
// live connections, and a shutdown that drains them.
package acceptor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Conn is one connection a frontend serves.
type Conn interface {
	// Serve handles the connection until it ends, and closes it.
	Serve(ctx context.Context)
	// Drain asks the connection to stop reading requests, answer those
	// already read, and end.
	Drain()
	// Close ends the connection at once.
	Close()
}

// Config configures an Acceptor.
type Config struct {
	// Name prefixes errors ("nbd", "iscsi").
	Name   string
	Logger *slog.Logger
	// MaxConns bounds live connections; more are closed on accept.
	MaxConns int
	// Conns and Refused, when set, count live and refused connections;
	// Panics counts connections ended by a panic in Serve.
	Conns   prometheus.Gauge
	Refused prometheus.Counter
	Panics  prometheus.Counter
}

// Acceptor accepts and tracks connections.
type Acceptor struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[Conn]struct{}
	shutdown  bool
	wg        sync.WaitGroup // one per connection goroutine
}

// New returns an acceptor.
func New(cfg Config) *Acceptor {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Acceptor{cfg: cfg, log: log, listeners: map[net.Listener]struct{}{}, conns: map[Conn]struct{}{}}
}

// Serve accepts connections on l, serving each with newConn(nc).Serve,
// until ctx ends or Shutdown is called, and then returns nil. It closes l.
func (a *Acceptor) Serve(ctx context.Context, l net.Listener, newConn func(net.Conn) Conn) error {
	a.mu.Lock()
	if a.shutdown {
		a.mu.Unlock()
		l.Close()
		return nil
	}
	a.listeners[l] = struct{}{}
	a.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer func() {
		a.mu.Lock()
		delete(a.listeners, l)
		a.mu.Unlock()
		l.Close()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || a.isShutdown() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Temporary failures (EMFILE and friends): back off, go on.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			a.log.Warn("accept failed; retrying", "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
				continue
			case <-ctx.Done():
				return nil
			}
		}
		backoff = 0
		c, ok := a.track(nc, newConn)
		if !ok {
			nc.Close()
			continue
		}
		go func() {
			defer a.wg.Done()
			defer func() {
				r := recover()
				if r == nil {
					a.untrack(c)
					return
				}
				// A panic ends only this connection. It is counted,
				// logged and its slot freed before the connection is
				// closed, so whoever sees the close also sees the count
				// and can connect again.
				if a.cfg.Panics != nil {
					a.cfg.Panics.Inc()
				}
				a.log.Error("panic serving connection; closing it", "remote", nc.RemoteAddr().String(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				a.untrack(c)
				c.Close()
			}()
			c.Serve(ctx)
		}()
	}
}

func (a *Acceptor) isShutdown() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.shutdown
}

func (a *Acceptor) track(nc net.Conn, newConn func(net.Conn) Conn) (Conn, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.shutdown {
		return nil, false
	}
	if a.cfg.MaxConns > 0 && len(a.conns) >= a.cfg.MaxConns {
		if a.cfg.Refused != nil {
			a.cfg.Refused.Inc()
		}
		a.log.Warn("connection refused: too many connections", "remote", nc.RemoteAddr().String(), "max", a.cfg.MaxConns)
		return nil, false
	}
	c := newConn(nc)
	a.conns[c] = struct{}{}
	a.wg.Add(1)
	if a.cfg.Conns != nil {
		a.cfg.Conns.Inc()
	}
	return c, true
}

func (a *Acceptor) untrack(c Conn) {
	a.mu.Lock()
	delete(a.conns, c)
	a.mu.Unlock()
	if a.cfg.Conns != nil {
		a.cfg.Conns.Dec()
	}
}

// Shutdown stops accepting and drains every connection. When ctx ends
// first, the remaining connections are closed at once, their goroutines
// waited for, and ctx's error returned.
func (a *Acceptor) Shutdown(ctx context.Context) error {
	a.mu.Lock()
	a.shutdown = true
	for l := range a.listeners {
		l.Close()
	}
	for c := range a.conns {
		c.Drain()
	}
	a.mu.Unlock()

	done := make(chan struct{})
	go func() {
		a.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		a.mu.Lock()
		for c := range a.conns {
			c.Close()
		}
		a.mu.Unlock()
		<-done
		return fmt.Errorf("%s shutdown: %w", a.cfg.Name, ctx.Err())
	}
}
