package tier

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/devicetest"
	"github.com/ferry-io/ferry/backends/store"
)

const testChunk = 64 << 10

func openTest(t *testing.T, dir string, s store.Store, size int64) *Device {
	t.Helper()
	d, err := Open(context.Background(), Config{Dir: dir, Store: s, Size: size, ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestConformance(t *testing.T) {
	devicetest.Run(t, func(t *testing.T, size int64) device.Device {
		d := openTest(t, t.TempDir(), store.NewMem(), size)
		t.Cleanup(func() { d.Close() })
		return d
	})
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed ^ byte(i*31+i/7)
	}
	return b
}

func waitClean(t *testing.T, d *Device) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for d.TierStats().DirtyBytes > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("uploads did not drain: %+v", d.TierStats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A volume far larger than its cache: data written, uploaded, evicted and
// read back from the store.
func TestLargerThanCacheRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	d := openTest(t, t.TempDir(), s, 64<<20)
	defer d.Close()
	data := pattern(8<<20, 5) // 8 MiB through a 1 MiB cache
	for off := 0; off < len(data); off += 256 << 10 {
		if err := d.WriteAt(ctx, data[off:off+256<<10], int64(off)+4096); err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
	}
	got := make([]byte, len(data))
	if err := d.ReadAt(ctx, got, 4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v equal %v", err, bytes.Equal(got, data))
	}
	if st := d.TierStats(); st.CachedBytes > 1<<20 {
		t.Fatalf("cache holds %d bytes, budget 1 MiB", st.CachedBytes)
	}
}

// After a crash (no Close, no Flush of later writes) a reopened volume has
// every flushed write, uploads what was dirty, and a checkpoint exported
// from the store alone equals the volume.
func TestCrashReopenCheckpointExport(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	dir := t.TempDir()
	d := openTest(t, dir, s, 4<<20)
	a := pattern(300<<10, 1)
	if err := d.WriteAt(ctx, a, 1000); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Simulated crash: stop the uploaders without any further bookkeeping.
	d.stop()
	d.wg.Wait()
	d.journal.Close()

	d = openTest(t, dir, s, 4<<20)
	defer d.Close()
	got := make([]byte, len(a))
	if err := d.ReadAt(ctx, got, 1000); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("flushed data after crash: %v", err)
	}
	b := pattern(70<<10, 9)
	if err := d.WriteAt(ctx, b, 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := d.Trim(ctx, 128<<10, 64<<10); err != nil { // a whole chunk
		t.Fatal(err)
	}
	m, err := d.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 4<<20)
	if err := d.ReadAt(ctx, want, 0); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(m.Size)
	latest, err := LatestManifest(ctx, s)
	if err != nil || latest.Sequence != m.Sequence {
		t.Fatalf("latest manifest: %v %d", err, latest.Sequence)
	}
	if err := Export(ctx, s, latest, f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	exported, _ := os.ReadFile(img)
	if !bytes.Equal(exported, want) {
		t.Fatal("exported image differs from the volume")
	}
}

// Reads of chunks that are only in an unreachable store fail with
// ErrUnavailable within the bound; writes still land in the cache.
func TestStoreOutage(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	dir := t.TempDir()
	d, err := Open(ctx, Config{Dir: dir, Store: s, Size: 4 << 20, ChunkSize: testChunk, CacheBytes: 256 << 10, Uploaders: 2, FetchTimeout: 300 * time.Millisecond, DirtyWait: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.WriteAt(ctx, pattern(1<<20, 3), 0); err != nil {
		t.Fatal(err)
	}
	waitClean(t, d)
	// 16 chunks went through a 4-chunk cache, so most were evicted; which
	// ones depends on when each upload finished (a slow upload keeps its
	// chunk dirty, so cached, while later chunks are evicted). Read one
	// that is not cached.
	uncached := int64(-1)
	d.mu.Lock()
	for idx := range int64(16) {
		if _, ok := d.chunks[idx]; !ok {
			uncached = idx
			break
		}
	}
	d.mu.Unlock()
	if uncached < 0 {
		t.Fatal("every chunk written is still cached")
	}
	s.SetFail(func(op, key string) error { return fmt.Errorf("%s: %w", op, store.ErrUnavailable) })
	start := time.Now()
	err = d.ReadAt(ctx, make([]byte, 4096), uncached*testChunk)
	if err == nil {
		t.Fatal("read of an uncached chunk during an outage succeeded")
	}
	if !isUnavailable(err) || time.Since(start) > 5*time.Second {
		t.Fatalf("read during outage: %v after %v", err, time.Since(start))
	}
	// Writes fill the cache, then fail with ENOSPC after the bound.
	var werr error
	for i := int64(0); i < 8 && werr == nil; i++ {
		werr = d.WriteAt(ctx, pattern(testChunk, byte(i)), (32+i)*testChunk)
	}
	if !isNoSpace(werr) {
		t.Fatalf("writes into a full dirty cache: %v, want ErrNoSpace", werr)
	}
	s.SetFail(nil)
	waitClean(t, d)
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatalf("checkpoint after the outage: %v", err)
	}
}

func isUnavailable(err error) bool { return errors.Is(err, device.ErrUnavailable) }
func isNoSpace(err error) bool     { return errors.Is(err, device.ErrNoSpace) }

// Rewritten chunks leave old versions behind; checkpoints keep the newest
// recovery points whole and delete everything else.
func TestGarbageCollection(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	d := openTest(t, t.TempDir(), s, 1<<20)
	defer d.Close()
	count := func(prefix string) int {
		n := 0
		s.List(ctx, prefix, func(store.ObjectInfo) error { n++; return nil })
		return n
	}
	var manifests []Manifest
	for i := range 6 {
		if err := d.WriteAt(ctx, pattern(testChunk, byte(i)), 0); err != nil {
			t.Fatal(err)
		}
		m, err := d.Checkpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		manifests = append(manifests, m)
	}
	if n := count("manifests/"); n != keepManifests {
		t.Errorf("%d manifests kept, want %d", n, keepManifests)
	}
	if n := count("chunks/"); n != keepManifests {
		t.Errorf("%d chunk objects kept, want %d (one version per kept manifest)", n, keepManifests)
	}
	// Every kept recovery point still exports.
	for _, m := range manifests[len(manifests)-keepManifests:] {
		img := filepath.Join(t.TempDir(), "img")
		f, _ := os.Create(img)
		f.Truncate(m.Size)
		if err := Export(ctx, s, m, f); err != nil {
			t.Fatalf("recovery point %d: %v", m.Sequence, err)
		}
		f.Close()
	}
}

// A recovery point taken while a writer runs equals the volume as it was
// after one of the writes (each a possible flush point): never a mix.
func TestCheckpointIsCrashConsistent(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	const size = 1 << 20
	d := openTest(t, t.TempDir(), s, size)
	defer d.Close()
	states := map[[32]byte]bool{}
	var mu sync.Mutex
	snap := func() {
		b := make([]byte, size)
		if err := d.ReadAt(ctx, b, 0); err != nil {
			t.Error(err)
		}
		mu.Lock()
		states[sha256.Sum256(b)] = true
		mu.Unlock()
	}
	snap()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		rng := rand.New(rand.NewPCG(1, 2))
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// Each write spans two chunks, so a torn checkpoint would show.
			off := rng.Int64N(size/testChunk-1)*testChunk + testChunk/2
			if err := d.WriteAt(ctx, pattern(testChunk, byte(i)), off); err != nil {
				t.Error(err)
				return
			}
			snap()
		}
	}()
	var ms []Manifest
	for range 5 {
		time.Sleep(20 * time.Millisecond)
		m, err := d.Checkpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	close(stop)
	<-done
	for _, m := range ms[len(ms)-keepManifests:] {
		img := filepath.Join(t.TempDir(), "img")
		f, _ := os.Create(img)
		f.Truncate(m.Size)
		if err := Export(ctx, s, m, f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		b, _ := os.ReadFile(img)
		mu.Lock()
		ok := states[sha256.Sum256(b)]
		mu.Unlock()
		if !ok {
			t.Fatalf("recovery point %d matches no state the volume was in after a write", m.Sequence)
		}
	}
}

// Two volumes share one budget: together they never cache more than it,
// and one volume's clean chunks make room for the other's writes.
func TestSharedBudget(t *testing.T) {
	ctx := context.Background()
	b := NewBudget(1 << 20)
	var devs []*Device
	for range 2 {
		d, err := Open(ctx, Config{Dir: t.TempDir(), Store: store.NewMem(), Size: 16 << 20, ChunkSize: testChunk, Budget: b, Uploaders: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		devs = append(devs, d)
	}
	for round := range 3 {
		for i, d := range devs {
			data := pattern(4<<20, byte(round*2+i))
			if err := d.WriteAt(ctx, data, 0); err != nil {
				t.Fatal(err)
			}
			if used := b.Used(); used > b.Limit() {
				t.Fatalf("budget overrun: %d of %d", used, b.Limit())
			}
			got := make([]byte, len(data))
			if err := d.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("volume %d round %d: read back %v", i, round, err)
			}
		}
	}
	var cached int64
	for _, d := range devs {
		cached += d.TierStats().CachedBytes
	}
	if cached != b.Used() || cached > b.Limit() {
		t.Fatalf("volumes cache %d bytes, budget says %d of %d", cached, b.Used(), b.Limit())
	}
}

// Garbage collection running between an upload's Put and its journal
// record (as it may while writes flow after a checkpoint) spares the new
// object: it is the chunk's current data.
func TestCollectSparesUploadInFlight(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	d := openTest(t, t.TempDir(), s, 1<<20)
	defer d.Close()
	if err := d.WriteAt(ctx, pattern(testChunk, 1), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	collected := make(chan error, 1)
	afterPut = func(d *Device, idx int64) {
		once.Do(func() {
			_, err := d.collect(ctx)
			collected <- err
		})
	}
	t.Cleanup(func() { afterPut = nil })
	if err := d.WriteAt(ctx, pattern(testChunk, 2), 0); err != nil {
		t.Fatal(err)
	}
	waitClean(t, d)
	if err := <-collected; err != nil {
		t.Fatalf("collect: %v", err)
	}
	d.mu.Lock()
	key := chunkKey(0, d.objects.base[0])
	d.mu.Unlock()
	got, err := s.Get(ctx, key, nil)
	if err != nil {
		t.Fatalf("the chunk's current object %s: %v", key, err)
	}
	if !bytes.Equal(got, pattern(testChunk, 2)) {
		t.Fatal("the chunk's current object holds other data")
	}
}
