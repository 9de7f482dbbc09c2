package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ferry-io/ferry/internal/atomicfile"
	"github.com/ferry-io/ferry/internal/vfs"
)

// Sentinel errors of snapshot directories.
var (
	// ErrSnapshotExists: a snapshot of that name exists.
	ErrSnapshotExists = errors.New("snapshot exists")
	// ErrNoSnapshot: no snapshot has that name.
	ErrNoSnapshot = errors.New("no such snapshot")
)

// SnapshotDir holds one volume's snapshots: NAME.img, a reflink of the
// volume's file as it was when the snapshot was taken, and NAME.json,
// its description (SnapshotMeta). NAME.img appearing is the snapshot's
// commit point; a NAME.json without it is left by a crash and ignored
// (Sweep removes it). Names are validated by the caller; they must not
// contain '/'.
type SnapshotDir struct {
	Dir string
}

// SnapshotMeta is NAME.json.
type SnapshotMeta struct {
	Format  string    `json:"format"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// Size is the volume's size when the snapshot was taken.
	Size int64 `json:"size"`
}

const snapshotFormat = "ferry-local-snapshot/1"

// SnapshotInfo describes one snapshot.
type SnapshotInfo struct {
	SnapshotMeta
	// Exclusive is the bytes only the snapshot's file holds, shared with
	// neither the volume nor another snapshot or clone: what removing it
	// frees (UniqueBytes).
	Exclusive int64
}

func (s SnapshotDir) img(name string) string  { return filepath.Join(s.Dir, name+".img") }
func (s SnapshotDir) meta(name string) string { return filepath.Join(s.Dir, name+".json") }

// Create takes a snapshot of d named name: d is flushed, then reflinked
// into the directory (Device.ReflinkTo), so the snapshot holds every write
// that returned before the call. It fails with ErrSnapshotExists when the
// name is taken and with ErrNoReflink when the file system cannot share
// blocks; it never copies.
func (s SnapshotDir) Create(ctx context.Context, d *Device, name string) (SnapshotMeta, error) {
	if _, err := os.Stat(s.img(name)); err == nil {
		return SnapshotMeta{}, fmt.Errorf("snapshot %q: %w", name, ErrSnapshotExists)
	}
	if err := s.mkdir(); err != nil {
		return SnapshotMeta{}, err
	}
	created := time.Now().UTC()
	if err := d.ReflinkTo(ctx, s.img(name)); errors.Is(err, os.ErrExist) {
		return SnapshotMeta{}, fmt.Errorf("snapshot %q: %w", name, ErrSnapshotExists)
	} else if err != nil {
		return SnapshotMeta{}, fmt.Errorf("snapshot %q: %w", name, err)
	}
	st, err := os.Stat(s.img(name))
	if err != nil {
		return SnapshotMeta{}, fmt.Errorf("snapshot %q: %w", name, err)
	}
	m := SnapshotMeta{Format: snapshotFormat, Name: name, Created: created.Truncate(time.Millisecond), Size: st.Size()}
	b, _ := json.MarshalIndent(m, "", "  ")
	// Best effort: the snapshot stands without it, and Stat then takes
	// its creation time from the file.
	_ = atomicfile.WriteFile(s.meta(name), append(b, '\n'))
	return m, nil
}

// mkdir creates the directory and makes its name durable.
func (s SnapshotDir) mkdir() error {
	if err := vfs.MkdirAllDurable(vfs.OS, s.Dir); err != nil {
		return fmt.Errorf("snapshot directory: %w", err)
	}
	return nil
}

// Names lists the snapshots' names, sorted.
func (s SnapshotDir) Names() ([]string, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("snapshots: %w", err)
	}
	var out []string
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".img"); ok && !strings.HasPrefix(n, ".") && e.Type().IsRegular() {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

// Stat describes the snapshot name, without its exclusive bytes.
func (s SnapshotDir) Stat(name string) (SnapshotMeta, error) {
	st, err := os.Stat(s.img(name))
	if errors.Is(err, os.ErrNotExist) {
		return SnapshotMeta{}, fmt.Errorf("snapshot %q: %w", name, ErrNoSnapshot)
	}
	if err != nil {
		return SnapshotMeta{}, fmt.Errorf("snapshot %q: %w", name, err)
	}
	m := SnapshotMeta{Format: snapshotFormat, Name: name, Created: st.ModTime().UTC(), Size: st.Size()}
	if b, err := os.ReadFile(s.meta(name)); err == nil {
		var j SnapshotMeta
		if json.Unmarshal(b, &j) == nil && j.Format == snapshotFormat && j.Name == name {
			m.Created = j.Created
		}
	}
	return m, nil
}

// List describes every snapshot, sorted by name, with its exclusive
// bytes.
func (s SnapshotDir) List(ctx context.Context) ([]SnapshotInfo, error) {
	names, err := s.Names()
	if err != nil {
		return nil, err
	}
	out := make([]SnapshotInfo, 0, len(names))
	for _, n := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m, err := s.Stat(n)
		if errors.Is(err, ErrNoSnapshot) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		x, err := UniqueBytes(s.img(n))
		if err != nil {
			return nil, fmt.Errorf("snapshot %q: %w", n, err)
		}
		out = append(out, SnapshotInfo{SnapshotMeta: m, Exclusive: x})
	}
	return out, nil
}

// Open returns a read-only device over the snapshot.
func (s SnapshotDir) Open(name string) (*Device, error) {
	d, err := OpenReadOnly(s.img(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("snapshot %q: %w", name, ErrNoSnapshot)
	}
	return d, err
}

// Clone makes dst, a new volume file sharing the snapshot's blocks
// (ReflinkFile): it fails if dst exists.
func (s SnapshotDir) Clone(ctx context.Context, name, dst string) error {
	if _, err := os.Stat(s.img(name)); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("snapshot %q: %w", name, ErrNoSnapshot)
	}
	return ReflinkFile(ctx, s.img(name), dst)
}

// Remove deletes the snapshot; the file system frees the blocks no other
// file shares.
func (s SnapshotDir) Remove(name string) error {
	if err := os.Remove(s.img(name)); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("snapshot %q: %w", name, ErrNoSnapshot)
	} else if err != nil {
		return fmt.Errorf("remove snapshot %q: %w", name, err)
	}
	os.Remove(s.meta(name))
	return SyncDir(s.Dir)
}

// RemoveAll deletes every snapshot and the directory.
func (s SnapshotDir) RemoveAll() error {
	if err := os.RemoveAll(s.Dir); err != nil {
		return fmt.Errorf("remove snapshots: %w", err)
	}
	return SyncDir(filepath.Dir(s.Dir))
}

// Sweep removes what an interrupted Create or Remove left: temporary
// files, and descriptions of snapshots whose file is gone.
func (s SnapshotDir) Sweep() {
	SweepTemp(s.Dir)
	metas, _ := filepath.Glob(filepath.Join(s.Dir, "*.json"))
	for _, m := range metas {
		if _, err := os.Stat(strings.TrimSuffix(m, ".json") + ".img"); errors.Is(err, os.ErrNotExist) {
			os.Remove(m)
		}
	}
}
