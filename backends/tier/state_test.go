package tier

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ferry-io/ferry/internal/vfs"
)

// The journal replays puts, overlays and drops in order, ignores a torn
// last line, refuses records that name another chunk's key or a range
// past the chunk, and its records are exactly what Sprintf-formatted
// keys look like.
func TestLoadObjects(t *testing.T) {
	dir := t.TempDir()
	o := overlay{log: 0x2a, logOff: 4096, off: 512, length: 100}
	journal := putRecord(3, 7) + putRecord(5, 1) + ovlRecord(5, o) + "drop 3\n" + putRecord(9, 0xabc) +
		"put 12 chunks/000000000000000c/00000000" // torn: never fsynced
	if err := os.WriteFile(filepath.Join(dir, "objects.log"), []byte(journal), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := loadObjects(vfs.OS, dir, testChunk, newObjectMap())
	if err != nil {
		t.Fatal(err)
	}
	if want := map[int64]uint64{5: 1, 9: 0xabc}; !maps.Equal(m.base, want) {
		t.Fatalf("bases %v, want %v", m.base, want)
	}
	if got := m.overlays[5]; !slices.Equal(got, []overlay{o}) || m.n != 1 {
		t.Fatalf("overlays %v (%d)", got, m.n)
	}
	if got, want := putRecord(9, 0xabc), "put 9 "+chunkKey(9, 0xabc)+"\n"; got != want {
		t.Fatalf("put record %q, want %q", got, want)
	}
	if got, want := ovlRecord(5, o), "ovl 5 "+logKey(0x2a)+" 4096 512 100\n"; got != want {
		t.Fatalf("ovl record %q, want %q", got, want)
	}
	// Rewritten, the journal loads the same.
	if err := rewriteObjects(vfs.OS, dir, m); err != nil {
		t.Fatal(err)
	}
	again, err := loadObjects(vfs.OS, dir, testChunk, newObjectMap())
	if err != nil || !maps.Equal(again.base, m.base) || !slices.Equal(again.overlays[5], m.overlays[5]) {
		t.Fatalf("after rewrite: %v %v %v", err, again.base, again.overlays)
	}
	for _, bad := range []string{
		"put 4 " + chunkKey(5, 1) + "\n",                   // another chunk's key
		"put 4 chunks/0000000000000004/00000000000000zz\n", // not hex
		"ovl 4 " + logKey(1) + " 0 65530 10\n",             // past the chunk
		"ovl 4 " + logKey(1) + " 0 0 0\n",                  // empty
		"ovl 4 logs/1 0 0 10\n",                            // short version
		"ovl 4 " + logKey(1) + " 4294967296 0 10\n",        // log offset too large
	} {
		os.WriteFile(filepath.Join(dir, "objects.log"), []byte(bad), 0o600)
		if _, err := loadObjects(vfs.OS, dir, testChunk, newObjectMap()); err == nil || !strings.Contains(err.Error(), "objects.log") {
			t.Errorf("%q: %v, want an objects.log error", strings.TrimSpace(bad), err)
		}
	}
}

// Whatever the journal holds, loading it fails or succeeds without
// panicking, and what loads survives a rewrite unchanged.
func FuzzLoadObjects(f *testing.F) {
	f.Add([]byte(putRecord(1, 2) + ovlRecord(1, overlay{log: 3, off: 10, length: 20}) + "drop 1\n"))
	f.Add([]byte("put 0 chunks/0000000000000000/0000000000000001\nput"))
	f.Add([]byte("ovl 7 logs/00000000000000ff 1 2 3\n\n  \nbogus\n"))
	f.Fuzz(func(t *testing.T, journal []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "objects.log"), journal, 0o600); err != nil {
			t.Fatal(err)
		}
		m, err := loadObjects(vfs.OS, dir, testChunk, newObjectMap())
		if err != nil {
			return
		}
		if err := rewriteObjects(vfs.OS, dir, m); err != nil {
			t.Fatal(err)
		}
		again, err := loadObjects(vfs.OS, dir, testChunk, newObjectMap())
		if err != nil {
			t.Fatalf("rewritten journal does not load: %v", err)
		}
		if !maps.Equal(again.base, m.base) || again.n != m.n {
			t.Fatalf("rewrite changed the map: %v/%d, was %v/%d", again.base, again.n, m.base, m.n)
		}
		for idx, ovs := range m.overlays {
			if !slices.Equal(again.overlays[idx], ovs) {
				t.Fatalf("chunk %d overlays %v, were %v", idx, again.overlays[idx], ovs)
			}
		}
	})
}
