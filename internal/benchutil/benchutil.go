// Package benchutil holds what Ferry's Go benchmarks share: devices filled
// to their steady state, the protocol benchmarks' workload grid, random
// aligned I/O against one device, and the process's system-call counters.
package benchutil

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/local"
	"github.com/ferry-io/ferry/backends/mem"
)

// DevSize is the size of the devices Device makes.
const DevSize = 256 << 20

// SizeName is "4k" for 4096, "1M" for 1 MiB.
func SizeName(n int) string {
	if n >= 1<<20 {
		return strconv.Itoa(n>>20) + "M"
	}
	return strconv.Itoa(n>>10) + "k"
}

// Device returns a DevSize device, "mem" or "local" (a scratch file),
// filled so that reads hit allocated blocks and writes overwrite: the
// steady state, not first touches.
func Device(b *testing.B, name string) device.Device {
	var d device.Device
	switch name {
	case "mem":
		d = mem.New(DevSize)
	case "local":
		ld, err := local.CreateScratch(filepath.Join(b.TempDir(), "vol"), DevSize)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ld.Close() })
		d = ld
	default:
		b.Fatalf("unknown device %q", name)
	}
	Fill(b, d, DevSize)
	return d
}

// Fill writes zeroes over the first size bytes of d.
func Fill(b *testing.B, d device.Device, size int64) {
	p := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(p)) {
		if err := d.WriteAt(context.Background(), p, off); err != nil {
			b.Fatal(err)
		}
	}
}

// Protocol runs run for every cell of the protocol benchmarks' grid:
// devices mem and local, reads and writes, 4k at queue depth 1 and 32, 1M
// at 1 and 8; sub-benchmarks are named DEVICE/OP/bs=SIZE/qd=N.
func Protocol(b *testing.B, run func(b *testing.B, dev device.Device, write bool, bs, qd int)) {
	for _, devName := range []string{"mem", "local"} {
		for _, op := range []string{"read", "write"} {
			for _, w := range []struct{ bs, qd int }{{4 << 10, 1}, {4 << 10, 32}, {1 << 20, 1}, {1 << 20, 8}} {
				b.Run(fmt.Sprintf("%s/%s/bs=%s/qd=%d", devName, op, SizeName(w.bs), w.qd), func(b *testing.B) {
					run(b, Device(b, devName), op == "write", w.bs, w.qd)
				})
			}
		}
	}
}

// RandomIO measures a device alone: 4k and 1M reads and writes at random
// aligned offsets of its first size bytes, filled first. open makes the
// device for each sub-benchmark and closes it at the benchmark's cleanup.
func RandomIO(b *testing.B, size int64, open func(b *testing.B) device.Device) {
	for _, bc := range []struct {
		name  string
		bs    int
		write bool
	}{{"read/bs=4k", 4 << 10, false}, {"write/bs=4k", 4 << 10, true}, {"read/bs=1M", 1 << 20, false}, {"write/bs=1M", 1 << 20, true}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			d := open(b)
			Fill(b, d, size)
			p := make([]byte, bc.bs)
			rng := rand.New(rand.NewPCG(1, 2))
			blocks := uint64(size / int64(bc.bs))
			b.SetBytes(int64(bc.bs))
			b.ReportAllocs()
			b.ResetTimer()
			var err error
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

// Syscalls returns the read and write system calls this process made
// (/proc/self/io); it skips the benchmark where there are no counters.
func Syscalls(b *testing.B) (r, w int64) {
	p, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Skipf("no syscall counters: %v", err)
	}
	for _, line := range strings.Split(string(p), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "syscr":
			r = n
		case "syscw":
			w = n
		}
	}
	return r, w
}
