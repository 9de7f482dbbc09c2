package tier

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/ferry-io/ferry/backends/store"
)

// BenchmarkCacheHit measures the tier's cache-hit path: 4k and 1M reads
// and writes at random aligned offsets over a 64 MiB volume whose chunks
// are all in a cache that holds them (no store traffic in the timed loop).
//
//	go test -run - -bench CacheHit -benchmem ./backends/tier
func BenchmarkCacheHit(b *testing.B) {
	const size = 64 << 20
	for _, bc := range []struct {
		name  string
		bs    int
		write bool
	}{{"read/bs=4k", 4 << 10, false}, {"write/bs=4k", 4 << 10, true}, {"read/bs=1M", 1 << 20, false}, {"write/bs=1M", 1 << 20, true}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			d, err := Open(ctx, Config{Dir: b.TempDir(), Store: store.NewMem(), Size: size, ChunkSize: 4 << 20,
				CacheBytes: 2 * size, Uploaders: 2})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			fill := make([]byte, 1<<20)
			for off := int64(0); off < size; off += int64(len(fill)) {
				if err := d.WriteAt(ctx, fill, off); err != nil {
					b.Fatal(err)
				}
			}
			p := make([]byte, bc.bs)
			rng := rand.New(rand.NewPCG(1, 2))
			blocks := uint64(size / bc.bs)
			b.SetBytes(int64(bc.bs))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				off := int64(rng.Uint64N(blocks)) * int64(bc.bs)
				if bc.write {
					err = d.WriteAt(ctx, p, off)
				} else {
					err = d.ReadAt(ctx, p, off)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
