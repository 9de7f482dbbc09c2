//go:build !race

package nbd

import (
	"testing"

	"github.com/ferry-io/ferry/internal/benchutil"
)

// TestRequestPathAllocatesNothing: in the steady state a request costs
// no heap allocation, read or write, 4k or 1M, one at a time or many in
// flight (docs/NBD.md), on the local pool's device. BenchmarkRequestPath's
// client allocates nothing per request either, so any allocation counted
// is the server's. (The race detector makes sync.Pool drop items at
// random, hence the build tag.)
func TestRequestPathAllocatesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("runs four benchmarks")
	}
	for _, w := range []struct {
		write  bool
		bs, qd int
	}{{false, 4 << 10, 32}, {true, 4 << 10, 32}, {false, 1 << 20, 8}, {true, 1 << 20, 8}} {
		r := testing.Benchmark(func(b *testing.B) {
			benchRequests(b, benchutil.Device(b, "local"), w.write, w.bs, w.qd)
		})
		name := map[bool]string{false: "read", true: "write"}[w.write] + " " + benchutil.SizeName(w.bs)
		if r.N == 0 {
			t.Fatalf("%s: the benchmark failed", name)
		}
		if a := r.AllocsPerOp(); a != 0 {
			t.Errorf("%s at QD%d: %d allocations per request (%d over %d requests)", name, w.qd, a, r.MemAllocs, r.N)
		}
	}
}
