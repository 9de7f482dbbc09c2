package acceptor

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type fakeConn struct {
	nc    net.Conn
	panic bool
}

func (c *fakeConn) Serve(context.Context) {
	if c.panic {
		panic("boom")
	}
	buf := make([]byte, 1)
	c.nc.Read(buf) // until Drain or Close
	c.nc.Close()
}
func (c *fakeConn) Drain() { c.nc.SetReadDeadline(time.Now()) }
func (c *fakeConn) Close() { c.nc.Close() }

// A panicking connection is counted and closed; the acceptor goes on
// serving, refuses past the limit, and Shutdown drains the rest.
func TestPanicLimitShutdown(t *testing.T) {
	panics := prometheus.NewCounter(prometheus.CounterOpts{Name: "p"})
	refused := prometheus.NewCounter(prometheus.CounterOpts{Name: "r"})
	a := New(Config{Name: "test", MaxConns: 1, Panics: panics, Refused: refused})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	done := make(chan error, 1)
	go func() {
		done <- a.Serve(context.Background(), l, func(nc net.Conn) Conn {
			n++
			return &fakeConn{nc: nc, panic: n == 1}
		})
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := dial()
	first.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := first.Read(make([]byte, 1)); err == nil {
		t.Fatal("the panicking connection was not closed")
	}
	if got := testutil.ToFloat64(panics); got != 1 {
		t.Fatalf("panics = %v", got)
	}
	second := dial() // served: the slot the panic freed
	defer second.Close()
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(refused) == 0 {
		c := dial() // past the limit: closed at once
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("no connection refused at the limit")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
}
