package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// LoopFS makes a file system of type fstype ("xfs", "ext4", "btrfs") in
// a sparse image file of size bytes, loop-mounts it on a new directory and
// returns that directory; t.Cleanup unmounts it (register what uses the
// file system after calling LoopFS, so that it stops first). It needs root
// and mkfs.FSTYPE: the test is skipped without them, or failed when
// FERRY_TEST_REQUIRE_TOOLS=1.
func LoopFS(t testing.TB, fstype string, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("a loop-mounted %s file system needs root (%s=1 makes this a failure)", fstype, RequireEnv)
		}
		t.Skipf("a loop-mounted %s file system needs root; set %s=1 to make this a failure", fstype, RequireEnv)
	}
	mkfs := RequireTool(t, "mkfs."+fstype)
	mount := RequireTool(t, "mount")
	umount := RequireTool(t, "umount")
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, fstype+".img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"-q", img}
	if fstype == "ext4" {
		args = []string{"-q", "-F", img}
	}
	if out, err := exec.Command(mkfs, args...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.%s: %v\n%s", fstype, err, out)
	}
	if out, err := exec.Command(mount, "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount the %s image: %v\n%s", fstype, err, out)
	}
	t.Cleanup(func() {
		var out []byte
		var err error
		for range 50 { // a process that used it may take a moment to let go
			if out, err = exec.Command(umount, mnt).CombinedOutput(); err == nil || !strings.Contains(string(out), "busy") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("unmount %s: %v\n%s", mnt, err, out)
			exec.Command(umount, "-l", mnt).Run()
		}
	})
	return mnt
}

// LoopsOn lists the loop devices (/dev/loopN) whose backing file is under
// dir, deleted or not: what a test's cleanup must not leave attached.
func LoopsOn(dir string) []string {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var devs []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && strings.HasPrefix(string(b), filepath.Clean(dir)+"/") {
			devs = append(devs, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(f))))
		}
	}
	return devs
}
