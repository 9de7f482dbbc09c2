package vfs

import (
	"errors"
	"io/fs"
)

// Op names an operation Inject can fail or skip.
type Op int

// The operations of FS and File that Inject sees.
const (
	OpOpen   Op = iota // FS.OpenFile
	OpRename           // FS.Rename (path is the old name)
	OpRemove           // FS.Remove and FS.RemoveAll
	OpMkdir            // FS.MkdirAll
	OpWrite            // File.Write, WriteAt, WriteString and Truncate
	OpSync             // File.Sync, of a file or (isDir) a directory
)

func (o Op) String() string {
	return [...]string{"open", "rename", "remove", "mkdir", "write", "sync"}[o]
}

// ErrSkipSync, returned by an Inject fault for an OpSync, makes the Sync
// return nil without syncing: the fsync a bug forgot. A test that
// expects its crash check to fail on such a file system proves the check
// would catch the missing fsync.
var ErrSkipSync = errors.New("vfs: skip this sync")

// Fault decides the fate of one operation: nil lets it run; an error
// fails it with that error (wrapped in *fs.PathError); ErrSkipSync skips a
// sync. isDir says whether an OpSync syncs a directory.
type Fault func(op Op, path string, isDir bool) error

// Inject returns fsys with fault consulted before every operation it
// names (pebble's errorfs is the model). Files it opens have no
// descriptor, so a local device on it takes its portable paths. A nil
// fault returns fsys itself.
func Inject(fsys FS, fault Fault) FS {
	if fault == nil {
		return fsys
	}
	return &injectFS{fs: fsys, fault: fault}
}

// SkipSyncs is a Fault that skips (ErrSkipSync) every sync skip accepts
// and lets every other operation run.
func SkipSyncs(skip func(path string, isDir bool) bool) Fault {
	return func(op Op, path string, isDir bool) error {
		if op == OpSync && skip(path, isDir) {
			return ErrSkipSync
		}
		return nil
	}
}

type injectFS struct {
	fs    FS
	fault Fault
}

var (
	_ FS   = (*injectFS)(nil)
	_ File = (*injectFile)(nil)
)

// Unwrap returns the file system Inject decorates.
func (i *injectFS) Unwrap() FS { return i.fs }

func (i *injectFS) check(op Op, path string) error {
	if err := i.fault(op, path, false); err != nil && !errors.Is(err, ErrSkipSync) {
		return &fs.PathError{Op: op.String(), Path: path, Err: err}
	}
	return nil
}

func (i *injectFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	if err := i.check(OpOpen, name); err != nil {
		return nil, err
	}
	f, err := i.fs.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &injectFile{File: f, fs: i}, nil
}

func (i *injectFS) Rename(oldpath, newpath string) error {
	if err := i.check(OpRename, oldpath); err != nil {
		return err
	}
	return i.fs.Rename(oldpath, newpath)
}

func (i *injectFS) Remove(name string) error {
	if err := i.check(OpRemove, name); err != nil {
		return err
	}
	return i.fs.Remove(name)
}

func (i *injectFS) RemoveAll(name string) error {
	if err := i.check(OpRemove, name); err != nil {
		return err
	}
	return i.fs.RemoveAll(name)
}

func (i *injectFS) MkdirAll(name string, perm fs.FileMode) error {
	if err := i.check(OpMkdir, name); err != nil {
		return err
	}
	return i.fs.MkdirAll(name, perm)
}

func (i *injectFS) ReadDir(name string) ([]fs.DirEntry, error) { return i.fs.ReadDir(name) }
func (i *injectFS) Stat(name string) (fs.FileInfo, error)      { return i.fs.Stat(name) }

// injectFile embeds the inner File, overriding what Inject sees.
type injectFile struct {
	File
	fs *injectFS
}

func (f *injectFile) Write(p []byte) (int, error) {
	if err := f.fs.check(OpWrite, f.Name()); err != nil {
		return 0, err
	}
	return f.File.Write(p)
}

func (f *injectFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.fs.check(OpWrite, f.Name()); err != nil {
		return 0, err
	}
	return f.File.WriteAt(p, off)
}

func (f *injectFile) WriteString(s string) (int, error) {
	if err := f.fs.check(OpWrite, f.Name()); err != nil {
		return 0, err
	}
	return f.File.WriteString(s)
}

func (f *injectFile) Truncate(size int64) error {
	if err := f.fs.check(OpWrite, f.Name()); err != nil {
		return err
	}
	return f.File.Truncate(size)
}

func (f *injectFile) Sync() error {
	st, err := f.File.Stat()
	if err != nil {
		return err
	}
	switch err := f.fs.fault(OpSync, f.Name(), st.IsDir()); {
	case errors.Is(err, ErrSkipSync):
		return nil
	case err != nil:
		return &fs.PathError{Op: "sync", Path: f.Name(), Err: err}
	}
	return f.File.Sync()
}
