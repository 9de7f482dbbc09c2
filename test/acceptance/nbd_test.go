package acceptance

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// nbdinfo --json through the daemon: size and every capability Ferry
// advertises; a resize is seen by the next connection.
func TestNBDInfoThroughGateway(t *testing.T) {
	nbdinfo := testutil.RequireTool(t, "nbdinfo")
	g := startGateway(t)
	g.mustCLI("volume", "create", "vol", "--size", "1G")
	check := func(wantSize int64) {
		t.Helper()
		var info struct {
			Exports []struct {
				Name         string   `json:"export-name"`
				Size         int64    `json:"export-size"`
				CanFlush     bool     `json:"can_flush"`
				CanFUA       bool     `json:"can_fua"`
				CanTrim      bool     `json:"can_trim"`
				CanZero      bool     `json:"can_zero"`
				CanMultiConn bool     `json:"can_multi_conn"`
				Contexts     []string `json:"contexts"`
			} `json:"exports"`
		}
		out := run(t, 30*time.Second, nbdinfo, "--json", g.uri("vol"))
		if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
			t.Fatalf("nbdinfo output: %v\n%s", err, out)
		}
		e := info.Exports[0]
		if e.Size != wantSize || !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero || !e.CanMultiConn {
			t.Errorf("nbdinfo export = %+v, want size %d and flush/fua/trim/zero/multi-conn", e, wantSize)
		}
		if !strings.Contains(strings.Join(e.Contexts, ","), "base:allocation") {
			t.Errorf("contexts %v lack base:allocation", e.Contexts)
		}
	}
	check(1 << 30)
	g.mustCLI("volume", "resize", "vol", "--size", "3G")
	check(3 << 30)
	out := run(t, 30*time.Second, nbdinfo, "--list", "nbd://"+g.nbdAddr)
	if !strings.Contains(out, "vol") {
		t.Errorf("nbdinfo --list does not show the volume:\n%s", out)
	}
	if out, err := runErr(30*time.Second, nbdinfo, g.uri("missing")); err == nil {
		t.Errorf("nbdinfo of an unknown export succeeded:\n%s", out)
	}
}

// qemu-io writes patterns, reads them back, discards and zeroes; data
// survives a clean restart; allocation shows in volume info.
func TestQemuIOThroughGatewayAndRestart(t *testing.T) {
	testutil.RequireTool(t, "qemu-io")
	g := startGateway(t)
	g.mustCLI("volume", "create", "q", "--size", "256M")
	uri := g.uri("q")
	io := func(cmds ...string) string { return qemuIOCheck(t, uri, cmds...) }
	io("read -P 0 0 256M") // fresh volume reads as zeroes
	io("write -P 0xa5 0 8M", "write -P 0x5a 100M 1M", "write -P 0x11 255M 1M", "flush")
	io("read -P 0xa5 0 8M", "read -P 0x5a 100M 1M", "read -P 0x11 255M 1M", "read -P 0 8M 92M")
	io("discard 1M 2M", "write -z 100M 64k")
	io("read -P 0xa5 0 1M", "read -P 0 1M 2M", "read -P 0xa5 3M 5M", "read -P 0 100M 64k", "read -P 0x5a 102464k 960k")
	if in := g.info("q"); in.Allocated == 0 || in.Allocated > 16<<20 {
		t.Errorf("allocated %d: want more than 0 and well under the 256 MiB provisioned", in.Allocated)
	}
	if err := g.stop(); err != nil {
		t.Fatalf("clean stop: %v\n%s", err, g.logs)
	}
	g.start()
	io("read -P 0xa5 0 1M", "read -P 0 1M 2M", "read -P 0x11 255M 1M")
}

// nbdcopy a random 256 MiB image in and back out through the daemon; a
// sparse source keeps its holes (seen through BLOCK_STATUS).
func TestNBDCopyRoundTripAndSparse(t *testing.T) {
	nbdcopy := testutil.RequireTool(t, "nbdcopy")
	nbdinfo := testutil.RequireTool(t, "nbdinfo")
	g := startGateway(t)
	g.mustCLI("volume", "create", "c", "--size", "256M")
	g.mustCLI("volume", "create", "sparse", "--size", "256M")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	data := make([]byte, 256<<20)
	rand.Read(data)
	os.WriteFile(src, data, 0o600)
	run(t, 2*time.Minute, nbdcopy, src, g.uri("c"))
	back := filepath.Join(dir, "back.img")
	run(t, 2*time.Minute, nbdcopy, g.uri("c"), back)
	got, _ := os.ReadFile(back)
	if !bytes.Equal(got, data) {
		t.Fatal("image copied out differs from the one copied in")
	}

	// Sparse source: 1 MiB of data at 0 and at 128 MiB, holes elsewhere.
	sp := filepath.Join(dir, "sparse.img")
	f, _ := os.Create(sp)
	f.Truncate(256 << 20)
	f.WriteAt(data[:1<<20], 0)
	f.WriteAt(data[:1<<20], 128<<20)
	f.Close()
	run(t, 2*time.Minute, nbdcopy, sp, g.uri("sparse"))
	out := run(t, 30*time.Second, nbdinfo, "--map", "--json", g.uri("sparse"))
	var ext []struct {
		Offset int64 `json:"offset"`
		Length int64 `json:"length"`
		Type   int   `json:"type"`
	}
	if err := json.Unmarshal([]byte(out), &ext); err != nil {
		t.Fatalf("nbdinfo --map: %v\n%s", err, out)
	}
	var holes, data2 int64
	for _, e := range ext {
		if e.Type&1 != 0 {
			holes += e.Length
		} else {
			data2 += e.Length
		}
	}
	if holes < 200<<20 || data2 < 2<<20 {
		t.Errorf("BLOCK_STATUS after sparse copy: %d bytes of holes, %d of data; want ~254 MiB holes, 2 MiB data\n%s", holes, data2, out)
	}
	if in := g.info("sparse"); in.Allocated > 8<<20 {
		t.Errorf("sparse copy allocated %d bytes", in.Allocated)
	}
}

// fio random writes at depth 32 over two connections with crc32c verify.
func TestFioVerifyTwoConnections(t *testing.T) {
	fio := testutil.RequireTool(t, "fio")
	g := startGateway(t)
	g.mustCLI("volume", "create", "f", "--size", "512M")
	out := run(t, 5*time.Minute, fio, "--name=verify", "--ioengine=nbd", "--verify_state_save=0", "--uri="+g.uri("f"),
		"--rw=randwrite", "--bs=4k", "--iodepth=32", "--numjobs=2", "--size=128M", "--offset_increment=128M",
		"--verify=crc32c", "--verify_fatal=1", "--output-format=json")
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"read"`
			Write struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &res); err != nil {
		t.Fatalf("fio json: %v\n%s", err, out)
	}
	if len(res.Jobs) != 2 {
		t.Fatalf("fio ran %d jobs", len(res.Jobs))
	}
	for i, j := range res.Jobs {
		if j.Error != 0 || j.Write.IOBytes != 128<<20 || j.Read.IOBytes != 128<<20 {
			t.Errorf("fio job %d: error %d, wrote %d, verified %d bytes", i, j.Error, j.Write.IOBytes, j.Read.IOBytes)
		}
	}
}

// TestNBDThreadPerConnectionWithRealClients: with
// --nbd-thread-per-connection (the default, named here), fio over two
// connections at once (random writes of 4 KiB to 1 MiB, then a verify),
// qemu-io and nbdcopy are served by connections outside the runtime's
// poller (ferry_nbd_thread_connections counts them while they run, and
// each waits for requests on its thread or parked in the poller: the
// gauges of those move too), and the data reads back; once every client
// has left, the three gauges read 0.
func TestNBDThreadPerConnectionWithRealClients(t *testing.T) {
	fio := testutil.RequireTool(t, "fio")
	nbdcopy := testutil.RequireTool(t, "nbdcopy")
	testutil.RequireTool(t, "qemu-io")
	g := startGateway(t, "--nbd-thread-per-connection")
	g.mustCLI("volume", "create", "tp", "--size", "256M")
	uri := g.uri("tp")
	stop := sampleThreadGauges(g, 10*time.Millisecond)
	run(t, 3*time.Minute, fio, "--name=tp", "--ioengine=nbd", "--uri="+uri, "--numjobs=2", "--offset_increment=64M",
		"--rw=randwrite", "--bsrange=4k-1M", "--iodepth=16", "--size=64M", "--verify=crc32c", "--do_verify=1",
		"--verify_fatal=1", "--group_reporting", "--output=/dev/null")
	m, w := 0.0, 0.0
	for _, s := range stop() {
		m, w = max(m, s.conns), max(w, s.waiting+s.parked)
	}
	if m != 2 || w < 1 {
		t.Errorf("ferry_nbd_thread_connections reached %v, waiting and parked ones together %v, while fio's two jobs ran; want 2 and at least 1", m, w)
	}
	qemuIOCheck(t, uri, "write -P 0x6e 200M 1M", "write -P 0x6f 210M 4k", "flush", "read -P 0x6e 200M 1M", "read -P 0x6f 210M 4k", "read -P 0 220M 4k")
	img := filepath.Join(t.TempDir(), "tp.img")
	run(t, 2*time.Minute, nbdcopy, uri, img)
	// Copied back over itself: nbdcopy writes over several connections.
	run(t, 2*time.Minute, nbdcopy, img, uri)
	qemuIOCheck(t, uri, "read -P 0x6e 200M 1M", "read -P 0x6f 210M 4k")
	// The last connection's socket closes just after it stops counting.
	for _, name := range []string{"ferry_nbd_thread_connections", "ferry_nbd_thread_waiting_connections", "ferry_nbd_thread_parked_connections"} {
		n := g.metric(t, name)
		for deadline := time.Now().Add(5 * time.Second); n != 0 && time.Now().Before(deadline); n = g.metric(t, name) {
			time.Sleep(20 * time.Millisecond)
		}
		if n != 0 {
			t.Errorf("%s is %v after every client left", name, n)
		}
	}
}

// TestNBDThreadedConnectionsShareOneCPU: a gateway confined to one CPU
// (one processor for the runtime) lets no connection wait for requests on
// its own thread, where it would keep the processor from everything else:
// with two fio jobs at queue depth 1 on two connections, both park in the
// poller (before, the second got a few hundred requests a second, with
// waits of 10-20 ms), and the data verifies. Checked through the gauges
// while both run. A lone fio job at queue depth 1 is served by brief holds
// (threadsock: a quiet connection waits up to 200 µs on its thread before
// it parks, while nothing else is ready), and with two clients the holds
// give way to the other connection's requests (yielded).
func TestNBDThreadedConnectionsShareOneCPU(t *testing.T) {
	fio := testutil.RequireTool(t, "fio")
	taskset := testutil.RequireTool(t, "taskset")
	g := newGateway(t, t.TempDir())
	g.prefix = []string{taskset, "-c", "0"}
	g.start()
	g.mustCLI("volume", "create", "one", "--size", "64M")
	run(t, 3*time.Minute, fio, "--ioengine=nbd", "--uri="+g.uri("one"), "--rw=randwrite", "--bs=4k", "--iodepth=1",
		"--size=16M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--name=lone", "--output=/dev/null")
	served, yielded0 := g.metric(t, `ferry_nbd_thread_brief_holds_total{outcome="served"}`), g.metric(t, `ferry_nbd_thread_brief_holds_total{outcome="yielded"}`)
	if served == 0 {
		t.Fatalf("a lone client at queue depth 1 on one CPU: no request was served by a brief hold (%v holds yielded)", yielded0)
	}
	t.Logf("a lone client: %v requests served by brief holds, %v holds yielded", served, yielded0)
	stop := sampleThreadGauges(g, 5*time.Millisecond)
	run(t, 3*time.Minute, fio, "--ioengine=nbd", "--uri="+g.uri("one"), "--rw=randwrite", "--bs=4k", "--iodepth=1",
		"--numjobs=2", "--offset_increment=32M", "--size=16M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
		"--name=one", "--group_reporting", "--output=/dev/null")
	samples := stop()
	both, parked := 0, false
	for _, s := range samples {
		if s.waiting != 0 {
			t.Fatalf("%v connections waited on their thread (%v attached, %v parked) on one CPU, want none", s.waiting, s.conns, s.parked)
		}
		if s.conns == 2 {
			both++
			parked = parked || s.parked == 2
		}
	}
	if both == 0 || !parked {
		t.Fatalf("%d samples of %d with both connections attached, both parked in one: %v; want some, and both parked", both, len(samples), parked)
	}
	yielded := g.metric(t, `ferry_nbd_thread_brief_holds_total{outcome="yielded"}`) - yielded0
	if yielded == 0 {
		t.Fatalf("two clients on one CPU: no brief hold gave way to the other connection")
	}
	t.Logf("%d samples with both attached, none waiting on a thread; %v brief holds yielded", both, yielded)
}

// threadGauges is one scrape of the gateway's thread-per-connection
// gauges.
type threadGauges struct{ conns, waiting, parked float64 }

// sampleThreadGauges scrapes g's three thread-per-connection gauges every
// interval until the returned stop is called, which returns the scrapes
// that read all three.
func sampleThreadGauges(g *gateway, every time.Duration) (stop func() []threadGauges) {
	var samples []threadGauges
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			case <-time.After(every):
			}
			c, err1 := g.metricNow("ferry_nbd_thread_connections")
			w, err2 := g.metricNow("ferry_nbd_thread_waiting_connections")
			p, err3 := g.metricNow("ferry_nbd_thread_parked_connections")
			if err1 == nil && err2 == nil && err3 == nil {
				samples = append(samples, threadGauges{c, w, p})
			}
		}
	}()
	return func() []threadGauges {
		close(quit)
		<-done
		return samples
	}
}

// With `ferry serve --nbd-poll`, real clients get their data as without
// it: fio writes 4k blocks at queue depth 1 (the load polling is for) and
// verifies them, qemu-io writes and reads back patterns; the gateway's
// polls found requests. A gateway without the flag never polls.
func TestNBDPollWithRealClients(t *testing.T) {
	fio := testutil.RequireTool(t, "fio")
	testutil.RequireTool(t, "qemu-io")
	// A window longer than fio takes to send its next request on a
	// loaded machine, so that some polls hit.
	g := startGateway(t, "--nbd-poll", "2ms")
	g.mustCLI("volume", "create", "p", "--size", "64M")
	uri := g.uri("p")
	run(t, 2*time.Minute, fio, "--name=poll", "--ioengine=nbd", "--uri="+uri, "--rw=randwrite", "--bs=4k", "--iodepth=1",
		"--size=16M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--output=/dev/null")
	qemuIOCheck(t, g.uri("p"), "write -P 0x7e 32M 4k", "write -P 0x7f 40M 4k", "flush", "read -P 0x7e 32M 4k", "read -P 0x7f 40M 4k", "read -P 0 36M 4k")
	hits, misses := g.metric(t, `ferry_nbd_polls_total{result="hit"}`), g.metric(t, `ferry_nbd_polls_total{result="miss"}`)
	if hits == 0 {
		t.Errorf("--nbd-poll: %v polls hit, %v missed; want some hits", hits, misses)
	}
	t.Logf("--nbd-poll 2ms: %v polls hit, %v missed", hits, misses)

	plain := startGateway(t)
	plain.mustCLI("volume", "create", "p", "--size", "64M")
	qemuIOCheck(t, plain.uri("p"), "write -P 0x7e 32M 4k", "write -P 0x7f 40M 4k", "read -P 0x7e 32M 4k", "read -P 0x7f 40M 4k")
	if n := plain.metric(t, `ferry_nbd_polls_total{result="hit"}`) + plain.metric(t, `ferry_nbd_polls_total{result="miss"}`); n != 0 {
		t.Errorf("a gateway without --nbd-poll polled %v times", n)
	}
}
