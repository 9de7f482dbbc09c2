package guest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ferry-io/ferry/internal/testutil"
)

// TestCPIOUnpacks checks the archive with GNU cpio: every file and parent
// directory is there with its bytes and mode.
func TestCPIOUnpacks(t *testing.T) {
	testutil.RequireTool(t, "cpio")
	files := []File{
		{Path: "/ferry-test/run", Mode: 0o755, Data: []byte("#!/bin/sh\necho hi\n")},
		{Path: "/usr/local/bin/odd", Data: bytes.Repeat([]byte{7}, 4097)},
		{Path: "/empty"},
	}
	var b bytes.Buffer
	if err := writeCPIO(&b, files); err != nil {
		t.Fatal(err)
	}
	if b.Len()%4 != 0 {
		t.Errorf("archive length %d not 4-aligned", b.Len())
	}
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir, cmd.Stdin = dir, &b
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, out)
	}
	for _, f := range files {
		p := filepath.Join(dir, f.Path)
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, f.Data) {
			t.Errorf("%s: %d bytes, want %d", f.Path, len(got), len(f.Data))
		}
		st, _ := os.Stat(p)
		want := os.FileMode(f.Mode)
		if want == 0 {
			want = 0o644
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", f.Path, st.Mode().Perm(), want)
		}
	}
	for _, d := range []string{"ferry-test", "usr/local/bin"} {
		if st, err := os.Stat(filepath.Join(dir, d)); err != nil || !st.IsDir() {
			t.Errorf("directory %s: %v", d, err)
		}
	}
}

func TestCPIORefusesRelativePaths(t *testing.T) {
	for _, p := range []string{"run", "/a/../b", "/"} {
		if err := writeCPIO(&bytes.Buffer{}, []File{{Path: p}}); err == nil {
			t.Errorf("path %q accepted", p)
		}
	}
}
