package tier

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/devicetest"
	"github.com/ferry-io/ferry/backends/local"
	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/internal/vfs"
)

// cutStore is the store as one process sees it: after cut (the power
// went), every request fails, so a device left running after a simulated
// crash cannot reach the store the reopened one uses.
//
// noPut refuses uploads only: a device whose store is down (crashTier's
// down) is opened with it set, since Open needs the store to scan it,
// but an upload started by the opened device before cut is set would put
// its data in the store, and what the test reads would depend on that
// race (TestFlushReportsSyncError failed so, 10 times in 300 under -race).
type cutStore struct {
	store.Store
	cut   atomic.Bool
	noPut atomic.Bool
}

var errPowerCut = errors.New("power cut: this process is gone")

func (c *cutStore) err() error {
	if c.cut.Load() {
		return errPowerCut
	}
	return nil
}

func (c *cutStore) Put(ctx context.Context, key string, data []byte, opts store.PutOptions) error {
	if err := c.err(); err != nil {
		return err
	}
	if c.noPut.Load() {
		return errPowerCut
	}
	return c.Store.Put(ctx, key, data, opts)
}

func (c *cutStore) Get(ctx context.Context, key string, buf []byte) ([]byte, error) {
	if err := c.err(); err != nil {
		return nil, err
	}
	return c.Store.Get(ctx, key, buf)
}

func (c *cutStore) GetRange(ctx context.Context, key string, off, length int64) ([]byte, error) {
	if err := c.err(); err != nil {
		return nil, err
	}
	return c.Store.GetRange(ctx, key, off, length)
}

func (c *cutStore) Stat(ctx context.Context, key string) (store.ObjectInfo, error) {
	if err := c.err(); err != nil {
		return store.ObjectInfo{}, err
	}
	return c.Store.Stat(ctx, key)
}

func (c *cutStore) Delete(ctx context.Context, key string) error {
	if err := c.err(); err != nil {
		return err
	}
	return c.Store.Delete(ctx, key)
}

func (c *cutStore) List(ctx context.Context, prefix string, fn func(store.ObjectInfo) error) error {
	if err := c.err(); err != nil {
		return err
	}
	return c.Store.List(ctx, prefix, fn)
}

// crashTier is a tiered volume whose cache is on a crashable file system
// (vfs.MemFS) and whose store is in memory. Crash cuts the power: the
// store stops answering this device, the cache file system keeps only
// what was fsynced, and the volume is opened again from both, as a
// restart of the gateway opens it. What the store held before the cut
// stays.
type crashTier struct {
	*Device
	mem   *vfs.MemFS
	fault vfs.Fault
	objs  store.Store
	cs    *cutStore
	// down keeps the store failing for this device once it is open (and
	// refusing uploads from the start): the cache alone must then hold
	// what Flush acknowledged.
	down bool
}

const crashPool, crashDir = "/pool", "/pool/tier-test"

func openCrashTier(t *testing.T, mem *vfs.MemFS, fault vfs.Fault, objs store.Store, size int64, down bool) (*crashTier, error) {
	cs := &cutStore{Store: objs}
	cs.noPut.Store(down)
	fsys := vfs.Inject(mem, fault)
	d, err := Open(context.Background(), Config{Dir: crashDir, FS: fsys, Store: cs, Size: size, ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { d.Close() })
	cs.cut.Store(down)
	return &crashTier{Device: d, mem: mem, fault: fault, objs: objs, cs: cs, down: down}, nil
}

// newCrashTier creates a volume as the gateway does: the pool directory
// exists durably, the tier creates its cache directory, and the pool
// directory is fsynced before the volume is acknowledged
// (gateway/volume Manager.Create).
func newCrashTier(t *testing.T, size int64, fault vfs.Fault, down bool) *crashTier {
	t.Helper()
	mem := vfs.NewCrashableMem()
	if err := mem.MkdirAll(crashPool, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := vfs.SyncDir(mem, "/"); err != nil {
		t.Fatal(err)
	}
	d, err := openCrashTier(t, mem, fault, store.NewMem(), size, down)
	if err != nil {
		t.Fatal(err)
	}
	if err := local.On(vfs.Inject(mem, fault)).SyncDir(crashPool); err != nil {
		t.Fatal(err)
	}
	return d
}

func (c *crashTier) crash(t *testing.T) (device.Device, error) {
	c.cs.cut.Store(true)
	mem := c.mem.Crash()
	c.Device.Close() // what it still does reaches neither the store nor mem
	return openCrashTier(t, mem, c.fault, c.objs, 0, c.down)
}

// Crash implements devicetest.Crasher.
func (c *crashTier) Crash(t *testing.T) device.Device {
	d, err := c.crash(t)
	if err != nil {
		t.Fatalf("reopen after a crash: %v", err)
	}
	return d
}

// TestConformanceCrashable runs the device suite with the cache on a
// crashable file system, so FlushDurability runs.
func TestConformanceCrashable(t *testing.T) {
	devicetest.Run(t, func(t *testing.T, size int64) device.Device {
		return newCrashTier(t, size, nil, false)
	})
}

// TestFlushDurabilityHasTeeth: with the cache's file fsyncs, or its
// directory fsyncs, skipped, FlushDurability must fail. The store is down
// meanwhile, so no upload can save the data the skipped fsync loses (an
// upload 200ms after the write would make the test depend on timing).
func TestFlushDurabilityHasTeeth(t *testing.T) {
	for _, tc := range []struct {
		name string
		skip func(path string, isDir bool) bool
	}{
		{"chunk file fsync", func(path string, isDir bool) bool { return !isDir && strings.Contains(path, "/dirty/") }},
		{"dirty directory fsync", func(path string, isDir bool) bool { return isDir && strings.HasSuffix(path, "/dirty") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fault := vfs.SkipSyncs(tc.skip)
			d := newCrashTier(t, 4<<20, fault, true)
			err := devicetest.CheckFlushDurability(d, func(d device.Device) (device.Device, error) {
				return d.(*crashTier).crash(t)
			})
			if err == nil {
				t.Fatalf("FlushDurability passed with every %s skipped", tc.name)
			}
			t.Logf("caught: %v", err)
		})
	}
}

// TestFlushReportsSyncError: a chunk file's failing fsync is Flush's
// error, and the chunk is flushed again by the next Flush.
func TestFlushReportsSyncError(t *testing.T) {
	eio := errors.New("injected EIO")
	var fail atomic.Bool
	d := newCrashTier(t, 4<<20, func(op vfs.Op, path string, isDir bool) error {
		if fail.Load() && op == vfs.OpSync && !isDir && strings.Contains(path, "/dirty/") {
			return eio
		}
		return nil
	}, true)
	ctx := context.Background()
	if err := d.WriteAt(ctx, pattern(4096, 9), 0); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	if err := d.Flush(ctx); !errors.Is(err, eio) {
		t.Fatalf("Flush with a failing fsync = %v, want the injected error", err)
	}
	fail.Store(false)
	if err := d.Flush(ctx); err != nil {
		t.Fatalf("Flush once fsync works again: %v", err)
	}
	after := d.Crash(t)
	got := make([]byte, 4096)
	if err := after.ReadAt(ctx, got, 0); err != nil || string(got) != string(pattern(4096, 9)) {
		t.Fatalf("write flushed by the retried Flush lost by a crash (%v)", err)
	}
}

// crashAfterUpload writes a chunk, lets it upload, flushes (the dirty/
// directory fsync makes the chunk's move to clean/ durable), crashes and
// returns what the reopened volume reads: clean/ is discarded at start, so
// the data must come from the store through the objects journal.
func crashAfterUpload(t *testing.T, fault vfs.Fault) error {
	d := newCrashTier(t, 4<<20, fault, false)
	ctx := context.Background()
	want := pattern(testChunk, 21)
	if err := d.WriteAt(ctx, want, 2*testChunk); err != nil {
		t.Fatal(err)
	}
	waitClean(t, d.Device)
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := d.crash(t)
	if err != nil {
		return fmt.Errorf("reopen after a crash: %w", err)
	}
	got := make([]byte, len(want))
	if err := after.ReadAt(ctx, got, 2*testChunk); err != nil {
		return fmt.Errorf("read after a crash: %w", err)
	}
	if !bytes.Equal(got, want) {
		return errors.New("uploaded chunk lost by a crash")
	}
	return nil
}

// TestCrashAfterUpload: an uploaded chunk survives a crash through the
// store; with the objects journal's fsync skipped it must not.
func TestCrashAfterUpload(t *testing.T) {
	if err := crashAfterUpload(t, nil); err != nil {
		t.Fatal(err)
	}
	err := crashAfterUpload(t, vfs.SkipSyncs(func(path string, isDir bool) bool { return strings.HasSuffix(path, "/objects.log") }))
	if err == nil {
		t.Fatal("an uploaded chunk survived a crash with the journal's fsync skipped: the test has no teeth")
	}
	t.Logf("with the journal fsync skipped: %v", err)
}

// TestCrashUnderLoad cuts the power (store and cache at once) at random
// moments of a flushing writer's run, while chunks upload, evict and
// fetch through a cache a quarter of the volume, and checks every
// acknowledged epoch after each restart (devicetest.CrashUnderLoad).
func TestCrashUnderLoad(t *testing.T) {
	d := newCrashTier(t, 4<<20, nil, false)
	seed := uint64(time.Now().UnixNano())
	if _, err := devicetest.CrashUnderLoad(d, func(d device.Device) (device.Device, error) {
		return d.(*crashTier).crash(t)
	}, 20, seed); err != nil {
		t.Fatalf("%v (seed %d)", err, seed)
	}
}

// crashAfterPartialOverwrite writes part of a chunk the store holds (and
// the cache does not: a restart dropped clean/), so the cache keeps it
// partially with a map of its writes; flushes with the store down (no
// upload can save it), crashes and checks the chunk reads as the stored
// data under the write.
func crashAfterPartialOverwrite(t *testing.T, fault vfs.Fault) error {
	d := newCrashTier(t, 4<<20, fault, false)
	ctx := context.Background()
	want := pattern(testChunk, 31)
	if err := d.WriteAt(ctx, want, 2*testChunk); err != nil {
		t.Fatal(err)
	}
	waitClean(t, d.Device)
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	dev, err := d.crash(t)
	if err != nil {
		return fmt.Errorf("reopen after a crash: %w", err)
	}
	d = dev.(*crashTier)
	d.cs.cut.Store(true) // the store is down: the write stays in the cache
	over := pattern(1000, 32)
	if err := d.WriteAt(ctx, over, 2*testChunk+100); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	copy(want[100:], over)
	after, err := d.crash(t)
	if err != nil {
		return fmt.Errorf("reopen after a crash: %w", err)
	}
	got := make([]byte, len(want))
	if err := after.ReadAt(ctx, got, 2*testChunk); err != nil {
		return fmt.Errorf("read after a crash: %w", err)
	}
	if !bytes.Equal(got, want) {
		return errors.New("flushed partial overwrite of a stored chunk lost by a crash")
	}
	return nil
}

// TestCrashAfterPartialOverwrite: the map of a partially cached chunk
// survives a crash once flushed; with the map's fsync skipped the write
// is taken for bytes the store holds, and lost.
func TestCrashAfterPartialOverwrite(t *testing.T) {
	if err := crashAfterPartialOverwrite(t, nil); err != nil {
		t.Fatal(err)
	}
	err := crashAfterPartialOverwrite(t, vfs.SkipSyncs(func(path string, isDir bool) bool { return strings.HasSuffix(path, ".map") }))
	if err == nil {
		t.Fatal("a partial overwrite survived a crash with its map's fsync skipped: the test has no teeth")
	}
	t.Logf("with the map fsync skipped: %v", err)
}
