package acceptance

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// crashCycles is the number of kill -9 cycles; FERRY_CRASH_CYCLES raises it
// for the long mode.
func crashCycles(t *testing.T, def int) int {
	if s := os.Getenv("FERRY_CRASH_CYCLES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("FERRY_CRASH_CYCLES=%q", s)
		}
		return n
	}
	return def
}

const epochSize = 8 << 20

// fioEpoch writes (or, with verify, checks) one epoch: 8 MiB of random 4k
// writes at depth 16 into a region never written before, with a FLUSH every
// 64 writes and one at the end (end_fsync). fio exits 0 only when every
// write and the final FLUSH were acknowledged.
func fioEpoch(fio, uri string, off int64, verify bool) (string, error) {
	args := []string{"--name=epoch", "--ioengine=nbd", "--verify_state_save=0", "--uri=" + uri,
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=" + strconv.Itoa(epochSize),
		"--offset=" + strconv.FormatInt(off, 10), "--verify=crc32c", "--randrepeat=1",
		"--output-format=json"}
	if verify {
		args = append(args, "--verify_only=1", "--verify_fatal=1")
	} else {
		args = append(args, "--do_verify=0", "--fsync=64", "--end_fsync=1")
	}
	return runErr(2*time.Minute, fio, args...)
}

// crashCycle has fio write epochs from *next on, kills the gateway with
// SIGKILL after pause, restarts it, and returns the epochs fio completed
// (acknowledged and flushed) before the kill.
func crashCycle(g *gateway, fio, uri string, next *int64, pause time.Duration) []int64 {
	done := make(chan []int64)
	go func() {
		var ok []int64
		for {
			off := *next
			*next += epochSize
			if _, err := fioEpoch(fio, uri, off, false); err != nil {
				done <- ok
				return
			}
			ok = append(ok, off)
		}
	}()
	time.Sleep(pause)
	g.kill9()
	ok := <-done
	g.start()
	return ok
}

// checkEpoch verifies one completed epoch and that fio really read it all.
func checkEpoch(t *testing.T, fio, uri string, off int64) {
	t.Helper()
	out, err := fioEpoch(fio, uri, off, true)
	if err != nil {
		t.Fatalf("epoch at %d MiB was acknowledged and flushed before the crash but does not verify: %v\n%s", off>>20, err, out)
	}
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if i := strings.Index(out, "{"); i < 0 || json.Unmarshal([]byte(out[i:]), &res) != nil || len(res.Jobs) != 1 {
		t.Fatalf("fio verify output:\n%s", out)
	}
	if j := res.Jobs[0]; j.Error != 0 || j.Read.IOBytes != epochSize {
		t.Fatalf("epoch at %d MiB: fio error %d, verified %d of %d bytes", off>>20, j.Error, j.Read.IOBytes, epochSize)
	}
}

// TestKill9UnderFlushingFioLoad kills the gateway with SIGKILL at random
// moments while fio writes and flushes, restarts it, and checks that every
// write acknowledged before a completed FLUSH reads back intact — after
// that crash and after every later one.
func TestKill9UnderFlushingFioLoad(t *testing.T) {
	kill9UnderFlushingFioLoad(t, crashCycles(t, 20))
}

// TestKill9PollerConnections is the same with every connection served
// through the runtime's poller (the default serves busy connections from
// a thread of their own).
func TestKill9PollerConnections(t *testing.T) {
	kill9UnderFlushingFioLoad(t, crashCycles(t, 5), "--nbd-thread-per-connection=false")
}

// kill9UnderFlushingFioLoad runs cycles kill -9 cycles against a gateway
// started with extra flags.
func kill9UnderFlushingFioLoad(t *testing.T, cycles int, extra ...string) {
	fio := testutil.RequireTool(t, "fio")
	// On a loaded machine fio may complete no epoch before a short kill:
	// the run window then grows, and cycles go on (up to three times as
	// many) until as many epochs as cycles were flushed.
	maxCycles := 3 * cycles
	g := startGateway(t, extra...)
	g.mustCLI("volume", "create", "crash", "--size", fmt.Sprintf("%d", int64(maxCycles)*64*epochSize))
	uri := g.uri("crash")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	var durable []int64 // offsets of epochs fio completed (acknowledged + flushed)
	next := int64(0)
	interrupted := 0
	window := 1500 * time.Millisecond
	for c := 0; c < maxCycles && (c < cycles || len(durable) < cycles); c++ {
		completed := crashCycle(g, fio, uri, &next, 200*time.Millisecond+time.Duration(rng.Int64N(int64(window-200*time.Millisecond))))
		interrupted++
		if len(completed) == 0 && window < 8*time.Second {
			window *= 2
		}
		durable = append(durable, completed...)
		for _, off := range completed {
			checkEpoch(t, fio, uri, off)
		}
	}
	if len(durable) < cycles {
		t.Fatalf("only %d epochs completed in %d cycles: the test did not exercise enough flushed data", len(durable), interrupted)
	}
	// Everything flushed in every cycle survived all the later crashes too.
	for _, off := range durable {
		checkEpoch(t, fio, uri, off)
	}
	t.Logf("%d kill -9 cycles, %d flushed epochs (%d MiB) verified after every crash, %d epochs cut by a crash",
		interrupted, len(durable), len(durable)*epochSize>>20, interrupted)
}

// TestKill9DuringCatalogChanges kills the gateway while volumes are being
// created and removed: after restart the catalog loads, every acknowledged
// create is there, every acknowledged remove is gone, and no volume file
// is left without a catalog entry.
func TestKill9DuringCatalogChanges(t *testing.T) {
	cycles := crashCycles(t, 10)
	g := startGateway(t)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	want := map[string]bool{} // acknowledged state: name -> exists
	n := 0
	for c := 0; c < cycles; c++ {
		type result struct {
			name    string
			create  bool
			success bool
		}
		results := make(chan result, 1000)
		stop := make(chan struct{})
		go func() {
			defer close(results)
			for {
				select {
				case <-stop:
					return
				default:
				}
				n++
				name := fmt.Sprintf("v%d", n)
				r := g.cli("volume", "create", name, "--size", "1G")
				results <- result{name, true, r.code == 0}
				if r.code != 0 {
					return
				}
				if n%3 == 0 {
					r := g.cli("volume", "rm", name)
					results <- result{name, false, r.code == 0}
					if r.code != 0 {
						return
					}
				}
			}
		}()
		time.Sleep(time.Duration(100+rng.IntN(400)) * time.Millisecond)
		g.kill9()
		close(stop)
		uncertain := ""
		for r := range results {
			if r.success {
				want[r.name] = r.create
			} else {
				uncertain = r.name
			}
		}
		g.start()
		var list []volumeInfo
		if err := json.Unmarshal([]byte(g.mustCLI("volume", "ls", "--json")), &list); err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, v := range list {
			have[v.Name] = true
		}
		for name, exists := range want {
			if name == uncertain {
				continue
			}
			if have[name] != exists {
				t.Fatalf("cycle %d: volume %s exists=%v after restart, but its last acknowledged operation left exists=%v", c, name, have[name], exists)
			}
		}
		if uncertain != "" {
			want[uncertain] = have[uncertain]
		}
		files, _ := filepath.Glob(filepath.Join(g.data, "pool", "vol-*.img"))
		if len(files) != len(list) {
			t.Fatalf("cycle %d: %d volume files for %d volumes: orphans left behind", c, len(files), len(list))
		}
	}
	if len(want) == 0 {
		t.Fatal("no catalog operation completed")
	}
}
