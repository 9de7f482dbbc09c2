package tier

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/store"
)

// markerAfterFirstDelete writes, after the first delete, a clone's marker
// naming late, and takes longer than markerWindow to return: a clone moving
// in while a long collection deletes.
type markerAfterFirstDelete struct {
	store.Store
	late    string
	done    bool
	delay   time.Duration
	deleted []string
	t       *testing.T
}

func (s *markerAfterFirstDelete) Delete(ctx context.Context, key string) error {
	if _, ok := ctx.Deadline(); !ok {
		s.t.Errorf("delete %s without a deadline", key)
	}
	s.deleted = append(s.deleted, key)
	if err := s.Store.Delete(ctx, key); err != nil || s.done {
		return err
	}
	s.done = true
	b, _ := json.Marshal(Manifest{Format: manifestV3, Sequence: 1, Chunks: map[string]string{"7": s.late}})
	if err := s.Store.Put(ctx, cloneMarkerKey("moved"), b, store.PutOptions{}); err != nil {
		s.t.Error(err)
	}
	time.Sleep(s.delay)
	return nil
}

// A long deletion reads the clone markers again once markerWindow has
// passed, and spares what a marker written meanwhile names.
func TestSweepReadsTheMarkersAgain(t *testing.T) {
	defer func(w time.Duration) { markerWindow = w }(markerWindow)
	markerWindow = 250 * time.Millisecond // long enough that a loaded machine does not miss a deadline
	ctx := context.Background()
	mem := store.NewMem()
	keys := []string{chunkKey(1, 1), chunkKey(2, 1), chunkKey(7, 1), chunkKey(8, 1)}
	for _, k := range keys {
		if err := mem.Put(ctx, k, []byte("x"), store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	s := &markerAfterFirstDelete{Store: mem, late: chunkKey(7, 1), delay: 2 * markerWindow, t: t}
	markers, err := ReadCloneMarkers(ctx, s, map[string]bool{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := markers.Sweep(ctx, keys)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 || markers.Count() != 1 {
		t.Fatalf("deleted %d (%v), %d markers; want 3 and 1", n, s.deleted, markers.Count())
	}
	if _, err := mem.Stat(ctx, chunkKey(7, 1)); err != nil {
		t.Fatalf("the object the late marker names: %v", err)
	}
	for _, k := range []string{chunkKey(1, 1), chunkKey(2, 1), chunkKey(8, 1)} {
		if _, err := mem.Stat(ctx, k); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s not deleted: %v", k, err)
		}
	}
}

// collectsAfterMarker deletes victim right after the clone's marker lands:
// a collector in the destination that read the markers before it.
type collectsAfterMarker struct {
	scoped
	marker, victim string
	t              *testing.T
}

func (s collectsAfterMarker) Put(ctx context.Context, k string, b []byte, o store.PutOptions) error {
	if err := s.scoped.Put(ctx, k, b, o); err != nil {
		return err
	}
	if k == s.marker {
		if err := s.scoped.Delete(ctx, s.victim); err != nil {
			s.t.Error(err)
		}
	}
	return nil
}

// A clone moving into a store where its ancestor's objects already are
// (another clone's) skips them; a collector there that read the markers
// before the clone's deletes one; the move copies it again before it
// switches, and the destination alone then reads as the clone does.
func TestMigrateCloneRecopiesWhatACollectorDeleted(t *testing.T) {
	ctx := context.Background()
	a, b := store.NewMem(), store.NewMem()
	parent := openTest(t, t.TempDir(), scoped{a, "volumes/p/"}, 1<<20)
	defer parent.Close()
	if err := parent.WriteAt(ctx, pattern(1<<20, 5), 0); err != nil {
		t.Fatal(err)
	}
	parents, err := SeedClone(ctx, mustCheckpoint(t, parent), "volumes/p/", "c",
		func(p string) (store.Store, error) { return scoped{a, p}, nil }, scoped{a, "volumes/c/"})
	if err != nil {
		t.Fatal(err)
	}
	// Another clone's move left the parent's objects in b.
	objs, err := list(ctx, scoped{a, "volumes/p/"})
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]string, 0, len(objs))
	for k := range objs {
		keys = append(keys, k)
	}
	if _, err := (&Copier{}).copyAll(ctx, scoped{a, "volumes/p/"}, scoped{b, "volumes/p/"}, keys); err != nil {
		t.Fatal(err)
	}
	// The victim: an object the clone reads.
	victim := markedChunk(ctx, t, scoped{a, "volumes/p/"}, "c")
	if _, ok := objs[victim]; !ok {
		t.Fatalf("the marker names %q, which the parent lacks", victim)
	}
	to := collectsAfterMarker{scoped{b, "volumes/p/"}, cloneMarkerKey("c"), victim, t}
	own := store.NewSwitch(scoped{a, "volumes/c/"})
	cp := &Copier{From: scoped{a, "volumes/c/"}, To: scoped{b, "volumes/c/"}, CloneID: "c", Grace: 10 * time.Millisecond,
		Ancestors: []AncestorCopy{{From: scoped{a, "volumes/p/"}, To: to, Below: parents[0].Below}}}
	if err := cp.Migrate(ctx, own, scoped{b, "volumes/c/"}, func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Stat(ctx, "volumes/p/"+victim); err != nil {
		t.Fatalf("the ancestor's object a collector deleted during the move: %v", err)
	}
	if st := cp.Stats(); st.Done != st.Total {
		t.Errorf("stats after the move: %+v", st)
	}
	d, err := Open(ctx, Config{Dir: t.TempDir(), Store: Layered(scoped{b, "volumes/c/"}, []Layer{{Store: scoped{b, "volumes/p/"}, Below: parents[0].Below}}),
		Parents: parents, ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := readAll(t, d); string(got) != string(pattern(1<<20, 5)) {
		t.Fatal("the moved clone, from the destination alone, differs")
	}
}

// markedChunk returns a chunk key that the clone's marker in an ancestor's
// prefix names: an object the clone reads.
func markedChunk(ctx context.Context, t *testing.T, ancestor store.Store, cloneID string) string {
	t.Helper()
	b, err := ancestor.Get(ctx, cloneMarkerKey(cloneID), nil)
	if err != nil {
		t.Fatal(err)
	}
	var marker Manifest
	if err := json.Unmarshal(b, &marker); err != nil {
		t.Fatal(err)
	}
	for _, k := range marker.Chunks {
		return k
	}
	t.Fatalf("the marker of %s names no chunk", cloneID)
	return ""
}
