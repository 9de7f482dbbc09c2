// Package device defines the one seam between Ferry's frontends (NBD, iSCSI,
// Docker) and the places bytes live (local pool, memory, S3 tier).
//
// # Contract
//
// A Device is a fixed-size, byte-addressed block device that is safe for
// concurrent use by any number of goroutines.
//
//   - Offsets and lengths are in bytes. Any alignment is accepted; frontends
//     that need sector alignment enforce it themselves.
//   - An operation that touches any byte at or beyond Size() fails with an
//     error wrapping ErrOutOfRange and has no effect. A zero-length operation
//     inside (or exactly at the end of) the device succeeds and does nothing.
//   - ReadAt fills all of p or returns an error; there are no short reads.
//     Never-written and trimmed ranges read as zeroes.
//   - WriteAt, Trim and WriteZeroes are visible to every later ReadAt on any
//     goroutine as soon as they return. They are durable — they survive a
//     crash of the process or the machine — only once a Flush that started
//     after they returned has itself returned nil. A write that fails may
//     have been applied in part.
//   - Trim is advisory for space (an implementation may keep the blocks) but
//     not for content: after Trim the range reads as zeroes.
//   - WriteZeroes makes the range read as zeroes. With mayTrim it may free
//     the space (punch a hole); without it, the space stays allocated so a
//     later write to it cannot fail for lack of space.
//   - Extents describes allocation for [off, off+length): a sorted,
//     contiguous, non-overlapping list covering the range exactly. Flags
//     are hints (ExtentHole implies the range reads as zeroes; ExtentZero
//     says it reads as zeroes), never a promise that data is present.
//   - Resize changes Size. Growing exposes zeroes; shrinking discards data
//     beyond the new size.
//   - Errors wrap the sentinels below where one applies so callers can map
//     them to protocol errnos and SCSI sense with errors.Is.
package device

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Sentinel errors callers branch on.
var (
	// ErrOutOfRange: the request touches bytes beyond the device's size.
	ErrOutOfRange = errors.New("out of range")
	// ErrNoSpace: the backing store has no room for the write.
	ErrNoSpace = errors.New("no space left")
	// ErrClosed: the device has been closed.
	ErrClosed = errors.New("device closed")
	// ErrReadOnly: the device refuses writes.
	ErrReadOnly = errors.New("read-only device")
	// ErrUnavailable: the data lives somewhere that cannot be reached now
	// (for example an S3 store during an outage) and the bounded wait ran out.
	ErrUnavailable = errors.New("backing store unavailable")
)

// ExtentFlags describe one allocation extent.
type ExtentFlags uint32

const (
	// ExtentHole: no storage is allocated for the range.
	ExtentHole ExtentFlags = 1 << 0
	// ExtentZero: the range reads as zeroes.
	ExtentZero ExtentFlags = 1 << 1
)

// Extent is one run of bytes with the same allocation state.
type Extent struct {
	Offset int64
	Length int64
	Flags  ExtentFlags
}

// Device is the block-device seam. See the package documentation for the
// contract every implementation keeps; devicetest checks it.
type Device interface {
	// Size is the current size in bytes.
	Size() int64
	// ReadAt reads len(p) bytes at off.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off.
	WriteAt(ctx context.Context, p []byte, off int64) error
	// Flush makes every write that returned before Flush was called durable.
	Flush(ctx context.Context) error
	// Trim discards [off, off+length); the range then reads as zeroes.
	Trim(ctx context.Context, off, length int64) error
	// WriteZeroes zeroes [off, off+length); mayTrim allows freeing space.
	WriteZeroes(ctx context.Context, off, length int64, mayTrim bool) error
	// Extents reports allocation over [off, off+length).
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
	// Resize sets the size to size bytes.
	Resize(ctx context.Context, size int64) error
	// Close releases resources. It does not flush; callers Flush first.
	Close() error
}

// Stats is optional accounting a Device may offer (see Statter).
type Stats struct {
	// Provisioned is the size the volume presents.
	Provisioned int64
	// Allocated is the bytes actually occupied in the backing store.
	Allocated int64
}

// ReadOnly is implemented by devices that refuse every write (a
// snapshot), so frontends can say so to clients up front.
type ReadOnly interface {
	ReadOnly() bool
}

// IsReadOnly reports whether d says it refuses every write.
func IsReadOnly(d Device) bool {
	ro, ok := d.(ReadOnly)
	return ok && ro.ReadOnly()
}

// Pipe is the read end of a pipe that holds a write's data (see
// PipeWriter).
type Pipe interface {
	// Fd is the pipe's read end, for splice(2); non-blocking.
	Fd() int
	// Took records that n bytes were taken from Fd.
	Took(n int)
	// Read reads from the pipe, for devices that cannot splice.
	io.Reader
}

// PipeWriter is implemented by devices that can write data held in a pipe
// without copying it through the process's memory: a frontend moves a
// large write's payload from its socket into a pipe (splice(2)) and the
// device splices it into its file, one copy where a buffer costs two.
type PipeWriter interface {
	// WriteFromPipe writes the next n bytes of src at off, with the
	// semantics of WriteAt. On error src may hold some of them still.
	WriteFromPipe(ctx context.Context, src Pipe, off int64, n int) error
}

// Viewer is implemented by devices that can lend a read's bytes in place
// — a read-only shared mapping of their file — instead of copying them
// into a buffer. A frontend that sends a large read straight from a view
// lets the kernel copy the page cache into its socket: one copy where
// ReadAt and a send cost two.
//
// A view's bytes must only be handed to system calls (write(2) to a
// socket), never read by the process itself: if the pages behind them
// are evicted and cannot be read back (a disk error, a file shortened
// underneath), a system call fails with EFAULT, where a read by the
// process would be a fatal SIGBUS.
type Viewer interface {
	// View returns the device's bytes [off, off+n) when all of them are
	// in memory now; ok is false when some are not (ReadAt then reads
	// them, and reports a disk error as an error), when the range is
	// not within the device, or when the device cannot lend them. A
	// view never waits for the disk. The bytes are the file's current
	// contents, so a concurrent write may show through, as it may
	// through ReadAt. done must be called exactly once, when the bytes
	// are no longer used; the view stays valid until then, across
	// Resize and Close.
	View(off int64, n int) (b []byte, done func(), ok bool)
}

// KernelHeld is implemented by devices whose writes are in the kernel —
// the page cache or the disk — by the time WriteAt, WriteZeroes or Trim
// returns. A write acknowledged before any flush then outlives the
// gateway process (kill -9, a panic, a restart) and is lost only with the
// kernel itself (power cut, kernel crash). Devices that hold acknowledged
// writes in the process's memory, or are not sure, do not implement it or
// answer false.
type KernelHeld interface {
	WritesHeldByKernel() bool
}

// WritesHeldByKernel reports whether d says its acknowledged writes are
// in the kernel (see KernelHeld).
func WritesHeldByKernel(d Device) bool {
	k, ok := d.(KernelHeld)
	return ok && k.WritesHeldByKernel()
}

// Statter is implemented by devices that can report their space usage.
type Statter interface {
	Stats(ctx context.Context) (Stats, error)
}

// CheckRange returns an error wrapping ErrOutOfRange when [off, off+length)
// does not lie within a device of the given size.
func CheckRange(size, off, length int64) error {
	if off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("offset %d length %d on %d-byte device: %w", off, length, size, ErrOutOfRange)
	}
	return nil
}

// Unwrapper is implemented by decorators; Unwrap returns the inner device.
type Unwrapper interface {
	Unwrap() Device
}

// ZeroBuf is a shared, read-only block of zeroes for implementations that
// emulate WriteZeroes with writes. Never write into it.
var ZeroBuf = make([]byte, 1<<20)

// EmulateWriteZeroes writes zeroes over [off, off+length) with WriteAt in
// chunks of at most len(ZeroBuf). For devices without a native zeroing call.
func EmulateWriteZeroes(ctx context.Context, d Device, off, length int64) error {
	for length > 0 {
		n := min(length, int64(len(ZeroBuf)))
		if err := d.WriteAt(ctx, ZeroBuf[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}
