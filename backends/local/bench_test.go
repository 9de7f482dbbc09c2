package local_test

import (
	"path/filepath"
	"testing"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/local"
	"github.com/ferry-io/ferry/internal/benchutil"
)

// BenchmarkDevice measures the local device alone: 4k and 1M reads and
// writes at random aligned offsets of a 256 MiB file in the page cache.
//
//	go test -run - -bench Device -benchmem ./backends/local
func BenchmarkDevice(b *testing.B) {
	benchutil.RandomIO(b, 256<<20, func(b *testing.B) device.Device {
		d, err := local.CreateScratch(filepath.Join(b.TempDir(), "vol"), 256<<20)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { d.Close() })
		return d
	})
}
