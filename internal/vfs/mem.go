package vfs

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// MemFS is an in-memory file system that can simulate a power cut, after
// pebble's vfs.NewCrashableMem: every file keeps the content it had at its
// last Sync beside its current content, and every directory the names it
// held at its last Sync beside its current ones. Crash returns the file
// system a machine would find after losing power now: only what a Sync
// covered. A file created and synced, but whose directory was not synced
// since, is gone; a rename not followed by a sync of the directories is
// undone; a file renamed into place without a Sync of its own is there,
// empty. It is strict where a real file system may be lucky: unsynced data
// never survives, which is what makes a missing fsync fail a test.
//
// Paths are taken relative to the root whether or not they start with
// "/". Files opened on a MemFS have no descriptor (they are not FdFile).
// Every method is safe for concurrent use; one mutex guards the whole
// tree, which is fine for tests.
type MemFS struct {
	mu   sync.Mutex
	root *memNode
}

type memNode struct {
	dir bool
	// A directory's names now, and as of its last Sync.
	children, synced map[string]*memNode
	// A file's content now, and as of its last Sync.
	data, durable []byte
	mode          fs.FileMode
	mtime         time.Time
}

func newDirNode(mode fs.FileMode) *memNode {
	return &memNode{dir: true, children: map[string]*memNode{}, synced: map[string]*memNode{}, mode: fs.ModeDir | mode.Perm(), mtime: time.Now()}
}

// NewCrashableMem returns an empty MemFS (its root directory exists and
// is durable).
func NewCrashableMem() *MemFS { return &MemFS{root: newDirNode(0o755)} }

var _ FS = (*MemFS)(nil)

// Crash returns a new MemFS holding what survives a power cut now: the
// durable state of every file and directory reachable from the root
// through synced names. The receiver is left as it was; callers stop
// using it (its open files still work, on the old tree).
func (m *MemFS) Crash() *MemFS {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[*memNode]*memNode{} // hard links stay one node
	var clone func(n *memNode) *memNode
	clone = func(n *memNode) *memNode {
		if c, ok := seen[n]; ok {
			return c
		}
		c := &memNode{dir: n.dir, mode: n.mode, mtime: n.mtime}
		seen[n] = c
		if n.dir {
			c.children, c.synced = map[string]*memNode{}, map[string]*memNode{}
			for name, child := range n.synced {
				cc := clone(child)
				c.children[name], c.synced[name] = cc, cc
			}
			return c
		}
		c.data = slices.Clone(n.durable)
		c.durable = slices.Clone(n.durable)
		return c
	}
	return &MemFS{root: clone(m.root)}
}

// split cleans name into its components below the root.
func split(name string) []string {
	p := path.Clean("/" + strings.ReplaceAll(name, "\\", "/"))
	if p == "/" {
		return nil
	}
	return strings.Split(p[1:], "/")
}

func pathErr(op, name string, err error) error { return &fs.PathError{Op: op, Path: name, Err: err} }

// lookupParent returns the directory holding name and name's last
// component; m.mu is held.
func (m *MemFS) lookupParent(op, name string) (*memNode, string, error) {
	parts := split(name)
	if len(parts) == 0 {
		return nil, "", pathErr(op, name, syscall.EINVAL) // the root has no parent
	}
	dir := m.root
	for _, p := range parts[:len(parts)-1] {
		c, ok := dir.children[p]
		if !ok {
			return nil, "", pathErr(op, name, fs.ErrNotExist)
		}
		if !c.dir {
			return nil, "", pathErr(op, name, syscall.ENOTDIR)
		}
		dir = c
	}
	return dir, parts[len(parts)-1], nil
}

// lookup returns the node at name; m.mu is held.
func (m *MemFS) lookup(op, name string) (*memNode, error) {
	if len(split(name)) == 0 {
		return m.root, nil
	}
	dir, base, err := m.lookupParent(op, name)
	if err != nil {
		return nil, err
	}
	n, ok := dir.children[base]
	if !ok {
		return nil, pathErr(op, name, fs.ErrNotExist)
	}
	return n, nil
}

// OpenFile implements FS.
func (m *MemFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	acc := flag & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
	var n *memNode
	if len(split(name)) == 0 {
		n = m.root
	} else {
		dir, base, err := m.lookupParent("open", name)
		if err != nil {
			return nil, err
		}
		n = dir.children[base]
		switch {
		case n != nil && flag&os.O_CREATE != 0 && flag&os.O_EXCL != 0:
			return nil, pathErr("open", name, fs.ErrExist)
		case n == nil && flag&os.O_CREATE == 0:
			return nil, pathErr("open", name, fs.ErrNotExist)
		case n == nil:
			n = &memNode{mode: perm.Perm(), mtime: time.Now()}
			dir.children[base] = n
		}
	}
	if n.dir && acc != os.O_RDONLY {
		return nil, pathErr("open", name, syscall.EISDIR)
	}
	if !n.dir && flag&os.O_TRUNC != 0 && acc != os.O_RDONLY {
		n.data = n.data[:0]
	}
	return &memFile{fs: m, n: n, name: name, read: acc != os.O_WRONLY, write: acc != os.O_RDONLY, appnd: flag&os.O_APPEND != 0}, nil
}

// Rename implements FS: it replaces a file at newpath, as rename(2).
func (m *MemFS) Rename(oldpath, newpath string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	od, ob, err := m.lookupParent("rename", oldpath)
	if err != nil {
		return err
	}
	n, ok := od.children[ob]
	if !ok {
		return pathErr("rename", oldpath, fs.ErrNotExist)
	}
	nd, nb, err := m.lookupParent("rename", newpath)
	if err != nil {
		return err
	}
	if t, ok := nd.children[nb]; ok && t != n {
		if t.dir != n.dir {
			return pathErr("rename", newpath, syscall.EISDIR)
		}
		if t.dir && len(t.children) > 0 {
			return pathErr("rename", newpath, syscall.ENOTEMPTY)
		}
	}
	delete(od.children, ob)
	nd.children[nb] = n
	return nil
}

// Remove implements FS: a file, or an empty directory.
func (m *MemFS) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	dir, base, err := m.lookupParent("remove", name)
	if err != nil {
		return err
	}
	n, ok := dir.children[base]
	if !ok {
		return pathErr("remove", name, fs.ErrNotExist)
	}
	if n.dir && len(n.children) > 0 {
		return pathErr("remove", name, syscall.ENOTEMPTY)
	}
	delete(dir.children, base)
	return nil
}

// RemoveAll implements FS; a missing name is not an error.
func (m *MemFS) RemoveAll(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	dir, base, err := m.lookupParent("removeall", name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	delete(dir.children, base)
	return nil
}

// MkdirAll implements FS. New directories, like new files, are durable
// once their parent is synced.
func (m *MemFS) MkdirAll(name string, perm fs.FileMode) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	dir := m.root
	for _, p := range split(name) {
		c, ok := dir.children[p]
		if !ok {
			c = newDirNode(perm)
			dir.children[p] = c
		}
		if !c.dir {
			return pathErr("mkdir", name, syscall.ENOTDIR)
		}
		dir = c
	}
	return nil
}

// ReadDir implements FS: the entries sorted by name.
func (m *MemFS) ReadDir(name string) ([]fs.DirEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := m.lookup("readdir", name)
	if err != nil {
		return nil, err
	}
	if !n.dir {
		return nil, pathErr("readdir", name, syscall.ENOTDIR)
	}
	out := make([]fs.DirEntry, 0, len(n.children))
	for cname, c := range n.children {
		out = append(out, fs.FileInfoToDirEntry(c.info(cname)))
	}
	slices.SortFunc(out, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return out, nil
}

// Stat implements FS.
func (m *MemFS) Stat(name string) (fs.FileInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := m.lookup("stat", name)
	if err != nil {
		return nil, err
	}
	return n.info(path.Base("/" + name)), nil
}

// info is n's FileInfo; the MemFS lock is held.
func (n *memNode) info(name string) fs.FileInfo {
	return memInfo{name: name, size: int64(len(n.data)), mode: n.mode, mtime: n.mtime}
}

type memInfo struct {
	name  string
	size  int64
	mode  fs.FileMode
	mtime time.Time
}

func (i memInfo) Name() string       { return i.name }
func (i memInfo) Size() int64        { return i.size }
func (i memInfo) Mode() fs.FileMode  { return i.mode }
func (i memInfo) ModTime() time.Time { return i.mtime }
func (i memInfo) IsDir() bool        { return i.mode.IsDir() }
func (i memInfo) Sys() any           { return nil }

// memFile is an open file (or directory) of a MemFS.
type memFile struct {
	fs                 *MemFS
	n                  *memNode
	name               string
	read, write, appnd bool
	pos                int64 // under fs.mu
	closed             bool  // under fs.mu
}

var _ File = (*memFile)(nil)

func (f *memFile) Name() string { return f.name }

// check returns the error of an operation on a closed handle or one not
// opened for it; f.fs.mu is held.
func (f *memFile) check(op string, write bool) error {
	switch {
	case f.closed:
		return pathErr(op, f.name, fs.ErrClosed)
	case f.n.dir && op != "sync" && op != "stat":
		return pathErr(op, f.name, syscall.EISDIR)
	case write && !f.write:
		return pathErr(op, f.name, syscall.EBADF)
	case op == "read" && !f.read:
		return pathErr(op, f.name, syscall.EBADF)
	}
	return nil
}

func (f *memFile) readAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, pathErr("read", f.name, syscall.EINVAL)
	}
	if off >= int64(len(f.n.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.n.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) writeAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, pathErr("write", f.name, syscall.EINVAL)
	}
	if end := off + int64(len(p)); end > int64(len(f.n.data)) {
		f.n.data = grow(f.n.data, end)
	}
	f.n.mtime = time.Now()
	return copy(f.n.data[off:], p), nil
}

// grow returns b extended with zeroes to n bytes.
func grow(b []byte, n int64) []byte {
	if n <= int64(cap(b)) {
		old := len(b)
		b = b[:n]
		clear(b[old:])
		return b
	}
	nb := make([]byte, n, max(n, int64(cap(b))*2))
	copy(nb, b)
	return nb
}

// ReadAt implements io.ReaderAt.
func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check("read", false); err != nil {
		return 0, err
	}
	return f.readAt(p, off)
}

// Read implements io.Reader.
func (f *memFile) Read(p []byte) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check("read", false); err != nil {
		return 0, err
	}
	n, err := f.readAt(p, f.pos)
	f.pos += int64(n)
	if n > 0 && err == io.EOF {
		err = nil
	}
	return n, err
}

// WriteAt implements io.WriterAt.
func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check("write", true); err != nil {
		return 0, err
	}
	if f.appnd {
		return 0, pathErr("write", f.name, errors.New("WriteAt on a file opened with O_APPEND"))
	}
	return f.writeAt(p, off)
}

// Write implements io.Writer.
func (f *memFile) Write(p []byte) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check("write", true); err != nil {
		return 0, err
	}
	if f.appnd {
		f.pos = int64(len(f.n.data))
	}
	n, err := f.writeAt(p, f.pos)
	f.pos += int64(n)
	return n, err
}

// WriteString implements io.StringWriter.
func (f *memFile) WriteString(s string) (int, error) { return f.Write([]byte(s)) }

// Stat implements File.
func (f *memFile) Stat() (fs.FileInfo, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check("stat", false); err != nil {
		return nil, err
	}
	return f.n.info(path.Base("/" + f.name)), nil
}

// Sync implements File: a file's content and size, or a directory's
// names, become what survives Crash.
func (f *memFile) Sync() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check("sync", false); err != nil {
		return err
	}
	if f.n.dir {
		clear(f.n.synced)
		for name, c := range f.n.children {
			f.n.synced[name] = c
		}
		return nil
	}
	f.n.durable = append(f.n.durable[:0], f.n.data...)
	return nil
}

// Truncate implements File.
func (f *memFile) Truncate(size int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check("truncate", true); err != nil {
		return err
	}
	if size < 0 {
		return pathErr("truncate", f.name, syscall.EINVAL)
	}
	if size <= int64(len(f.n.data)) {
		f.n.data = f.n.data[:size]
	} else {
		f.n.data = grow(f.n.data, size)
	}
	f.n.mtime = time.Now()
	return nil
}

// Close implements io.Closer.
func (f *memFile) Close() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return pathErr("close", f.name, fs.ErrClosed)
	}
	f.closed = true
	return nil
}
