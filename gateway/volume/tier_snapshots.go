package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/lease"
	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/backends/tier"
)

// tierSnapshots is the snapshotter of an S3-backed volume: a snapshot is
// a recovery point kept by name, a clone a volume whose manifests name
// its ancestors' objects (docs/FORMAT.md, "Snapshots" and "Clones").
type tierSnapshots struct {
	m   *Manager
	rec *Record
	td  *tier.Device
}

var _ snapshotter = (*tierSnapshots)(nil)

func (m *Manager) tierSnapshotter(rec *Record, td *tier.Device) snapshotter {
	return &tierSnapshots{m: m, rec: rec, td: td}
}

// moving refuses changes to the volume's snapshots while it moves to
// another store: the move copies them once (migrate.go).
func (s *tierSnapshots) moving() error {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	return s.m.migratingLocked(s.rec)
}

// Create implements snapshotter: a recovery point holding every write
// acknowledged before the call (the tier flushes first).
func (s *tierSnapshots) Create(ctx context.Context, name string) (Snapshot, error) {
	if err := s.moving(); err != nil {
		return Snapshot{}, err
	}
	mf, err := s.td.Snapshot(ctx, name)
	if errors.Is(err, tier.ErrSnapshotExists) {
		return Snapshot{}, ErrExists
	}
	if err != nil {
		return Snapshot{}, err
	}
	return Snapshot{Name: name, Created: mf.Created, Size: mf.Size, RecoveryPoint: mf.Sequence}, nil
}

// List implements snapshotter.
func (s *tierSnapshots) List(ctx context.Context) ([]Snapshot, error) {
	list, err := s.td.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Snapshot, 0, len(list))
	for _, sn := range list {
		out = append(out, Snapshot{Name: sn.Name, Created: sn.Manifest.Created, Size: sn.Manifest.Size,
			RecoveryPoint: sn.Manifest.Sequence, ExclusiveBytes: sn.Exclusive})
	}
	return out, nil
}

// Names implements snapshotter.
func (s *tierSnapshots) Names(ctx context.Context) ([]string, error) { return s.td.SnapshotNames(ctx) }

// Remove implements snapshotter: what only the snapshot kept is deleted
// at the next recovery point.
func (s *tierSnapshots) Remove(ctx context.Context, name string) error {
	if err := s.moving(); err != nil {
		return err
	}
	st, err := s.m.volumeStoreFor(s.rec, s.m.leaseOf(s.rec.ID))
	if err != nil {
		return err
	}
	if err := tier.RemoveSnapshot(ctx, st, name); errors.Is(err, tier.ErrNoSnapshot) {
		return ErrNotFound
	} else if err != nil {
		return err
	}
	return nil
}

// Open implements snapshotter: reads go to the store.
func (s *tierSnapshots) Open(ctx context.Context, name string) (device.Device, error) {
	st, err := s.m.volumeStoreFor(s.rec, nil)
	if err != nil {
		return nil, err
	}
	mf, err := tier.ReadSnapshot(ctx, st, name)
	if errors.Is(err, tier.ErrNoSnapshot) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return tier.OpenSnapshot(st, mf)
}

// Drop implements snapshotter: the snapshots' objects go with the
// volume's (Manager.deleteObjects).
func (s *tierSnapshots) Drop(context.Context) {}

// Clone implements snapshotter: the clone's first manifest names the
// snapshot's objects, and markers in its ancestors keep them from
// collection; nothing is copied.
func (s *tierSnapshots) Clone(ctx context.Context, name string, rec *Record) (device.Device, snapshotter, func(), error) {
	if err := s.moving(); err != nil {
		return nil, nil, nil, err
	}
	m := s.m
	m.mu.Lock()
	sc := m.stores[s.rec.Store]
	m.mu.Unlock()
	if sc == nil {
		return nil, nil, nil, fmt.Errorf("store %q is not configured", s.rec.Store)
	}
	parentStore, _, err := m.objectStore(sc, volumePrefix(s.rec))
	if err != nil {
		return nil, nil, nil, err
	}
	mf, err := tier.ReadSnapshot(ctx, parentStore, name)
	if errors.Is(err, tier.ErrNoSnapshot) {
		return nil, nil, nil, ErrNotFound
	}
	if err != nil {
		return nil, nil, nil, err
	}
	dir, err := m.pickPoolDir()
	if err != nil {
		return nil, nil, nil, err
	}
	id := rec.ID
	rec.Size, rec.Backend, rec.Store, rec.ChunkSize = mf.Size, "tier", s.rec.Store, mf.ChunkSize
	rec.Path = filepath.Join(dir, "tier-"+id)
	cloneStore, _, err := m.objectStore(sc, volumePrefix(rec))
	if err != nil {
		return nil, nil, nil, err
	}
	ancestors := func(prefix string) (store.Store, error) {
		s, _, err := m.objectStore(sc, prefix)
		return s, err
	}
	if rec.Parents, err = tier.SeedClone(ctx, mf, volumePrefix(s.rec), id, ancestors, cloneStore); err != nil {
		return nil, nil, nil, err
	}
	undoMarks := func() {
		for _, p := range rec.Parents {
			if as, err := ancestors(p.Prefix); err == nil {
				tier.UnmarkClone(context.WithoutCancel(ctx), as, id)
			}
		}
	}
	// The snapshot kept the objects until the markers were written; had it
	// gone meanwhile, a collection may have run without either.
	if _, err := tier.ReadSnapshot(ctx, parentStore, name); err != nil {
		undoMarks()
		return nil, nil, nil, fmt.Errorf("the snapshot went away while it was cloned: %w", err)
	}
	td, err := m.openTier(ctx, rec, tierOpen{minGeneration: rec.Parents[0].Below>>lease.GenerationShift + 1})
	if err != nil {
		undoMarks()
		os.RemoveAll(rec.Path)
		return nil, nil, nil, err
	}
	if st, err := m.volumeStoreFor(rec, m.leaseOf(id)); err == nil {
		m.putVolumeObject(ctx, st, rec)
	}
	undo := func() {
		m.dropLease(id)
		undoMarks()
		os.RemoveAll(rec.Path)
	}
	return td, m.tierSnapshotter(rec, td), undo, nil
}
