package tier

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/store"
)

func waitHydration(t *testing.T, d *Device) HydrationStats {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := d.Hydration()
		if st.State != HydrationRunning {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("hydration still running: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A cache started over a volume in the store hydrates: afterwards every
// read is served from the cache, even with the store gone.
func TestHydrationCachesEverything(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	d := openTest(t, t.TempDir(), s, 4<<20)
	data := pattern(40*testChunk+512, 3)
	if err := d.WriteAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteAt(ctx, pattern(4096, 4), 50*testChunk); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	d.Close()

	// A fresh cache with room for every chunk.
	d, err := Open(ctx, Config{Dir: t.TempDir(), Store: s, Size: 4 << 20, ChunkSize: testChunk, CacheBytes: 8 << 20, Uploaders: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.Hydrate(0)
	st := waitHydration(t, d)
	if st.State != HydrationDone || st.Done != st.Total || st.Total != 42*testChunk {
		t.Fatalf("hydration %+v, want done with %d bytes", st, 42*testChunk)
	}
	s.SetFail(func(op, key string) error { return errors.New("store gone") })
	got := make([]byte, len(data))
	if err := d.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after hydration with the store gone: %v, equal %v", err, bytes.Equal(got, data))
	}
	got = make([]byte, 4096)
	if err := d.ReadAt(ctx, got, 50*testChunk); err != nil || !bytes.Equal(got, pattern(4096, 4)) {
		t.Fatalf("overlaid chunk after hydration: %v", err)
	}
}

// Hydration stops at a full cache instead of evicting what it cached (here
// also paced by a rate limit).
func TestHydrationStopsAtAFullCacheAndPaces(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	d := openTest(t, t.TempDir(), s, 4<<20)
	if err := d.WriteAt(ctx, pattern(40*testChunk, 5), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	d.Close()
	d = openTest(t, t.TempDir(), s, 4<<20) // 1 MiB: 16 of 40 chunks
	d.Hydrate(64 * testChunk)              // 64 chunks a second
	st := waitHydration(t, d)
	if st.State != HydrationCacheFull || st.Done == 0 || st.Done > 16*testChunk {
		t.Fatalf("hydration into a small cache: %+v", st)
	}
	d.Close()
}

// slowGets counts the reads in flight at once, each taking a while.
type slowGets struct {
	*store.Mem
	now, most atomic.Int32
}

func (s *slowGets) Get(ctx context.Context, key string, buf []byte) ([]byte, error) {
	n := s.now.Add(1)
	defer s.now.Add(-1)
	for m := s.most.Load(); n > m && !s.most.CompareAndSwap(m, n); m = s.most.Load() {
	}
	time.Sleep(2 * time.Millisecond)
	return s.Mem.Get(ctx, key, buf)
}

// Hydration keeps hydrateFetchers reads in flight, and no more, while
// other fetches write what they read into the cache.
func TestHydrationBoundsItsReads(t *testing.T) {
	ctx := context.Background()
	mem := store.NewMem()
	d := openTest(t, t.TempDir(), mem, 4<<20)
	data := pattern(48*testChunk, 6)
	if err := d.WriteAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	d.Close()
	s := &slowGets{Mem: mem}
	d, err := Open(ctx, Config{Dir: t.TempDir(), Store: s, Size: 4 << 20, ChunkSize: testChunk, CacheBytes: 8 << 20, Uploaders: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.Hydrate(0)
	if st := waitHydration(t, d); st.State != HydrationDone {
		t.Fatalf("hydration %+v", st)
	}
	if m := s.most.Load(); m > hydrateFetchers || m < 2 {
		t.Fatalf("%d reads in flight at most, want 2 to %d", m, hydrateFetchers)
	}
	got := make([]byte, len(data))
	if err := d.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after hydration: %v, equal %v", err, bytes.Equal(got, data))
	}
}
