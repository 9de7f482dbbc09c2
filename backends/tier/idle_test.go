package tier

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/store"
)

// putCounter counts the bytes put to a store.
type putCounter struct {
	store.Store
	puts, bytes atomic.Int64
}

func (s *putCounter) Put(ctx context.Context, key string, b []byte, o store.PutOptions) error {
	s.puts.Add(1)
	s.bytes.Add(int64(len(b)))
	return s.Store.Put(ctx, key, b, o)
}

// autoCheckpoint is what the gateway's checkpointer does every interval:
// a recovery point for a volume that changed since the last one.
func autoCheckpoint(t *testing.T, d *Device) {
	t.Helper()
	if d.Changed() {
		if _, err := d.Checkpoint(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// A volume nobody writes uploads nothing: once the recovery point after
// the last write has been published, later intervals put no byte, even
// when log objects are left mostly dead (reclamation must not keep the
// volume "changed" and rewrite chunks interval after interval).
func TestIdleVolumeUploadsNothing(t *testing.T) {
	s := &putCounter{Store: store.NewMem()}
	const chunks = 48
	d := fillAndReopen(t, chunks, Config{Store: s, CacheBytes: 1 << 20, Uploaders: 1})
	m := make(model, chunks*testChunk)
	for i := range chunks {
		copy(m[i*testChunk:], pattern(testChunk, byte(i)))
	}
	// Small writes all over: many log objects, each shared by many
	// chunks; then whole rewrites of most chunks leave them mostly dead.
	r := rand.New(rand.NewPCG(7, 8))
	for round := range 4 {
		for i := range chunks {
			m.write(t, d, pattern(16<<10, byte(round*chunks+i)), int64(i)*testChunk+r.Int64N(testChunk-16<<10))
		}
		autoCheckpoint(t, d)
	}
	for i := range chunks {
		if i%5 != 0 {
			m.write(t, d, pattern(testChunk, byte(i+50)), int64(i)*testChunk)
		}
	}
	waitClean(t, d)
	autoCheckpoint(t, d) // the recovery point after the last write
	before := s.bytes.Load()
	for range 8 {
		autoCheckpoint(t, d)
	}
	if n := s.bytes.Load() - before; n != 0 {
		t.Fatalf("an idle volume uploaded %d bytes in %d puts over 8 recovery point intervals", n, s.puts.Load())
	}
	m.check(t, d, s)
}

// After a restart, the time of the last recovery point (the RPO that
// `ferry volume info` shows) is read back from the store, not forgotten,
// even when the store is down at start-up.
func TestLastCheckpointReadBack(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	dir := t.TempDir()
	d := openTest(t, dir, s, 1<<20)
	if err := d.WriteAt(ctx, pattern(4096, 1), 0); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Add(-time.Second)
	mf, err := d.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now().Add(time.Second)
	d.Close()

	var lists atomic.Int64
	s.SetFail(func(op, key string) error {
		if op == "list" {
			lists.Add(1)
		}
		return store.ErrUnavailable
	})
	d = openTest(t, dir, s, 1<<20)
	defer d.Close()
	for lists.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	if got := d.TierStats().LastCheckpoint; !got.IsZero() {
		t.Fatalf("last recovery point %v known while the store is down", got)
	}
	s.SetFail(nil)
	deadline := time.Now().Add(20 * time.Second)
	for d.TierStats().LastCheckpoint.IsZero() {
		if time.Now().After(deadline) {
			t.Fatal("the last recovery point was not read back from the store after a restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := d.TierStats().LastCheckpoint; got.Before(before) || got.After(after) {
		t.Fatalf("last recovery point read back as %v; manifest %d was published at %v", got, mf.Sequence, mf.Created)
	}
}
