package testutil

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// DelayProxy forwards TCP connections from a loopback port to an upstream
// address and holds every chunk of bytes, in each direction, for a delay
// before passing it on: latency, as a WAN link to a cloud bucket has, not
// a bandwidth limit. Tests use it to make races with a slow S3 server real.
type DelayProxy struct {
	Addr     string // host:port to dial instead of the upstream
	Endpoint string // http://Addr
	upstream string
	delay    atomic.Int64 // nanoseconds
	l        net.Listener
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]bool
}

// StartDelayProxy starts a proxy to upstream (host:port) that delays by d;
// it stops when the test ends.
func StartDelayProxy(t testing.TB, upstream string, d time.Duration) *DelayProxy {
	t.Helper()
	l := Listen(t)
	p := &DelayProxy{Addr: l.Addr().String(), upstream: upstream, l: l, conns: map[net.Conn]bool{}}
	p.Endpoint = "http://" + p.Addr
	p.delay.Store(int64(d))
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// SetDelay changes the delay for bytes read from now on.
func (p *DelayProxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

func (p *DelayProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.upstream)
		if err != nil {
			c.Close()
			continue
		}
		if !p.track(c, up) {
			return
		}
		p.wg.Add(2)
		go p.pipe(up, c)
		go p.pipe(c, up)
	}
}

func (p *DelayProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		p.conns[c] = true
	}
	return true
}

// pipe copies src to dst, each chunk delivered its delay after it arrived.
func (p *DelayProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	type chunk struct {
		b  []byte
		at time.Time
	}
	q := make(chan chunk, 4096)
	go func() {
		defer close(q)
		for {
			b := make([]byte, 64<<10)
			n, err := src.Read(b)
			if n > 0 {
				q <- chunk{b[:n], time.Now().Add(time.Duration(p.delay.Load()))}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range q {
		time.Sleep(time.Until(c.at))
		if _, err := dst.Write(c.b); err != nil {
			break
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	for range q { // the reader ends when src closes
	}
}

func (p *DelayProxy) close() {
	p.l.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}
