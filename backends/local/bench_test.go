package local

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"testing"
)

// BenchmarkDevice measures the local device alone: 4k and 1M reads and
// writes at random aligned offsets of a 256 MiB file in the page cache.
//
//	go test -run - -bench Device -benchmem ./backends/local
func BenchmarkDevice(b *testing.B) {
	const size = 256 << 20
	for _, bc := range []struct {
		name  string
		bs    int
		write bool
	}{{"read/bs=4k", 4 << 10, false}, {"write/bs=4k", 4 << 10, true}, {"read/bs=1M", 1 << 20, false}, {"write/bs=1M", 1 << 20, true}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			d, err := CreateScratch(filepath.Join(b.TempDir(), "vol"), size)
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
