package local

import (
	"context"
	"fmt"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// directAlign is the alignment O_DIRECT asks of a write's memory, offset
// and length (the largest logical block size in use).
const directAlign = 4096

// WriteDirect writes p at off like WriteAt, but past the page cache
// (O_DIRECT) where it can: for data written once and read later if at
// all (a cache filled ahead of its readers), whose copy into the page
// cache and later writeback would cost more CPU than the write itself.
// It goes through the page cache like WriteAt when p or off is not
// aligned, the file has no descriptor, or its file system refuses
// O_DIRECT. Like WriteAt, it makes nothing durable.
func (d *Device) WriteDirect(ctx context.Context, p []byte, off int64) error {
	if len(p) == 0 || d.fd < 0 || off%directAlign != 0 || len(p)%directAlign != 0 ||
		uintptr(unsafe.Pointer(&p[0]))%directAlign != 0 {
		return d.WriteAt(ctx, p, off)
	}
	if err := d.begin(ctx, "write", off, int64(len(p))); err != nil {
		return err
	}
	if d.readOnly {
		d.mu.RUnlock()
		return d.WriteAt(ctx, p, off) // its error
	}
	// A second descriptor on the same file, so the flag does not change
	// how the device's own descriptor reads and writes.
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(d.fd), unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	d.mu.RUnlock()
	if err != nil {
		return d.WriteAt(ctx, p, off) // O_DIRECT refused (EINVAL), or no /proc
	}
	defer unix.Close(fd)
	for len(p) > 0 {
		n, err := unix.Pwrite(fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EINVAL && n <= 0 {
			return d.WriteAt(ctx, p, off) // an alignment this file system refuses
		}
		if err != nil {
			return fmt.Errorf("local write at %d: %w", off, mapErrno(err))
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}
