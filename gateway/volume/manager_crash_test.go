package volume

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/local"
	"github.com/ferry-io/ferry/internal/vfs"
)

// managerCrashes runs volume creates and removes through a Manager whose
// catalog and local volume files are on a crashable file system (seen
// through fault, if set), cuts the power before every file system
// operation and after every acknowledged step, and opens a Manager on
// each crashed state as a restart does. A create step also writes a
// marker into the new volume and flushes it. Each restart must open, list
// the volumes acknowledged before the step (or, mid-step, after it), find
// each at its size with its marker, and leave no orphan volume file
// behind (the start-up sweep). It returns the first state that breaks a rule.
func managerCrashes(t *testing.T, fault vfs.Fault) error {
	ctx := context.Background()
	dataDir := t.TempDir() // for what is not on the seam: identity, statfs, reflink probe
	mem := vfs.NewCrashableMem()
	var mu sync.Mutex
	var cuts []*vfs.MemFS
	armed := false
	fsys := vfs.Inject(mem, func(op vfs.Op, path string, isDir bool) error {
		mu.Lock()
		if armed {
			cuts = append(cuts, mem.Crash())
		}
		mu.Unlock()
		if fault != nil {
			return fault(op, path, isDir)
		}
		return nil
	})
	open := func(fsys vfs.FS) (*Manager, error) {
		return Open(ctx, Config{DataDir: dataDir, ForceTimeout: time.Second, fsys: fsys})
	}
	m, err := open(fsys)
	if err != nil {
		return err
	}
	defer func() { m.Close(ctx) }()
	steps := []catStep{{true, "a"}, {true, "b"}, {false, "a"}, {true, "c"}, {false, "b"}, {true, "a"}, {false, "c"}}
	sizes := map[string]int64{"a": 1 << 20, "b": 192 << 10, "c": 64 << 10}
	markers := map[string][]byte{}
	for i, st := range steps {
		before := strings.Join(m.Names(ctx), " ")
		mu.Lock()
		cuts, armed = cuts[:0], true
		mu.Unlock()
		marker := []byte(fmt.Sprintf("volume %s of step %d", st.name, i))
		if st.create {
			_, err = m.Create(ctx, st.name, sizes[st.name], CreateOptions{})
			if err == nil {
				err = writeMarker(ctx, m, st.name, marker)
			}
		} else {
			err = m.Remove(ctx, st.name, false)
		}
		mu.Lock()
		armed = false
		cuts = append(cuts, mem.Crash()) // acknowledged: only after will do
		states := slices.Clone(cuts)
		mu.Unlock()
		if err != nil {
			return fmt.Errorf("step %d (%+v): %w", i, st, err)
		}
		after := strings.Join(m.Names(ctx), " ")
		if st.create {
			markers[st.name] = marker
		}
		for j, c := range states {
			acked := j == len(states)-1
			want := markers
			if !acked { // the step's own volume may lack its marker
				want = maps.Clone(markers)
				delete(want, st.name)
			}
			where := fmt.Sprintf("step %d (%+v), crash %d of %d", i, st, j, len(states))
			if err := checkRestart(ctx, open, c, before, after, acked, sizes, want); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
		}
	}
	return nil
}

// checkRestart opens a Manager on the crashed state c and checks it.
func checkRestart(ctx context.Context, open func(vfs.FS) (*Manager, error), c *vfs.MemFS, before, after string, acked bool, sizes map[string]int64, markers map[string][]byte) error {
	m, err := open(c)
	if err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	defer m.Close(ctx)
	names := strings.Join(m.Names(ctx), " ")
	if names != after && (acked || names != before) {
		return fmt.Errorf("restart lists [%s], want [%s] or, before the step returned, [%s] (acknowledged: %v)", names, after, before, acked)
	}
	known := map[string]bool{}
	for _, n := range m.Names(ctx) {
		in, err := m.Info(ctx, n)
		if err != nil {
			return err
		}
		if in.Size != sizes[n] {
			return fmt.Errorf("volume %s: size %d, want %d", n, in.Size, sizes[n])
		}
		m.mu.Lock()
		rec, dev := m.vols[n].rec, m.vols[n].dev
		m.mu.Unlock()
		if want := markers[n]; want != nil {
			got := make([]byte, len(want))
			if err := dev.ReadAt(ctx, got, markerAt(sizes[n])); err != nil {
				return fmt.Errorf("volume %s: %w", n, err)
			}
			if !bytes.Equal(got, want) {
				return fmt.Errorf("volume %s: flushed marker lost (read %q)", n, got)
			}
		}
		known[rec.Path] = true
		d, err := local.On(c).Open(rec.Path)
		if err != nil {
			return fmt.Errorf("volume %s: %w", n, err)
		}
		size := d.Size()
		d.Close()
		if size != sizes[n] {
			return fmt.Errorf("volume %s: file of %d bytes, want %d", n, size, sizes[n])
		}
	}
	for _, dir := range m.cfg.PoolDirs {
		for _, f := range m.glob(dir, "vol-*") {
			if !known[f] {
				return fmt.Errorf("orphan %s left after the restart", filepath.Base(f))
			}
		}
	}
	return nil
}

func markerAt(size int64) int64 { return size / 2 }

// writeMarker writes marker into volume name and flushes it.
func writeMarker(ctx context.Context, m *Manager, name string, marker []byte) error {
	m.mu.Lock()
	dev := m.vols[name].dev
	m.mu.Unlock()
	if err := dev.WriteAt(ctx, marker, markerAt(dev.Size())); err != nil {
		return err
	}
	return dev.Flush(ctx)
}

// TestManagerSurvivesCrashes: volume creates and removes survive a power
// cut at any file system operation, through a restart.
func TestManagerSurvivesCrashes(t *testing.T) {
	if err := managerCrashes(t, nil); err != nil {
		t.Fatal(err)
	}
}

// TestManagerCrashesHaveTeeth: skip the volume file's fsyncs, or the
// directories', and some restart must break a rule.
func TestManagerCrashesHaveTeeth(t *testing.T) {
	for _, tc := range []struct {
		name string
		skip func(path string, isDir bool) bool
	}{
		{"volume file fsync", func(p string, dir bool) bool { return !dir && strings.HasSuffix(p, ".img") }},
		{"pool directory fsync", func(p string, dir bool) bool { return dir && strings.HasSuffix(p, "/pool") }},
		{"data directory fsync", func(p string, dir bool) bool { return dir && !strings.HasSuffix(p, "/pool") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := managerCrashes(t, vfs.SkipSyncs(tc.skip))
			if err == nil {
				t.Fatalf("every restart kept the rules with the %s skipped", tc.name)
			}
			t.Logf("caught: %v", err)
		})
	}
}
