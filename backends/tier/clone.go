package tier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-io/ferry/backends/store"
)

// Clones (docs/FORMAT.md, "Clones"): a clone starts as a snapshot of
// another volume and shares its objects. Its own objects live under its
// own prefix with versions from its bound up; every chunk or log version
// below the bound is its parent's (or, below the parent's own bound, the
// grandparent's...). Each ancestor keeps a marker, clones/CLONEID.json (the
// clone's first manifest), and keeps every object that manifest names
// while the marker exists: garbage collection of an ancestor never deletes
// what a clone reads, whether the snapshot or the ancestor volume goes.

// Parent is one ancestor of a clone, as its manifests record it.
type Parent struct {
	// Prefix is the ancestor's prefix, relative to the store's (e.g.
	// "volumes/ID/").
	Prefix string `json:"prefix"`
	// Below: object versions below it (and at or above the next
	// ancestor's) are this ancestor's.
	Below uint64 `json:"below"`
}

// Layer is an ancestor's store with its bound.
type Layer struct {
	Store store.Store
	Below uint64
}

// Layered returns a clone's store: reads of object versions below a
// layer's bound go to that layer (layers nearest first, bounds
// decreasing); everything else, and every write, delete and listing, to
// own.
func Layered(own store.Store, layers []Layer) store.Store {
	if len(layers) == 0 {
		return own
	}
	return &layered{Store: own, layers: layers}
}

type layered struct {
	store.Store
	layers []Layer
}

// Unwrap returns the clone's own store.
func (l *layered) Unwrap() store.Store { return l.Store }

// objectVersion parses the version of a chunk or log key.
func objectVersion(key string) (uint64, bool) {
	if v, ok := logSeq(key); ok {
		return v, true
	}
	rest, ok := strings.CutPrefix(key, "chunks/")
	if !ok || len(rest) != 33 || rest[16] != '/' {
		return 0, false
	}
	return parseHex16([]byte(rest[17:]))
}

func (l *layered) route(key string) store.Store {
	v, ok := objectVersion(key)
	if !ok || v >= l.layers[0].Below {
		return l.Store
	}
	for i := 0; i+1 < len(l.layers); i++ {
		if v >= l.layers[i+1].Below {
			return l.layers[i].Store
		}
	}
	return l.layers[len(l.layers)-1].Store
}

func (l *layered) Get(ctx context.Context, key string, buf []byte) ([]byte, error) {
	return l.route(key).Get(ctx, key, buf)
}

func (l *layered) GetRange(ctx context.Context, key string, off, length int64) ([]byte, error) {
	return l.route(key).GetRange(ctx, key, off, length)
}

func (l *layered) Stat(ctx context.Context, key string) (store.ObjectInfo, error) {
	return l.route(key).Stat(ctx, key)
}

// cloneMarkerKey is the marker an ancestor keeps for a clone.
func cloneMarkerKey(cloneID string) string { return "clones/" + cloneID + ".json" }

// maxVersion is the highest object version a manifest names.
func maxVersion(m Manifest) uint64 {
	var top uint64
	for _, k := range m.Chunks {
		if v, ok := objectVersion(k); ok {
			top = max(top, v)
		}
	}
	for _, ovs := range m.Overlays {
		for _, o := range ovs {
			if v, ok := objectVersion(o.Log); ok {
				top = max(top, v)
			}
		}
	}
	return top
}

// SeedClone prepares a clone of the recovery point m of the volume at
// parentPrefix: it returns the clone's ancestors (the parent, then m's own
// ancestors) and writes, first, a marker into every ancestor (ancestors
// maps each ancestor prefix to its store), then the clone's first
// manifest into the clone's store. Opening a tier over the clone's store,
// Layered over the ancestors, then serves the snapshot's content.
func SeedClone(ctx context.Context, m Manifest, parentPrefix, cloneID string, ancestors func(prefix string) (store.Store, error), clone store.Store) ([]Parent, error) {
	if m.Format == manifestV4 {
		// The clone's first manifest and the markers hold the whole map
		// (format 3): they name no map object of the parent, which the
		// parent's collection may replace.
		ps, err := ancestors(parentPrefix)
		if err != nil {
			return nil, err
		}
		if m, err = Materialize(ctx, ps, m); err != nil {
			return nil, fmt.Errorf("the snapshot's map: %w", err)
		}
	}
	parents := append([]Parent{{Prefix: parentPrefix, Below: maxVersion(m) + 1}}, m.Parents...)
	seed := m
	seed.Format, seed.Parents, seed.Sequence = manifestV3, parents, 1
	seed.Checksum = seed.sum()
	b, _ := json.MarshalIndent(seed, "", " ")
	for _, p := range parents {
		s, err := ancestors(p.Prefix)
		if err != nil {
			return nil, err
		}
		if err := s.Put(ctx, cloneMarkerKey(cloneID), b, store.PutOptions{}); err != nil {
			return nil, fmt.Errorf("mark the clone in %s: %w", p.Prefix, err)
		}
	}
	if err := clone.Put(ctx, manifestKey(seed.Sequence), b, store.PutOptions{IfAbsent: true}); err != nil {
		return nil, fmt.Errorf("clone's first manifest: %w", err)
	}
	return parents, nil
}

// cloneRoots adds to keep every object the clones of the volume in s
// still read (their markers). Markers already in seen (when not nil) are
// skipped; the others are added to it.
func cloneRoots(ctx context.Context, s store.Store, keep, seen map[string]bool) error {
	var keys []string
	if err := s.List(ctx, "clones/", func(o store.ObjectInfo) error {
		if !seen[o.Key] {
			keys = append(keys, o.Key)
		}
		return nil
	}); err != nil {
		return err
	}
	for _, k := range keys {
		b, err := s.Get(ctx, k, nil)
		if errors.Is(err, store.ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return err
		}
		var m Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("clone marker %s: %w", k, err)
		}
		if err := manifestRefs(ctx, s, m, keep); err != nil {
			return fmt.Errorf("clone marker %s: %w", k, err)
		}
		if seen != nil {
			seen[k] = true
		}
	}
	return nil
}

// CloneRoots returns every object key the clones of the volume in s still
// read, for deleting a volume that has clones.
//
// A clone moving to another store writes its marker into each ancestor
// there before the objects the marker names (docs/S3.md, "Moving a volume
// to another store"). So whoever deletes what no marker names lists the
// objects first and reads the markers again after the listing: an object
// the listing found was written after its marker, which the later read
// then sees. CloneMarkers does both.
func CloneRoots(ctx context.Context, s store.Store) (map[string]bool, error) {
	keep := map[string]bool{}
	return keep, cloneRoots(ctx, s, keep, nil)
}

// markerWindow is how long a collector goes on deleting after it last read
// a volume's clone markers; each delete must also end within a second
// window. A clone moving into the volume's prefix in another store relies
// on the objects it found there only after markerGrace from writing its
// marker (Copier), when every collector that read the markers before the
// marker was there has stopped deleting.
var markerWindow = 5 * time.Second

// markerGrace is the mover's wait: the window, the delete's own window,
// and as much again for a delete still on its way to the store.
func markerGrace() time.Duration { return 3 * markerWindow }

// CloneMarkers is what the clone markers of a volume's prefix name, for
// deleting objects no marker names. Its methods are not safe for
// concurrent use.
type CloneMarkers struct {
	s    store.Store
	keep map[string]bool // what the markers name, and what the caller keeps
	seen map[string]bool // markers read
	read time.Time       // of the last reading
}

// ReadCloneMarkers reads the clone markers in s and adds every object they
// name to keep, which the CloneMarkers then owns.
func ReadCloneMarkers(ctx context.Context, s store.Store, keep map[string]bool) (*CloneMarkers, error) {
	m := &CloneMarkers{s: s, keep: keep, seen: map[string]bool{}}
	return m, m.Refresh(ctx)
}

// Refresh reads the markers that appeared since the last reading.
func (m *CloneMarkers) Refresh(ctx context.Context) error {
	now := time.Now()
	if err := cloneRoots(ctx, m.s, m.keep, m.seen); err != nil {
		return err
	}
	m.read = now
	return nil
}

// Count is how many markers have been read.
func (m *CloneMarkers) Count() int { return len(m.seen) }

// Keeps reports whether key is named by a marker read, or was kept by the
// caller.
func (m *CloneMarkers) Keeps(key string) bool { return m.keep[key] }

// Sweep deletes those of keys no marker names and returns how many it
// deleted. Call it after listing the keys: it reads the markers again
// first, and again whenever markerWindow has passed since the last
// reading, so it never deletes on an old reading (docs/FORMAT.md,
// "Clones").
func (m *CloneMarkers) Sweep(ctx context.Context, keys []string) (int, error) {
	n := 0
	for i, k := range keys {
		if i == 0 || time.Since(m.read) > markerWindow {
			if err := m.Refresh(ctx); err != nil {
				return n, err
			}
		}
		if m.keep[k] {
			continue
		}
		if err := m.Delete(ctx, k); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// Delete deletes key if the last reading of the markers is recent
// enough, within a window of its own; otherwise it reads them first and
// spares key if a new marker names it. The caller decided to delete key
// on what the markers named.
func (m *CloneMarkers) Delete(ctx context.Context, key string) error {
	if time.Since(m.read) > markerWindow {
		if err := m.Refresh(ctx); err != nil {
			return err
		}
		if m.keep[key] {
			return nil
		}
	}
	dctx, cancel := context.WithDeadline(ctx, m.read.Add(2*markerWindow))
	defer cancel()
	return m.s.Delete(dctx, key)
}

// UnmarkClone removes a clone's marker from an ancestor.
func UnmarkClone(ctx context.Context, ancestor store.Store, cloneID string) error {
	return ancestor.Delete(ctx, cloneMarkerKey(cloneID))
}

// Materialize returns m with its whole map in Chunks and Overlays: a
// format-4 manifest (paged map, read from s, the volume's own store)
// becomes the format-3 manifest with the same map; other formats are
// returned as they are.
func Materialize(ctx context.Context, s store.Store, m Manifest) (Manifest, error) {
	if m.Format != manifestV4 {
		return m, nil
	}
	objs, err := loadManifestMap(ctx, s, m)
	if err != nil {
		return Manifest{}, err
	}
	m.Format, m.Base, m.Deltas, m.Stored = manifestV3, "", nil, 0
	m.Chunks, m.Overlays = map[string]string{}, map[string][]Overlay{}
	for idx, seq := range objs.base {
		m.Chunks[strconv.FormatInt(idx, 10)] = chunkKey(idx, seq)
	}
	for idx, ovs := range objs.overlays {
		list := make([]Overlay, len(ovs))
		for i, o := range ovs {
			list[i] = o.public()
		}
		m.Overlays[strconv.FormatInt(idx, 10)] = list
	}
	m.Checksum = m.sum()
	return m, nil
}
