//go:build !race

package bufpool

import "testing"

// A recycled buffer comes back without allocating (the race detector
// makes sync.Pool drop items at random, hence the build tag).
func TestNoAllocation(t *testing.T) {
	Put(Get(4096))
	if n := testing.AllocsPerRun(100, func() { Put(Get(4096)) }); n != 0 {
		t.Fatalf("%v allocations per Get and Put", n)
	}
}
