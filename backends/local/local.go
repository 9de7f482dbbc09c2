// Package local stores a volume as one sparse file on a local file system.
//
// Thin provisioning comes from the file system: unwritten ranges are holes,
// Trim punches holes (FALLOC_FL_PUNCH_HOLE), WriteZeroes without mayTrim
// uses FALLOC_FL_ZERO_RANGE, and Extents reads the hole map with
// SEEK_DATA/SEEK_HOLE. Flush is fdatasync. Reads and writes are pread and
// pwrite straight on the file, so they are safe for concurrent use and add
// no copy; Resize takes the write side of a RWMutex that every other
// operation holds for reading.
//
// Snapshots and clones are reflinks (reflink.go, snapshot.go): files that
// share the volume's blocks until either is written. A snapshot is opened
// with OpenReadOnly.
//
// The file system is a seam (internal/vfs): Create, Open and the rest use
// the operating system's; On(fsys) gives the same functions on another one
// (a crashable in-memory file system in tests). pread, pwrite, fdatasync,
// fallocate, SEEK_DATA/SEEK_HOLE, fstat and FICLONE need a descriptor
// (vfs.FdFile); on a file without one, reads, writes and Flush go through
// vfs.File, Trim and WriteZeroes write zeroes, Extents reports all data,
// Stats reports the whole size allocated, and reflinks fail with
// ErrNoReflink.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/internal/vfs"
)

// Device is a volume stored in one sparse file.
type Device struct {
	mu     sync.RWMutex // held for reading by I/O, for writing by Resize and Close
	f      vfs.File
	fd     int // f's descriptor, or -1 if it has none (not vfs.FdFile)
	fsys   vfs.FS
	path   string
	size   int64
	closed bool
	// readOnly: opened with OpenReadOnly (a snapshot); every write fails
	// with ErrReadOnly.
	readOnly bool
	// The file's mapping for View (view.go), made on the first; noMap:
	// mmap failed, not tried again until the size changes. Both under mu.
	mapping *mapping
	noMap   bool
}

var (
	_ device.Device   = (*Device)(nil)
	_ device.Statter  = (*Device)(nil)
	_ device.ReadOnly = (*Device)(nil)
)

// Files creates and opens volume files on one file system (On).
type Files struct{ fsys vfs.FS }

// On returns the functions of this package on the file system fsys (nil:
// the operating system's).
func On(fsys vfs.FS) Files { return Files{fsys: vfs.Or(fsys)} }

// Create makes a new sparse file of size bytes at path. It fails if the
// file exists. The file and its directory entry are synced before it
// returns.
func Create(path string, size int64) (*Device, error) { return On(nil).Create(path, size) }

// CreateScratch creates a file of size bytes like Create but without
// making it durable: for cache files whose owner syncs them (and their
// directory) when it needs them to survive a crash.
func CreateScratch(path string, size int64) (*Device, error) {
	return On(nil).CreateScratch(path, size)
}

// Open opens an existing volume file; its size is the file's size.
func Open(path string) (*Device, error) { return On(nil).Open(path) }

// OpenReadOnly opens an existing file as a device that refuses every
// write with ErrReadOnly (device.ReadOnly): a snapshot's export.
func OpenReadOnly(path string) (*Device, error) { return On(nil).OpenReadOnly(path) }

// SyncDir fsyncs the directory holding path, so a create, rename or remove
// of path is durable.
func SyncDir(path string) error { return On(nil).SyncDir(path) }

// Create is the package's Create on fs.
func (fs Files) Create(path string, size int64) (*Device, error) {
	if size < 0 {
		return nil, fmt.Errorf("create %s: negative size: %w", path, device.ErrOutOfRange)
	}
	f, err := fs.fsys.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create volume file: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		fs.fsys.Remove(path)
		return nil, fmt.Errorf("create volume file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		fs.fsys.Remove(path)
		return nil, fmt.Errorf("create volume file %s: %w", path, err)
	}
	if err := fs.SyncDir(path); err != nil {
		f.Close()
		return nil, err
	}
	return fs.newDevice(f, path, size), nil
}

// CreateScratch is the package's CreateScratch on fs.
func (fs Files) CreateScratch(path string, size int64) (*Device, error) {
	f, err := fs.fsys.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		fs.fsys.Remove(path)
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	return fs.newDevice(f, path, size), nil
}

// Open is the package's Open on fs.
func (fs Files) Open(path string) (*Device, error) {
	f, err := fs.fsys.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open volume file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open volume file: %w", err)
	}
	return fs.newDevice(f, path, st.Size()), nil
}

// OpenReadOnly is the package's OpenReadOnly on fs.
func (fs Files) OpenReadOnly(path string) (*Device, error) {
	f, err := vfs.Open(fs.fsys, path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	d := fs.newDevice(f, path, st.Size())
	d.readOnly = true
	return d, nil
}

// ReadOnly implements device.ReadOnly.
func (d *Device) ReadOnly() bool { return d.readOnly }

func (fs Files) newDevice(f vfs.File, path string, size int64) *Device {
	fd := -1
	if ff, ok := f.(vfs.FdFile); ok {
		fd = int(ff.Fd())
	}
	return &Device{f: f, fd: fd, fsys: fs.fsys, path: path, size: size}
}

// SyncDir is the package's SyncDir on fs.
func (fs Files) SyncDir(path string) error {
	dir := path
	if st, err := fs.fsys.Stat(path); err != nil || !st.IsDir() {
		dir = dirOf(path)
	}
	if err := vfs.SyncDir(fs.fsys, dir); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

func dirOf(path string) string {
	for i := len(path) - 1; i >= 0; i-- {
		if path[i] == '/' {
			if i == 0 {
				return "/"
			}
			return path[:i]
		}
	}
	return "."
}

// Path returns the file's path.
func (d *Device) Path() string { return d.path }

// SetPath records that the caller renamed the file (the descriptor stays
// valid); Path and messages then use the new name.
func (d *Device) SetPath(path string) { d.path = path }

// begin takes the read lock and validates the request; on success the
// caller must d.mu.RUnlock().
func (d *Device) begin(ctx context.Context, op string, off, length int64) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("local %s: %w", op, err)
	}
	d.mu.RLock()
	if d.closed {
		d.mu.RUnlock()
		return fmt.Errorf("local %s: %w", op, device.ErrClosed)
	}
	if err := device.CheckRange(d.size, off, length); err != nil {
		d.mu.RUnlock()
		return fmt.Errorf("local %s: %w", op, err)
	}
	return nil
}

// Size implements device.Device.
func (d *Device) Size() int64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.size
}

// ReadAt implements device.Device.
func (d *Device) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := d.begin(ctx, "read", off, int64(len(p))); err != nil {
		return err
	}
	defer d.mu.RUnlock()
	if d.fd < 0 {
		n, err := d.f.ReadAt(p, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("local read at %d: %w", off, err)
		}
		clear(p[n:]) // past EOF is zero
		return nil
	}
	for len(p) > 0 {
		n, err := unix.Pread(d.fd, p, off)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("local read at %d: %w", off, err)
		}
		if n == 0 {
			// The file is never shorter than size, but be safe: past EOF is zero.
			clear(p)
			return nil
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// WritesHeldByKernel implements device.KernelHeld: every write is a
// pwrite(2) (or fallocate(2)) on the volume's file before it returns, so
// it is in the page cache when acknowledged. A device on a file system
// without descriptors (the in-memory one tests use) says no.
func (d *Device) WritesHeldByKernel() bool { return d.fd >= 0 }

// WriteFromPipe implements device.PipeWriter: splice(2) from src into
// the file at off.
func (d *Device) WriteFromPipe(ctx context.Context, src device.Pipe, off int64, n int) error {
	if err := d.begin(ctx, "write", off, int64(n)); err != nil {
		return err
	}
	defer d.mu.RUnlock()
	if d.readOnly {
		return fmt.Errorf("local write: %w", device.ErrReadOnly)
	}
	if d.fd < 0 {
		buf := make([]byte, n)
		if _, err := io.ReadFull(src, buf); err != nil {
			return fmt.Errorf("local write at %d: pipe: %w", off, err)
		}
		if _, err := d.f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("local write at %d: %w", off, mapErrno(err))
		}
		return nil
	}
	for n > 0 {
		m, err := unix.Splice(src.Fd(), nil, d.fd, &off, n, unix.SPLICE_F_MOVE)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("local write at %d: %w", off, mapErrno(err))
		}
		if m == 0 {
			return fmt.Errorf("local write at %d: pipe: %w", off, io.ErrUnexpectedEOF)
		}
		src.Took(int(m))
		n -= int(m)
	}
	return nil
}

// WriteAt implements device.Device.
func (d *Device) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := d.begin(ctx, "write", off, int64(len(p))); err != nil {
		return err
	}
	defer d.mu.RUnlock()
	if d.readOnly {
		return fmt.Errorf("local write: %w", device.ErrReadOnly)
	}
	if d.fd < 0 {
		if _, err := d.f.WriteAt(p, off); err != nil {
			return fmt.Errorf("local write at %d: %w", off, mapErrno(err))
		}
		return nil
	}
	for len(p) > 0 {
		n, err := unix.Pwrite(d.fd, p, off)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("local write at %d: %w", off, mapErrno(err))
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

func mapErrno(err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("%w: %w", device.ErrNoSpace, err)
	}
	return err
}

// Flush implements device.Device with fdatasync.
func (d *Device) Flush(ctx context.Context) error {
	if err := d.begin(ctx, "flush", 0, 0); err != nil {
		return err
	}
	defer d.mu.RUnlock()
	if err := d.datasync(); err != nil {
		return fmt.Errorf("local flush: %w", err)
	}
	return nil
}

// datasync makes the file's data durable: fdatasync, or File.Sync on a
// file without a descriptor.
func (d *Device) datasync() error {
	if d.fd < 0 {
		return d.f.Sync()
	}
	return unix.Fdatasync(d.fd)
}

// Trim implements device.Device by punching a hole.
func (d *Device) Trim(ctx context.Context, off, length int64) error {
	return d.zero(ctx, "trim", off, length, true)
}

// WriteZeroes implements device.Device.
func (d *Device) WriteZeroes(ctx context.Context, off, length int64, mayTrim bool) error {
	return d.zero(ctx, "write zeroes", off, length, mayTrim)
}

func (d *Device) zero(ctx context.Context, op string, off, length int64, punch bool) error {
	if err := d.begin(ctx, op, off, length); err != nil {
		return err
	}
	defer d.mu.RUnlock()
	if d.readOnly {
		return fmt.Errorf("local %s: %w", op, device.ErrReadOnly)
	}
	if length == 0 {
		return nil
	}
	if d.fd < 0 {
		return d.writeZeroes(op, off, length)
	}
	mode := uint32(unix.FALLOC_FL_KEEP_SIZE | unix.FALLOC_FL_PUNCH_HOLE)
	if !punch {
		mode = unix.FALLOC_FL_KEEP_SIZE | unix.FALLOC_FL_ZERO_RANGE
	}
	err := unix.Fallocate(d.fd, mode, off, length)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("local %s [%d,+%d): %w", op, off, length, mapErrno(err))
	}
	// The file system cannot do it natively: write zeroes.
	return d.writeZeroes(op, off, length)
}

// writeZeroes writes zeroes over [off, off+length).
func (d *Device) writeZeroes(op string, off, length int64) error {
	for length > 0 {
		n := min(length, int64(len(device.ZeroBuf)))
		var err error
		if d.fd < 0 {
			_, err = d.f.WriteAt(device.ZeroBuf[:n], off)
		} else {
			_, err = unix.Pwrite(d.fd, device.ZeroBuf[:n], off)
		}
		if err != nil {
			return fmt.Errorf("local %s at %d: %w", op, off, mapErrno(err))
		}
		off, length = off+n, length-n
	}
	return nil
}

// Extents implements device.Device from the file's hole map.
func (d *Device) Extents(ctx context.Context, off, length int64) ([]device.Extent, error) {
	if err := d.begin(ctx, "extents", off, length); err != nil {
		return nil, err
	}
	defer d.mu.RUnlock()
	end := off + length
	var out []device.Extent
	add := func(o, n int64, fl device.ExtentFlags) {
		if n <= 0 {
			return
		}
		if k := len(out); k > 0 && out[k-1].Flags == fl && out[k-1].Offset+out[k-1].Length == o {
			out[k-1].Length += n
			return
		}
		out = append(out, device.Extent{Offset: o, Length: n, Flags: fl})
	}
	if d.fd < 0 { // no hole map: all data
		add(off, length, 0)
		return out, nil
	}
	pos := off
	for pos < end {
		data, err := unix.Seek(d.fd, pos, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) { // no data at or after pos
				add(pos, end-pos, device.ExtentHole|device.ExtentZero)
				break
			}
			// SEEK_DATA unsupported: report everything as data.
			add(pos, end-pos, 0)
			break
		}
		if data > pos {
			add(pos, min(data, end)-pos, device.ExtentHole|device.ExtentZero)
			pos = min(data, end)
			if pos >= end {
				break
			}
		}
		hole, err := unix.Seek(d.fd, pos, unix.SEEK_HOLE)
		if err != nil {
			add(pos, end-pos, 0)
			break
		}
		add(pos, min(hole, end)-pos, 0)
		pos = min(hole, end)
	}
	return out, nil
}

// Resize implements device.Device by truncating the file.
func (d *Device) Resize(ctx context.Context, size int64) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("local resize: %w", err)
	}
	if size < 0 {
		return fmt.Errorf("local resize to %d: %w", size, device.ErrOutOfRange)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("local resize: %w", device.ErrClosed)
	}
	if d.readOnly {
		return fmt.Errorf("local resize: %w", device.ErrReadOnly)
	}
	if err := d.f.Truncate(size); err != nil {
		return fmt.Errorf("local resize to %d: %w", size, mapErrno(err))
	}
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("local resize to %d: %w", size, err)
	}
	d.size = size
	d.unmap()
	return nil
}

// Close implements device.Device.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	d.unmap()
	return d.f.Close()
}

// Stats implements device.Statter from the file's allocated blocks.
func (d *Device) Stats(ctx context.Context) (device.Stats, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return device.Stats{}, device.ErrClosed
	}
	if d.fd < 0 { // no block count: count it all allocated
		return device.Stats{Provisioned: d.size, Allocated: d.size}, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return device.Stats{}, fmt.Errorf("local stats: %w", err)
	}
	return device.Stats{Provisioned: d.size, Allocated: st.Blocks * 512}, nil
}
