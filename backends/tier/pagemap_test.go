package tier

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/internal/testutil"
	"github.com/ferry-io/ferry/internal/vfs"
)

// byPrefix counts a store's gets and put bytes by key prefix
// ("pages/", "manifests/"...).
type byPrefix struct {
	store.Store
	mu   sync.Mutex
	gets map[string]int
	put  map[string]int
}

func newByPrefix(s store.Store) *byPrefix {
	return &byPrefix{Store: s, gets: map[string]int{}, put: map[string]int{}}
}

func kind(key string) string { return key[:strings.IndexByte(key, '/')+1] }

func (s *byPrefix) Get(ctx context.Context, key string, buf []byte) ([]byte, error) {
	s.mu.Lock()
	s.gets[kind(key)]++
	s.mu.Unlock()
	return s.Store.Get(ctx, key, buf)
}

func (s *byPrefix) Put(ctx context.Context, key string, b []byte, o store.PutOptions) error {
	s.mu.Lock()
	s.put[kind(key)] += len(b)
	s.mu.Unlock()
	return s.Store.Put(ctx, key, b, o)
}

func (s *byPrefix) reset() {
	s.mu.Lock()
	clear(s.gets)
	clear(s.put)
	s.mu.Unlock()
}

func (s *byPrefix) counts() (gets, put map[string]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.gets), maps.Clone(s.put)
}

// smallPages makes map pages of 4 chunks for the test.
func smallPages(t *testing.T) {
	old, share := pageChunks, deltaShare
	pageChunks, deltaShare = 4, 0
	t.Cleanup(func() { pageChunks, deltaShare = old, share })
}

// A recovery point uploads one delta with the changed entries, not the
// map; a long chain of deltas is folded into a new base that rewrites
// only the pages that changed; every kept recovery point exports as the
// volume was, including trims (a zeroed entry in a delta).
func TestRecoveryPointsUploadWhatChanged(t *testing.T) {
	smallPages(t)
	ctx := context.Background()
	mem := store.NewMem()
	s := newByPrefix(mem)
	const n = 40 // chunks: 10 pages
	d := openTest(t, t.TempDir(), s, n*testChunk)
	defer d.Close()
	m := make(model, n*testChunk)
	for i := range n {
		m.write(t, d, pattern(testChunk, byte(i)), int64(i)*testChunk)
	}
	first := m.check(t, d, s)
	if first.Format != manifestV4 || first.Base == "" || len(first.Deltas) != 0 || first.Stored != n {
		t.Fatalf("first recovery point: %+v", first)
	}
	b, err := readBase(ctx, s, first.Base)
	if err != nil || len(b.Pages) != n/4 || b.PageChunks != 4 {
		t.Fatalf("base: %+v %v", b, err)
	}
	// One chunk changed: a delta of one entry.
	for i := 1; i <= maxDeltas; i++ {
		s.reset()
		idx := int64(i % 8) // pages 0 and 1 only
		if i == 5 {
			if err := d.Trim(ctx, idx*testChunk, testChunk); err != nil {
				t.Fatal(err)
			}
			copy(m[idx*testChunk:(idx+1)*testChunk], make([]byte, testChunk))
		} else {
			m.write(t, d, pattern(100, byte(i+50)), idx*testChunk+7)
		}
		mf := m.check(t, d, s)
		_, put := s.counts()
		if mf.Base != first.Base || len(mf.Deltas) != i || put["pages/"] != 0 || put["bases/"] != 0 || put["deltas/"] > 600 {
			t.Fatalf("recovery point %d: base %s, %d deltas, uploads %v", i, mf.Base, len(mf.Deltas), put)
		}
	}
	// The chain is full: the next one writes a new base with the two
	// pages that changed, naming the other eight as they were.
	s.reset()
	m.write(t, d, pattern(testChunk, 99), 3*testChunk)
	mf := m.check(t, d, s)
	if mf.Base == first.Base || len(mf.Deltas) != 0 {
		t.Fatalf("no new base after %d deltas: %+v", maxDeltas, mf)
	}
	nb, err := readBase(ctx, s, mf.Base)
	if err != nil {
		t.Fatal(err)
	}
	same := 0
	for p, key := range nb.Pages {
		if b.Pages[p] == key {
			same++
		}
	}
	if _, put := s.counts(); same != n/4-2 || put["deltas/"] != 0 {
		t.Fatalf("new base shares %d pages with the old one (want %d); uploads %v", same, n/4-2, put)
	}
	// Collection: the old base's replaced pages and the deltas go once
	// no kept recovery point names them; what is left exports.
	for range keepManifests {
		m.write(t, d, pattern(10, 1), 30*testChunk)
		m.check(t, d, s)
	}
	if keys := storeKeysWith(t, s, "bases/"); len(keys) != 1 {
		t.Fatalf("bases left: %v", keys)
	}
	if keys := storeKeysWith(t, s, "pages/"); len(keys) != n/4 {
		t.Fatalf("%d pages left, want %d", len(keys), n/4)
	}
	// Collection reads only the pages changed since the base: the
	// others hold the current map's entries.
	s.reset()
	m.write(t, d, pattern(10, 2), 17*testChunk)
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if gets, _ := s.counts(); gets["pages/"] > 2 {
		t.Fatalf("a recovery point's collection read %d pages", gets["pages/"])
	}
	m.check(t, d, s)
}

// A cache started from a paged recovery point reads only the manifest,
// the base and the deltas before it serves; a read then costs the page
// of its chunk. Writes to chunks whose page is not read yet (overlays
// appended, whole chunks, trims) go over the page when it comes, and
// survive a restart before the map was read whole.
func TestAdoptReadsPagesLazily(t *testing.T) {
	smallPages(t)
	ctx := context.Background()
	mem := store.NewMem()
	const n = 40
	d := openTest(t, t.TempDir(), mem, n*testChunk)
	m := make(model, n*testChunk)
	for i := range n {
		m.write(t, d, pattern(testChunk, byte(i)), int64(i)*testChunk)
	}
	m.check(t, d, mem)
	m.write(t, d, pattern(testChunk, 77), 9*testChunk) // a delta
	m.check(t, d, mem)
	d.Close()

	readPagesAhead = false
	t.Cleanup(func() { readPagesAhead = true })
	s := newByPrefix(mem)
	dir := t.TempDir()
	d, err := Open(ctx, Config{Dir: dir, Store: s, ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2})
	if err != nil {
		t.Fatal(err)
	}
	gets, _ := s.counts()
	if gets["pages/"] != 0 || gets["bases/"] != 1 || gets["deltas/"] != 1 {
		t.Fatalf("open read %v", gets)
	}
	got := make([]byte, 4096)
	if err := d.ReadAt(ctx, got, 13*testChunk+100); err != nil {
		t.Fatal(err)
	}
	if gets, _ = s.counts(); gets["pages/"] != 1 || string(got) != string(m[13*testChunk+100:][:4096]) {
		t.Fatalf("first read: %v, data equal %v", gets, string(got) == string(m[13*testChunk+100:][:4096]))
	}
	// Writes to chunks of pages not read: a small write (an overlay over
	// the page's base), a whole chunk, a trim.
	m.write(t, d, pattern(300, 5), 21*testChunk+1000)
	m.write(t, d, pattern(testChunk, 6), 25*testChunk)
	if err := d.Trim(ctx, 33*testChunk, testChunk); err != nil {
		t.Fatal(err)
	}
	copy(m[33*testChunk:34*testChunk], make([]byte, testChunk))
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	waitClean(t, d)
	// A recovery point before the pages are read: a delta over the
	// recovery point the cache started from.
	mf, err := d.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if mf.Stored != -1 || len(mf.Deltas) != 2 {
		t.Fatalf("recovery point while the map loads: %+v", mf)
	}
	d.mu.Lock()
	pending := len(d.objects.pending)
	d.mu.Unlock()
	if pending == 0 {
		t.Fatal("every page read already")
	}
	d.Close()
	// Restarted before the map was read whole: the journal goes over
	// the same recovery point again.
	d, err = Open(ctx, Config{Dir: dir, Store: s, ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2})
	if err != nil {
		t.Fatal(err)
	}
	if d.meta.Lazy == "" {
		t.Fatal("not lazy after a restart")
	}
	// A recovery point at once: the overlay replayed from the journal
	// over chunk 21's unread page goes into its delta with the page's
	// base under it.
	mustCheckpoint(t, d)
	if got := exportFrom(t, mem, n*testChunk); string(got) != string(m) {
		t.Fatal("recovery point after a restart with pages unread differs")
	}
	img := make([]byte, len(m))
	if err := d.ReadAt(ctx, img, 0); err != nil {
		t.Fatal(err)
	}
	if string(img) != string(m) {
		t.Fatal("volume differs after a restart with pages unread")
	}
	d.Close()
	// Now with the pages read in the background: the journal gets the
	// whole map, meta.json forgets the recovery point under it.
	readPagesAhead = true
	d, err = Open(ctx, Config{Dir: dir, Store: s, ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.mapAll(ctx); err != nil {
		t.Fatal(err)
	}
	if lm, _, _ := loadMeta(vfs.OS, dir); lm.Lazy != "" {
		t.Fatalf("meta.json still lazy: %+v", lm)
	}
	journal, err := loadObjects(vfs.OS, dir, testChunk, newObjectMap())
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	equal := maps.Equal(journal.base, d.objects.base) && len(journal.overlays) == len(d.objects.overlays)
	d.mu.Unlock()
	if !equal {
		t.Fatal("journal does not hold the whole map")
	}
	final := m.check(t, d, mem)
	if final.Stored <= 0 {
		t.Fatalf("stored chunks after the map loaded: %d", final.Stored)
	}
}

// A cache whose journal was rewritten whole but whose meta.json still
// names the recovery point under it (a crash between the two) reads the
// same.
func TestWholeJournalOverLazySource(t *testing.T) {
	smallPages(t)
	ctx := context.Background()
	mem := store.NewMem()
	const n = 16
	d := openTest(t, t.TempDir(), mem, n*testChunk)
	m := make(model, n*testChunk)
	for i := range n {
		m.write(t, d, pattern(testChunk, byte(i)), int64(i)*testChunk)
	}
	m.check(t, d, mem)
	d.Close()
	readPagesAhead = false
	t.Cleanup(func() { readPagesAhead = true })
	dir := t.TempDir()
	d, err := Open(ctx, Config{Dir: dir, Store: mem, ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2})
	if err != nil {
		t.Fatal(err)
	}
	// Chunk 5 becomes zeroes plus an overlay; chunk 6 gets an overlay
	// over its base.
	if err := d.Trim(ctx, 5*testChunk, testChunk); err != nil {
		t.Fatal(err)
	}
	copy(m[5*testChunk:6*testChunk], make([]byte, testChunk))
	m.write(t, d, pattern(100, 3), 5*testChunk+10)
	m.write(t, d, pattern(100, 4), 6*testChunk+10)
	d.Flush(ctx)
	waitClean(t, d)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := d.mapAll(short); err == nil {
		t.Fatal("map loaded without its loader")
	}
	for p := range int64(n / 4) {
		if err := d.pageIn(ctx, p*4); err != nil {
			t.Fatal(err)
		}
	}
	d.mu.Lock()
	err = d.rewriteJournalLocked() // but meta.json keeps Lazy: the crash
	d.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	// Opening needs no store, even before the map was read whole: the
	// manifest, base and deltas are kept in the cache (lazy.json).
	mem.SetFail(func(op, key string) error { return store.ErrUnavailable })
	d, err = Open(ctx, Config{Dir: dir, Store: mem, ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2})
	mem.SetFail(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := readAll(t, d); string(got) != string(m) {
		t.Fatal("whole journal over the lazy source reads differently")
	}
}

// A volume written before paged maps (format 2) is read, and its next
// recovery point writes a whole base; old manifests still export.
func TestFormat2VolumeGetsABase(t *testing.T) {
	smallPages(t)
	ctx := context.Background()
	mem := store.NewMem()
	const n = 12
	m := make(model, n*testChunk)
	mf := Manifest{Format: manifestV2, Sequence: 3, Created: time.Now().UTC(), Size: n * testChunk, ChunkSize: testChunk,
		Chunks: map[string]string{}, Overlays: map[string][]Overlay{}}
	for i := range int64(n) {
		if i%3 == 2 {
			continue
		}
		data := pattern(testChunk, byte(i+1))
		copy(m[i*testChunk:], data)
		mem.Put(ctx, chunkKey(i, uint64(10+i)), data, store.PutOptions{})
		mf.Chunks[fmt.Sprint(i)] = chunkKey(i, uint64(10+i))
	}
	mem.Put(ctx, logKey(40), pattern(500, 9), store.PutOptions{})
	mf.Overlays["4"] = []Overlay{{Log: logKey(40), LogOffset: 100, Offset: 1000, Length: 300}}
	copy(m[4*testChunk+1000:], pattern(500, 9)[100:400])
	mf.Checksum = mf.sum()
	b, _ := json.MarshalIndent(mf, "", " ")
	mem.Put(ctx, manifestKey(3), b, store.PutOptions{IfAbsent: true})
	d, err := Open(ctx, Config{Dir: t.TempDir(), Store: mem, ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := readAll(t, d); string(got) != string(m) {
		t.Fatal("format 2 volume reads differently")
	}
	m.write(t, d, pattern(10, 1), 0)
	next := m.check(t, d, mem)
	if next.Format != manifestV4 || next.Base == "" || len(next.Deltas) != 0 {
		t.Fatalf("after a format 2 recovery point: %+v", next)
	}
	if got := exportFrom(t, mem, n*testChunk); string(got) != string(m) {
		t.Fatal("export differs")
	}
}

// failPuts fails puts of keys with prefix once armed.
type failPuts struct {
	store.Store
	mu     sync.Mutex
	prefix string
}

func (s *failPuts) arm(prefix string) { s.mu.Lock(); s.prefix = prefix; s.mu.Unlock() }

func (s *failPuts) Put(ctx context.Context, key string, b []byte, o store.PutOptions) error {
	s.mu.Lock()
	p := s.prefix
	s.mu.Unlock()
	if p != "" && strings.HasPrefix(key, p) {
		return fmt.Errorf("put %s: %w", key, store.ErrUnavailable)
	}
	return s.Store.Put(ctx, key, b, o)
}

// A recovery point that fails after some of its map objects were
// uploaded publishes nothing that names a missing object, and the next
// one carries its changes.
func TestRecoveryPointFailsBetweenUploads(t *testing.T) {
	smallPages(t)
	ctx := context.Background()
	mem := store.NewMem()
	s := &failPuts{Store: mem}
	const n = 16
	d := openTest(t, t.TempDir(), s, n*testChunk)
	defer d.Close()
	m := make(model, n*testChunk)
	for i := range n {
		m.write(t, d, pattern(testChunk, byte(i)), int64(i)*testChunk)
	}
	s.arm("bases/") // pages go up, the base does not
	if _, err := d.Checkpoint(ctx); err == nil {
		t.Fatal("recovery point without its base published")
	}
	s.arm("")
	m.check(t, d, s)
	for _, fail := range []string{"deltas/", "manifests/"} {
		m.write(t, d, pattern(200, 7), 2*testChunk+10)
		s.arm(fail)
		if _, err := d.Checkpoint(ctx); err == nil {
			t.Fatalf("recovery point published with %s failing", fail)
		}
		s.arm("")
		// The newest manifest in the store still reads whole.
		latest, err := LatestManifest(ctx, mem)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := loadManifestMap(ctx, mem, latest); err != nil {
			t.Fatalf("after a failed %s: %v", fail, err)
		}
		m.check(t, d, s) // carries the failed one's change
	}
}

// Shrinking drops chunks; growing again must not bring back what the
// base's pages held for them.
func TestShrinkThenGrowStaysZero(t *testing.T) {
	smallPages(t)
	ctx := context.Background()
	mem := store.NewMem()
	const n = 16
	d := openTest(t, t.TempDir(), mem, n*testChunk)
	defer d.Close()
	m := make(model, n*testChunk)
	for i := range n {
		m.write(t, d, pattern(testChunk, byte(i+1)), int64(i)*testChunk)
	}
	m.check(t, d, mem)
	if err := d.Resize(ctx, 6*testChunk); err != nil {
		t.Fatal(err)
	}
	small := m[:6*testChunk]
	small.check(t, d, mem)
	if err := d.Resize(ctx, n*testChunk); err != nil {
		t.Fatal(err)
	}
	clear(m[6*testChunk:])
	m.check(t, d, mem)
	nd := reopen(t, d)
	if got := readAll(t, nd); string(got) != string(m) {
		t.Fatal("adopted volume differs after shrink and grow")
	}
}

// A snapshot of a paged recovery point keeps its base, pages and deltas
// through compaction and collection; its clone (whose first manifest
// holds the whole map) reads it; once removed, what only it kept goes.
func TestSnapshotOfPagedMap(t *testing.T) {
	smallPages(t)
	ctx := context.Background()
	mem := store.NewMem()
	const n = 16
	d := openTest(t, t.TempDir(), mem, n*testChunk)
	defer d.Close()
	m := make(model, n*testChunk)
	for i := range n {
		m.write(t, d, pattern(testChunk, byte(i+1)), int64(i)*testChunk)
	}
	m.check(t, d, mem)
	m.write(t, d, pattern(50, 1), testChunk)
	if _, err := d.Snapshot(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(m)
	for i := range 2 * maxDeltas {
		m.write(t, d, pattern(testChunk, byte(i)), int64(i%n)*testChunk)
		m.check(t, d, mem)
	}
	sm, err := ReadSnapshot(ctx, mem, "s")
	if err != nil || sm.Format != manifestV4 || len(sm.Deltas) == 0 {
		t.Fatalf("snapshot: %+v %v", sm, err)
	}
	sd, err := OpenSnapshot(mem, sm)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, sd); string(got) != string(want) {
		t.Fatal("snapshot reads differently after compaction and collection")
	}
	// A clone's seed is the whole map.
	cloneStore := store.NewMem()
	parents, err := SeedClone(ctx, sm, "volumes/p/", "c1", func(string) (store.Store, error) { return mem, nil }, cloneStore)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := LatestManifest(ctx, cloneStore)
	if err != nil || seed.Format != manifestV3 || seed.Base != "" || len(seed.Chunks) != n {
		t.Fatalf("clone seed: %+v %v", seed.Format, err)
	}
	c, err := Open(ctx, Config{Dir: t.TempDir(), Store: Layered(cloneStore, []Layer{{Store: mem, Below: parents[0].Below}}),
		ChunkSize: testChunk, CacheBytes: 1 << 20, Parents: parents})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := readAll(t, c); string(got) != string(want) {
		t.Fatal("clone reads differently")
	}
	if err := UnmarkClone(ctx, mem, "c1"); err != nil {
		t.Fatal(err)
	}
	before := len(storeKeysWith(t, mem, "pages/")) + len(storeKeysWith(t, mem, "deltas/"))
	if err := RemoveSnapshot(ctx, mem, "s"); err != nil {
		t.Fatal(err)
	}
	m.check(t, d, mem)
	if after := len(storeKeysWith(t, mem, "pages/")) + len(storeKeysWith(t, mem, "deltas/")); after >= before {
		t.Fatalf("%d map objects before removing the snapshot, %d after", before, after)
	}
}

// Damaged map objects are reported, never read as zeroes.
func TestDamagedMapObjects(t *testing.T) {
	smallPages(t)
	ctx := context.Background()
	mem := store.NewMem()
	d := openTest(t, t.TempDir(), mem, 8*testChunk)
	m := make(model, 8*testChunk)
	for i := range 8 {
		m.write(t, d, pattern(testChunk, byte(i+1)), int64(i)*testChunk)
	}
	m.check(t, d, mem)
	m.write(t, d, pattern(10, 1), 0)
	mf := m.check(t, d, mem)
	d.Close()
	b, _ := readBase(ctx, mem, mf.Base)
	for _, key := range []string{b.Pages["1"], mf.Deltas[0], mf.Base} {
		orig, _ := mem.Get(ctx, key, nil)
		mem.Put(ctx, key, append(slices.Clone(orig[:len(orig)-3]), "}}}"...), store.PutOptions{})
		if _, err := loadManifestMap(ctx, mem, mf); !errors.Is(err, errDamaged) {
			t.Fatalf("damaged %s: %v", key, err)
		}
		img := memWriterAt(make([]byte, 8*testChunk))
		if err := Export(ctx, mem, mf, img); err == nil {
			t.Fatalf("export with %s damaged", key)
		}
		mem.Put(ctx, key, orig, store.PutOptions{})
	}
	// A base naming a page of another page number.
	pg, _ := mem.Get(ctx, b.Pages["1"], nil)
	mem.Put(ctx, b.Pages["0"], pg, store.PutOptions{})
	if _, err := loadManifestMap(ctx, mem, mf); !errors.Is(err, errDamaged) {
		t.Fatalf("swapped page: %v", err)
	}
}

// The image rebuilt from the bucket's objects by a program that follows
// docs/FORMAT.md alone (test/acceptance/testdata/rebuild.py) equals the
// volume: a base, deltas with overlays and zeroed chunks, a shrink.
func TestRebuildByHandFromPagedMap(t *testing.T) {
	py := testutil.RequireTool(t, "python3")
	smallPages(t)
	ctx := context.Background()
	mem := store.NewMem()
	const n = 24
	d := openTest(t, t.TempDir(), mem, n*testChunk)
	defer d.Close()
	m := make(model, n*testChunk)
	for i := range n {
		if i%5 != 3 {
			m.write(t, d, pattern(testChunk, byte(i+1)), int64(i)*testChunk)
		}
	}
	m.check(t, d, mem)
	d.Close()
	d = reopen(t, d) // a fresh cache: small writes become overlays
	m.write(t, d, pattern(700, 9), 2*testChunk+333)
	m.write(t, d, pattern(90, 8), 13*testChunk+5)
	if err := d.Trim(ctx, 7*testChunk, testChunk); err != nil {
		t.Fatal(err)
	}
	copy(m[7*testChunk:8*testChunk], make([]byte, testChunk))
	m.check(t, d, mem)
	if err := d.Resize(ctx, 20*testChunk); err != nil {
		t.Fatal(err)
	}
	m = m[:20*testChunk]
	m.write(t, d, pattern(testChunk, 44), 19*testChunk)
	mf := m.check(t, d, mem)
	if len(mf.Deltas) < 2 {
		t.Fatalf("want a chain of deltas: %+v", mf)
	}
	dir := t.TempDir()
	if err := mem.List(ctx, "", func(o store.ObjectInfo) error {
		b, err := mem.Get(ctx, o.Key, nil)
		if err != nil {
			return err
		}
		p := filepath.Join(dir, o.Key)
		os.MkdirAll(filepath.Dir(p), 0o700)
		return os.WriteFile(p, b, 0o600)
	}); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "img")
	out, err := exec.Command(py, "../../test/acceptance/testdata/rebuild.py", dir, img).CombinedOutput()
	if err != nil {
		t.Fatalf("rebuild.py: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	if got, _ := os.ReadFile(img); !bytes.Equal(got, m) {
		t.Fatalf("rebuilt image differs (%d bytes, want %d): %s", len(got), len(m), out)
	}
	// And the shell script in docs/FORMAT.md, reading the same files.
	testutil.RequireTool(t, "jq")
	doc, err := os.ReadFile("../../docs/FORMAT.md")
	if err != nil {
		t.Fatal(err)
	}
	_, script, ok := strings.Cut(string(doc), "### Rebuilding an image by hand\n\n```sh\n")
	script, _, ok2 := strings.Cut(script, "```")
	if !ok || !ok2 {
		t.Fatal("no rebuild script in docs/FORMAT.md")
	}
	var kept []string
	for _, line := range strings.Split(script, "\n") {
		switch {
		case strings.HasPrefix(line, "P="):
			line = "P=" + dir
		case strings.HasPrefix(line, "get()"):
			line = `get() { cp "$P/$1" "$2"; }`
		case strings.HasPrefix(line, "M="):
			line = "M=$(ls $P/manifests/ | sort | tail -1)"
		}
		kept = append(kept, line)
	}
	work := t.TempDir()
	cmd := exec.Command(testutil.RequireTool(t, "bash"), "-euo", "pipefail", "-c", strings.Join(kept, "\n"))
	cmd.Dir = work
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the script in docs/FORMAT.md: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(filepath.Join(work, "image.raw")); !bytes.Equal(got, m) {
		t.Fatalf("the script in docs/FORMAT.md rebuilt a different image (%d bytes, want %d)", len(got), len(m))
	}
}

// After a clean restart the next recovery point is a delta over the last
// one; after a crash (no head.json) it is a whole base. Both export as
// the volume is.
func TestRestartChainsOntoTheLastRecoveryPoint(t *testing.T) {
	smallPages(t)
	ctx := context.Background()
	mem := store.NewMem()
	s := newByPrefix(mem)
	const n = 16
	dir := t.TempDir()
	open := func() *Device {
		d, err := Open(ctx, Config{Dir: dir, Store: s, Size: n * testChunk, ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	d := open()
	m := make(model, n*testChunk)
	for i := range n {
		m.write(t, d, pattern(testChunk, byte(i+1)), int64(i)*testChunk)
	}
	first := m.check(t, d, s)
	m.write(t, d, pattern(100, 3), 5*testChunk+1) // changed before the close
	d.Close()
	d = open()
	m.write(t, d, pattern(100, 4), 9*testChunk+1)
	s.reset()
	mf := m.check(t, d, s)
	if _, put := s.counts(); mf.Base != first.Base || len(mf.Deltas) != 1 || put["pages/"] != 0 {
		t.Fatalf("after a clean restart: %+v, uploads %v", mf, put)
	}
	if d.since == nil || len(d.since) != 0 {
		t.Fatalf("changes left after the recovery point: %v", d.since)
	}
	// A crash: head.json was taken at open and the device never closes
	// cleanly; a second open of a copy of its cache finds none.
	m.write(t, d, pattern(100, 5), 2*testChunk+1)
	d.Flush(ctx)
	waitClean(t, d)
	crashed := t.TempDir()
	if err := exec.Command("cp", "-a", dir+"/.", crashed).Run(); err != nil {
		t.Fatal(err)
	}
	d.Close()
	dir = crashed
	os.Remove(filepath.Join(dir, headName)) // written by the clean close above, after the copy: none
	d = open()
	defer d.Close()
	s.reset()
	mf = m.check(t, d, s)
	if _, put := s.counts(); mf.Base == first.Base || put["pages/"] == 0 {
		t.Fatalf("after a crash: %+v, uploads %v", mf, put)
	}
}

// Map objects come from the network: any bytes give an error or entries
// within the page's range, never a panic.
func FuzzMapObjects(f *testing.F) {
	f.Add([]byte(`{"format":"ferry-map-page/1","page":1,"page_chunks":4,"chunks":{"5":"chunks/0000000000000005/0000000000000001"},"overlays":{"6":[{"log":"logs/0000000000000002","log_offset":0,"offset":0,"length":10}]}}`))
	f.Add([]byte(`{"format":"ferry-map-delta/1","chunks":{},"zero":[1,2,3]}`))
	f.Add([]byte(`{"format":"ferry-map-base/1","page_chunks":4096,"pages":{"0":"pages/0000000000000001"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var pg mapPage
		if json.Unmarshal(b, &pg) == nil && pg.PageChunks > 0 && pg.Page >= 0 && pg.Page < 1<<40 && pg.PageChunks < 1<<20 {
			if ents, err := pageEntries(pg, testChunk, 1<<50); err == nil {
				for idx := range ents {
					if idx < pg.Page*pg.PageChunks || idx >= (pg.Page+1)*pg.PageChunks {
						t.Fatalf("entry %d outside page %d", idx, pg.Page)
					}
				}
			}
		}
		var d mapDelta
		if json.Unmarshal(b, &d) == nil {
			deltaEntries(d, testChunk, 1<<40)
		}
		var base mapBase
		if json.Unmarshal(b, &base) == nil {
			basePages(base)
		}
	})
}

// Deltas holding more than a quarter of what the pages they touch can
// hold are folded into a new base before the chain is long.
func TestLargeDeltasFoldIntoABase(t *testing.T) {
	old, share := pageChunks, deltaShare
	pageChunks, deltaShare = 8, 4
	t.Cleanup(func() { pageChunks, deltaShare = old, share })
	mem := store.NewMem()
	const n = 32
	d := openTest(t, t.TempDir(), mem, n*testChunk)
	defer d.Close()
	m := make(model, n*testChunk)
	for i := range n {
		m.write(t, d, pattern(testChunk, byte(i+1)), int64(i)*testChunk)
	}
	first := m.check(t, d, mem)
	for i, want := range []int{1, 2, 0} { // deltas after each: the third folds
		m.write(t, d, pattern(64, byte(i)), int64(9+i)*testChunk) // all in page 1
		mf := m.check(t, d, mem)
		if len(mf.Deltas) != want || (want > 0) != (mf.Base == first.Base) {
			t.Fatalf("recovery point %d: %d deltas (want %d), base %s (first %s)", i, len(mf.Deltas), want, mf.Base, first.Base)
		}
	}
}
