// Package atomicfile replaces small files so that a crash at any moment
// leaves either the old or the new content, durably: write a temporary
// file in the same directory, fsync it, rename it over the target, fsync
// the directory. The catalog, the tier's cache metadata and the Docker
// plugin's state all go through it.
package atomicfile

import (
	"bufio"
	"os"
	"path/filepath"
)

// TempPattern is the os.CreateTemp pattern of the temporary file for
// path: hidden, next to it, ending in .tmp, so a crash leaves a file a
// start-up sweep can recognise (".*.tmp").
func TempPattern(path string) string { return "." + filepath.Base(path) + "-*.tmp" }

// WriteFile replaces path with data (mode 0600).
func WriteFile(path string, data []byte) error {
	return WriteFunc(path, func(w *bufio.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// WriteFunc replaces path (mode 0600) with what fill writes.
func WriteFunc(path string, fill func(*bufio.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), TempPattern(path))
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing to remove
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
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir fsyncs a directory, making the names in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
