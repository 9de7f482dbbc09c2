package tier

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/ferry-io/ferry/backends/store"
)

// storeKeys lists every chunk and log key in s.
func storeKeys(t *testing.T, s store.Store) map[string]bool {
	t.Helper()
	keys := map[string]bool{}
	for _, p := range []string{"chunks/", "logs/", "manifests/"} {
		if err := s.List(context.Background(), p, func(o store.ObjectInfo) error { keys[o.Key] = true; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// A cache lost with its disk (or a volume opened on a new machine) starts
// from the store's newest recovery point: the data reads back, new uploads
// take versions above every existing key, and garbage collection after
// new recovery points keeps what the volume still reads. Before this, a
// new cache started at version 1 with an empty map: the volume read as
// zeroes and collection deleted its data.
func TestLostCacheResumesFromStore(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	d := openTest(t, t.TempDir(), s, 4<<20)
	whole := pattern(2*testChunk, 1)
	small := pattern(4096, 2)
	if err := d.WriteAt(ctx, whole, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteAt(ctx, small, 10*testChunk+512); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	// Written after the recovery point: lost with the cache, as promised.
	if err := d.WriteAt(ctx, pattern(4096, 9), 20*testChunk); err != nil {
		t.Fatal(err)
	}
	d.Close()
	before := storeKeys(t, s)

	d = openTest(t, t.TempDir(), s, 4<<20) // a fresh cache directory
	defer d.Close()
	check := func(what string) {
		t.Helper()
		got := make([]byte, len(whole))
		if err := d.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, whole) {
			t.Fatalf("%s: whole chunks read back wrong (err %v)", what, err)
		}
		got = make([]byte, len(small))
		if err := d.ReadAt(ctx, got, 10*testChunk+512); err != nil || !bytes.Equal(got, small) {
			t.Fatalf("%s: overlaid write read back wrong (err %v)", what, err)
		}
	}
	check("after reopening with an empty cache")

	// New writes and several recovery points: keys never collide, and
	// collection keeps what the volume reads.
	for i := range 4 {
		if err := d.WriteAt(ctx, pattern(testChunk, byte(10+i)), int64(30+i)*testChunk); err != nil {
			t.Fatal(err)
		}
		if err := d.WriteAt(ctx, pattern(512, byte(20+i)), 10*testChunk+8192); err != nil {
			t.Fatal(err)
		}
		m, err := d.Checkpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if before[manifestKey(m.Sequence)] {
			t.Fatalf("recovery point %d reuses an existing manifest number", m.Sequence)
		}
	}
	top, err := highestVersions(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	var oldTop uint64
	for k := range before {
		var idx int64
		var v uint64
		if n, _ := fmt.Sscanf(k, "chunks/%016x/%016x", &idx, &v); n == 2 {
			oldTop = max(oldTop, v)
		} else if v, ok := logSeq(k); ok {
			oldTop = max(oldTop, v)
		}
	}
	if top.version <= oldTop {
		t.Fatalf("no version above the old ones: %d <= %d", top.version, oldTop)
	}
	d.Close()
	d = openTest(t, t.TempDir(), s, 4<<20) // and once more, from the newest point
	check("after a second lost cache")
	got := make([]byte, 512)
	if err := d.ReadAt(ctx, got, 10*testChunk+8192); err != nil || !bytes.Equal(got, pattern(512, 23)) {
		t.Fatalf("newest small write lost (err %v)", err)
	}
}

// A new volume over an empty prefix starts at version 1 and needs a size.
func TestResumeNewVolume(t *testing.T) {
	s := store.NewMem()
	if _, err := Open(context.Background(), Config{Dir: t.TempDir(), Store: s, ChunkSize: testChunk}); err == nil {
		t.Fatal("a new volume without a size opened")
	}
	d := openTest(t, t.TempDir(), s, 1<<20)
	defer d.Close()
	if d.meta.NextSeq != 1 || d.meta.Manifest != 0 {
		t.Fatalf("new volume meta %+v", d.meta)
	}
}

// fence is a writer lease for tests.
type fence struct {
	gen   uint64
	fresh bool
}

func (f fence) Writable() error    { return nil }
func (f fence) Generation() uint64 { return f.gen }
func (f fence) Fresh() bool        { return f.fresh }

// A gateway that lost its cache and renews its own lease (the same
// generation) must not number objects from the generation's start again:
// that overwrote objects its recovery point named (CI caught it as EIO).
// No key that existed before changes content afterwards.
func TestLostCacheUnderOwnLeaseNeverOverwrites(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	open := func(f fence) *Device {
		d, err := Open(ctx, Config{Dir: t.TempDir(), Store: s, Size: 4 << 20, ChunkSize: testChunk, CacheBytes: 1 << 20, Uploaders: 2, Fence: f})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	d := open(fence{gen: 1, fresh: true})
	if err := d.WriteAt(ctx, pattern(3*testChunk, 1), 0); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteAt(ctx, pattern(4096, 2), 10*testChunk); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	d.Close()
	before := map[string][]byte{}
	for k := range storeKeys(t, s) {
		before[k], _ = s.Get(ctx, k, nil)
	}
	d = open(fence{gen: 1, fresh: false}) // restarted, cache lost, same lease
	defer d.Close()
	for i := range 3 {
		if err := d.WriteAt(ctx, pattern(testChunk, byte(5+i)), int64(20+i)*testChunk); err != nil {
			t.Fatal(err)
		}
		if err := d.WriteAt(ctx, pattern(512, byte(9+i)), 12*testChunk); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for k, old := range before {
		if now, err := s.Get(ctx, k, nil); err == nil && !bytes.Equal(now, old) {
			t.Fatalf("object %s was overwritten", k)
		}
	}
	got := make([]byte, 4096)
	if err := d.ReadAt(ctx, got, 10*testChunk); err != nil || !bytes.Equal(got, pattern(4096, 2)) {
		t.Fatalf("data of the recovery point lost: %v", err)
	}
}
