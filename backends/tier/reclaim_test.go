package tier

import (
	"context"
	"sync"
	"testing"

	"github.com/ferry-io/ferry/backends/store"
)

// logObjects returns the log objects in s and their total size.
func logObjects(t *testing.T, s store.Store) (n int, bytes int64) {
	t.Helper()
	if err := s.List(context.Background(), "logs/", func(o store.ObjectInfo) error {
		n, bytes = n+1, bytes+o.Size
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n, bytes
}

// smallWritesThenRewrite gives each of n stored chunks a small write (so
// their writes share log objects), then rewrites all but the last chunk
// whole: the log objects are then mostly dead, kept alive by the last
// chunk's overlay.
func smallWritesThenRewrite(t *testing.T, n int) (*Device, *store.Mem, model) {
	t.Helper()
	ctx := context.Background()
	s := store.NewMem()
	// One uploader: the small writes all go into one log object.
	d := fillAndReopen(t, n, Config{Store: s, CacheBytes: 1 << 20, Uploaders: 1})
	m := make(model, n*testChunk)
	for i := range n {
		copy(m[i*testChunk:], pattern(testChunk, byte(i)))
	}
	for i := range n {
		m.write(t, d, pattern(8192, byte(100+i)), int64(i)*testChunk+8192)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if logs, _ := logObjects(t, s); logs == 0 {
		t.Fatal("small writes made no log object")
	}
	for i := range n - 1 {
		m.write(t, d, pattern(testChunk, byte(200+i)), int64(i)*testChunk)
	}
	return d, s, m
}

// Log objects whose bytes are mostly overwritten are reclaimed: the
// chunks still referencing them are rewritten whole, and once no kept
// recovery point needs them they are deleted. The volume and every
// export still equal the model.
func TestReclaimDeadLogs(t *testing.T) {
	ctx := context.Background()
	d, s, m := smallWritesThenRewrite(t, 16)
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	left := len(d.objects.overlays)
	d.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d chunks still have overlays after the recovery point", left)
	}
	m.check(t, d, s)
	for range keepManifests {
		if _, err := d.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if logs, bytes := logObjects(t, s); logs != 0 {
		t.Fatalf("%d log objects (%d bytes) left in the store, none referenced", logs, bytes)
	}
	m.check(t, d, s)
}

// A chunk written while it is being rewritten keeps the write, whether
// the write is still cached or already uploaded as an overlay when the
// rewrite would be journaled: the rewrite is abandoned and its object
// collected.
func TestReclaimAbandonedOnWrite(t *testing.T) {
	ctx := context.Background()
	d, s, m := smallWritesThenRewrite(t, 8)
	var once sync.Once
	afterPut = func(d *Device, idx int64) {
		if idx == 7 {
			once.Do(func() {
				m.write(t, d, pattern(512, 0xEE), 7*testChunk+100)
				waitClean(t, d) // uploaded as an overlay, the chunk leaves the cache
			})
		}
	}
	t.Cleanup(func() { afterPut = nil })
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	afterPut = nil
	m.check(t, d, s)
	for range keepManifests + 1 {
		if _, err := d.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	m.check(t, d, s)
}

// A log object is not reclaimed while most of it is live, nor when
// freeing it would upload more than it holds.
func TestReclaimOnlyWhenWorthIt(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	d := fillAndReopen(t, 16, Config{Store: s, CacheBytes: 1 << 20, Uploaders: 1})
	m := make(model, 16*testChunk)
	// The 16 small writes must share one log object: hold uploads until
	// all are written (on a slow machine the uploader took the first few
	// into a log object of their own, which then stayed fully live).
	s.SetFail(func(op, key string) error {
		if op == "put" {
			return store.ErrUnavailable
		}
		return nil
	})
	for i := range 16 {
		copy(m[i*testChunk:], pattern(testChunk, byte(i)))
		m.write(t, d, pattern(8192, byte(100+i)), int64(i)*testChunk)
	}
	s.SetFail(nil)
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if logs := len(storeKeysWith(t, s, "logs/")); logs != 1 {
		t.Fatalf("the small writes went into %d log objects, want 1", logs)
	}
	overlaid := func() int {
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(d.objects.overlays)
	}
	// Half rewritten: half the log object is live.
	// Then 12 of 16: a quarter is live, but freeing it means rewriting
	// 4 chunks of 64 KiB for a 128 KiB log object.
	for _, upto := range []int{8, 12} {
		for i := range upto {
			m.write(t, d, pattern(testChunk, byte(200+i)), int64(i)*testChunk)
		}
		if _, err := d.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		if got := overlaid(); got != 16-upto {
			t.Fatalf("%d of 16 rewritten: %d chunks keep overlays, want %d", upto, got, 16-upto)
		}
	}
	// 14 of 16: two chunks of 64 KiB free the 128 KiB log object.
	for i := range 14 {
		m.write(t, d, pattern(testChunk, byte(50+i)), int64(i)*testChunk)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if got := overlaid(); got != 0 {
		t.Fatalf("14 of 16 rewritten: %d chunks keep overlays, want 0", got)
	}
	m.check(t, d, s)
}

// storeKeysWith lists the keys in s under prefix.
func storeKeysWith(t *testing.T, s store.Store, prefix string) []string {
	t.Helper()
	var keys []string
	if err := s.List(context.Background(), prefix, func(o store.ObjectInfo) error { keys = append(keys, o.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	return keys
}
