package tier

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
	n, err := again.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st := again.Stats()
	if n != st.Total-part.Copied || st.Done != st.Total {
		t.Fatalf("second pass copied %d of %d, %d copied before: %+v", n, st.Total, part.Copied, st)
	}
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
