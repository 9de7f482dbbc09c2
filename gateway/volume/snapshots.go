package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ferry-io/ferry/backends/lease"
	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/backends/tier"
	"github.com/ferry-io/ferry/gateway/api/wire"
)

// Snapshot describes one snapshot (wire.Snapshot).
type Snapshot = wire.Snapshot

// Snapshots of volumes, served read-only as VOLUME@SNAPSHOT. Only
// S3-backed volumes have them so far (docs/ARCHITECTURE.md).

// splitExport splits VOLUME@SNAPSHOT.
func splitExport(name string) (vol, snap string, isSnap bool) {
	vol, snap, isSnap = strings.Cut(name, "@")
	return
}

// snapshotTier returns the volume's tier device, or why it has none.
func (m *Manager) snapshotTier(vol string) (*vol, *tier.Device, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.vols[vol]
	if !ok || v.removing {
		return nil, nil, fmt.Errorf("volume %q: %w", vol, ErrNotFound)
	}
	td, ok := v.dev.(*tier.Device)
	if !ok {
		return nil, nil, fmt.Errorf("volume %q is local: snapshots are for S3-backed volumes so far: %w", vol, ErrInvalid)
	}
	return v, td, nil
}

// CreateSnapshot publishes a recovery point holding every write
// acknowledged before the call and keeps it as the volume's snapshot.
func (m *Manager) CreateSnapshot(ctx context.Context, vol, name string) (Snapshot, error) {
	v, td, err := m.snapshotTier(vol)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %s@%s: %w", vol, name, err)
	}
	if err := tier.ValidSnapshotName(name); err != nil {
		return Snapshot{}, fmt.Errorf("%w: %w", err, ErrInvalid)
	}
	mf, err := td.Snapshot(ctx, name)
	if errors.Is(err, tier.ErrSnapshotExists) {
		return Snapshot{}, fmt.Errorf("snapshot %s@%s: %w", vol, name, ErrExists)
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %s@%s: %w", vol, name, err)
	}
	m.mu.Lock()
	if v.snaps == nil {
		v.snaps = map[string]*tier.SnapshotDevice{}
	}
	v.snaps[name] = nil // opened on first attach
	m.mu.Unlock()
	m.log.Info("snapshot created", attrVolume, vol, "snapshot", name, "recovery_point", mf.Sequence)
	return Snapshot{Name: name, Volume: vol, Export: vol + "@" + name, Created: mf.Created, Size: mf.Size, RecoveryPoint: mf.Sequence}, nil
}

// ListSnapshots lists a volume's snapshots with what only each keeps.
func (m *Manager) ListSnapshots(ctx context.Context, vol string) ([]Snapshot, error) {
	v, td, err := m.snapshotTier(vol)
	if err != nil {
		return nil, err
	}
	list, err := td.Snapshots(ctx)
	if err != nil {
		return nil, fmt.Errorf("snapshots of %q: %w", vol, err)
	}
	out := make([]Snapshot, 0, len(list))
	m.mu.Lock()
	if v.snaps == nil {
		v.snaps = map[string]*tier.SnapshotDevice{}
	}
	for _, sn := range list {
		if _, ok := v.snaps[sn.Name]; !ok {
			v.snaps[sn.Name] = nil
		}
		out = append(out, Snapshot{Name: sn.Name, Volume: vol, Export: vol + "@" + sn.Name, Created: sn.Manifest.Created,
			Size: sn.Manifest.Size, RecoveryPoint: sn.Manifest.Sequence, ExclusiveBytes: sn.Exclusive})
	}
	m.mu.Unlock()
	return out, nil
}

// RemoveSnapshot forgets a snapshot; what only it kept is deleted at the
// next recovery point. Refused while a client reads its export.
func (m *Manager) RemoveSnapshot(ctx context.Context, vol, name string) error {
	v, _, err := m.snapshotTier(vol)
	if err != nil {
		return fmt.Errorf("remove snapshot %s@%s: %w", vol, name, err)
	}
	m.mu.Lock()
	for _, c := range v.clients {
		if c.Export == vol+"@"+name {
			m.mu.Unlock()
			return fmt.Errorf("remove snapshot %s@%s: a client reads it (%s %s): %w", vol, name, c.Protocol, c.Remote, ErrBusy)
		}
	}
	m.mu.Unlock()
	s, err := m.volumeStoreFor(v.rec, m.leaseOf(v.rec.ID))
	if err != nil {
		return err
	}
	if err := tier.RemoveSnapshot(ctx, s, name); errors.Is(err, tier.ErrNoSnapshot) {
		return fmt.Errorf("remove snapshot %s@%s: %w", vol, name, ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("remove snapshot %s@%s: %w", vol, name, err)
	}
	m.mu.Lock()
	delete(v.snaps, name)
	m.mu.Unlock()
	m.log.Info("snapshot removed", attrVolume, vol, "snapshot", name)
	return nil
}

// loadSnapshotNames fills v.snaps after open, so exports list snapshots
// without asking the store each time. It gives up when the manager closes.
func (m *Manager) loadSnapshotNames(ctx context.Context, v *vol) {
	td, ok := v.dev.(*tier.Device)
	if !ok {
		return
	}
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	go func() {
		select {
		case <-m.closing:
			cancel()
		case <-lctx.Done():
		}
	}()
	list, err := td.SnapshotNames(lctx)
	if err != nil {
		m.log.Warn("could not list the volume's snapshots; they are listed again by ferry volume snapshot ls", attrVolume, v.rec.Name, "err", err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if v.snaps == nil {
		v.snaps = map[string]*tier.SnapshotDevice{}
	}
	for _, n := range list {
		if _, ok := v.snaps[n]; !ok {
			v.snaps[n] = nil
		}
	}
}

// attachSnapshot attaches the read-only export VOLUME@SNAPSHOT.
func (m *Manager) attachSnapshot(ctx context.Context, name string, client Client) (*Attachment, error) {
	volName, snap, _ := splitExport(name)
	m.mu.Lock()
	v, ok := m.vols[volName]
	var sd *tier.SnapshotDevice
	known := false
	if ok && !v.removing {
		sd, known = v.snaps[snap]
	}
	m.mu.Unlock()
	if !ok || v.removing || !known {
		return nil, fmt.Errorf("attach %q: %w", name, ErrNotFound)
	}
	if err := v.rec.Access.admit(client); err != nil {
		m.log.Warn("client refused by the volume's access rules", attrVolume, name, "protocol", client.Protocol, attrClient, client.Remote, "err", err)
		return nil, fmt.Errorf("attach %q: %w", name, err)
	}
	if sd == nil {
		s, err := m.volumeStoreFor(v.rec, nil)
		if err != nil {
			return nil, fmt.Errorf("attach %q: %w", name, err)
		}
		mf, err := tier.ReadSnapshot(ctx, s, snap)
		if errors.Is(err, tier.ErrNoSnapshot) {
			return nil, fmt.Errorf("attach %q: %w", name, ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("attach %q: %w", name, err)
		}
		if sd, err = tier.OpenSnapshot(s, mf); err != nil {
			return nil, fmt.Errorf("attach %q: %w", name, err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, still := v.snaps[snap]; !still || v.removing {
		return nil, fmt.Errorf("attach %q: %w", name, ErrNotFound)
	}
	v.snaps[snap] = sd
	if client.Since.IsZero() {
		client.Since = time.Now().UTC()
	}
	client.Export = name
	var a *Attachment
	a = NewAttachment(name, sd, v.revoked, func() { m.detach(v, a) })
	a.ID = v.rec.ID + "@" + snap // a snapshot is another device
	v.clients[a] = client
	return a, nil
}

// snapshotExports lists VOLUME@SNAPSHOT for the volumes in names.
func (m *Manager) snapshotExportsLocked(v *vol) []string {
	out := make([]string, 0, len(v.snaps))
	for n := range v.snaps {
		out = append(out, v.rec.Name+"@"+n)
	}
	slices.Sort(out)
	return out
}

// Clone makes a writable volume from a snapshot at once, sharing the
// snapshot's objects (docs/FORMAT.md, "Clones"): nothing is copied. The
// clone and its parent change independently; the parent and the snapshot
// may be removed while the clone lives.
func (m *Manager) Clone(ctx context.Context, source, name string) (Info, error) {
	fail := func(err error) (Info, error) { return Info{}, fmt.Errorf("clone %s as %q: %w", source, name, err) }
	volName, snap, isSnap := splitExport(source)
	if !isSnap {
		return fail(fmt.Errorf("give the source as VOLUME@SNAPSHOT (ferry volume snapshot ls %s): %w", source, ErrInvalid))
	}
	if err := ValidateName(name); err != nil {
		return fail(err)
	}
	v, _, err := m.snapshotTier(volName)
	if err != nil {
		return fail(err)
	}
	m.mu.Lock()
	_, exists := m.vols[name]
	sc := m.stores[v.rec.Store]
	m.mu.Unlock()
	if exists {
		return fail(ErrExists)
	}
	parentStore, _, err := m.objectStore(sc, volumePrefix(v.rec))
	if err != nil {
		return fail(err)
	}
	mf, err := tier.ReadSnapshot(ctx, parentStore, snap)
	if errors.Is(err, tier.ErrNoSnapshot) {
		return fail(fmt.Errorf("no snapshot %s@%s (ferry volume snapshot ls %s): %w", volName, snap, volName, ErrNotFound))
	}
	if err != nil {
		return fail(err)
	}
	dir, err := m.pickPoolDir()
	if err != nil {
		return fail(err)
	}
	id := newID()
	rec := &Record{ID: id, Name: name, Size: mf.Size, Backend: "tier", Store: v.rec.Store, ChunkSize: mf.ChunkSize,
		Created: time.Now().UTC().Truncate(time.Second), Path: filepath.Join(dir, "tier-"+id), Access: v.rec.Access}
	cloneStore, _, err := m.objectStore(sc, volumePrefix(rec))
	if err != nil {
		return fail(err)
	}
	ancestors := func(prefix string) (store.Store, error) {
		s, _, err := m.objectStore(sc, prefix)
		return s, err
	}
	if rec.Parents, err = tier.SeedClone(ctx, mf, volumePrefix(v.rec), id, ancestors, cloneStore); err != nil {
		return fail(err)
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
	if _, err := tier.ReadSnapshot(ctx, parentStore, snap); err != nil {
		undoMarks()
		return fail(fmt.Errorf("the snapshot went away while it was cloned: %w", err))
	}
	td, err := m.openTier(ctx, rec, tierOpen{minGeneration: rec.Parents[0].Below>>lease.GenerationShift + 1})
	if err != nil {
		undoMarks()
		os.RemoveAll(rec.Path)
		return fail(err)
	}
	if s, err := m.volumeStoreFor(rec, m.leaseOf(id)); err == nil {
		m.putVolumeObject(ctx, s, rec)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.vols[name]; ok {
		td.Close()
		undoMarks()
		os.RemoveAll(rec.Path)
		return fail(ErrExists)
	}
	m.cat.Volumes = append(m.cat.Volumes, rec)
	if err := m.commit(); err != nil {
		m.cat.Volumes = m.cat.Volumes[:len(m.cat.Volumes)-1]
		td.Close()
		undoMarks()
		os.RemoveAll(rec.Path)
		return fail(err)
	}
	nv := &vol{rec: rec, dev: td, clients: map[*Attachment]Client{}, revoked: make(chan struct{}), snaps: map[string]*tier.SnapshotDevice{}}
	m.vols[name] = nv
	m.log.Info("volume cloned", attrVolume, name, "from", source, "id", id)
	return m.infoLocked(ctx, nv), nil
}
