package tier

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferry-io/ferry/backends/store"
)

// fillAndReopen writes n patterned chunks, publishes them and reopens the
// volume with an empty cache.
func fillAndReopen(t *testing.T, n int, cfg Config) *Device {
	t.Helper()
	ctx := context.Background()
	cfg.Dir, cfg.Size, cfg.ChunkSize = t.TempDir(), int64(n)*testChunk, testChunk
	if cfg.Store == nil {
		cfg.Store = store.NewMem()
	}
	d, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := d.WriteAt(ctx, pattern(testChunk, byte(i)), int64(i)*testChunk); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	d.Close()
	d, err = Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if st := d.TierStats(); st.CachedBytes != 0 {
		t.Fatalf("reopened cache holds %d bytes", st.CachedBytes)
	}
	return d
}

func readChunk(t *testing.T, d *Device, i int) {
	t.Helper()
	got := make([]byte, testChunk)
	for off := 0; off < testChunk; off += 4096 {
		if err := d.ReadAt(context.Background(), got[off:off+4096], int64(i)*testChunk+int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, pattern(testChunk, byte(i))) {
		t.Fatalf("chunk %d reads wrong data", i)
	}
}

func waitCached(t *testing.T, d *Device, chunks int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for d.TierStats().CachedBytes < int64(chunks)*testChunk {
		if time.Now().After(deadline) {
			t.Fatalf("cache holds %d chunks, want %d", d.TierStats().CachedBytes/testChunk, chunks)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A reader going from one chunk to the next gets the following chunks
// fetched ahead; the data read is the data written.
func TestReadaheadSequential(t *testing.T) {
	m := NewMetrics(nil)
	d := fillAndReopen(t, 24, Config{CacheBytes: 1 << 20, Metrics: m})
	readChunk(t, d, 0)
	readChunk(t, d, 1)
	waitCached(t, d, 2+4) // chunks 2..5 fetched without being read
	if got := testutil.ToFloat64(m.prefetches); got < 4 {
		t.Errorf("readahead counted %v chunks, want ≥ 4", got)
	}
	hitsBefore := testutil.ToFloat64(m.hits)
	readChunk(t, d, 2)
	if testutil.ToFloat64(m.hits) <= hitsBefore {
		t.Error("reading a chunk fetched ahead was not a cache hit")
	}
	for i := 3; i < 24; i++ {
		readChunk(t, d, i)
	}
}

// Random reads fetch only what they read.
func TestReadaheadNotForRandomReads(t *testing.T) {
	d := fillAndReopen(t, 24, Config{CacheBytes: 1 << 20})
	for _, i := range []int{10, 3, 20, 7, 15} {
		readChunk(t, d, i)
	}
	time.Sleep(300 * time.Millisecond)
	if got := d.TierStats().CachedBytes / testChunk; got != 5 {
		t.Fatalf("random reads of 5 chunks left %d cached", got)
	}
}

// Readahead off: a sequential reader fetches only what it reads.
func TestReadaheadOff(t *testing.T) {
	d := fillAndReopen(t, 8, Config{CacheBytes: 1 << 20, Readahead: -1})
	for i := range 4 {
		readChunk(t, d, i)
	}
	time.Sleep(300 * time.Millisecond)
	if got := d.TierStats().CachedBytes / testChunk; got != 4 {
		t.Fatalf("reading 4 chunks with readahead off left %d cached", got)
	}
}

// Many small random writes to a few chunks upload no more bytes than were
// written, plus one version of each chunk: never a chunk per write.
func TestSmallWritesCoalesce(t *testing.T) {
	ctx := context.Background()
	m := NewMetrics(nil)
	d, err := Open(ctx, Config{Dir: t.TempDir(), Store: store.NewMem(), Size: 8 * testChunk, ChunkSize: testChunk,
		CacheBytes: 1 << 20, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	r := rand.New(rand.NewPCG(1, 2))
	const writes = 2000
	for range writes {
		off := r.Int64N(8*testChunk/4096) * 4096
		if err := d.WriteAt(ctx, pattern(4096, byte(off)), off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	up, written := testutil.ToFloat64(m.uploadBytes), float64(writes*4096)
	t.Logf("%d 4 KiB writes over 8 chunks: %v uploads, %.2f bytes uploaded per byte written",
		writes, testutil.ToFloat64(m.uploads), up/written)
	if up > written+8*testChunk {
		t.Fatalf("uploaded %v bytes for %v written", up, written)
	}
	if n := testutil.ToFloat64(m.uploads); n < 8 || n >= writes/4 {
		t.Fatalf("%v chunk uploads for %d writes", n, writes)
	}
}
