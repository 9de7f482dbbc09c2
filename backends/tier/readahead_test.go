package tier

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
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

// waitPrefetched waits until the readahead counter reaches n.
func waitPrefetched(t *testing.T, m *Metrics, n float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(m.prefetches) < n {
		if time.Now().After(deadline) {
			t.Fatalf("readahead fetched %v chunks, want %v", testutil.ToFloat64(m.prefetches), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A reader going from one chunk to the next gets the following chunks
// fetched ahead into stream buffers and reads them without waiting for
// the store; a scan of more than the cache holds leaves the cache empty
// of it, and a second scan caches what it reads.
func TestSequentialReadsStream(t *testing.T) {
	m := NewMetrics(nil)
	cs := &countingStore{Store: store.NewMem()}
	d := fillAndReopen(t, 24, Config{CacheBytes: 1 << 20, Metrics: m, Store: cs})
	readChunk(t, d, 0)
	readChunk(t, d, 1)
	waitPrefetched(t, m, 1+4) // chunk 1 for the reader, 2..5 ahead of it
	if n := d.streamsHeld(); n < 4 {
		t.Fatalf("%d stream buffers held after reading ahead, want ≥ 4", n)
	}
	misses, hits := testutil.ToFloat64(m.misses), testutil.ToFloat64(m.hits)
	readChunk(t, d, 2)
	if testutil.ToFloat64(m.misses) != misses || testutil.ToFloat64(m.hits) == hits {
		t.Fatal("reading a chunk fetched ahead waited for the store")
	}
	for i := 3; i < 24; i++ {
		readChunk(t, d, i)
	}
	// Chunk 0 was read before the reader was known to be sequential
	// (read through, then cached on its second read); the rest streamed.
	if got := d.TierStats().CachedBytes / testChunk; got > 1 {
		t.Fatalf("a sequential scan left %d chunks cached, want ≤ 1", got)
	}
	if n, lim := d.streamsHeld(), d.streamWindow(); n > lim {
		t.Fatalf("%d stream buffers held, window %d", n, lim)
	}
	// Read again, the chunks are cached (the cache holds 16 of them).
	for i := 8; i < 24; i++ {
		readChunk(t, d, i)
	}
	waitCached(t, d, 12)
	gets := cs.gets.Load()
	readChunk(t, d, 20)
	if got := cs.gets.Load(); got != gets {
		t.Fatalf("a chunk read twice was not cached: %d store requests", got-gets)
	}
}

// A stream buffer never serves data older than a write: a chunk written
// and uploaded after it was read ahead reads as written.
func TestStreamBufferSeesLaterWrites(t *testing.T) {
	ctx := context.Background()
	m := NewMetrics(nil)
	d := fillAndReopen(t, 16, Config{CacheBytes: 1 << 20, Metrics: m})
	readChunk(t, d, 0)
	readChunk(t, d, 1)
	waitPrefetched(t, m, 1+4)
	for _, idx := range []int{3, 4} {
		d.mu.Lock()
		_, held := d.streams[int64(idx)]
		d.mu.Unlock()
		if !held {
			t.Fatalf("chunk %d not read ahead", idx)
		}
	}
	// Chunk 3: a small write, uploaded as an overlay, and the chunk
	// leaves the cache. Chunk 4: trimmed whole (the store drops it).
	want3 := pattern(testChunk, 3)
	patch := bytes.Repeat([]byte{0xEE}, 4096)
	copy(want3[8192:], patch)
	if err := d.WriteAt(ctx, patch, 3*testChunk+8192); err != nil {
		t.Fatal(err)
	}
	if err := d.Trim(ctx, 4*testChunk, testChunk); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	_, cached := d.chunks[3]
	d.mu.Unlock()
	if cached {
		t.Fatal("chunk 3 still cached after its upload")
	}
	readChunk(t, d, 2)
	got := make([]byte, testChunk)
	if err := d.ReadAt(ctx, got, 3*testChunk); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want3) {
		t.Fatal("chunk 3 reads as it was before the write")
	}
	if err := d.ReadAt(ctx, got, 4*testChunk); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, testChunk)) {
		t.Fatal("chunk 4 reads as it was before the trim")
	}
}

// Stream buffers stay within the budget's stream memory; with none, a
// sequential reader is served through the cache as before.
func TestStreamMemoryBound(t *testing.T) {
	b := NewBudget(1 << 20)
	b.SetStreamMemory(3 * testChunk)
	m := NewMetrics(nil)
	d := fillAndReopen(t, 16, Config{Budget: b, Metrics: m})
	for i := range 16 {
		readChunk(t, d, i)
		if n := d.streamsHeld(); n > 3 {
			t.Fatalf("%d stream buffers held, memory for 3", n)
		}
	}
	b = NewBudget(1 << 20)
	b.SetStreamMemory(0)
	d = fillAndReopen(t, 8, Config{Budget: b, Metrics: m})
	for i := range 4 {
		readChunk(t, d, i)
	}
	waitCached(t, d, 4)
	if n := d.streamsHeld(); n != 0 {
		t.Fatalf("%d stream buffers held without stream memory", n)
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

// A sequential reader during an outage gets ErrUnavailable, never a
// hang or stale bytes; the failed stream buffers are forgotten, so once
// the store answers the same reads succeed.
func TestStreamDuringOutage(t *testing.T) {
	s := store.NewMem()
	d := fillAndReopen(t, 16, Config{CacheBytes: 1 << 20, Store: s, FetchTimeout: 200 * time.Millisecond})
	readChunk(t, d, 0)
	readChunk(t, d, 1)
	// Wait for readahead to settle, then fail every request.
	deadline := time.Now().Add(5 * time.Second)
	for d.streamsHeld() < 4 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	s.SetFail(func(op, key string) error { return fmt.Errorf("%s: %w", op, store.ErrUnavailable) })
	ctx := context.Background()
	buf := make([]byte, testChunk)
	var failed bool
	for i := int64(2); i < 12 && !failed; i++ {
		start := time.Now()
		err := d.ReadAt(ctx, buf, i*testChunk)
		if err != nil {
			if !isUnavailable(err) || time.Since(start) > 5*time.Second {
				t.Fatalf("chunk %d during the outage: %v after %v", i, err, time.Since(start))
			}
			failed = true
		} else if !bytes.Equal(buf, pattern(testChunk, byte(i))) {
			t.Fatalf("chunk %d reads wrong data during the outage", i)
		}
	}
	if !failed {
		t.Fatal("every read past the readahead window succeeded with the store down")
	}
	s.SetFail(nil)
	for i := 2; i < 16; i++ {
		readChunk(t, d, i)
	}
}

// Random 4 KiB reads over four times the cache, of chunks with overlays
// in log objects: every read returns the right bytes, and the store sends
// at most four bytes per byte read (issue #16 measured 355 when each
// chunk read twice lately was fetched whole and evicted before it was
// read again). The cache still serves some of the reads.
func TestRandomReadsLargerThanCacheDownloadLittle(t *testing.T) {
	ctx := context.Background()
	cs := &countingStore{Store: store.NewMem()}
	met := NewMetrics(nil)
	const chunks = 64 // 4 MiB volume, 1 MiB cache
	d := fillAndReopen(t, chunks, Config{Store: cs, CacheBytes: 1 << 20, Metrics: met})
	m := make(model, chunks*testChunk)
	for i := range chunks {
		copy(m[i*testChunk:], pattern(testChunk, byte(i)))
	}
	r := rand.New(rand.NewPCG(9, 10))
	for i := range 200 { // overlays in log objects under many chunks
		m.write(t, d, pattern(3000, byte(i)), r.Int64N(int64(len(m))-3000))
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	waitClean(t, d)
	cs.bytes.Store(0)
	hits0 := testutil.ToFloat64(met.hits)
	const reads = 20000
	got := make([]byte, 4096)
	for range reads {
		off := r.Int64N(int64(len(m))/4096) * 4096
		if err := d.ReadAt(ctx, got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, m[off:off+4096]) {
			t.Fatalf("read at %d (chunk %d) differs", off, off/testChunk)
		}
	}
	amp := float64(cs.bytes.Load()) / (reads * 4096)
	hits := testutil.ToFloat64(met.hits) - hits0
	t.Logf("%d random 4 KiB reads over 4x the cache: %.2f bytes downloaded per byte read, %.0f%% cache hits",
		reads, amp, 100*hits/reads)
	if amp > 4 {
		t.Fatalf("%.2f bytes downloaded per byte read, want at most 4", amp)
	}
	if hits == 0 {
		t.Fatal("no read was served from the cache")
	}
	if st := d.TierStats(); st.CachedBytes > 1<<20 {
		t.Fatalf("cache holds %d bytes, budget 1 MiB", st.CachedBytes)
	}
}

// A read that joined a stream whose fetch then failed (the store came back
// while that fetch was failing) fetches for itself and returns the data,
// instead of the stream's error.
func TestReadJoiningFailedStreamFetchesAgain(t *testing.T) {
	s := store.NewMem()
	d := fillAndReopen(t, 16, Config{CacheBytes: 1 << 20, Store: s, FetchTimeout: 10 * time.Second})
	entered, release := make(chan struct{}), make(chan struct{})
	var once atomic.Bool
	s.SetFail(func(op, key string) error {
		if op == "get" && strings.Contains(key, "chunks/0000000000000005/") && once.CompareAndSwap(false, true) {
			close(entered)
			<-release
			return fmt.Errorf("%s: %w", op, store.ErrUnavailable)
		}
		return nil
	})
	readChunk(t, d, 4)
	done := make(chan error, 1)
	buf := make([]byte, 4096)
	go func() { done <- d.ReadAt(context.Background(), buf, 5*testChunk) }() // sequential: starts chunk 5's stream
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no fetch of chunk 5 began")
	}
	close(release) // that fetch fails; the store answers from now on
	if err := <-done; err != nil {
		t.Fatalf("the read that joined the failed fetch: %v", err)
	}
	if !bytes.Equal(buf, pattern(testChunk, 5)[:4096]) {
		t.Fatal("the read that joined the failed fetch returned wrong data")
	}
}
