package atomicfile

import (
	"errors"
	"strings"
	"testing"

	"github.com/ferry-io/ferry/internal/vfs"
)

// TestCrashLeavesOldOrNew replaces a file on a crashable file system and
// cuts the power after each step: what survives is the old content before
// WriteFile returns, the new one after, never a torn or empty file.
func TestCrashLeavesOldOrNew(t *testing.T) {
	m := vfs.NewCrashableMem()
	if err := m.MkdirAll("/data", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := vfs.SyncDir(m, "/"); err != nil {
		t.Fatal(err)
	}
	f := On(m)
	for i, v := range []string{"first", "second", "third"} {
		if err := f.WriteFile("/data/state", []byte(v)); err != nil {
			t.Fatal(err)
		}
		c := m.Crash()
		b, err := vfs.ReadFile(c, "/data/state")
		if err != nil || string(b) != v {
			t.Fatalf("write %d: after a crash the file holds %q (%v), want %q", i, b, err, v)
		}
		ents, _ := c.ReadDir("/data")
		if len(ents) != 1 {
			t.Errorf("write %d: a crash left %d files, want 1 (no temporary file)", i, len(ents))
		}
	}
}

// TestCrashCatchesMissingSync proves the test above has teeth: with the
// temporary file's fsync or the directory's fsync skipped, a crash loses
// the acknowledged content.
func TestCrashCatchesMissingSync(t *testing.T) {
	for _, tc := range []struct {
		name string
		dir  bool
		want string // what survives
	}{
		{"file", false, ""},    // renamed into place, its data never synced
		{"dir", true, "first"}, // the rename never synced
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := vfs.NewCrashableMem()
			if err := On(m).WriteFile("/state", []byte("first")); err != nil {
				t.Fatal(err)
			}
			skip := vfs.Inject(m, vfs.SkipSyncs(func(path string, isDir bool) bool {
				return isDir == tc.dir && (isDir || strings.HasSuffix(path, ".tmp"))
			}))
			if err := On(skip).WriteFile("/state", []byte("second")); err != nil {
				t.Fatal(err)
			}
			b, err := vfs.ReadFile(m.Crash(), "/state")
			if err != nil || string(b) != tc.want {
				t.Fatalf("with the %s sync skipped a crash leaves %q (%v), want %q", tc.name, b, err, tc.want)
			}
		})
	}
}

// TestSyncErrorIsReported: a failing fsync of the temporary file or of
// the directory is WriteFile's error; before the rename the old content
// stays.
func TestSyncErrorIsReported(t *testing.T) {
	eio := errors.New("injected EIO")
	for _, dir := range []bool{false, true} {
		m := vfs.NewCrashableMem()
		if err := On(m).WriteFile("/state", []byte("old")); err != nil {
			t.Fatal(err)
		}
		failing := vfs.Inject(m, func(op vfs.Op, path string, isDir bool) error {
			if op == vfs.OpSync && isDir == dir {
				return eio
			}
			return nil
		})
		if err := On(failing).WriteFile("/state", []byte("new")); !errors.Is(err, eio) {
			t.Fatalf("directory %v: WriteFile with a failing fsync = %v, want the injected error", dir, err)
		}
		if !dir {
			if b, _ := vfs.ReadFile(m, "/state"); string(b) != "old" {
				t.Fatalf("a failed write replaced the file: %q", b)
			}
			if ents, _ := m.ReadDir("/"); len(ents) != 1 {
				t.Errorf("a failed write left %d files, want 1", len(ents))
			}
		}
	}
}
