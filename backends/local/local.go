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
package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/backends/device"
)

// Device is a volume stored in one sparse file.
type Device struct {
	mu     sync.RWMutex // held for reading by I/O, for writing by Resize and Close
	f      *os.File
	fd     int
	path   string
	size   int64
	closed bool
	// readOnly: opened with OpenReadOnly (a snapshot); every write fails
	// with ErrReadOnly.
	readOnly bool
}

var (
	_ device.Device   = (*Device)(nil)
	_ device.Statter  = (*Device)(nil)
	_ device.ReadOnly = (*Device)(nil)
)

// Create makes a new sparse file of size bytes at path. It fails if the
// file exists. The file and its directory entry are synced before it
// returns.
func Create(path string, size int64) (*Device, error) {
	if size < 0 {
		return nil, fmt.Errorf("create %s: negative size: %w", path, device.ErrOutOfRange)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create volume file: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("create volume file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("create volume file %s: %w", path, err)
	}
	if err := SyncDir(path); err != nil {
		f.Close()
		return nil, err
	}
	return newDevice(f, path, size), nil
}

// CreateScratch creates a file of size bytes like Create but without
// making it durable: for cache files whose owner syncs them (and their
// directory) when it needs them to survive a crash.
func CreateScratch(path string, size int64) (*Device, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	return newDevice(f, path, size), nil
}

// Open opens an existing volume file; its size is the file's size.
func Open(path string) (*Device, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open volume file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open volume file: %w", err)
	}
	return newDevice(f, path, st.Size()), nil
}

// OpenReadOnly opens an existing file as a device that refuses every
// write with ErrReadOnly (device.ReadOnly): a snapshot's export.
func OpenReadOnly(path string) (*Device, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	d := newDevice(f, path, st.Size())
	d.readOnly = true
	return d, nil
}

// ReadOnly implements device.ReadOnly.
func (d *Device) ReadOnly() bool { return d.readOnly }

func newDevice(f *os.File, path string, size int64) *Device {
	return &Device{f: f, fd: int(f.Fd()), path: path, size: size}
}

// SyncDir fsyncs the directory holding path, so a create, rename or remove
// of path is durable.
func SyncDir(path string) error {
	dir := path
	if st, err := os.Stat(path); err != nil || !st.IsDir() {
		dir = dirOf(path)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
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

// WriteAt implements device.Device.
func (d *Device) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := d.begin(ctx, "write", off, int64(len(p))); err != nil {
		return err
	}
	defer d.mu.RUnlock()
	if d.readOnly {
		return fmt.Errorf("local write: %w", device.ErrReadOnly)
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
	if err := unix.Fdatasync(d.fd); err != nil {
		return fmt.Errorf("local flush: %w", err)
	}
	return nil
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
	for length > 0 {
		n := min(length, int64(len(device.ZeroBuf)))
		if _, err := unix.Pwrite(d.fd, device.ZeroBuf[:n], off); err != nil {
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
	return d.f.Close()
}

// Stats implements device.Statter from the file's allocated blocks.
func (d *Device) Stats(ctx context.Context) (device.Stats, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return device.Stats{}, device.ErrClosed
	}
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return device.Stats{}, fmt.Errorf("local stats: %w", err)
	}
	return device.Stats{Provisioned: d.size, Allocated: st.Blocks * 512}, nil
}
