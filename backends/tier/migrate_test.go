package tier

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/store"
)

// exportFrom rebuilds the image the newest manifest in s describes, and
// fails when it names an object s lacks.
func exportFrom(t *testing.T, s store.Store, size int64) []byte {
	t.Helper()
	ctx := context.Background()
	m, err := LatestManifest(ctx, s)
	if err != nil {
		t.Fatalf("newest manifest: %v", err)
	}
	img := make(memWriterAt, size)
	if err := Export(ctx, s, m, img); err != nil {
		t.Fatalf("export manifest %d: %v", m.Sequence, err)
	}
	return img
}

// A volume moves to another store while a writer keeps writing: after the
// switch the new store alone holds every acknowledged write, uploads go
// there, and the old store is no longer written.
func TestMigrateWhileWriting(t *testing.T) {
	ctx := context.Background()
	const size = 4 << 20
	a, b := store.NewMem(), store.NewMem()
	sw := store.NewSwitch(a)
	d := openTest(t, t.TempDir(), sw, size)
	defer d.Close()
	want := make([]byte, size)
	write := func(off int, seed byte, n int) {
		p := pattern(n, seed)
		if err := d.WriteAt(ctx, p, int64(off)); err != nil {
			t.Errorf("write at %d: %v", off, err)
			return
		}
		copy(want[off:], p)
	}
	write(0, 1, size)
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	wg.Add(1)
	go func() { // keeps writing small pieces through the whole move
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			write((i*12289)%(size-4096), byte(i), 4096)
			mu.Unlock()
			if i%16 == 0 {
				d.Flush(ctx)
			}
		}
	}()
	c := &Copier{From: a, To: b}
	committed := false
	err := c.Migrate(ctx, sw, b, func(context.Context) error { committed = true; return nil })
	close(stop)
	wg.Wait()
	if err != nil || !committed {
		t.Fatalf("migrate: %v (committed %v)", err, committed)
	}
	if st := c.Stats(); st.State != CopyDone || st.Done != st.Total || st.Copied == 0 {
		t.Fatalf("stats after the move: %+v", st)
	}
	if sw.Target() != store.Store(b) {
		t.Fatal("the switch still targets the old store")
	}
	var late atomic.Int32
	a.SetFail(func(op, key string) error {
		if op == "put" || op == "delete" {
			late.Add(1)
		}
		return nil
	})
	write(8192, 99, 70000)
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if n := late.Load(); n != 0 {
		t.Fatalf("the old store was changed %d times after the switch", n)
	}
	if got := exportFrom(t, b, size); !bytes.Equal(got, want) {
		t.Fatal("the new store's newest recovery point differs from what was written")
	}
	got := make([]byte, size)
	if err := d.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read through the device: %v, equal %v", err, bytes.Equal(got, want))
	}
}

// A pass cut short copies only what is missing when it runs again.
func TestCopyResumes(t *testing.T) {
	ctx := context.Background()
	a := store.NewMem()
	d := openTest(t, t.TempDir(), a, 2<<20)
	if err := d.WriteAt(ctx, pattern(2<<20, 7), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	d.Close()
	b := store.NewMem()
	var puts atomic.Int32
	b.SetFail(func(op, key string) error {
		if op == "put" && puts.Add(1) > 10 {
			return fmt.Errorf("put %s: %w", key, store.ErrDenied)
		}
		return nil
	})
	first := &Copier{From: a, To: b, Workers: 1}
	if _, err := first.Pass(ctx); !errors.Is(err, store.ErrDenied) {
		t.Fatalf("first pass: %v, want the injected failure", err)
	}
	part := first.Stats()
	if part.Copied == 0 || part.Done >= part.Total {
		t.Fatalf("first pass stats: %+v", part)
	}
	b.SetFail(nil)
	again := &Copier{From: a, To: b}
	passResumes(ctx, t, again, part)
	if n, err := again.Pass(ctx); err != nil || n != 0 {
		t.Fatalf("a pass over a complete copy copied %d (%v)", n, err)
	}
	if got := exportFrom(t, b, 2<<20); !bytes.Equal(got, pattern(2<<20, 7)) {
		t.Fatal("copy differs")
	}
}

// A destination that refuses writes fails the move; the volume goes on
// with its store, writes and recovery points included.
func TestMigrateFailureLeavesTheSource(t *testing.T) {
	ctx := context.Background()
	a, b := store.NewMem(), store.NewMem()
	b.SetFail(func(op, key string) error { return fmt.Errorf("%s %s: %w", op, key, store.ErrUnavailable) })
	sw := store.NewSwitch(a)
	d := openTest(t, t.TempDir(), sw, 1<<20)
	defer d.Close()
	if err := d.WriteAt(ctx, pattern(1<<20, 3), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	c := &Copier{From: a, To: b}
	err := c.Migrate(ctx, sw, b, func(context.Context) error {
		t.Error("commit called after a failed copy")
		return nil
	})
	if !errors.Is(err, store.ErrUnavailable) || c.Stats().State != CopyFailed || c.Stats().Err == "" {
		t.Fatalf("migrate to a failing store: %v, %+v", err, c.Stats())
	}
	if sw.Target() != store.Store(a) {
		t.Fatal("the switch left the source")
	}
	if err := d.WriteAt(ctx, pattern(4096, 9), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatalf("recovery point on the source after the failure: %v", err)
	}
	want := pattern(1<<20, 3)
	copy(want, pattern(4096, 9))
	if got := exportFrom(t, a, 1<<20); !bytes.Equal(got, want) {
		t.Fatal("source image differs")
	}
	// A commit that fails (the catalog could not be written) leaves the
	// source too.
	b.SetFail(nil)
	c = &Copier{From: a, To: b}
	if err := c.Migrate(ctx, sw, b, func(context.Context) error { return errors.New("disk full") }); err == nil {
		t.Fatal("migrate with a failing commit succeeded")
	}
	if sw.Target() != store.Store(a) {
		t.Fatal("the switch left the source after a failed commit")
	}
	if err := d.WriteAt(ctx, pattern(4096, 10), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatalf("recovery point on the source after the failed commit: %v", err)
	}
}

// lateStore models a server that finishes a PUT after its client gave
// up: the object lands a little after the request was sent, whether or
// not the caller's context ends first.
type lateStore struct {
	*store.Mem
	sent chan struct{}
}

func (s lateStore) Put(ctx context.Context, key string, data []byte, opts store.PutOptions) error {
	done := make(chan error, 1)
	go func() {
		time.Sleep(50 * time.Millisecond)
		done <- s.Mem.Put(context.Background(), key, data, opts)
	}()
	select {
	case s.sent <- struct{}{}:
	default:
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// A cancelled pass returns only once every PUT it sent was answered, so
// the clean-up that follows it sees every object it copied (else one
// lands after the clean-up listed the destination, and stays there).
func TestCancelledPassLeavesNoLatePut(t *testing.T) {
	ctx := context.Background()
	a := store.NewMem()
	d := openTest(t, t.TempDir(), a, 4<<20)
	if err := d.WriteAt(ctx, pattern(4<<20, 5), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	d.Close()
	b := lateStore{Mem: store.NewMem(), sent: make(chan struct{}, 1)}
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		<-b.sent
		cancel()
	}()
	c := &Copier{From: a, To: b, Workers: 1}
	if _, err := c.Pass(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled pass: %v", err)
	}
	count := func() int {
		n := 0
		b.List(ctx, "", func(store.ObjectInfo) error { n++; return nil })
		return n
	}
	after := count()
	time.Sleep(200 * time.Millisecond)
	if late := count(); late != after {
		t.Fatalf("the destination held %d objects when the cancelled pass returned and %d a moment later", after, late)
	}
	if after == 0 {
		t.Fatal("the PUT in flight at the cancellation was not let finish")
	}
}

// A clone of a clone moves to another bucket: the first pass copies what
// it reads of each ancestor (and nothing else of them) with its marker
// there, after the switch its reads of ancestors' data go to the new
// bucket, and the new bucket alone then serves it with an empty cache.
func TestMigrateClone(t *testing.T) {
	ctx := context.Background()
	const size = 2 << 20
	a, b := store.NewMem(), store.NewMem()
	in := func(s store.Store) func(string) store.Store {
		return func(p string) store.Store { return scoped{s, p} }
	}
	// openClone seeds a clone of m in bucket a and opens it over own,
	// with its ancestors' layers as switches (as the gateway does).
	openClone := func(id string, m Manifest, parentPrefix string, own store.Store, at func(string) store.Store) (*Device, []Parent, []*store.Switch) {
		t.Helper()
		parents, err := SeedClone(ctx, m, parentPrefix, id, func(p string) (store.Store, error) { return at(p), nil }, own)
		if err != nil {
			t.Fatal(err)
		}
		var layers []Layer
		var sws []*store.Switch
		for _, p := range parents {
			sw := store.NewSwitch(at(p.Prefix))
			sws = append(sws, sw)
			layers = append(layers, Layer{Store: sw, Below: p.Below})
		}
		d, err := Open(ctx, Config{Dir: t.TempDir(), Store: Layered(own, layers), Parents: parents,
			ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2})
		if err != nil {
			t.Fatal(err)
		}
		return d, parents, sws
	}
	parent := openTest(t, t.TempDir(), in(a)("volumes/p/"), size)
	defer parent.Close()
	if err := parent.WriteAt(ctx, pattern(size, 1), 0); err != nil {
		t.Fatal(err)
	}
	c, _, _ := openClone("c", mustCheckpoint(t, parent), "volumes/p/", in(a)("volumes/c/"), in(a))
	defer c.Close()
	if err := c.WriteAt(ctx, pattern(5*testChunk, 2), 3*testChunk); err != nil {
		t.Fatal(err)
	}
	own := store.NewSwitch(in(a)("volumes/c2/"))
	c2, parents, layers := openClone("c2", mustCheckpoint(t, c), "volumes/c/", own, in(a))
	defer c2.Close()
	if err := c2.WriteAt(ctx, pattern(testChunk+100, 3), 10*testChunk-50); err != nil {
		t.Fatal(err)
	}
	want := readAll(t, c2)
	// The ancestors go on changing: none of that is copied.
	if err := parent.WriteAt(ctx, pattern(size, 4), 0); err != nil {
		t.Fatal(err)
	}
	mustCheckpoint(t, parent)
	if err := c.WriteAt(ctx, pattern(size, 5), 0); err != nil {
		t.Fatal(err)
	}
	mustCheckpoint(t, c)

	// b holds nothing of the ancestors, so the first pass skips nothing
	// and the move does not wait for the markers' grace (an hour here:
	// waiting would end the move with the minute's deadline).
	cp := &Copier{From: in(a)("volumes/c2/"), To: in(b)("volumes/c2/"), CloneID: "c2", Grace: time.Hour}
	for _, p := range parents {
		cp.Ancestors = append(cp.Ancestors, AncestorCopy{From: in(a)(p.Prefix), To: in(b)(p.Prefix), Below: p.Below})
	}
	mctx, mcancel := context.WithTimeout(ctx, time.Minute)
	defer mcancel()
	err := cp.Migrate(mctx, own, in(b)("volumes/c2/"), func(context.Context) error {
		for i, p := range parents {
			layers[i].Resume(in(b)(p.Prefix))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := cp.Stats(); st.Done != st.Total || st.Copied == 0 {
		t.Fatalf("stats after the move: %+v", st)
	}
	// Each ancestor in b holds the marker and exactly the objects of its
	// own versions that c2 reads.
	for i, p := range parents {
		marker, err := in(b)(p.Prefix).Get(ctx, cloneMarkerKey("c2"), nil)
		if err != nil {
			t.Fatalf("ancestor %s: marker: %v", p.Prefix, err)
		}
		var m Manifest
		if err := json.Unmarshal(marker, &m); err != nil {
			t.Fatal(err)
		}
		refs := map[string]bool{}
		if err := manifestRefs(ctx, in(a)(p.Prefix), m, refs); err != nil {
			t.Fatal(err)
		}
		var lo uint64
		if i+1 < len(parents) {
			lo = parents[i+1].Below
		}
		got, err := list(ctx, in(b)(p.Prefix))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for k := range refs {
			if v, _ := objectVersion(k); v >= lo && v < p.Below {
				n++
				if _, ok := got[k]; !ok {
					t.Errorf("ancestor %s in b lacks %s", p.Prefix, k)
				}
			}
		}
		if n == 0 || len(got) != n {
			t.Errorf("ancestor %s in b: %d objects, want the %d c2 reads", p.Prefix, len(got), n)
		}
	}
	// After the switch nothing of c2 is read from a.
	a.SetFail(func(op, key string) error {
		if strings.HasPrefix(key, "volumes/") {
			return fmt.Errorf("%s %s: %w", op, key, store.ErrDenied)
		}
		return nil
	})
	if _, err := c2.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	var bl []Layer
	for _, p := range parents {
		bl = append(bl, Layer{Store: in(b)(p.Prefix), Below: p.Below})
	}
	fresh, err := Open(ctx, Config{Dir: t.TempDir(), Store: Layered(in(b)("volumes/c2/"), bl), Parents: parents,
		ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if !bytes.Equal(readAll(t, fresh), want) {
		t.Fatal("the moved clone, from the new bucket alone, differs")
	}
	// And it goes on collecting there without touching its ancestors.
	if err := fresh.WriteAt(ctx, pattern(testChunk, 6), 0); err != nil {
		t.Fatal(err)
	}
	copy(want, pattern(testChunk, 6))
	mustCheckpoint(t, fresh)
	if !bytes.Equal(readAll(t, fresh), want) {
		t.Fatal("the moved clone differs after a write and a recovery point")
	}
}

// A clone whose marker names an object its ancestor lacks does not move:
// the copy would not read as the clone does.
func TestMigrateCloneRefusesAHole(t *testing.T) {
	ctx := context.Background()
	a, b := store.NewMem(), store.NewMem()
	parent := openTest(t, t.TempDir(), scoped{a, "volumes/p/"}, 1<<20)
	defer parent.Close()
	if err := parent.WriteAt(ctx, pattern(1<<20, 1), 0); err != nil {
		t.Fatal(err)
	}
	m := mustCheckpoint(t, parent)
	parents, err := SeedClone(ctx, m, "volumes/p/", "c", func(p string) (store.Store, error) { return scoped{a, p}, nil }, scoped{a, "volumes/c/"})
	if err != nil {
		t.Fatal(err)
	}
	lost := markedChunk(ctx, t, scoped{a, "volumes/p/"}, "c")
	if err := a.Delete(ctx, "volumes/p/"+lost); err != nil {
		t.Fatal(err)
	}
	cp := &Copier{From: scoped{a, "volumes/c/"}, To: scoped{b, "volumes/c/"}, CloneID: "c",
		Ancestors: []AncestorCopy{{From: scoped{a, "volumes/p/"}, To: scoped{b, "volumes/p/"}, Below: parents[0].Below}}}
	if _, err := cp.Pass(ctx); err == nil || !strings.Contains(err.Error(), "lacks "+lost) {
		t.Fatalf("pass over a clone whose ancestor lost %s: %v", lost, err)
	}
}

// A clone's move cut short in its ancestors' copy (a crash, a failing
// destination) copies only what is missing when it runs again, and the
// destination then serves the clone alone.
func TestCloneCopyResumes(t *testing.T) {
	ctx := context.Background()
	a, b := store.NewMem(), store.NewMem()
	at := func(s store.Store, p string) store.Store { return scoped{s, p} }
	parent := openTest(t, t.TempDir(), at(a, "volumes/p/"), 2<<20)
	defer parent.Close()
	if err := parent.WriteAt(ctx, pattern(2<<20, 3), 0); err != nil {
		t.Fatal(err)
	}
	parents, err := SeedClone(ctx, mustCheckpoint(t, parent), "volumes/p/", "c",
		func(p string) (store.Store, error) { return at(a, p), nil }, at(a, "volumes/c/"))
	if err != nil {
		t.Fatal(err)
	}
	copier := func(workers int) *Copier {
		return &Copier{From: at(a, "volumes/c/"), To: at(b, "volumes/c/"), CloneID: "c", Workers: workers,
			Ancestors: []AncestorCopy{{From: at(a, "volumes/p/"), To: at(b, "volumes/p/"), Below: parents[0].Below}}}
	}
	var puts atomic.Int32
	b.SetFail(func(op, key string) error {
		if op == "put" && puts.Add(1) > 10 {
			return fmt.Errorf("put %s: %w", key, store.ErrDenied)
		}
		return nil
	})
	first := copier(1)
	if _, err := first.Pass(ctx); !errors.Is(err, store.ErrDenied) {
		t.Fatalf("first pass: %v, want the injected failure", err)
	}
	part := first.Stats()
	if part.Copied == 0 {
		t.Fatalf("first pass copied nothing: %+v", part)
	}
	b.SetFail(nil)
	again := copier(4)
	passResumes(ctx, t, again, part)
	d, err := Open(ctx, Config{Dir: t.TempDir(), Store: Layered(at(b, "volumes/c/"), []Layer{{Store: at(b, "volumes/p/"), Below: parents[0].Below}}),
		Parents: parents, ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !bytes.Equal(readAll(t, d), pattern(2<<20, 3)) {
		t.Fatal("the clone copied in two goes differs")
	}
}

// passResumes runs again's pass after a first pass that stopped having
// copied part, and checks that it copied exactly what was missing.
func passResumes(ctx context.Context, t *testing.T, again *Copier, part CopyStats) {
	t.Helper()
	n, err := again.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st := again.Stats()
	if n != st.Total-part.Copied || st.Done != st.Total {
		t.Fatalf("second pass copied %d of %d, %d copied before: %+v", n, st.Total, part.Copied, st)
	}
}
