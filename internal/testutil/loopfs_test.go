package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestLoopsOn(t *testing.T) {
	if os.Geteuid() != 0 {
		Missing(t, "loop devices need root")
	}
	losetup := RequireTool(t, "losetup")
	dir := t.TempDir()
	img := filepath.Join(dir, "x.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(losetup, "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v\n%s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command(losetup, "-d", dev).Run()
	if got := LoopsOn(dir); !slices.Equal(got, []string{dev}) {
		t.Fatalf("LoopsOn(%s) = %v, want [%s]", dir, got, dev)
	}
	if got := LoopsOn(dir + "x"); len(got) != 0 {
		t.Fatalf("LoopsOn of a sibling directory = %v", got)
	}
	if out, err := exec.Command(losetup, "-d", dev).CombinedOutput(); err != nil {
		t.Fatalf("losetup -d: %v\n%s", err, out)
	}
	if got := LoopsOn(dir); len(got) != 0 {
		t.Fatalf("after detaching: %v", got)
	}
}
