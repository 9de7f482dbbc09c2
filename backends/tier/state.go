package tier

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ferry-io/ferry/backends/local"
)

// The local cache directory of one volume:
//
//	meta.json      volume geometry and counters, replaced atomically
//	objects.log    append-only journal: "put INDEX KEY" / "drop INDEX" lines,
//	               fsynced before a chunk's local copy may be evicted
//	dirty/INDEX    chunks with writes not yet uploaded (fsynced by Flush)
//	clean/INDEX    chunks identical to their uploaded object (disposable)

type meta struct {
	Version   int   `json:"version"`
	Size      int64 `json:"size"`
	ChunkSize int64 `json:"chunk_size"`
	// NextSeq bounds the object versions handed out: every version below
	// it may have been used. Versions are leased in blocks so an upload
	// does not cost a meta.json write.
	NextSeq  uint64 `json:"next_seq"`
	Manifest uint64 `json:"manifest"`
}

func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing to remove
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return local.SyncDir(filepath.Dir(path))
}

func loadMeta(dir string) (meta, bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return meta{}, false, nil
	}
	if err != nil {
		return meta{}, false, err
	}
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return meta{}, false, fmt.Errorf("meta.json: %w", err)
	}
	if m.Version != 1 {
		return meta{}, false, fmt.Errorf("meta.json: unknown version %d", m.Version)
	}
	return m, true, nil
}

func (m meta) save(dir string) error {
	b, _ := json.Marshal(m)
	return writeFileAtomic(filepath.Join(dir, "meta.json"), b)
}

// objectMap is where each stored chunk lives: its newest base object
// version and the overlays applied over it, in order.
type objectMap struct {
	base     map[int64]uint64
	overlays map[int64][]overlay
	n        int // overlays in total
	// changed, if set, is called with each chunk whose entry changes.
	changed func(idx int64)
}

func (m *objectMap) touch(idx int64) {
	if m.changed != nil {
		m.changed(idx)
	}
}

func newObjectMap() *objectMap {
	return &objectMap{base: map[int64]uint64{}, overlays: map[int64][]overlay{}}
}

// stored reports whether chunk idx has content in the store.
func (m *objectMap) stored(idx int64) bool {
	_, b := m.base[idx]
	return b || len(m.overlays[idx]) > 0
}

// put makes version seq chunk idx's base, replacing its overlays.
func (m *objectMap) put(idx int64, seq uint64) {
	m.touch(idx)
	m.base[idx] = seq
	m.clearOverlays(idx)
}

func (m *objectMap) overlay(idx int64, o overlay) {
	m.touch(idx)
	m.overlays[idx] = append(m.overlays[idx], o)
	m.n++
}

func (m *objectMap) clearOverlays(idx int64) {
	m.n -= len(m.overlays[idx])
	delete(m.overlays, idx)
}

// drop makes chunk idx all zeroes.
func (m *objectMap) drop(idx int64) {
	m.touch(idx)
	delete(m.base, idx)
	m.clearOverlays(idx)
}

// indexes returns every chunk with content in the store.
func (m *objectMap) indexes() []int64 {
	out := make([]int64, 0, len(m.base))
	for idx := range m.base {
		out = append(out, idx)
	}
	for idx := range m.overlays {
		if _, b := m.base[idx]; !b {
			out = append(out, idx)
		}
	}
	return out
}

// baseKey is chunk idx's base object key, or "" for zeroes.
func (m *objectMap) baseKey(idx int64) string {
	if seq, ok := m.base[idx]; ok {
		return chunkKey(idx, seq)
	}
	return ""
}

func ovlRecord(idx int64, o overlay) string {
	return fmt.Sprintf("ovl %d %s %d %d %d\n", idx, logKey(o.log), o.logOff, o.off, o.length)
}

// loadObjects replays objects.log. A torn last line (crash while
// appending) is ignored: its record was never fsynced, so nothing relied
// on it.
func loadObjects(dir string, chunkSize int64) (*objectMap, error) {
	objs := newObjectMap()
	f, err := os.Open(filepath.Join(dir, "objects.log"))
	if errors.Is(err, fs.ErrNotExist) {
		return objs, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadString('\n')
		if err == io.EOF {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		idx, perr := strconv.ParseInt(fields[1], 10, 64)
		if perr != nil {
			continue
		}
		switch {
		case fields[0] == "put" && len(fields) == 3:
			seq, ok := keySeq(idx, fields[2])
			if !ok {
				return nil, fmt.Errorf("objects.log: chunk %d: key %q is not this chunk's", idx, fields[2])
			}
			objs.put(idx, seq)
		case fields[0] == "ovl" && len(fields) == 6:
			var o Overlay
			o.Log = fields[2]
			_, e1 := fmt.Sscan(fields[3], &o.LogOffset)
			_, e2 := fmt.Sscan(fields[4], &o.Offset)
			_, e3 := fmt.Sscan(fields[5], &o.Length)
			ov, err := o.private(chunkSize)
			if e1 != nil || e2 != nil || e3 != nil || err != nil {
				return nil, fmt.Errorf("objects.log: chunk %d: bad overlay %q", idx, strings.TrimSpace(line))
			}
			objs.overlay(idx, ov)
		case fields[0] == "drop":
			objs.drop(idx)
		}
	}
}

// rewriteObjects compacts the journal to one line per object.
func rewriteObjects(dir string, objs *objectMap) error {
	var sb strings.Builder
	for idx, seq := range objs.base {
		fmt.Fprintf(&sb, "put %d %s\n", idx, chunkKey(idx, seq))
	}
	for idx, ovs := range objs.overlays {
		for _, o := range ovs {
			sb.WriteString(ovlRecord(idx, o))
		}
	}
	return writeFileAtomic(filepath.Join(dir, "objects.log"), []byte(sb.String()))
}

func chunkName(idx int64) string { return strconv.FormatInt(idx, 10) }

// keySeq returns the version in chunk idx's object key.
func keySeq(idx int64, key string) (uint64, bool) {
	var i int64
	var seq uint64
	if n, err := fmt.Sscanf(key, "chunks/%016x/%016x", &i, &seq); n != 2 || err != nil || i != idx {
		return 0, false
	}
	return seq, chunkKey(idx, seq) == key
}
