package tier

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/internal/vfs"
)

// countingStore counts the reads that reach a store, and their bytes.
type countingStore struct {
	store.Store
	gets, bytes atomic.Int64
}

func (s *countingStore) Get(ctx context.Context, key string, buf []byte) ([]byte, error) {
	s.gets.Add(1)
	b, err := s.Store.Get(ctx, key, buf)
	s.bytes.Add(int64(len(b)))
	return b, err
}

func (s *countingStore) GetRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	s.gets.Add(1)
	b, err := s.Store.GetRange(ctx, key, off, n)
	s.bytes.Add(int64(len(b)))
	return b, err
}

// model is what a volume should read as.
type model []byte

func (m model) write(t *testing.T, d *Device, p []byte, off int64) {
	t.Helper()
	if err := d.WriteAt(context.Background(), p, off); err != nil {
		t.Fatalf("write %d bytes at %d: %v", len(p), off, err)
	}
	copy(m[off:], p)
}

// check compares the volume, read through the device and exported from
// a fresh recovery point, with the model.
func (m model) check(t *testing.T, d *Device, s store.Store) Manifest {
	t.Helper()
	ctx := context.Background()
	mf, err := d.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(mf.Size)
	if err := Export(ctx, s, mf, f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if b, _ := os.ReadFile(img); !bytes.Equal(b, m) {
		t.Fatalf("recovery point %d exported differs from what was written", mf.Sequence)
	}
	got := make([]byte, len(m))
	if err := d.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, m) {
		for i := range got {
			if got[i] != m[i] {
				t.Fatalf("volume differs from what was written at byte %d (chunk %d)", i, int64(i)/d.chunkSize())
			}
		}
	}
	return mf
}

// Small writes to chunks that are only in the store fetch nothing: they
// upload as overlays of a log object, and the recovery point layers them
// over the chunks.
func TestPartialWritesFetchNothing(t *testing.T) {
	cs := &countingStore{Store: store.NewMem()}
	d := fillAndReopen(t, 16, Config{Store: cs, CacheBytes: 1 << 20})
	m := make(model, 16*testChunk)
	for i := range 16 {
		copy(m[i*testChunk:], pattern(testChunk, byte(i)))
	}
	cs.gets.Store(0)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 40 {
		off := r.Int64N(int64(len(m)) - 9000)
		m.write(t, d, pattern(512+i*100, byte(i+100)), off)
	}
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitClean(t, d)
	if n := cs.gets.Load(); n != 0 {
		t.Fatalf("partial writes read the store %d times", n)
	}
	if st := d.TierStats(); st.CachedBytes != 0 {
		t.Fatalf("uploaded partial chunks still cached: %+v", st)
	}
	mf := m.check(t, d, cs)
	objs, err := loadManifestMap(context.Background(), cs, mf)
	if err != nil || mf.Format != manifestV4 || len(objs.overlays) == 0 {
		t.Fatalf("manifest %s: %v", mf.Format, err)
	}
}

// Random 4 KiB writes over a working set four times the cache upload
// about the bytes written, not a chunk per write.
func TestRandomWritesLargerThanCache(t *testing.T) {
	met := NewMetrics(nil)
	s := store.NewMem()
	const chunks = 64 // 4 MiB volume, 1 MiB cache
	d := fillAndReopen(t, chunks, Config{Store: s, CacheBytes: 1 << 20, Metrics: met})
	m := make(model, chunks*testChunk)
	for i := range chunks {
		copy(m[i*testChunk:], pattern(testChunk, byte(i)))
	}
	before := testutil.ToFloat64(met.uploadBytes)
	r := rand.New(rand.NewPCG(5, 6))
	const writes = 3000
	for i := range writes {
		m.write(t, d, pattern(4096, byte(i)), r.Int64N(int64(len(m))/4096)*4096)
	}
	m.check(t, d, s)
	amp := (testutil.ToFloat64(met.uploadBytes) - before) / (writes * 4096)
	t.Logf("%d random 4 KiB writes over 4x the cache: %.2f bytes uploaded per byte written; %d overlays live",
		writes, amp, d.objects.n)
	// Whole-chunk uploads would cost up to 16 (64 KiB chunks).
	if amp > 3 {
		t.Fatalf("%.2f bytes uploaded per byte written", amp)
	}
}

// A partial chunk found after a crash uploads only the bytes written: the
// rest of its file is never trusted (here it is garbage).
func TestPartialChunkAfterCrash(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	cfg := Config{Store: s, CacheBytes: 1 << 20}
	d := fillAndReopen(t, 4, cfg)
	dir := d.cfg.Dir
	m := make(model, 4*testChunk)
	for i := range 4 {
		copy(m[i*testChunk:], pattern(testChunk, byte(i)))
	}
	m.write(t, d, pattern(3000, 77), testChunk+5000)
	m.write(t, d, pattern(100, 78), testChunk+20000)
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	d.stop()
	d.wg.Wait()
	d.journal.Close()
	// What a torn, never-synced fetch would leave outside the writes.
	f, err := os.OpenFile(filepath.Join(dir, "dirty", "1"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("partial chunk file: %v", err)
	}
	f.WriteAt(bytes.Repeat([]byte{0xee}, 4096), 0)
	f.Close()

	cfg.Dir = dir
	d, err = Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	m.check(t, d, s)
}

// A chunk written piecemeal again and again is compacted: its overlays
// never pass maxOverlays, and log objects nothing references any more
// are collected.
func TestCompaction(t *testing.T) {
	ctx := context.Background()
	s := &countingStore{Store: store.NewMem()}
	d := fillAndReopen(t, 2, Config{Store: s, CacheBytes: 1 << 20})
	m := make(model, 2*testChunk)
	for i := range 2 {
		copy(m[i*testChunk:], pattern(testChunk, byte(i)))
	}
	compactions := 0
	base := d.objects.base[0]
	for i := range 3 * maxChunkLogs {
		m.write(t, d, pattern(700, byte(i)), int64(i*997)%(testChunk-700))
		if _, err := d.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		d.mu.Lock()
		logs, b := chunkLogs(d.objects.overlays[0]), d.objects.base[0]
		d.mu.Unlock()
		if logs > maxChunkLogs {
			t.Fatalf("chunk 0 has overlays in %d log objects", logs)
		}
		if b != base {
			compactions, base = compactions+1, b
		}
	}
	if compactions < 2 {
		t.Fatalf("%d compactions in %d writes", compactions, 3*maxChunkLogs)
	}
	// A read of any range of the chunk costs at most a request per log
	// object and one for the base.
	gets := s.gets.Load()
	got := make([]byte, testChunk)
	d.mu.Lock()
	d.missed = ghosts{} // read through, not from the cache
	d.mu.Unlock()
	if err := d.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if n := s.gets.Load() - gets; n > maxChunkLogs+1 {
		t.Fatalf("a read of the chunk took %d requests", n)
	}
	m.check(t, d, s)
	for range keepManifests {
		if _, err := d.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	logs := 0
	if err := s.List(ctx, "logs/", func(o store.ObjectInfo) error {
		logs++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	live := map[uint64]bool{}
	for _, o := range d.objects.overlays[0] {
		live[o.log] = true
	}
	d.mu.Unlock()
	if logs != len(live) {
		t.Fatalf("%d log objects in the store, %d referenced", logs, len(live))
	}
}

// Map files survive a torn last record, and bad records are refused.
func TestLoadMap(t *testing.T) {
	p := filepath.Join(t.TempDir(), "0.map")
	os.WriteFile(p, []byte("0 10\n5 10\n100 1\n200 "), 0o600)
	e, err := loadMap(vfs.OS, p, testChunk)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.spans(); len(got) != 2 || got[0] != (span{0, 15}) || got[1] != (span{100, 101}) {
		t.Fatalf("spans %v", got)
	}
	os.WriteFile(p, []byte("0 10\n65530 10\n"), 0o600)
	if _, err := loadMap(vfs.OS, p, testChunk); err == nil || !strings.Contains(err.Error(), "bad record") {
		t.Fatalf("record past the chunk: %v", err)
	}
}

func TestExtents(t *testing.T) {
	var e extents
	for _, s := range [][2]int64{{10, 5}, {30, 5}, {15, 5}, {0, 3}, {34, 10}, {3, 7}} {
		e.add(s[0], s[1])
	}
	if got := e.spans(); len(got) != 2 || got[0] != (span{0, 20}) || got[1] != (span{30, 44}) {
		t.Fatalf("spans %v", got)
	}
	if u := e.uncovered(18, 14); u != 10 {
		t.Fatalf("uncovered %d, want 10", u)
	}
	if e.covered() != 34 {
		t.Fatalf("covered %d", e.covered())
	}
}

// Random reads of chunks that are not cached read only their range from
// the store; a chunk read that way twice is then fetched and cached.
func TestRandomReadsReadThrough(t *testing.T) {
	ctx := context.Background()
	cs := &countingStore{Store: store.NewMem()}
	d := fillAndReopen(t, 32, Config{Store: cs, CacheBytes: 1 << 20})
	m := make(model, 32*testChunk)
	for i := range 32 {
		copy(m[i*testChunk:], pattern(testChunk, byte(i)))
	}
	// Overlays on some chunks, so ranges are assembled from both.
	for i := range 8 {
		m.write(t, d, pattern(3000, byte(200+i)), int64(i*4)*testChunk+int64(i)*1000)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if st := d.TierStats(); st.CachedBytes != 0 {
		t.Fatalf("cache holds %d bytes after uploading partial chunks", st.CachedBytes)
	}
	order := []int{5, 17, 0, 28, 9, 12, 24, 3, 20, 8, 31, 14}
	got := make([]byte, 6000)
	for _, i := range order {
		off := int64(i)*testChunk + int64(i)*700
		if err := d.ReadAt(ctx, got, off); err != nil || !bytes.Equal(got, m[off:off+6000]) {
			t.Fatalf("read chunk %d: %v", i, err)
		}
	}
	if st := d.TierStats(); st.CachedBytes != 0 {
		t.Fatalf("random reads cached %d bytes", st.CachedBytes)
	}
	// Read again: now they are cached.
	for _, i := range order[:3] {
		off := int64(i) * testChunk
		if err := d.ReadAt(ctx, got, off); err != nil || !bytes.Equal(got, m[off:off+6000]) {
			t.Fatalf("second read of chunk %d: %v", i, err)
		}
	}
	if st := d.TierStats(); st.CachedBytes != 3*testChunk {
		t.Fatalf("cache holds %d bytes after second reads of 3 chunks", st.CachedBytes)
	}
	m.check(t, d, cs)
}

// storedChunk3 makes an 8-chunk volume whose chunk 3 is in the store
// (pattern 3) and not cached, and closes it.
func storedChunk3(t *testing.T) (string, *store.Mem) {
	t.Helper()
	ctx := context.Background()
	s := store.NewMem()
	dir := t.TempDir()
	d := openTest(t, dir, s, 8*testChunk)
	if err := d.WriteAt(ctx, pattern(testChunk, 3), 3*testChunk); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	d.Close()
	return dir, s
}

// A chunk file a crash tore at its creation (before its ftruncate: empty,
// no map) never held a write. Opening the volume drops it instead of
// retrying its upload forever, and the chunk reads as the store has it.
func TestChunkFileTornAtCreation(t *testing.T) {
	ctx := context.Background()
	dir, s := storedChunk3(t)
	for _, idx := range []string{"3", "5"} { // stored, and never written
		if err := os.WriteFile(filepath.Join(dir, "dirty", idx), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d := openTest(t, dir, s, 8*testChunk)
	defer d.Close()
	waitClean(t, d)
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2*testChunk)
	if err := d.ReadAt(ctx, got, 3*testChunk); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:testChunk], pattern(testChunk, 3)) || !bytes.Equal(got[testChunk:], make([]byte, testChunk)) {
		t.Fatal("chunks behind torn files do not read as the store has them")
	}
	for _, idx := range []string{"3", "5"} {
		if _, err := os.Stat(filepath.Join(dir, "dirty", idx)); !os.IsNotExist(err) {
			t.Fatalf("torn dirty/%s still there: %v", idx, err)
		}
	}
}

// A crash after a chunk the store holds was set up for a whole-chunk
// write, before the write lands, uploads nothing of it: the chunk still
// reads as the store has it (a map-less file of zeroes would have been
// uploaded over it).
func TestCrashBeforeWholeChunkWrite(t *testing.T) {
	ctx := context.Background()
	dir, s := storedChunk3(t)
	d := openTest(t, dir, s, 8*testChunk)
	if _, _, err := d.lookupMode(ctx, 3, lookupReplace); err != nil {
		t.Fatal(err)
	}
	// "Crash": copy the cache directory as it is now and start from it.
	crashed := t.TempDir()
	if err := os.CopyFS(crashed, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	d.Close()
	d = openTest(t, crashed, s, 8*testChunk)
	defer d.Close()
	waitClean(t, d)
	got := make([]byte, testChunk)
	if err := d.ReadAt(ctx, got, 3*testChunk); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, pattern(testChunk, 3)) {
		t.Fatal("a crash before a whole-chunk write replaced the stored chunk")
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	mf, err := LatestManifest(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	img := make(memWriterAt, 8*testChunk)
	if err := Export(ctx, s, mf, img); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img[3*testChunk:4*testChunk], pattern(testChunk, 3)) {
		t.Fatal("the recovery point after the crash lost the stored chunk")
	}
}

type memWriterAt []byte

func (m memWriterAt) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }
