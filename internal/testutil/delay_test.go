package testutil

import (
	"io"
	"net"
	"testing"
	"time"
)

func TestDelayProxy(t *testing.T) {
	l := Listen(t)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	p := StartDelayProxy(t, l.Addr().String(), 100*time.Millisecond)
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through the proxy: %q, %v", buf, err)
	}
	// Two hops of 100 ms: a lower bound only, which any machine meets.
	if rtt := time.Since(start); rtt < 200*time.Millisecond {
		t.Errorf("round trip %v through a 100 ms proxy, want at least 200 ms", rtt)
	}
}
