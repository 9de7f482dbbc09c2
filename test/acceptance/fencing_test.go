package acceptance

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// Fencing with a slow S3 link: A reaches the bucket through a proxy that
// delays every byte by 150 ms each way and publishes a recovery point
// every second while a client keeps rewriting one region with a new
// pattern, so uploads and manifests of A are in flight when B steals the
// lease and land after it. B must serve exactly one of A's recovery
// points plus its own writes, never a mix; once A learns, every write it
// is sent fails; and a third gateway adopting after B sees B's image, not
// anything A uploaded late.
func TestStealFencesOverSlowS3(t *testing.T) {
	qemuIO := testutil.RequireTool(t, "qemu-io")
	const bucket = "ferry-slow-steal"
	srv := s3Env(t, bucket)
	proxy := testutil.StartDelayProxy(t, strings.TrimPrefix(srv.Endpoint, "http://"), 150*time.Millisecond)
	common := []string{"--lease-ttl", "9s", "--cache-size", "2G"}
	a := startGateway(t, append(common, "--checkpoint-interval", "1s")...)
	b := startGateway(t, append(common, "--checkpoint-interval", "1h")...)
	a.mustCLI("store", "add", "cloud", "--endpoint", proxy.Endpoint, "--bucket", bucket)
	b.mustCLI("store", "add", "cloud", "--endpoint", srv.Endpoint, "--bucket", bucket)
	a.mustCLI("volume", "create", "vm1", "--size", "256M", "--store", "cloud")
	run(t, 2*time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x11 0 64M", "-c", "flush", a.uri("vm1"))
	a.mustCLI("volume", "checkpoint", "vm1")

	// The client on A rewrites the first MiB with pattern 0x20, 0x21, ...
	// and flushes after each; acked records what A acknowledged.
	var mu sync.Mutex
	acked := map[byte]bool{0x11: true}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for p := byte(0x20); ; p++ {
			select {
			case <-stop:
				return
			default:
			}
			out, err := runErr(time.Minute, qemuIO, "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x 0 1M", p), "-c", "flush", a.uri("vm1"))
			if err == nil && !strings.Contains(out, "failed") {
				mu.Lock()
				acked[p] = true
				mu.Unlock()
			}
			if p == 0xff {
				p = 0x1f
			}
		}
	}()
	time.Sleep(3 * time.Second) // several of A's recovery points are in flight
	r := b.cli("volume", "adopt", "cloud", "vm1", "--steal")
	if r.code != 0 || !strings.Contains(r.stdout, "took the writer lease from") {
		t.Fatalf("adopt --steal: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(a.mustCLI("volume", "info", "vm1"), "lease:        lost") {
		if time.Now().After(deadline) {
			t.Fatalf("A never noticed the steal:\n%s", a.mustCLI("volume", "info", "vm1"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// From the moment A knows, every write it is sent fails.
	for i := 0; i < 3; i++ {
		out, _ := runErr(time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x33 0 4k", "-c", "flush", a.uri("vm1"))
		if !strings.Contains(out, "Operation not permitted") {
			t.Fatalf("a write to A after it learnt it lost the lease did not fail with EPERM:\n%s", out)
		}
	}
	close(stop)
	<-done
	time.Sleep(2 * time.Second) // let A's delayed uploads land in the bucket

	// B: the first MiB is one pattern A acknowledged, whole; the rest is
	// A's first recovery point.
	readHead := func(g *gateway) byte {
		t.Helper()
		cmd := testutil.Nbdsh(t, "-u", g.uri("vm1"), "-c", "import sys; sys.stdout.buffer.write(h.pread(1 << 20, 0))")
		b, err := cmd.Output()
		if err != nil || len(b) != 1<<20 {
			t.Fatalf("read the first MiB: %v (%d bytes)", err, len(b))
		}
		if !bytes.Equal(b, bytes.Repeat(b[:1], len(b))) {
			t.Fatalf("the first MiB mixes patterns: starts %#x, %d bytes differ from it", b[0], len(b)-bytes.Count(b, b[:1]))
		}
		return b[0]
	}
	head := readHead(b)
	mu.Lock()
	ok := acked[head]
	mu.Unlock()
	if !ok {
		t.Fatalf("B serves pattern %#x in the first MiB, which A never acknowledged", head)
	}
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x11 1M 63M", "-c", "read -P 0 64M 1M", b.uri("vm1"))
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x44 128M 1M", "-c", "flush", b.uri("vm1"))
	b.mustCLI("volume", "checkpoint", "vm1")
	b.exportAndCompare("vm1")

	// A third gateway adopting after B sees B's image, not A's late work.
	b.mustCLI("volume", "release", "vm1")
	c := startGateway(t, append(common, "--checkpoint-interval", "1h")...)
	c.mustCLI("store", "add", "cloud", "--endpoint", srv.Endpoint, "--bucket", bucket)
	c.mustCLI("volume", "adopt", "cloud", "vm1")
	if got := readHead(c); got != head {
		t.Fatalf("C serves pattern %#x in the first MiB, B served %#x", got, head)
	}
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x11 1M 63M", "-c", "read -P 0x44 128M 1M", c.uri("vm1"))
	c.exportAndCompare("vm1")
}
