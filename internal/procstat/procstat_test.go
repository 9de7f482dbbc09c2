package procstat

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRead(t *testing.T) {
	f, err := Of(os.Getpid())
	if err != nil || len(f) < 39 || f[0] != "R" {
		t.Fatalf("Of(self) = %q, %v", f, err)
	}
	p := filepath.Join(t.TempDir(), "stat")
	os.WriteFile(p, []byte("42 (a) b (c)) S 1 2\n"), 0o600)
	if f, err := Read(p); err != nil || len(f) != 3 || f[0] != "S" || f[2] != "2" {
		t.Errorf("Read of a command name with spaces and parentheses = %q, %v", f, err)
	}
	os.WriteFile(p, []byte("garbage"), 0o600)
	if _, err := Read(p); err == nil {
		t.Error("Read accepted a file without a command name")
	}
}
