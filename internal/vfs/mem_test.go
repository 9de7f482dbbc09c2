package vfs_test

import (
	"errors"
	"io/fs"
	"os"
	"testing"

	"github.com/ferry-io/ferry/internal/vfs"
)

func write(t *testing.T, fsys vfs.FS, name, data string, sync bool) {
	t.Helper()
	f, err := fsys.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func syncDir(t *testing.T, fsys vfs.FS, dir string) {
	t.Helper()
	if err := vfs.SyncDir(fsys, dir); err != nil {
		t.Fatal(err)
	}
}

func content(t *testing.T, fsys vfs.FS, name string) (string, bool) {
	t.Helper()
	b, err := vfs.ReadFile(fsys, name)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b), true
}

func TestCrashKeepsOnlySynced(t *testing.T) {
	m := vfs.NewCrashableMem()
	if err := m.MkdirAll("/d", 0o700); err != nil {
		t.Fatal(err)
	}
	syncDir(t, m, "/")
	write(t, m, "/d/synced", "one", true)
	write(t, m, "/d/unsynced", "two", false)
	write(t, m, "/d/nodir", "three", true) // its name is not synced below
	syncDir(t, m, "/d")
	write(t, m, "/d/late", "four", true) // created after the directory sync
	write(t, m, "/d/synced", "ONE+", false)

	c := m.Crash()
	if s, ok := content(t, c, "/d/synced"); !ok || s != "one" {
		t.Errorf("synced file after crash = %q, %v; want its synced content", s, ok)
	}
	if s, ok := content(t, c, "/d/unsynced"); !ok || s != "" {
		t.Errorf("unsynced file after crash = %q, %v; want it empty (name synced, data not)", s, ok)
	}
	if _, ok := content(t, c, "/d/late"); ok {
		t.Error("a file whose directory was not synced after its creation survived")
	}
	// The original is untouched.
	if s, _ := content(t, m, "/d/synced"); s != "ONE+" {
		t.Errorf("crash changed the original: %q", s)
	}
}

func TestCrashUndoesUnsyncedRenameAndRemove(t *testing.T) {
	m := vfs.NewCrashableMem()
	write(t, m, "a", "A", true)
	write(t, m, "b", "B", true)
	syncDir(t, m, "/")
	if err := m.Rename("a", "b"); err != nil {
		t.Fatal(err)
	}
	write(t, m, "c", "C", true)
	if err := m.Remove("c"); err != nil {
		t.Fatal(err)
	}
	c := m.Crash()
	if s, _ := content(t, c, "a"); s != "A" {
		t.Errorf("a = %q after an unsynced rename", s)
	}
	if s, _ := content(t, c, "b"); s != "B" {
		t.Errorf("b = %q after an unsynced rename", s)
	}
	syncDir(t, m, "/")
	c = m.Crash()
	if _, ok := content(t, c, "a"); ok {
		t.Error("a survived a synced rename")
	}
	if s, _ := content(t, c, "b"); s != "A" {
		t.Errorf("b = %q after a synced rename, want A", s)
	}
	// A crashed file system crashes again the same way.
	if s, _ := content(t, c.Crash(), "b"); s != "A" {
		t.Errorf("b = %q after a second crash", s)
	}
}

func TestMemFileSemantics(t *testing.T) {
	m := vfs.NewCrashableMem()
	f, err := m.OpenFile("f", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.OpenFile("f", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); !errors.Is(err, fs.ErrExist) {
		t.Errorf("O_EXCL on an existing file: %v", err)
	}
	if _, err := m.OpenFile("nope/f", os.O_RDWR|os.O_CREATE, 0o600); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("create in a missing directory: %v", err)
	}
	if err := f.Truncate(10); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("xy"), 8); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 12)
	n, err := f.ReadAt(p, 0)
	if n != 10 || err == nil || string(p[8:10]) != "xy" {
		t.Errorf("ReadAt = %d, %v, %q", n, err, p)
	}
	if err := f.Truncate(4); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(9); err != nil {
		t.Fatal(err)
	}
	if n, _ := f.ReadAt(p[:9], 0); n != 9 || string(p[8:9]) != "\x00" {
		t.Errorf("a truncated tail grew back as %q", p[:9])
	}
	st, err := f.Stat()
	if err != nil || st.Size() != 9 || st.Name() != "f" {
		t.Errorf("Stat = %v, %v", st, err)
	}
	f.Close()
	if _, err := f.WriteAt([]byte("z"), 0); err == nil {
		t.Error("write after Close succeeded")
	}
	if err := m.Remove("f"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Stat("f"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat of a removed file: %v", err)
	}
	ro, err := m.OpenFile("/", os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ro.Write([]byte("x")); err == nil {
		t.Error("write to a directory succeeded")
	}
	ro.Close()
}

func TestInjectFailsAndSkips(t *testing.T) {
	m := vfs.NewCrashableMem()
	boom := errors.New("boom")
	fsys := vfs.Inject(m, func(op vfs.Op, path string, isDir bool) error {
		switch {
		case op == vfs.OpSync && path == "bad":
			return boom
		case op == vfs.OpSync && isDir:
			return vfs.ErrSkipSync
		}
		return nil
	})
	f, err := fsys.OpenFile("bad", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); !errors.Is(err, boom) {
		t.Errorf("Sync = %v, want the injected error", err)
	}
	f.Close()
	write(t, fsys, "good", "g", true)
	syncDir(t, fsys, "/") // skipped
	if _, ok := content(t, m.Crash(), "good"); ok {
		t.Error("a skipped directory sync made a name durable")
	}
	if _, isFd := f.(vfs.FdFile); isFd {
		t.Error("an injected file claims a descriptor")
	}
}

func TestOSFilesHaveDescriptors(t *testing.T) {
	f, err := vfs.CreateTemp(vfs.OS, t.TempDir(), "x-*")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, ok := f.(*os.File); !ok {
		t.Errorf("vfs.OS hands out %T, want *os.File", f)
	}
	if _, ok := f.(vfs.FdFile); !ok {
		t.Error("an OS file is not an FdFile")
	}
}
