// Package atomicfile replaces small files so that a crash at any moment
// leaves either the old or the new content, durably: write a temporary
// file in the same directory, fsync it, rename it over the target, fsync
// the directory. The catalog, the tier's cache metadata and the Docker
// plugin's state all go through it.
//
// The package functions use the operating system's file system; On(fsys)
// gives them on another (internal/vfs: a crashable one in tests).
package atomicfile

import (
	"bufio"
	"path/filepath"

	"github.com/ferry-io/ferry/internal/vfs"
)

// TempPattern is the os.CreateTemp pattern of the temporary file for
// path: hidden, next to it, ending in .tmp, so a crash leaves a file a
// start-up sweep can recognise (".*.tmp").
func TempPattern(path string) string { return "." + filepath.Base(path) + "-*.tmp" }

// Files replaces files on one file system.
type Files struct{ fsys vfs.FS }

// On returns the package's functions on fsys (nil: the operating
// system's file system).
func On(fsys vfs.FS) Files { return Files{fsys: vfs.Or(fsys)} }

// WriteFile replaces path with data (mode 0600).
func WriteFile(path string, data []byte) error { return On(nil).WriteFile(path, data) }

// WriteFunc replaces path (mode 0600) with what fill writes.
func WriteFunc(path string, fill func(*bufio.Writer) error) error {
	return On(nil).WriteFunc(path, fill)
}

// SyncDir fsyncs a directory, making the names in it durable.
func SyncDir(dir string) error { return vfs.SyncDir(vfs.OS, dir) }

// WriteFile replaces path with data (mode 0600).
func (fs Files) WriteFile(path string, data []byte) error {
	return fs.WriteFunc(path, func(w *bufio.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// WriteFunc replaces path (mode 0600) with what fill writes.
func (fs Files) WriteFunc(path string, fill func(*bufio.Writer) error) error {
	f, err := vfs.CreateTemp(fs.fsys, filepath.Dir(path), TempPattern(path))
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer fs.fsys.Remove(tmp) // after a successful rename there is nothing to remove
	w := bufio.NewWriterSize(f, 64<<10)
	err = fill(w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := fs.fsys.Rename(tmp, path); err != nil {
		return err
	}
	return vfs.SyncDir(fs.fsys, filepath.Dir(path))
}
