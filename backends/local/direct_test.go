package local

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// alignedBuf returns n bytes of pattern b whose memory starts on a
// directAlign boundary.
func alignedBuf(n int, b byte) []byte {
	raw := make([]byte, n+directAlign)
	skip := (directAlign - int(uintptr(unsafe.Pointer(&raw[0]))%directAlign)) % directAlign
	p := raw[skip : skip+n]
	for i := range p {
		p[i] = b + byte(i/4096)
	}
	return p
}

// resident counts the pages of path's range [off, off+n) in the page cache.
func resident(t *testing.T, path string, off, n int64) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), off, int(n), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (n+4095)/4096)
	if err := mincore(m, vec); err != nil {
		t.Fatal(err)
	}
	c := 0
	for _, v := range vec {
		c += int(v & 1)
	}
	return c
}

// WriteDirect writes what WriteAt would, past the page cache when it can,
// and through it when the buffer or offset is not aligned; a direct write
// over data a buffered write left in the page cache is what reads see.
func TestWriteDirect(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "c")
	d, err := CreateScratch(path, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	want := make([]byte, 4<<20)
	// Buffered data first, then a direct write over half of it.
	old := bytes.Repeat([]byte{0xee}, 2<<20)
	if err := d.WriteAt(ctx, old, 0); err != nil {
		t.Fatal(err)
	}
	copy(want, old)
	p := alignedBuf(1<<20, 1)
	if err := d.WriteDirect(ctx, p, 1<<20); err != nil {
		t.Fatal(err)
	}
	copy(want[1<<20:], p)
	// Past the page cache: a file system that takes O_DIRECT (the test's
	// ext4 or xfs; tmpfs keeps everything resident) holds none of it.
	var st unix.Statfs_t
	if unix.Statfs(path, &st) == nil && st.Type != unix.TMPFS_MAGIC {
		q := alignedBuf(1<<20, 9)
		if err := d.WriteDirect(ctx, q, 3<<20); err != nil {
			t.Fatal(err)
		}
		copy(want[3<<20:], q)
		if n := resident(t, path, 3<<20, 1<<20); n != 0 {
			t.Errorf("%d pages of a direct write are in the page cache", n)
		}
	}
	// Unaligned memory, offset and length go through the page cache.
	u := alignedBuf(8192+1, 5)[1:]
	if err := d.WriteDirect(ctx, u, 2<<20+512); err != nil {
		t.Fatal(err)
	}
	copy(want[2<<20+512:], u)
	got := make([]byte, 4<<20)
	if err := d.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the file differs from what was written")
	}
	ro, err := OpenReadOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.WriteDirect(ctx, p, 0); err == nil {
		t.Fatal("a direct write to a read-only device succeeded")
	}
}
