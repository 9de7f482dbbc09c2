package tier_test

import (
	"context"
	"testing"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/backends/tier"
	"github.com/ferry-io/ferry/internal/benchutil"
)

// BenchmarkCacheHit measures the tier's cache-hit path: 4k and 1M reads
// and writes at random aligned offsets over a 64 MiB volume whose chunks
// are all in a cache that holds them (no store traffic in the timed loop).
//
//	go test -run - -bench CacheHit -benchmem ./backends/tier
func BenchmarkCacheHit(b *testing.B) {
	const size = 64 << 20
	benchutil.RandomIO(b, size, func(b *testing.B) device.Device {
		d, err := tier.Open(context.Background(), tier.Config{Dir: b.TempDir(), Store: store.NewMem(), Size: size, ChunkSize: 4 << 20,
			CacheBytes: 2 * size, Uploaders: 2})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { d.Close() })
		return d
	})
}
