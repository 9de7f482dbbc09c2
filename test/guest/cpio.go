package guest

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// File is one file the test adds to the guest's root file system.
type File struct {
	Path string // absolute path in the guest, e.g. /ferry-test/run
	Mode uint32 // permission bits; 0 means 0644
	Data []byte
}

// writeCPIO writes files as one cpio archive in the "newc" format the
// kernel unpacks into its initramfs, with an entry for every parent
// directory (the kernel creates none itself) and the trailer. Owners are
// root; times are zero.
func writeCPIO(w io.Writer, files []File) error {
	bw := bufio.NewWriter(w)
	dirs := map[string]bool{}
	var dirList []string
	for _, f := range files {
		if !strings.HasPrefix(f.Path, "/") || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return fmt.Errorf("guest file %q: want a clean absolute path", f.Path)
		}
		for d := path.Dir(f.Path); d != "/"; d = path.Dir(d) {
			if !dirs[d] {
				dirs[d] = true
				dirList = append(dirList, d)
			}
		}
	}
	sort.Strings(dirList) // parents before children
	ino := uint32(1)
	entry := func(name string, mode uint32, data []byte) error {
		name = strings.TrimPrefix(name, "/")
		hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		ino++
		if _, err := bw.WriteString(hdr + name + "\x00"); err != nil {
			return err
		}
		if err := pad(bw, len(hdr)+len(name)+1); err != nil {
			return err
		}
		if _, err := bw.Write(data); err != nil {
			return err
		}
		return pad(bw, len(data))
	}
	for _, d := range dirList {
		if err := entry(d, 0o040755, nil); err != nil {
			return err
		}
	}
	for _, f := range files {
		mode := f.Mode & 0o7777
		if mode == 0 {
			mode = 0o644
		}
		if err := entry(f.Path, 0o100000|mode, f.Data); err != nil {
			return err
		}
	}
	if err := entry("TRAILER!!!", 0, nil); err != nil {
		return err
	}
	return bw.Flush()
}

// pad writes the zeros that align n bytes to 4.
func pad(w *bufio.Writer, n int) error {
	_, err := w.Write(make([]byte, (4-n%4)%4))
	return err
}
