package acceptor

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
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
	served := make(chan struct{}) // closed when the second connection is served
	done := make(chan error, 1)
	go func() {
		done <- a.Serve(context.Background(), l, func(nc net.Conn) Conn {
			n++
			if n == 2 {
				close(served)
			}
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
	// closed reads c in the background and sends the error that ends the
	// read: the server closing c, never a deadline.
	closed := func(c net.Conn) <-chan error {
		ch := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 1))
			ch <- err
		}()
		return ch
	}
	isClose := func(err error) bool {
		return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
	}

	first := dial()
	defer first.Close()
	if err := <-closed(first); !isClose(err) {
		t.Fatalf("the panicking connection was not closed: read: %v", err)
	}
	if got := testutil.ToFloat64(panics); got != 1 {
		t.Fatalf("panics = %v", got)
	}

	second := dial() // served: the slot the panic freed
	defer second.Close()
	secondClosed := closed(second)
	select {
	case <-served:
	case err := <-secondClosed:
		t.Fatalf("the connection after the panic was not served (refused %v): read: %v", testutil.ToFloat64(refused), err)
	}

	third := dial() // past the limit: closed at once
	defer third.Close()
	if err := <-closed(third); !isClose(err) {
		t.Fatalf("the connection past the limit was not closed: read: %v", err)
	}
	if got := testutil.ToFloat64(refused); got != 1 {
		t.Fatalf("refused = %v", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if err := <-secondClosed; !isClose(err) {
		t.Fatalf("shutdown did not drain the served connection: read: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
}
