package local

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/backends/device"
)

var _ device.Viewer = (*Device)(nil)

// mapping is a read-only shared mapping of a volume's file, made on the
// first View and kept while the device's size stays the same. It is
// unmapped when the device has let it go (Resize, Close) and the last view
// of it is done.
type mapping struct {
	b    []byte
	refs atomic.Int64 // views in use, plus one while it is the device's
	done func()       // release, made once so a view allocates nothing
}

func (m *mapping) release() {
	if m.refs.Add(-1) == 0 {
		unix.Munmap(m.b)
	}
}

// View implements device.Viewer from a shared mapping of the file. The
// bytes are lent only when mincore(2) says every page of them is in the
// page cache: a page that is not would be read from the disk inside the
// caller's send, which could then only fail (EFAULT), not report the disk
// error.
func (d *Device) View(off int64, n int) ([]byte, func(), bool) {
	if n <= 0 {
		return nil, nil, false
	}
	d.mu.RLock()
	m := d.mapping
	if m == nil {
		d.mu.RUnlock()
		if m = d.mapFile(); m == nil {
			return nil, nil, false
		}
		d.mu.RLock()
	}
	if d.closed || m != d.mapping || device.CheckRange(d.size, off, int64(n)) != nil {
		d.mu.RUnlock()
		return nil, nil, false
	}
	m.refs.Add(1)
	d.mu.RUnlock()
	b := m.b[off : off+int64(n)]
	if !inCache(m.b, off, n) {
		m.release()
		return nil, nil, false
	}
	return b, m.done, true
}

// mapFile returns the device's mapping, making it if there is none. It
// returns nil when the file cannot be mapped (a device without a
// descriptor, an empty one, or mmap refused: the address space is
// finite), and does not try again until the size changes.
func (d *Device) mapFile() *mapping {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mapping != nil || d.closed || d.fd < 0 || d.noMap || d.size <= 0 || int64(int(d.size)) != d.size {
		return d.mapping
	}
	b, err := unix.Mmap(d.fd, 0, int(d.size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		d.noMap = true
		return nil
	}
	m := &mapping{b: b}
	m.refs.Store(1)
	m.done = m.release
	d.mapping = m
	return m
}

// unmap lets the device's mapping go (its views stay valid until done).
// Called with d.mu held for writing, when the size changes or the device
// closes.
func (d *Device) unmap() {
	if d.mapping != nil {
		d.mapping.release()
		d.mapping = nil
	}
	d.noMap = false
}

var page = int64(unix.Getpagesize())

// residentChunk is the most pages one mincore(2) call asks about: its
// vector lives on the stack.
const residentChunk = 256

// inCache reports whether every page under b[off:off+n] is in the page
// cache. b starts on a page boundary (it is a whole mapping).
func inCache(b []byte, off int64, n int) bool {
	start := off &^ (page - 1)
	end := off + int64(n)
	var vec [residentChunk]byte
	for start < end {
		l := min(end-start, residentChunk*page)
		pages := int((l + page - 1) / page)
		if mincore(b[start:start+l], vec[:pages]) != nil {
			return false
		}
		for _, v := range vec[:pages] {
			if v&1 == 0 {
				return false
			}
		}
		start += l
	}
	return true
}

// mincore(2): vec[i]&1 says whether the page under b's i-th page is in the
// page cache. b starts on a page boundary; vec has a byte per page.
func mincore(b, vec []byte) error {
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0])))
	if e != 0 {
		return e
	}
	return nil
}
