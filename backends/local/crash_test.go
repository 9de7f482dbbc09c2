package local_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/devicetest"
	"github.com/ferry-io/ferry/backends/local"
	"github.com/ferry-io/ferry/internal/vfs"
)

// crashable is a local device on a crashable in-memory file system
// (vfs.MemFS): Crash cuts the power and reopens the volume file from what
// survived, as a restart does (local.Open). It embeds device.Device, not
// *local.Device, to hide device.Statter: a MemFS counts no blocks, so
// the device reports its whole size allocated and the Trim case's check
// that space is returned does not apply.
type crashable struct {
	device.Device
	ld    *local.Device
	mem   *vfs.MemFS
	fault vfs.Fault // nil, or what Inject does to the device's operations
}

// WriteFromPipe lets the suite's PipeWriter test run on the file
// system without descriptors (the device's portable path).
func (c *crashable) WriteFromPipe(ctx context.Context, src device.Pipe, off int64, n int) error {
	return c.ld.WriteFromPipe(ctx, src, off, n)
}

const poolDir = "/pool"

// newCrashable creates a volume of size bytes in a durable pool directory
// of a fresh MemFS.
func newCrashable(t *testing.T, size int64, fault vfs.Fault) *crashable {
	t.Helper()
	mem := vfs.NewCrashableMem()
	if err := mem.MkdirAll(poolDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := vfs.SyncDir(mem, "/"); err != nil { // the pool exists before the volume
		t.Fatal(err)
	}
	d, err := local.On(vfs.Inject(mem, fault)).Create(poolDir+"/vol.img", size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return &crashable{Device: d, ld: d, mem: mem, fault: fault}
}

func (c *crashable) crash(t *testing.T) (device.Device, error) {
	mem := c.mem.Crash()
	c.Device.Close() // the process that held it is gone
	d, err := local.On(vfs.Inject(mem, c.fault)).Open(poolDir + "/vol.img")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { d.Close() })
	return &crashable{Device: d, ld: d, mem: mem, fault: c.fault}, nil
}

// Crash implements devicetest.Crasher.
func (c *crashable) Crash(t *testing.T) device.Device {
	d, err := c.crash(t)
	if err != nil {
		t.Fatalf("reopen after a crash: %v", err)
	}
	return d
}

// TestConformanceCrashable runs the whole suite on a crashable file
// system, so FlushDurability runs (the suite on the real file system
// cannot cut the power). The device takes its portable paths there:
// File.ReadAt/WriteAt/Sync, zeroes written for Trim, Extents all data.
func TestConformanceCrashable(t *testing.T) {
	devicetest.Run(t, func(t *testing.T, size int64) device.Device {
		return newCrashable(t, size, nil)
	})
}

// TestFlushDurabilityHasTeeth proves FlushDurability catches a missing
// fsync: with the volume file's fsync skipped (Flush, or Create's), or
// the pool directory's (Create's), a crash loses flushed data or the
// whole volume, and the check must say so.
func TestFlushDurabilityHasTeeth(t *testing.T) {
	for _, tc := range []struct {
		name string
		skip func(path string, isDir bool) bool
	}{
		{"file fsync", func(path string, isDir bool) bool { return !isDir }},
		{"directory fsync", func(path string, isDir bool) bool { return isDir }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fault := vfs.SkipSyncs(tc.skip)
			d := newCrashable(t, 4<<20, fault)
			err := devicetest.CheckFlushDurability(d, func(d device.Device) (device.Device, error) {
				return d.(*crashable).crash(t)
			})
			if err == nil {
				t.Fatalf("FlushDurability passed with every %s skipped", tc.name)
			}
			t.Logf("caught: %v", err)
		})
	}
}

// TestFlushReportsSyncError: an fsync that fails is Flush's error, not
// swallowed.
func TestFlushReportsSyncError(t *testing.T) {
	eio := errors.New("injected EIO")
	fail := false
	d := newCrashable(t, 1<<20, func(op vfs.Op, path string, isDir bool) error {
		if fail && op == vfs.OpSync && strings.HasSuffix(path, "vol.img") {
			return eio
		}
		return nil
	})
	ctx := context.Background()
	if err := d.WriteAt(ctx, []byte("ferry"), 0); err != nil {
		t.Fatal(err)
	}
	fail = true
	if err := d.Flush(ctx); !errors.Is(err, eio) {
		t.Fatalf("Flush with a failing fsync = %v, want the injected error", err)
	}
	if err := d.Resize(ctx, 2<<20); !errors.Is(err, eio) {
		t.Fatalf("Resize with a failing fsync = %v, want the injected error", err)
	}
}

// TestCreateOnCrashableIsDurable: a volume Create returned survives a
// crash at once, at its size, before any Flush.
func TestCreateOnCrashableIsDurable(t *testing.T) {
	d := newCrashable(t, 3<<20, nil)
	after := d.Crash(t)
	if after.Size() != 3<<20 {
		t.Fatalf("size after a crash %d, want %d", after.Size(), 3<<20)
	}
	if err := after.(*crashable).ld.ReflinkTo(context.Background(), poolDir+"/snap.img"); !errors.Is(err, local.ErrNoReflink) {
		t.Fatalf("reflink on a MemFS = %v, want ErrNoReflink", err)
	}
}

// TestCrashUnderLoad cuts the power at random moments of a flushing
// writer's run (devicetest.CrashUnderLoad) and checks every acknowledged
// epoch after each restart.
func TestCrashUnderLoad(t *testing.T) {
	d := newCrashable(t, 4<<20, nil)
	seed := uint64(time.Now().UnixNano())
	if _, err := devicetest.CrashUnderLoad(d, func(d device.Device) (device.Device, error) {
		return d.(*crashable).crash(t)
	}, 20, seed); err != nil {
		t.Fatalf("%v (seed %d)", err, seed)
	}
}

// TestCrashUnderLoadHasTeeth: with Flush's fsync skipped (the volume
// created durably first) the loop must find an acknowledged epoch lost.
func TestCrashUnderLoadHasTeeth(t *testing.T) {
	var armed atomic.Bool
	d := newCrashable(t, 4<<20, vfs.SkipSyncs(func(path string, isDir bool) bool { return armed.Load() && !isDir }))
	armed.Store(true)
	seed := uint64(time.Now().UnixNano())
	_, err := devicetest.CrashUnderLoad(d, func(d device.Device) (device.Device, error) {
		return d.(*crashable).crash(t)
	}, 20, seed)
	if err == nil {
		t.Fatalf("no acknowledged write lost with every file fsync skipped (seed %d)", seed)
	}
	t.Logf("caught: %v", err)
}
