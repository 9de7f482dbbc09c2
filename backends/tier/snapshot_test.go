package tier

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/store"
)

func readAll(t *testing.T, d device.Device) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if err := d.ReadAt(context.Background(), b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// A snapshot reads as the volume did when it was taken, through later
// writes, recovery points and garbage collection, until it is removed.
func TestSnapshotSurvivesOverwritesAndCollection(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	d := openTest(t, t.TempDir(), s, 2<<20)
	defer d.Close()
	if err := d.WriteAt(ctx, pattern(10*testChunk, 1), 0); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteAt(ctx, pattern(1000, 2), 20*testChunk+100); err != nil { // an overlay
		t.Fatal(err)
	}
	want := readAll(t, d)
	m, err := d.Snapshot(ctx, "before")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Snapshot(ctx, "before"); !errors.Is(err, ErrSnapshotExists) {
		t.Fatalf("second snapshot of one name: %v", err)
	}
	if _, err := d.Snapshot(ctx, "Bad/Name"); err == nil {
		t.Fatal("invalid snapshot name accepted")
	}
	// Overwrite everything, publish many recovery points (each collects).
	for i := range 5 {
		if err := d.WriteAt(ctx, pattern(10*testChunk, byte(10+i)), 0); err != nil {
			t.Fatal(err)
		}
		if err := d.WriteAt(ctx, pattern(1000, byte(20+i)), 20*testChunk+100); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ReadSnapshot(ctx, s, "before")
	if err != nil || got.Sequence != m.Sequence {
		t.Fatalf("read snapshot: %+v %v", got.Sequence, err)
	}
	sd, err := OpenSnapshot(s, got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, sd), want) {
		t.Fatal("snapshot does not read as the volume did")
	}
	if err := sd.WriteAt(ctx, []byte("x"), 0); !errors.Is(err, device.ErrReadOnly) {
		t.Fatalf("write to a snapshot: %v", err)
	}
	list, err := d.Snapshots(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "before" || list[0].Exclusive < 10*testChunk {
		t.Fatalf("snapshots: %+v %v", list, err)
	}
	// Removed, its objects go at the next collection.
	before := len(storeKeys(t, s))
	if err := RemoveSnapshot(ctx, s, "before"); err != nil {
		t.Fatal(err)
	}
	if err := RemoveSnapshot(ctx, s, "before"); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("second remove: %v", err)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if after := len(storeKeys(t, s)); after >= before {
		t.Fatalf("%d objects before removing the snapshot, %d after collection", before, after)
	}
}
