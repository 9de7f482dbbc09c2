package nbd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
)

// viewDevice lends views (device.Viewer) of copies of its data, except at
// offsets in refuse, and counts the views lent and done.
type viewDevice struct {
	device.Device
	refuse     map[int64]bool
	lent, done *atomic.Int64
}

func (d viewDevice) View(off int64, n int) ([]byte, func(), bool) {
	if d.refuse[off] || device.CheckRange(d.Size(), off, int64(n)) != nil {
		return nil, nil, false
	}
	b := make([]byte, n)
	if err := d.ReadAt(context.Background(), b, off); err != nil {
		return nil, nil, false
	}
	d.lent.Add(1)
	return b, func() { d.done.Add(1) }, true
}

// Large reads are answered from the device's views where it lends them,
// from a buffer where it does not, and small ones always from a buffer;
// every view is done once, and the payload budget is given back for each
// (a leak would stall the reads past MaxInflightBytes).
func TestReadsFromViews(t *testing.T) {
	const size = 8 << 20
	dev := viewDevice{mem.New(size), map[int64]bool{5 << 20: true}, new(atomic.Int64), new(atomic.Int64)}
	data := pattern(size, 3)
	if err := dev.WriteAt(t.Context(), data, 0); err != nil {
		t.Fatal(err)
	}
	ts := startServerConfig(t, map[string]device.Device{"v": dev}, Config{MaxInflightBytes: maxPayload})
	views := int64(0)
	for _, structured := range []bool{false, true} {
		rc := dialRaw(t, ts.addr)
		rc.attach("v", structured)
		for i, r := range []struct {
			off  int64
			n    int
			view bool
		}{
			{0, 4 << 10, false},
			{4096, viewedRead - 1, false},
			{12345, viewedRead, true},
			{1 << 20, 1 << 20, true},
			{2 << 20, 3 << 20, true},
			{5 << 20, 1 << 20, false}, // refused: read into a buffer
			{size - 1<<20, 1 << 20, true},
		} {
			got := rc.do(cmdRead, 0, uint64(r.off), uint32(r.n), nil)
			if got.errno != 0 || !bytes.Equal(got.data, data[r.off:r.off+int64(r.n)]) {
				t.Fatalf("structured=%v read %d (%d bytes at %d): errno %d, data equal %v", structured, i, r.n, r.off, got.errno, bytes.Equal(got.data, data[r.off:r.off+int64(r.n)]))
			}
			if r.view {
				views++
			}
		}
		if got := rc.do(cmdRead, 0, size-1<<20, 2<<20, nil); got.errno != errInval {
			t.Fatalf("read past the end: errno %d, want EINVAL", got.errno)
		}
		// 48 MiB of reads, more than MaxInflightBytes.
		for range 48 {
			if got := rc.do(cmdRead, 0, 1<<20, 1<<20, nil); got.errno != 0 || !bytes.Equal(got.data, data[1<<20:2<<20]) {
				t.Fatal("a repeated 1 MiB read failed")
			}
			views++
		}
	}
	ts.stop(t)
	if lent, done := dev.lent.Load(), dev.done.Load(); lent != views || done != lent {
		t.Fatalf("%d views lent and %d done, want %d each", lent, done, views)
	}
}

// faultDevice lends a view of a file mapping whose file was then cut
// short: only the kernel may touch it, and its copy fails with EFAULT.
type faultDevice struct {
	device.Device
	b []byte
}

func (d faultDevice) View(off int64, n int) ([]byte, func(), bool) {
	return d.b[:n], func() {}, true
}

// A view whose pages cannot be read (evicted, then a disk error, or the
// file cut short) fails the reply's write; the connection closes, and the
// client never gets a whole reply of wrong data.
func TestViewThatFaultsClosesTheConnection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, bytes.Repeat([]byte{1}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := unix.Mmap(int(f.Fd()), 0, 1<<20, unix.PROT_READ, unix.MAP_SHARED)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	if err := os.Truncate(path, 0); err != nil { // every page of b now faults
		t.Fatal(err)
	}
	dev := faultDevice{mem.New(1 << 20), b}
	ts := startServer(t, map[string]device.Device{"v": dev})
	for _, structured := range []bool{false, true} {
		rc := dialRaw(t, ts.addr)
		rc.attach("v", structured)
		rc.send(cmdRead, 0, 7, 0, 1<<20, nil)
		rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(rc.c)
		if err != nil && !errors.Is(err, unix.ECONNRESET) {
			t.Fatalf("structured=%v: reading the reply: %v (the connection was not closed)", structured, err)
		}
		if len(got) >= simpleReplyHeaderSize+1<<20 {
			t.Fatalf("structured=%v: %d bytes came back, a whole reply", structured, len(got))
		}
	}
}
