package volume

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/gateway/api/wire"
)

// Snapshot describes one snapshot (wire.Snapshot).
type Snapshot = wire.Snapshot

// Snapshots of volumes, served read-only as VOLUME@SNAPSHOT, and clones
// made from them. What a snapshot is depends on where the volume's bytes
// live, so the manager reaches it through one capability, snapshotter:
// S3-backed volumes keep snapshots as named recovery points
// (tierSnapshots, tier_snapshots.go), local volumes as reflinked copies of
// their file (localSnapshots, local_snapshots.go). docs/ARCHITECTURE.md
// describes both.

// snapshotter is a volume's snapshot and clone capability. Its methods are
// called without m.mu held; errors wrap ErrExists, ErrNotFound and
// ErrInvalid where one applies.
type snapshotter interface {
	// Create keeps, as the snapshot name (already validated), every write
	// acknowledged before the call.
	Create(ctx context.Context, name string) (Snapshot, error)
	// List returns the snapshots sorted by name, with what only each
	// keeps alive.
	List(ctx context.Context) ([]Snapshot, error)
	// Names lists the snapshots' names only (read as the gateway starts).
	Names(ctx context.Context) ([]string, error)
	// Remove forgets the snapshot name; the caller has checked that no
	// client reads it.
	Remove(ctx context.Context, name string) error
	// Open returns a read-only device (device.ReadOnly) over the snapshot.
	Open(ctx context.Context, name string) (device.Device, error)
	// Clone makes a new volume's data from the snapshot name. rec has the
	// new volume's ID, Name, Created and Access; Clone fills in the rest
	// (Backend, Path, Size, ...). It returns the new volume's device and
	// snapshotter, and undo, which deletes what Clone made when the
	// catalog does not take the volume (after the device is closed).
	Clone(ctx context.Context, name string, rec *Record) (device.Device, snapshotter, func(), error)
	// Drop removes what the volume's snapshots keep outside the volume
	// itself, once the catalog has forgotten the volume.
	Drop(ctx context.Context)
}

// ValidateSnapshotName reports whether name may name a snapshot: the
// same rules for every backend.
func ValidateSnapshotName(name string) error {
	if !snapshotNameRE.MatchString(name) {
		return fmt.Errorf("snapshot name %q: use 1-63 characters from a-z, 0-9, '.', '_', '-', starting with a letter or digit: %w", name, ErrInvalid)
	}
	return nil
}

// splitExport splits VOLUME@SNAPSHOT.
func splitExport(name string) (vol, snap string, isSnap bool) {
	vol, snap, isSnap = strings.Cut(name, "@")
	return
}

// snapshotVol returns the volume named vol, with its snapshotter.
func (m *Manager) snapshotVol(vol string) (*vol, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.vols[vol]
	if !ok || v.removing {
		return nil, fmt.Errorf("volume %q: %w", vol, ErrNotFound)
	}
	return v, nil
}

// knowSnapshotsLocked records names as v's snapshots (their devices are
// opened on first attach).
func knowSnapshotsLocked(v *vol, names ...string) {
	if v.snaps == nil {
		v.snaps = map[string]device.Device{}
	}
	for _, n := range names {
		if _, ok := v.snaps[n]; !ok {
			v.snaps[n] = nil
		}
	}
}

// CreateSnapshot keeps every write acknowledged before the call as the
// volume's snapshot name.
func (m *Manager) CreateSnapshot(ctx context.Context, vol, name string) (Snapshot, error) {
	v, err := m.snapshotVol(vol)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %s@%s: %w", vol, name, err)
	}
	if err := ValidateSnapshotName(name); err != nil {
		return Snapshot{}, err
	}
	sn, err := v.sn.Create(ctx, name)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot %s@%s: %w", vol, name, err)
	}
	sn.Name, sn.Volume, sn.Export = name, vol, vol+"@"+name
	m.mu.Lock()
	knowSnapshotsLocked(v, name)
	m.mu.Unlock()
	m.log.Info("snapshot created", attrVolume, vol, "snapshot", name, "recovery_point", sn.RecoveryPoint)
	return sn, nil
}

// ListSnapshots lists a volume's snapshots with what only each keeps.
func (m *Manager) ListSnapshots(ctx context.Context, vol string) ([]Snapshot, error) {
	v, err := m.snapshotVol(vol)
	if err != nil {
		return nil, err
	}
	list, err := v.sn.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("snapshots of %q: %w", vol, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range list {
		list[i].Volume, list[i].Export = vol, vol+"@"+list[i].Name
		knowSnapshotsLocked(v, list[i].Name)
	}
	return list, nil
}

// RemoveSnapshot forgets a snapshot. Refused while a client reads its
// export.
func (m *Manager) RemoveSnapshot(ctx context.Context, vol, name string) error {
	v, err := m.snapshotVol(vol)
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
	if err := v.sn.Remove(ctx, name); err != nil {
		return fmt.Errorf("remove snapshot %s@%s: %w", vol, name, err)
	}
	m.mu.Lock()
	if d := v.snaps[name]; d != nil {
		d.Close()
	}
	delete(v.snaps, name)
	m.mu.Unlock()
	m.log.Info("snapshot removed", attrVolume, vol, "snapshot", name)
	return nil
}

// loadSnapshotNames fills v.snaps after open, so exports list snapshots
// without asking the backend each time. It gives up when the manager
// closes.
func (m *Manager) loadSnapshotNames(ctx context.Context, v *vol) {
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	go func() {
		select {
		case <-m.closing:
			cancel()
		case <-lctx.Done():
		}
	}()
	list, err := v.sn.Names(lctx)
	if err != nil {
		m.log.Warn("could not list the volume's snapshots; they are listed again by ferry volume snapshot ls", attrVolume, v.rec.Name, "err", err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	knowSnapshotsLocked(v, list...)
}

// attachSnapshot attaches the read-only export VOLUME@SNAPSHOT.
func (m *Manager) attachSnapshot(ctx context.Context, name string, client Client) (*Attachment, error) {
	volName, snap, _ := splitExport(name)
	m.mu.Lock()
	v, ok := m.vols[volName]
	var sd device.Device
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
	opened := false
	if sd == nil {
		d, err := v.sn.Open(ctx, snap)
		if err != nil {
			return nil, fmt.Errorf("attach %q: %w", name, err)
		}
		sd, opened = d, true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, still := v.snaps[snap]; !still || v.removing {
		if opened {
			sd.Close()
		}
		return nil, fmt.Errorf("attach %q: %w", name, ErrNotFound)
	}
	if cur := v.snaps[snap]; cur != nil && cur != sd {
		// Another client opened it meanwhile: share that one.
		if opened {
			sd.Close()
		}
		sd = cur
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

// snapshotExportsLocked lists VOLUME@SNAPSHOT for v's snapshots.
func (m *Manager) snapshotExportsLocked(v *vol) []string {
	out := make([]string, 0, len(v.snaps))
	for n := range v.snaps {
		out = append(out, v.rec.Name+"@"+n)
	}
	slices.Sort(out)
	return out
}

// closeSnapshotsLocked closes v's opened snapshot devices.
func closeSnapshotsLocked(v *vol) {
	for n, d := range v.snaps {
		if d != nil {
			d.Close()
			v.snaps[n] = nil
		}
	}
}

// Clone makes a writable volume from a snapshot at once, sharing the
// snapshot's data: nothing is copied. The clone and its parent change
// independently; the parent and the snapshot may be removed while the
// clone lives.
func (m *Manager) Clone(ctx context.Context, source, name string) (Info, error) {
	fail := func(err error) (Info, error) { return Info{}, fmt.Errorf("clone %s as %q: %w", source, name, err) }
	volName, snap, isSnap := splitExport(source)
	if !isSnap {
		return fail(fmt.Errorf("give the source as VOLUME@SNAPSHOT (ferry volume snapshot ls %s): %w", source, ErrInvalid))
	}
	if err := ValidateName(name); err != nil {
		return fail(err)
	}
	v, err := m.snapshotVol(volName)
	if err != nil {
		return fail(err)
	}
	m.mu.Lock()
	_, exists := m.vols[name]
	m.mu.Unlock()
	if exists {
		return fail(ErrExists)
	}
	rec := &Record{ID: newID(), Name: name, Created: time.Now().UTC().Truncate(time.Second), Access: v.rec.Access}
	dev, sn, undo, err := v.sn.Clone(ctx, snap, rec)
	if errors.Is(err, ErrNotFound) {
		return fail(fmt.Errorf("no snapshot %s@%s (ferry volume snapshot ls %s): %w", volName, snap, volName, err))
	}
	if err != nil {
		return fail(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.vols[name]; ok {
		dev.Close()
		undo()
		return fail(ErrExists)
	}
	m.cat.Volumes = append(m.cat.Volumes, rec)
	if err := m.commit(); err != nil {
		m.cat.Volumes = m.cat.Volumes[:len(m.cat.Volumes)-1]
		dev.Close()
		undo()
		return fail(err)
	}
	nv := newVol(rec, dev, sn)
	nv.snaps = map[string]device.Device{}
	m.vols[name] = nv
	m.log.Info("volume cloned", attrVolume, name, "from", source, "id", rec.ID)
	return m.infoLocked(ctx, nv), nil
}
