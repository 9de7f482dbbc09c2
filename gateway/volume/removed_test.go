package volume

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/ferry-io/ferry/backends/store"
)

// lateClone writes, once, a clone's marker and then an object it names
// into the store just before the whole prefix is listed: a clone moving
// in from another store while a removed ancestor's leftovers are deleted.
type lateClone struct {
	store.Store
	once bool
	t    *testing.T
}

const lateKey = "chunks/0000000000000003/0000000000000002"

func (s *lateClone) List(ctx context.Context, prefix string, fn func(store.ObjectInfo) error) error {
	if prefix == "" && !s.once {
		s.once = true
		b, _ := json.Marshal(map[string]any{"format": "ferry-manifest/3", "sequence": 1, "chunks": map[string]string{"3": lateKey}})
		if err := s.Store.Put(ctx, "clones/moved.json", b, store.PutOptions{}); err != nil {
			s.t.Error(err)
		}
		if err := s.Store.Put(ctx, lateKey, []byte("data"), store.PutOptions{}); err != nil {
			s.t.Error(err)
		}
	}
	return s.Store.List(ctx, prefix, fn)
}

// Deleting a volume's objects spares what a clone's marker written during
// the deletion names, and leaves the volume marked removed for that clone.
func TestDeleteVolumeObjectsSparesALateClone(t *testing.T) {
	ctx := context.Background()
	mem := store.NewMem()
	for _, k := range []string{"lease.json", "volume.json", "chunks/0000000000000000/0000000000000001", "manifests/00000000000000000001.json"} {
		if err := mem.Put(ctx, k, []byte("x"), store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	m := &Manager{}
	if _, err := m.deleteVolumeObjects(ctx, &lateClone{Store: mem, t: t}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{lateKey, "clones/moved.json", removedKey} {
		if _, err := mem.Stat(ctx, k); err != nil {
			t.Errorf("%s: %v", k, err)
		}
	}
	for _, k := range []string{"lease.json", "volume.json", "chunks/0000000000000000/0000000000000001"} {
		if _, err := mem.Stat(ctx, k); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s not deleted: %v", k, err)
		}
	}
	if live, err := holdsVolume(ctx, mem); err != nil || live {
		t.Errorf("the removed volume still holds a volume: %v %v", live, err)
	}
}

// markerOnDelete writes a clone's marker when the first object is deleted:
// a clone moving in (its tombstone is already there) while a removed
// ancestor's leftovers go.
type markerOnDelete struct {
	store.Store
	once bool
	t    *testing.T
}

func (s *markerOnDelete) Delete(ctx context.Context, key string) error {
	if !s.once {
		s.once = true
		b, _ := json.Marshal(map[string]any{"format": "ferry-manifest/3", "sequence": 1, "chunks": map[string]string{}})
		if err := s.Store.Put(ctx, "clones/moved.json", b, store.PutOptions{}); err != nil {
			s.t.Error(err)
		}
	}
	return s.Store.Delete(ctx, key)
}

// The tombstone of a removed ancestor stays, or is written, when a clone's
// marker appears while its leftovers (or a removed volume's objects) are
// deleted.
func TestDeleteVolumeObjectsKeepsTheTombstoneForALateClone(t *testing.T) {
	for _, keys := range [][]string{
		{removedKey, "chunks/0000000000000000/0000000000000001"},                  // an ancestor's leftovers, the mover's tombstone there
		{"lease.json", "volume.json", "chunks/0000000000000000/0000000000000001"}, // a volume just removed
	} {
		ctx := context.Background()
		mem := store.NewMem()
		for _, k := range keys {
			if err := mem.Put(ctx, k, []byte("x"), store.PutOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		m := &Manager{}
		want := len(keys) - 1
		if keys[0] != removedKey {
			want = len(keys)
		}
		if n, err := m.deleteVolumeObjects(ctx, &markerOnDelete{Store: mem, t: t}); err != nil || n != want {
			t.Fatalf("%v: deleted %d, want %d: %v", keys, n, want, err)
		}
		if _, err := mem.Stat(ctx, removedKey); err != nil {
			t.Errorf("%v: tombstone: %v", keys, err)
		}
	}
}
