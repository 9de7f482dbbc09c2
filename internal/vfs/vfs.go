// Package vfs is the file system seam of everything Ferry keeps in local
// files: the local pool's volume files, the tier's write-back cache and
// the catalog. Production code uses OS, which hands out *os.File itself
// (no wrapper, no cost); tests put NewCrashableMem under the same code to
// simulate a power cut, and Inject to fail or skip single operations.
//
// The contract is the POSIX one the callers already rely on, stated for
// what survives a crash: a file's bytes and size are durable once File.Sync
// returns (fdatasync is enough); a name created, renamed or removed in a
// directory is durable once that directory is synced (open it with
// OpenFile(dir, O_RDONLY) and Sync, or SyncDir). Nothing else is.
//
// Things only a real file system does (FICLONE reflinks, fallocate hole
// punching, SEEK_DATA/SEEK_HOLE, FIEMAP, statfs) are not part of FS: a
// caller reaches them through the optional FdFile capability, which only
// OS files have, and degrades without it (package local says how).
package vfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// FS is a file system: the subset of package os that Ferry's local
// state uses. Paths are slash-separated; every method is safe for
// concurrent use.
type FS interface {
	// OpenFile opens name with os.O_* flags (O_RDONLY, O_WRONLY, O_RDWR,
	// O_CREATE, O_EXCL, O_TRUNC, O_APPEND). A directory opens O_RDONLY,
	// to be synced or closed.
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	Rename(oldpath, newpath string) error
	Remove(name string) error
	RemoveAll(name string) error
	MkdirAll(name string, perm fs.FileMode) error
	ReadDir(name string) ([]fs.DirEntry, error)
	Stat(name string) (fs.FileInfo, error)
}

// File is an open file. *os.File implements it.
type File interface {
	io.Reader
	io.Writer
	io.ReaderAt
	io.WriterAt
	io.Closer
	io.StringWriter
	Name() string
	Stat() (fs.FileInfo, error)
	// Sync makes the file's content and size durable; on a directory, the
	// names in it.
	Sync() error
	Truncate(size int64) error
}

// FdFile is the capability of a file backed by an operating system
// descriptor: callers that need a syscall FS does not offer (pread and
// pwrite without an interface call, fallocate, SEEK_DATA, FICLONE) use
// it, and fall back to File's methods on files without it.
type FdFile interface {
	File
	Fd() uintptr
}

// OS is the operating system's file system: package os, whose files are
// *os.File (and so FdFile).
var OS FS = osFS{}

type osFS struct{}

var (
	_ FS     = osFS{}
	_ FdFile = (*os.File)(nil)
)

func (osFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return f, nil
}
func (osFS) Rename(oldpath, newpath string) error         { return os.Rename(oldpath, newpath) }
func (osFS) Remove(name string) error                     { return os.Remove(name) }
func (osFS) RemoveAll(name string) error                  { return os.RemoveAll(name) }
func (osFS) MkdirAll(name string, perm fs.FileMode) error { return os.MkdirAll(name, perm) }
func (osFS) ReadDir(name string) ([]fs.DirEntry, error)   { return os.ReadDir(name) }
func (osFS) Stat(name string) (fs.FileInfo, error)        { return os.Stat(name) }

// Or returns fsys, or OS when fsys is nil: for Config fields whose zero
// value means the real file system.
func Or(fsys FS) FS {
	if fsys == nil {
		return OS
	}
	return fsys
}

// Open opens name for reading.
func Open(fsys FS, name string) (File, error) { return fsys.OpenFile(name, os.O_RDONLY, 0) }

// ReadFile reads the whole file name.
func ReadFile(fsys FS, name string) ([]byte, error) {
	if fsys == OS {
		return os.ReadFile(name)
	}
	f, err := Open(fsys, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// SyncDir fsyncs the directory dir, making the names in it durable.
func SyncDir(fsys FS, dir string) error {
	d, err := Open(fsys, dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// CreateTemp creates a new file in dir, opened for reading and writing,
// whose name is pattern with its last "*" replaced by a random string (as
// os.CreateTemp).
func CreateTemp(fsys FS, dir, pattern string) (File, error) {
	if fsys == OS {
		f, err := os.CreateTemp(dir, pattern)
		if err != nil {
			return nil, err
		}
		return f, nil
	}
	prefix, suffix := pattern, ""
	if i := strings.LastIndexByte(pattern, '*'); i >= 0 {
		prefix, suffix = pattern[:i], pattern[i+1:]
	}
	for range 10000 {
		name := filepath.Join(dir, prefix+strconv.FormatUint(uint64(rand.Uint32()), 10)+suffix)
		f, err := fsys.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return f, err
	}
	return nil, &fs.PathError{Op: "createtemp", Path: filepath.Join(dir, pattern), Err: fs.ErrExist}
}

// MkdirAllDurable makes directory dir (mode 0700) and its missing
// parents, and fsyncs the directory above each one it made, so that a new
// directory does not vanish in a crash with what was acknowledged in it.
func MkdirAllDurable(fsys FS, dir string) error {
	dir = filepath.Clean(dir)
	have := dir // the nearest directory that exists
	for {
		if _, err := fsys.Stat(have); err == nil {
			break
		}
		parent := filepath.Dir(have)
		if parent == have {
			break
		}
		have = parent
	}
	if have == dir {
		return nil // it exists
	}
	if err := fsys.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if err := SyncDir(fsys, filepath.Dir(d)); err != nil {
			return fmt.Errorf("sync %s: %w", filepath.Dir(d), err)
		}
		if filepath.Dir(d) == have || filepath.Dir(d) == d {
			return nil
		}
	}
}
