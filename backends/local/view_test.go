package local_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/backends/local"
)

// mappings counts the process's mappings of path.
func mappings(t *testing.T, path string) int {
	t.Helper()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(maps), path)
}

// evict drops path's clean pages from the page cache.
func evict(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

// A view is lent only for data in the page cache: data that would have to
// come from the disk is left to ReadAt, which reports a disk error as an
// error instead of failing the caller's send.
func TestViewOnlyFromPageCache(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vol.img")
	d, err := local.Create(path, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := t.Context()
	data := bytes.Repeat([]byte("ferry!"), 1<<20/6+1)[:1<<20]
	if err := d.WriteAt(ctx, data, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	evict(t, path)
	if _, _, ok := d.View(1<<20, 1<<20); ok {
		t.Fatal("View lent a range the page cache had dropped")
	}
	buf := make([]byte, 1<<20)
	if err := d.ReadAt(ctx, buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	b, done, ok := d.View(1<<20, 1<<20)
	if !ok {
		t.Fatal("View refused a range ReadAt had just read into the page cache")
	}
	if !bytes.Equal(b, data) {
		t.Fatal("view differs from what was written")
	}
	done()
	// Partly cached: one page past what was read is not.
	if _, _, ok := d.View(1<<20, 1<<20+4096); ok {
		t.Fatal("View lent a range with a page not in the page cache")
	}
}

// The mapping is let go on Resize and Close, and unmapped once the last
// view of it is done; lending a view allocates nothing.
func TestViewMappingLifetime(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vol.img")
	d, err := local.Create(path, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	buf := make([]byte, 4<<20)
	if err := d.WriteAt(ctx, bytes.Repeat([]byte{7}, 4<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := d.ReadAt(ctx, buf, 0); err != nil {
		t.Fatal(err)
	}
	if n := mappings(t, path); n != 0 {
		t.Fatalf("%d mappings before any view", n)
	}
	allocs := testing.AllocsPerRun(100, func() {
		_, done, ok := d.View(4096, 1<<20)
		if !ok {
			t.Fatal("View refused cached data")
		}
		done()
	})
	if allocs != 0 {
		t.Errorf("a view allocates %.1f times", allocs)
	}
	if n := mappings(t, path); n != 1 {
		t.Fatalf("%d mappings after views, want 1", n)
	}
	if err := d.Resize(ctx, 8<<20); err != nil {
		t.Fatal(err)
	}
	if n := mappings(t, path); n != 0 {
		t.Fatalf("%d mappings after Resize with no view in use, want 0", n)
	}
	b, done, ok := d.View(0, 4<<20)
	if !ok {
		t.Fatal("View refused cached data after Resize")
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if n := mappings(t, path); n != 1 {
		t.Fatalf("%d mappings after Close with a view in use, want 1", n)
	}
	if !bytes.Equal(b, bytes.Repeat([]byte{7}, 4<<20)) {
		t.Fatal("a view in use changed at Close")
	}
	done()
	if n := mappings(t, path); n != 0 {
		t.Fatalf("%d mappings after the last view was done, want 0", n)
	}
}
