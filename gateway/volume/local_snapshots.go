package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/local"
)

// localSnapshots is the snapshotter of a local volume: a snapshot is a
// reflink of the volume's file, POOL/snapshots/ID/NAME.img with
// NAME.json beside it, and a clone a reflink of a snapshot's file as a new
// volume file (docs/ARCHITECTURE.md, "Snapshots of local volumes"). The
// file system shares the blocks and counts their references, so the
// volume, its snapshots and its clones are independent files. A pool
// whose file system cannot share blocks has neither: it is refused, never
// copied.
type localSnapshots struct {
	m   *Manager
	rec *Record
	dev *local.Device
}

var _ snapshotter = (*localSnapshots)(nil)

func (m *Manager) localSnapshotter(rec *Record, dev *local.Device) snapshotter {
	return &localSnapshots{m: m, rec: rec, dev: dev}
}

// snapshotDirOf is where a local volume's snapshots live: beside its
// file, on the same file system (a reflink cannot cross one).
func snapshotDirOf(rec *Record) local.SnapshotDir {
	return local.SnapshotDir{Dir: filepath.Join(filepath.Dir(rec.Path), "snapshots", rec.ID)}
}

func (s *localSnapshots) dir() local.SnapshotDir { return snapshotDirOf(s.rec) }

// check refuses, saying why and what to do, when the volume's pool
// directory cannot share blocks between files.
func (s *localSnapshots) check() error {
	pool := filepath.Dir(s.rec.Path)
	err := s.m.reflinkIn(pool)
	if err == nil {
		return nil
	}
	if !errors.Is(err, local.ErrNoReflink) {
		return err
	}
	fs := local.FSName(pool)
	if fs == "xfs" {
		fs = "xfs made without reflink (mkfs.xfs -m reflink=0)"
	}
	return fmt.Errorf("the local pool at %s is on %s, which cannot share blocks between files, so its volumes have no snapshots or clones (a full copy would not be a snapshot): put the pool on XFS (mkfs.xfs, reflink is the default) or btrfs, or use an S3-backed volume: %w",
		pool, fs, ErrInvalid)
}

// Create implements snapshotter: flush, then reflink.
func (s *localSnapshots) Create(ctx context.Context, name string) (Snapshot, error) {
	if err := s.check(); err != nil {
		return Snapshot{}, err
	}
	meta, err := s.dir().Create(ctx, s.dev, name)
	switch {
	case errors.Is(err, local.ErrSnapshotExists):
		return Snapshot{}, ErrExists
	case errors.Is(err, local.ErrNoReflink):
		return Snapshot{}, fmt.Errorf("%w: %w", err, ErrInvalid)
	case err != nil:
		return Snapshot{}, err
	}
	return Snapshot{Name: name, Created: meta.Created, Size: meta.Size}, nil
}

// List implements snapshotter; ExclusiveBytes is what only the snapshot's
// file holds (local.UniqueBytes).
func (s *localSnapshots) List(ctx context.Context) ([]Snapshot, error) {
	list, err := s.dir().List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Snapshot, 0, len(list))
	for _, sn := range list {
		out = append(out, Snapshot{Name: sn.Name, Created: sn.Created, Size: sn.Size, ExclusiveBytes: sn.Exclusive})
	}
	return out, nil
}

// Names implements snapshotter.
func (s *localSnapshots) Names(context.Context) ([]string, error) { return s.dir().Names() }

// Remove implements snapshotter.
func (s *localSnapshots) Remove(_ context.Context, name string) error {
	if err := s.dir().Remove(name); errors.Is(err, local.ErrNoSnapshot) {
		return ErrNotFound
	} else if err != nil {
		return err
	}
	return nil
}

// Open implements snapshotter.
func (s *localSnapshots) Open(_ context.Context, name string) (device.Device, error) {
	d, err := s.dir().Open(name)
	if errors.Is(err, local.ErrNoSnapshot) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Clone implements snapshotter: the new volume's file is a reflink of
// the snapshot's, in the same pool directory.
func (s *localSnapshots) Clone(ctx context.Context, name string, rec *Record) (device.Device, snapshotter, func(), error) {
	if _, err := s.dir().Stat(name); errors.Is(err, local.ErrNoSnapshot) {
		return nil, nil, nil, ErrNotFound
	} else if err != nil {
		return nil, nil, nil, err
	}
	if err := s.check(); err != nil {
		return nil, nil, nil, err
	}
	rec.Backend = "local"
	rec.Path = filepath.Join(filepath.Dir(s.rec.Path), "vol-"+rec.ID+".img")
	if err := s.dir().Clone(ctx, name, rec.Path); errors.Is(err, local.ErrNoSnapshot) {
		return nil, nil, nil, ErrNotFound
	} else if err != nil {
		return nil, nil, nil, err
	}
	undo := func() {
		os.Remove(rec.Path)
		local.SyncDir(rec.Path)
	}
	d, err := local.Open(rec.Path)
	if err != nil {
		undo()
		return nil, nil, nil, err
	}
	rec.Size = d.Size()
	return d, s.m.localSnapshotter(rec, d), undo, nil
}

// Drop implements snapshotter: the volume's snapshots go with it.
func (s *localSnapshots) Drop(context.Context) {
	if err := s.dir().RemoveAll(); err != nil {
		s.m.log.Warn("volume removed but its snapshots remain; the next start removes them", attrVolume, s.rec.Name, "err", err)
	}
}

// reflinkIn reports whether files in the pool directory dir can share
// blocks, probing once per directory (a pool directory's file system does
// not change while the gateway runs).
func (m *Manager) reflinkIn(dir string) error {
	m.reflinkMu.Lock()
	defer m.reflinkMu.Unlock()
	if err, ok := m.reflink[dir]; ok {
		return err
	}
	err := local.CheckReflink(dir)
	if err != nil && !errors.Is(err, local.ErrNoReflink) {
		return err // not an answer: ask again next time
	}
	m.reflink[dir] = err
	return err
}

// removeSnapshotOrphans deletes the snapshots of local volumes the
// catalog no longer names (a remove that crashed after its catalog
// update) and what interrupted snapshots and clones left.
func (m *Manager) removeSnapshotOrphans(known map[string]bool) {
	for _, dir := range m.cfg.PoolDirs {
		local.SweepTemp(dir)
		snaps, _ := filepath.Glob(filepath.Join(dir, "snapshots", "*"))
		for _, d := range snaps {
			if !known[filepath.Base(d)] {
				m.log.Warn("removing the snapshots of a volume the catalog does not name (an interrupted remove)", "path", d)
				os.RemoveAll(d)
				continue
			}
			local.SnapshotDir{Dir: d}.Sweep()
		}
	}
}
