package docker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStateRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	st, err := loadState(path)
	if err != nil || len(st.Volumes) != 0 {
		t.Fatalf("missing file: %+v %v", st, err)
	}
	v := &volumeState{Gateway: "d-x-1", FSType: "ext4", Mounts: map[string]int{}}
	v.addRef("a")
	v.addRef("a") // Docker reuses IDs: a count, not a set
	v.addRef("b")
	v.Attachment = &Attachment{Method: MethodFUSE, Device: "/dev/loop7", FUSEDir: "/x", HelperPID: 42, HelperStart: 99}
	st.Volumes["X"] = v
	st.HostID = "h1"
	if err := st.save(path); err != nil {
		t.Fatal(err)
	}
	// No temporary file is left behind.
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Fatalf("directory holds %d entries", len(ents))
	}
	st2, err := loadState(path)
	if err != nil {
		t.Fatal(err)
	}
	v2 := st2.Volumes["X"]
	if v2 == nil || v2.refs() != 3 || v2.Mounts["a"] != 2 || *v2.Attachment != *v.Attachment || st2.HostID != "h1" {
		t.Fatalf("round trip: %+v", v2)
	}
	if !v2.dropRef("a") || v2.refs() != 2 || !v2.dropRef("a") || v2.dropRef("a") || !v2.dropRef("b") || v2.refs() != 0 {
		t.Fatalf("dropRef: %+v", v2.Mounts)
	}
	if len(v2.Mounts) != 0 {
		t.Fatalf("zero counts kept: %v", v2.Mounts)
	}
}

func TestStateDamagedOrNewer(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	os.WriteFile(p, []byte("{not json"), 0o600)
	if _, err := loadState(p); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("damaged: %v", err)
	}
	os.WriteFile(p, []byte(`{"version": 9}`), 0o600)
	if _, err := loadState(p); err == nil || !strings.Contains(err.Error(), "version 9") {
		t.Fatalf("newer: %v", err)
	}
}

func TestLockStateDir(t *testing.T) {
	dir := t.TempDir()
	unlock, err := LockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LockStateDir(dir); err == nil || !strings.Contains(err.Error(), "another ferry docker-plugin") {
		t.Fatalf("second lock: %v", err)
	}
	unlock()
	unlock2, err := LockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	unlock2()
}

func TestUnescapeMount(t *testing.T) {
	if got := unescapeMount(`/a\040b\011c`); got != "/a b\tc" {
		t.Fatalf("%q", got)
	}
}
