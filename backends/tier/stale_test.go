package tier

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"github.com/ferry-io/ferry/backends/store"
)

// holdGet holds the first Get of key until release is closed.
type holdGet struct {
	store.Store
	key              string
	entered, release chan struct{}
	once             sync.Once
}

func (h *holdGet) Get(ctx context.Context, key string, buf []byte) ([]byte, error) {
	if key == h.key {
		first := false
		h.once.Do(func() { first = true })
		if first {
			close(h.entered)
			<-h.release
		}
	}
	return h.Store.Get(ctx, key, buf)
}

// A chunk zeroed whole (dropped from the map) while a read fetches it
// reads as zeroes afterwards: the fetch, which began before, must not
// cache the old content (a later partial write would have uploaded it
// whole, bringing the old data back for good).
func TestZeroedWhileFetchedIsNotCached(t *testing.T) {
	ctx := context.Background()
	hs := &holdGet{Store: store.NewMem(), entered: make(chan struct{}), release: make(chan struct{})}
	dir := t.TempDir()
	cfg := Config{Dir: dir, Store: hs, Size: 4 * testChunk, ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2, Readahead: -1}
	d, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	old := pattern(testChunk, 9)
	if err := d.WriteAt(ctx, old, testChunk); err != nil {
		t.Fatal(err)
	}
	// Reopened, the chunk is in the store only (clean copies go at open).
	d = checkpointReopen(t, d, cfg)
	d.mu.Lock()
	hs.key = d.objects.baseKey(1)
	d.mu.Unlock()
	if hs.key == "" {
		t.Fatal("chunk 1 is not stored")
	}
	done := make(chan error)
	go func() {
		buf := make([]byte, 4096)
		done <- d.ReadAt(ctx, buf, testChunk)
	}()
	<-hs.entered // the read is fetching the chunk
	if err := d.WriteZeroes(ctx, testChunk, testChunk, true); err != nil {
		t.Fatal(err)
	}
	close(hs.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := make([]byte, testChunk)
	if err := d.ReadAt(ctx, got, testChunk); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, testChunk)) {
		t.Fatalf("a chunk zeroed while a read fetched it reads back as the old data (first bytes %x)", got[:8])
	}
	// A partial write then uploads nothing of the old content.
	if err := d.WriteAt(ctx, []byte{1}, testChunk); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, testChunk)
	want[0] = 1
	if err := d.ReadAt(ctx, got, testChunk); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after a 1-byte write: %v, first bytes %x", err, got[:8])
	}
}

// checkpointReopen publishes a recovery point of d, closes it and opens
// the volume again with cfg (closed when the test ends): the cache then
// holds no clean copies.
func checkpointReopen(t *testing.T, d *Device, cfg Config) *Device {
	t.Helper()
	if _, err := d.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	d.Close()
	d, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}
