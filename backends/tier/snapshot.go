package tier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/store"
)

// Snapshots of an S3-backed volume (docs/FORMAT.md, "Snapshots"): a
// snapshot is a recovery point kept under its own name,
// snapshots/NAME.json, with the same content as the manifest it copies.
// Garbage collection keeps every object a snapshot names, so the point
// stays readable until the snapshot is removed.

func snapshotKey(name string) string { return "snapshots/" + name + ".json" }

var snapshotNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ErrSnapshotExists: a snapshot of that name exists.
var ErrSnapshotExists = errors.New("snapshot exists")

// ErrNoSnapshot: no snapshot has that name.
var ErrNoSnapshot = errors.New("no such snapshot")

// ValidSnapshotName reports whether name may name a snapshot.
func ValidSnapshotName(name string) error {
	if !snapshotNameRE.MatchString(name) {
		return fmt.Errorf("snapshot name %q: use 1-63 characters from a-z, 0-9, '.', '_', '-', starting with a letter or digit", name)
	}
	return nil
}

// Snapshot publishes a recovery point that holds every write acknowledged
// before the call (Checkpoint flushes first) and keeps it as name.
func (d *Device) Snapshot(ctx context.Context, name string) (Manifest, error) {
	if err := ValidSnapshotName(name); err != nil {
		return Manifest{}, err
	}
	if _, err := d.cfg.Store.Stat(ctx, snapshotKey(name)); err == nil {
		return Manifest{}, fmt.Errorf("snapshot %q: %w", name, ErrSnapshotExists)
	} else if !errors.Is(err, store.ErrNotFound) {
		return Manifest{}, fmt.Errorf("snapshot %q: %w", name, err)
	}
	return d.checkpoint(ctx, name)
}

// SnapshotInfo describes one snapshot.
type SnapshotInfo struct {
	Name     string
	Manifest Manifest
	// Exclusive is the bytes of objects only this snapshot keeps alive:
	// removing it frees them (once no recovery point names them either).
	Exclusive int64
}

// ReadSnapshot returns snapshot name's manifest.
func ReadSnapshot(ctx context.Context, s store.Store, name string) (Manifest, error) {
	b, err := s.Get(ctx, snapshotKey(name), nil)
	if errors.Is(err, store.ErrNotFound) {
		return Manifest{}, fmt.Errorf("snapshot %q: %w", name, ErrNoSnapshot)
	}
	if err != nil {
		return Manifest{}, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil || m.Checksum != m.sum() {
		return Manifest{}, fmt.Errorf("snapshot %q: damaged (checksum mismatch)", name)
	}
	return m, nil
}

// snapshots reads every snapshot's manifest, sorted by name.
func snapshots(ctx context.Context, s store.Store) ([]SnapshotInfo, error) {
	var names []string
	if err := s.List(ctx, "snapshots/", func(o store.ObjectInfo) error {
		if n, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, "snapshots/"), ".json"); ok {
			names = append(names, n)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	slices.Sort(names)
	out := make([]SnapshotInfo, 0, len(names))
	for _, n := range names {
		m, err := ReadSnapshot(ctx, s, n)
		if err != nil {
			return nil, err
		}
		out = append(out, SnapshotInfo{Name: n, Manifest: m})
	}
	return out, nil
}

// manifestKeys adds every object key m names to keep.
func manifestKeys(m Manifest, keep map[string]bool) {
	for _, k := range m.Chunks {
		keep[k] = true
	}
	for _, ovs := range m.Overlays {
		for _, o := range ovs {
			keep[o.Log] = true
		}
	}
}

// Snapshots lists the volume's snapshots with the bytes only each keeps
// alive (objects neither the volume's current map, nor another snapshot,
// nor a kept recovery point names).
func (d *Device) Snapshots(ctx context.Context) ([]SnapshotInfo, error) {
	snaps, err := snapshots(ctx, d.cfg.Store)
	if err != nil {
		return nil, err
	}
	if err := d.mapAll(ctx); err != nil {
		return nil, err
	}
	d.mu.Lock()
	live := d.objects.keys()
	if h := d.head; h != nil {
		live[h.baseKey] = true
		for _, k := range h.pages {
			live[k] = true
		}
		for _, k := range h.deltas {
			live[k] = true
		}
	}
	d.mu.Unlock()
	sizes := map[string]int64{}
	for _, p := range append([]string{"chunks/", "logs/"}, mapPrefixes...) {
		if err := d.cfg.Store.List(ctx, p, func(o store.ObjectInfo) error { sizes[o.Key] = o.Size; return nil }); err != nil {
			return nil, err
		}
	}
	count := map[string]int{}
	refs := make([]map[string]bool, len(snaps))
	for i, sn := range snaps {
		refs[i] = map[string]bool{}
		if err := manifestRefs(ctx, d.cfg.Store, sn.Manifest, refs[i]); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", sn.Name, err)
		}
		for k := range refs[i] {
			count[k]++
		}
	}
	for i := range snaps {
		for k := range refs[i] {
			if count[k] == 1 && !live[k] {
				snaps[i].Exclusive += sizes[k]
			}
		}
	}
	return snaps, nil
}

// RemoveSnapshot forgets a snapshot; the next garbage collection deletes
// what only it kept.
func RemoveSnapshot(ctx context.Context, s store.Store, name string) error {
	if _, err := s.Stat(ctx, snapshotKey(name)); errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("snapshot %q: %w", name, ErrNoSnapshot)
	} else if err != nil {
		return err
	}
	return s.Delete(ctx, snapshotKey(name))
}

// SnapshotDevice is a read-only device over one recovery point: what a
// snapshot export serves. Reads go to the store with ranged requests, as
// the tier's reads of uncached chunks do.
type SnapshotDevice struct {
	s store.Store
	m Manifest

	mu   sync.Mutex
	objs *objectMap // read at the first read of a format-4 manifest's map
}

var (
	_ device.Device   = (*SnapshotDevice)(nil)
	_ device.ReadOnly = (*SnapshotDevice)(nil)
)

// ReadOnly implements device.ReadOnly.
func (sd *SnapshotDevice) ReadOnly() bool { return true }

// OpenSnapshot returns a read-only device reading manifest m from s.
func OpenSnapshot(s store.Store, m Manifest) (*SnapshotDevice, error) {
	sd := &SnapshotDevice{s: s, m: m}
	if m.Format != manifestV4 {
		objs, err := manifestObjects(m)
		if err != nil {
			return nil, err
		}
		sd.objs = objs
	}
	return sd, nil
}

// objects returns the snapshot's map, reading it the first time.
func (sd *SnapshotDevice) objects(ctx context.Context) (*objectMap, error) {
	sd.mu.Lock()
	defer sd.mu.Unlock()
	if sd.objs == nil {
		objs, err := loadManifestMap(ctx, sd.s, sd.m)
		if err != nil {
			return nil, fmt.Errorf("snapshot map: %w", err)
		}
		sd.objs = objs
	}
	return sd.objs, nil
}

// Size implements device.Device.
func (sd *SnapshotDevice) Size() int64 { return sd.m.Size }

// ReadAt implements device.Device.
func (sd *SnapshotDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := device.CheckRange(sd.m.Size, off, int64(len(p))); err != nil {
		return err
	}
	objs, err := sd.objects(ctx)
	if err != nil {
		return err
	}
	cs := sd.m.ChunkSize
	for done := int64(0); done < int64(len(p)); {
		at := off + done
		idx, coff := at/cs, at%cs
		n := min(cs-coff, int64(len(p))-done)
		if err := readChunkRange(ctx, sd.s, objs.baseKey(idx), objs.overlays[idx], coff, p[done:done+n]); err != nil {
			return fmt.Errorf("snapshot read at %d: %w", at, err)
		}
		done += n
	}
	return nil
}

func (sd *SnapshotDevice) readOnly() error { return fmt.Errorf("a snapshot: %w", device.ErrReadOnly) }

// WriteAt implements device.Device: snapshots are read-only.
func (sd *SnapshotDevice) WriteAt(context.Context, []byte, int64) error { return sd.readOnly() }

// Flush implements device.Device.
func (sd *SnapshotDevice) Flush(context.Context) error { return nil }

// Trim implements device.Device: snapshots are read-only.
func (sd *SnapshotDevice) Trim(context.Context, int64, int64) error { return sd.readOnly() }

// WriteZeroes implements device.Device: snapshots are read-only.
func (sd *SnapshotDevice) WriteZeroes(context.Context, int64, int64, bool) error {
	return sd.readOnly()
}

// Extents implements device.Device at chunk granularity.
func (sd *SnapshotDevice) Extents(ctx context.Context, off, length int64) ([]device.Extent, error) {
	if err := device.CheckRange(sd.m.Size, off, length); err != nil {
		return nil, err
	}
	objs, err := sd.objects(ctx)
	if err != nil {
		return nil, err
	}
	cs := sd.m.ChunkSize
	var out []device.Extent
	for at := off; at < off+length; {
		idx := at / cs
		end := min((idx+1)*cs, off+length)
		var flags device.ExtentFlags
		if !objs.stored(idx) {
			flags = device.ExtentHole | device.ExtentZero
		}
		if n := len(out); n > 0 && out[n-1].Flags == flags {
			out[n-1].Length += end - at
		} else {
			out = append(out, device.Extent{Offset: at, Length: end - at, Flags: flags})
		}
		at = end
	}
	return out, nil
}

// Resize implements device.Device: snapshots are read-only.
func (sd *SnapshotDevice) Resize(context.Context, int64) error { return sd.readOnly() }

// Close implements device.Device.
func (sd *SnapshotDevice) Close() error { return nil }

// Created is when the snapshot's recovery point was taken.
func (sd *SnapshotDevice) Created() time.Time { return sd.m.Created }

// SnapshotNames lists the volume's snapshots by name (one listing).
func (d *Device) SnapshotNames(ctx context.Context) ([]string, error) {
	var names []string
	err := d.cfg.Store.List(ctx, "snapshots/", func(o store.ObjectInfo) error {
		if n, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, "snapshots/"), ".json"); ok {
			names = append(names, n)
		}
		return nil
	})
	return names, err
}
