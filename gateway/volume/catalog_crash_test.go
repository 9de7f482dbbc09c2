package volume

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ferry-io/ferry/backends/local"
	"github.com/ferry-io/ferry/internal/vfs"
)

// The catalog's crash consistency, on a crashable file system: volumes are
// created and removed in the order Manager.Create and Manager.Remove use
// (a new volume's file durably first, then the catalog; a removed
// volume's catalog first, then its file), and the power is cut before
// every file system operation and after every acknowledged step. Every
// crashed state must load, hold the acknowledged volumes (and, mid-step,
// the step either done or not), and hold the file of every volume it
// names. These helpers mirror the Manager's order on the catalog alone;
// manager_crash_test.go runs the Manager itself.

const catDir = "/data"

type catStep struct {
	create bool
	name   string
}

// catalogCrashes runs the steps on a MemFS seen through fault (nil: none)
// and returns the first crash state that breaks the rules.
func catalogCrashes(fault vfs.Fault) error {
	mem := vfs.NewCrashableMem()
	if err := mem.MkdirAll(catDir, 0o700); err != nil {
		return err
	}
	if err := vfs.SyncDir(mem, "/"); err != nil {
		return err
	}
	var mu sync.Mutex
	var cuts []*vfs.MemFS // the power cut before each operation of a step
	fsys := vfs.Inject(mem, func(op vfs.Op, path string, isDir bool) error {
		mu.Lock()
		cuts = append(cuts, mem.Crash())
		mu.Unlock()
		if fault != nil {
			return fault(op, path, isDir)
		}
		return nil
	})
	catPath := catDir + "/catalog.json"
	cat := &catalogFile{Version: catalogVersion}
	steps := []catStep{{true, "a"}, {true, "b"}, {false, "a"}, {true, "c"}, {false, "b"}, {true, "a"}, {false, "c"}, {false, "a"}}
	for i, st := range steps {
		before := catNames(cat)
		cuts = cuts[:0]
		if st.create {
			rec := &Record{ID: fmt.Sprintf("id-%d", i), Name: st.name, Size: 1 << 20, Backend: "local", Path: catDir + "/vol-" + st.name + fmt.Sprint(i) + ".img"}
			d, err := local.On(fsys).Create(rec.Path, rec.Size) // Manager.Create: the file first
			if err != nil {
				return err
			}
			d.Close()
			cat.Volumes = append(cat.Volumes, rec)
			if err := saveCatalog(fsys, catPath, cat); err != nil {
				return err
			}
		} else {
			k := slices.IndexFunc(cat.Volumes, func(r *Record) bool { return r.Name == st.name })
			rec := cat.Volumes[k]
			cat.Volumes = slices.Delete(cat.Volumes, k, k+1)
			if err := saveCatalog(fsys, catPath, cat); err != nil { // Manager.Remove: the catalog first
				return err
			}
			if err := fsys.Remove(rec.Path); err != nil {
				return err
			}
			if err := local.On(fsys).SyncDir(rec.Path); err != nil {
				return err
			}
		}
		after := catNames(cat)
		cuts = append(cuts, mem.Crash()) // acknowledged: only after will do
		for j, c := range cuts {
			got, err := loadCatalog(c, catPath)
			if err != nil {
				return fmt.Errorf("step %d (%+v), crash %d: %w", i, st, j, err)
			}
			names := catNames(got)
			acked := j == len(cuts)-1
			if names != after && (acked || names != before) {
				return fmt.Errorf("step %d (%+v), crash %d (acknowledged %v): catalog holds [%s], want [%s] or, before the step returned, [%s]",
					i, st, j, acked, names, after, before)
			}
			for _, r := range got.Volumes {
				d, err := local.On(c).Open(r.Path)
				if err != nil {
					return fmt.Errorf("step %d (%+v), crash %d: catalog names %s: %w", i, st, j, r.Name, err)
				}
				size := d.Size()
				d.Close()
				if size != r.Size {
					return fmt.Errorf("step %d (%+v), crash %d: volume %s file is %d bytes, want %d", i, st, j, r.Name, size, r.Size)
				}
			}
		}
	}
	return nil
}

func catNames(c *catalogFile) string {
	var n []string
	for _, r := range c.Volumes {
		n = append(n, r.Name)
	}
	return strings.Join(n, " ")
}

func TestCatalogSurvivesCrashes(t *testing.T) {
	if err := catalogCrashes(nil); err != nil {
		t.Fatal(err)
	}
}

// TestCatalogCrashesHaveTeeth: skip one kind of fsync and a crash breaks
// the catalog or a volume it names, which the test above must catch.
func TestCatalogCrashesHaveTeeth(t *testing.T) {
	for _, tc := range []struct {
		name string
		skip func(path string, isDir bool) bool
	}{
		{"catalog temporary file fsync", func(p string, dir bool) bool { return !dir && strings.HasSuffix(p, ".tmp") }},
		{"directory fsyncs", func(p string, dir bool) bool { return dir }},
		{"volume file fsync", func(p string, dir bool) bool { return !dir && strings.HasSuffix(p, ".img") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := catalogCrashes(vfs.SkipSyncs(tc.skip))
			if err == nil {
				t.Fatalf("no crash state broke the rules with the %s skipped", tc.name)
			}
			t.Logf("caught: %v", err)
		})
	}
}
