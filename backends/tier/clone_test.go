package tier

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/ferry-io/ferry/backends/store"
)

// scoped is a store under a prefix of another, as volumes share a bucket.
type scoped struct {
	s      store.Store
	prefix string
}

func (p scoped) Put(ctx context.Context, k string, b []byte, o store.PutOptions) error {
	return p.s.Put(ctx, p.prefix+k, b, o)
}
func (p scoped) Get(ctx context.Context, k string, buf []byte) ([]byte, error) {
	return p.s.Get(ctx, p.prefix+k, buf)
}
func (p scoped) GetRange(ctx context.Context, k string, off, n int64) ([]byte, error) {
	return p.s.GetRange(ctx, p.prefix+k, off, n)
}
func (p scoped) Stat(ctx context.Context, k string) (store.ObjectInfo, error) {
	in, err := p.s.Stat(ctx, p.prefix+k)
	in.Key = k
	return in, err
}
func (p scoped) Delete(ctx context.Context, k string) error { return p.s.Delete(ctx, p.prefix+k) }
func (p scoped) List(ctx context.Context, prefix string, fn func(store.ObjectInfo) error) error {
	return p.s.List(ctx, p.prefix+prefix, func(o store.ObjectInfo) error {
		o.Key = o.Key[len(p.prefix):]
		return fn(o)
	})
}

// A clone reads as its snapshot at once, changes independently of its
// parent, and keeps reading everything after the snapshot is removed, the
// parent is overwritten and collected, and the parent is deleted but for
// what its clones read. A clone of the clone works too.
func TestCloneSharesAndOutlivesItsParent(t *testing.T) {
	ctx := context.Background()
	bucket := store.NewMem()
	at := func(p string) store.Store { return scoped{bucket, p} }
	parent := openTest(t, t.TempDir(), at("volumes/p/"), 2<<20)
	defer parent.Close()
	base := pattern(12*testChunk, 1)
	if err := parent.WriteAt(ctx, base, 0); err != nil {
		t.Fatal(err)
	}
	if err := parent.WriteAt(ctx, pattern(700, 2), 15*testChunk+3); err != nil {
		t.Fatal(err)
	}
	want := readAll(t, parent)
	m, err := parent.Snapshot(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	openClone := func(id string, m Manifest, parentPrefix string) *Device {
		t.Helper()
		parents, err := SeedClone(ctx, m, parentPrefix, id, func(p string) (store.Store, error) { return at(p), nil }, at("volumes/"+id+"/"))
		if err != nil {
			t.Fatal(err)
		}
		var layers []Layer
		for _, p := range parents {
			layers = append(layers, Layer{Store: at(p.Prefix), Below: p.Below})
		}
		d, err := Open(ctx, Config{Dir: t.TempDir(), Store: Layered(at("volumes/"+id+"/"), layers), Parents: parents,
			ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	c := openClone("c", m, "volumes/p/")
	defer c.Close()
	if !bytes.Equal(readAll(t, c), want) {
		t.Fatal("clone does not read as its snapshot")
	}
	// Independent changes.
	if err := c.WriteAt(ctx, pattern(testChunk, 7), 2*testChunk); err != nil {
		t.Fatal(err)
	}
	copy(want[2*testChunk:], pattern(testChunk, 7))
	if err := parent.WriteAt(ctx, pattern(12*testChunk, 9), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	// The snapshot goes, the parent collects many times.
	if err := RemoveSnapshot(ctx, at("volumes/p/"), "s"); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if _, err := parent.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	c2 := openClone("c2", mustCheckpoint(t, c), "volumes/c/")
	defer c2.Close()
	// The parent volume is deleted, all but what clones read.
	keep, err := CloneRoots(ctx, at("volumes/p/"))
	if err != nil {
		t.Fatal(err)
	}
	var doomed []string
	bucket.List(ctx, "volumes/p/", func(o store.ObjectInfo) error {
		if !keep[o.Key[len("volumes/p/"):]] {
			doomed = append(doomed, o.Key)
		}
		return nil
	})
	for _, k := range doomed {
		bucket.Delete(ctx, k)
	}
	c.Close()
	c = reopen(t, c) // nothing cached: every read from the store
	for name, d := range map[string]*Device{"clone": c, "clone of the clone": c2} {
		if !bytes.Equal(readAll(t, d), want) {
			t.Fatalf("%s lost data its ancestors held", name)
		}
	}
	if _, err := c.Checkpoint(ctx); err != nil { // a clone's collection leaves its parent alone
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, c2), want) {
		t.Fatal("clone of the clone lost data after its parent collected")
	}
}

func mustCheckpoint(t *testing.T, d *Device) Manifest {
	t.Helper()
	m, err := d.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// reopen opens a closed device's volume again over a fresh cache.
func reopen(t *testing.T, d *Device) *Device {
	t.Helper()
	cfg := d.cfg
	cfg.Dir, cfg.Budget = t.TempDir(), nil
	nd, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nd.Close() })
	return nd
}

// lateMarker injects, once armed, a clone's marker and then an object it
// names into the store just before collection lists chunks: a clone
// moving in from another store, racing a collection here.
type lateMarker struct {
	store.Store
	armed  atomic.Bool
	inject func()
}

func (s *lateMarker) List(ctx context.Context, prefix string, fn func(store.ObjectInfo) error) error {
	if prefix == "chunks/" && s.armed.CompareAndSwap(true, false) {
		s.inject()
	}
	return s.Store.List(ctx, prefix, fn)
}

// Collection keeps what a marker written during it names: the object was
// listed, so its marker (written first) is seen by the later look.
func TestCollectionKeepsWhatALateMarkerNames(t *testing.T) {
	ctx := context.Background()
	const key = "chunks/0000000000001388/0000000000000001" // an old version no manifest here names
	mem := store.NewMem()
	s := &lateMarker{Store: mem}
	s.inject = func() {
		b, _ := json.Marshal(Manifest{Format: manifestV3, Sequence: 1, Chunks: map[string]string{"5000": key}})
		if err := mem.Put(ctx, cloneMarkerKey("moved"), b, store.PutOptions{}); err != nil {
			t.Error(err)
		}
		if err := mem.Put(ctx, key, pattern(testChunk, 9), store.PutOptions{}); err != nil {
			t.Error(err)
		}
	}
	d := openTest(t, t.TempDir(), s, 1<<20)
	defer d.Close()
	for i := range 3 {
		if err := d.WriteAt(ctx, pattern(1<<20, byte(i)), 0); err != nil {
			t.Fatal(err)
		}
		mustCheckpoint(t, d)
	}
	s.armed.Store(true)
	if err := d.WriteAt(ctx, pattern(1<<20, 7), 0); err != nil {
		t.Fatal(err)
	}
	mustCheckpoint(t, d)
	if s.armed.Load() {
		t.Fatal("collection did not list chunks")
	}
	if _, err := mem.Stat(ctx, key); err != nil {
		t.Fatalf("collection deleted what a marker written during it names: %v", err)
	}
	// Unmarked, it goes at the next collection.
	if err := UnmarkClone(ctx, mem, "moved"); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteAt(ctx, pattern(1<<20, 8), 0); err != nil {
		t.Fatal(err)
	}
	mustCheckpoint(t, d)
	if _, err := mem.Stat(ctx, key); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("an object no marker names any more stays: %v", err)
	}
}
