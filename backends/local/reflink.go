package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/internal/atomicfile"
	"github.com/ferry-io/ferry/internal/vfs"
)

// Reflinks: a file that shares another's blocks (FICLONE), which XFS
// (reflink=1, the mkfs default) and btrfs can make at once and without
// copying. Later writes to either file go to new blocks (copy on write);
// the file system counts the references, so removing one file frees only
// the blocks no other file shares. Snapshots and clones of local volumes
// are reflinks (snapshot.go).

// ErrNoReflink: the file system cannot share blocks between files.
var ErrNoReflink = errors.New("the file system cannot share blocks between files (no reflink)")

// noReflink reports whether a FICLONE error means "this file system (or
// this pair of files) cannot share blocks", as opposed to a failure of
// one that can.
func noReflink(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.ENOSYS)
}

// FSName names the file system holding path ("xfs", "btrfs", "ext4",
// "tmpfs", ...), or gives its magic number.
func FSName(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "an unknown file system"
	}
	switch uint32(st.Type) {
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.EXT4_SUPER_MAGIC: // also ext2 and ext3
		return "ext4"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	case 0x2fc12fc1:
		return "zfs"
	case 0x65735546:
		return "fuse"
	}
	return fmt.Sprintf("file system 0x%x", uint32(st.Type))
}

// CheckReflink reports whether files in dir can share blocks: it clones
// one small temporary file into another. The error wraps ErrNoReflink
// when the file system cannot.
func CheckReflink(dir string) error {
	src, err := os.CreateTemp(dir, ".reflink-probe-*.tmp")
	if err != nil {
		return fmt.Errorf("reflink probe in %s: %w", dir, err)
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return fmt.Errorf("reflink probe in %s: %w", dir, err)
	}
	dst, err := os.CreateTemp(dir, ".reflink-probe-*.tmp")
	if err != nil {
		return fmt.Errorf("reflink probe in %s: %w", dir, err)
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		if noReflink(err) {
			return fmt.Errorf("%s is on %s: %w (FICLONE: %w)", dir, FSName(dir), ErrNoReflink, err)
		}
		return fmt.Errorf("reflink probe in %s: %w", dir, err)
	}
	return nil
}

// reflinkFD makes dst a file sharing every block of the open file srcFD,
// durably, and never replaces an existing dst (that fails with an error
// wrapping os.ErrExist). A temporary file next to dst is cloned and
// fsynced, linked to dst (which fails if dst exists) and removed, and the
// directory fsynced: a crash leaves dst complete or absent, and at worst a
// temporary file matching atomicfile.TempPattern(dst), which SweepTemp
// removes.
func reflinkFD(ctx context.Context, srcFD int, dst string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), atomicfile.TempPattern(dst))
	if err != nil {
		return fmt.Errorf("reflink to %s: %w", dst, err)
	}
	defer os.Remove(tmp.Name()) // after the link only a second name goes
	defer tmp.Close()
	if err := unix.IoctlFileClone(int(tmp.Fd()), srcFD); err != nil {
		if noReflink(err) {
			return fmt.Errorf("reflink to %s: %s: %w (FICLONE: %w)", dst, FSName(filepath.Dir(dst)), ErrNoReflink, err)
		}
		return fmt.Errorf("reflink to %s: %w", dst, mapErrno(err))
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("reflink to %s: %w", dst, err)
	}
	if err := os.Link(tmp.Name(), dst); err != nil {
		return fmt.Errorf("reflink to %s: %w", dst, err)
	}
	if err := os.Remove(tmp.Name()); err != nil {
		return fmt.Errorf("reflink to %s: %w", dst, err)
	}
	return SyncDir(dst)
}

// ReflinkFile makes dst a file sharing every block of the file src (see
// reflinkFD): the new volume file of a clone.
func ReflinkFile(ctx context.Context, src, dst string) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("reflink %s: %w", src, err)
	}
	defer f.Close()
	return reflinkFD(ctx, int(f.Fd()), dst)
}

// ReflinkTo makes dst a file sharing every block of the volume as it is
// now: Flush first (every write that returned before the call is in it,
// durably), then FICLONE, which the file system performs atomically with
// respect to concurrent writes. Resize waits for it.
func (d *Device) ReflinkTo(ctx context.Context, dst string) error {
	if err := d.begin(ctx, "reflink", 0, 0); err != nil {
		return err
	}
	defer d.mu.RUnlock()
	if d.readOnly {
		return fmt.Errorf("local reflink: a read-only device is reflinked with ReflinkFile")
	}
	if d.fd < 0 || d.fsys != vfs.OS {
		return fmt.Errorf("local reflink to %s: %w (not a file of the operating system's file system)", dst, ErrNoReflink)
	}
	if err := unix.Fdatasync(d.fd); err != nil {
		return fmt.Errorf("local reflink: flush: %w", err)
	}
	return reflinkFD(ctx, d.fd, dst)
}

// SweepTemp removes the temporary files an interrupted reflink or
// atomicfile write left in dir.
func SweepTemp(dir string) {
	tmps, _ := filepath.Glob(filepath.Join(dir, ".*.tmp"))
	for _, f := range tmps {
		os.Remove(f)
	}
}

// fiemap ioctl (linux/fiemap.h): x/sys/unix does not wrap it.
const (
	fsIocFiemap        = 0xC020660B // _IOWR('f', 11, struct fiemap)
	fiemapFlagSync     = 0x1
	fiemapExtentLast   = 0x1
	fiemapExtentShared = 0x2000
	fiemapBatch        = 256
)

type fiemapHeader struct {
	Start, Length                  uint64
	Flags, Mapped, Count, Reserved uint32
}

type fiemapExtent struct {
	Logical, Physical, Length uint64
	_                         [2]uint64
	Flags                     uint32
	_                         [3]uint32
}

// UniqueBytes returns the bytes of the file at path that no other file
// shares (its extents without FIEMAP_EXTENT_SHARED): what removing the file
// would free.
func UniqueBytes(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var buf struct {
		h fiemapHeader
		e [fiemapBatch]fiemapExtent
	}
	var unique int64
	start := uint64(0)
	for {
		buf.h = fiemapHeader{Start: start, Length: ^uint64(0) - start, Flags: fiemapFlagSync, Count: fiemapBatch}
		for {
			_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf)))
			if errno == unix.EINTR {
				continue
			}
			if errno != 0 {
				return 0, fmt.Errorf("fiemap %s: %w", path, errno)
			}
			break
		}
		if buf.h.Mapped == 0 {
			return unique, nil
		}
		for _, e := range buf.e[:buf.h.Mapped] {
			if e.Flags&fiemapExtentShared == 0 {
				unique += int64(e.Length)
			}
			start = e.Logical + e.Length
			if e.Flags&fiemapExtentLast != 0 {
				return unique, nil
			}
		}
	}
}
