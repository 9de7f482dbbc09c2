package tier

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/ferry-io/ferry/internal/atomicfile"
	"github.com/ferry-io/ferry/internal/vfs"
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
	// Lazy, when set, is the key of a format-4 manifest whose map lies
	// under objects.log: the cache started from it (an adoption) and has
	// not read all of its pages yet (mapfmt.go).
	Lazy string `json:"lazy,omitempty"`
}

func loadMeta(fsys vfs.FS, dir string) (meta, bool, error) {
	b, err := vfs.ReadFile(fsys, filepath.Join(dir, "meta.json"))
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

func (m meta) save(fsys vfs.FS, dir string) error {
	b, _ := json.Marshal(m)
	return atomicfile.On(fsys).WriteFile(filepath.Join(dir, "meta.json"), b)
}

// objectMap is where each stored chunk lives: its newest base object
// version and the overlays applied over it, in order.
type objectMap struct {
	base     map[int64]uint64
	overlays map[int64][]overlay
	n        int // overlays in total
	// changed, if set, is called with each chunk whose entry changes.
	changed func(idx int64)

	// A map opened lazily from a format-4 manifest (mapfmt.go) has
	// pages not read yet: pending maps their page number to their key.
	// own records each chunk of a pending page changed since: true when
	// its entry was replaced (put, drop), false when overlays were only
	// appended to it, so the page's entry goes under them when it comes.
	pageChunks int64
	pending    map[int64]string
	own        map[int64]bool
}

// loaded reports whether chunk idx's entry is known (its page read).
func (m *objectMap) loaded(idx int64) bool {
	return m.pending == nil || m.pending[idx/m.pageChunks] == ""
}

// replaced notes that chunk idx's entry was replaced.
func (m *objectMap) replaced(idx int64) {
	if !m.loaded(idx) {
		m.own[idx] = true
	}
}

// mergePage puts the entries of page p, read from the store, under what
// changed since the map was opened.
func (m *objectMap) mergePage(p int64, ents map[int64]entry) {
	if m.pending[p] == "" {
		return
	}
	for idx, e := range ents {
		replaced, changed := m.own[idx]
		switch {
		case !changed:
			if e.ok {
				m.base[idx] = e.seq
			}
			if len(e.ovs) > 0 {
				m.overlays[idx] = e.ovs
				m.n += len(e.ovs)
			}
		case !replaced:
			if _, has := m.base[idx]; !has && e.ok {
				m.base[idx] = e.seq
			}
			if len(e.ovs) > 0 {
				m.overlays[idx] = append(slices.Clone(e.ovs), m.overlays[idx]...)
				m.n += len(e.ovs)
			}
		}
	}
	lo := p * m.pageChunks
	for idx := range m.own {
		if idx >= lo && idx < lo+m.pageChunks {
			delete(m.own, idx)
		}
	}
	delete(m.pending, p)
	if len(m.pending) == 0 {
		m.pending, m.own = nil, nil
	}
}

func (m *objectMap) touch(idx int64) {
	if m.changed != nil {
		m.changed(idx)
	}
}

func newObjectMap() *objectMap {
	return &objectMap{base: map[int64]uint64{}, overlays: map[int64][]overlay{}}
}

// stored reports whether chunk idx has content in the store. A chunk
// whose page is not read yet is not, unless its entry was replaced since
// (callers that need to know read the page first, Device.pageIn): one
// with overlays appended lacks what the page holds under them.
func (m *objectMap) stored(idx int64) bool {
	if !m.loaded(idx) && !m.own[idx] {
		return false
	}
	_, b := m.base[idx]
	return b || len(m.overlays[idx]) > 0
}

// put makes version seq chunk idx's base, replacing its overlays.
func (m *objectMap) put(idx int64, seq uint64) {
	m.touch(idx)
	m.replaced(idx)
	m.base[idx] = seq
	m.clearOverlays(idx)
}

func (m *objectMap) overlay(idx int64, o overlay) {
	m.touch(idx)
	if !m.loaded(idx) {
		if _, ok := m.own[idx]; !ok {
			m.own[idx] = false
		}
	}
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
	m.replaced(idx)
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

// keys returns the key of every object the map names.
func (m *objectMap) keys() map[string]bool {
	keys := make(map[string]bool, len(m.base))
	for idx, seq := range m.base {
		keys[chunkKey(idx, seq)] = true
	}
	for _, ovs := range m.overlays {
		for _, o := range ovs {
			keys[logKey(o.log)] = true
		}
	}
	return keys
}

// baseKey is chunk idx's base object key, or "" for zeroes.
func (m *objectMap) baseKey(idx int64) string {
	if seq, ok := m.base[idx]; ok {
		return chunkKey(idx, seq)
	}
	return ""
}

// Journal records (docs/FORMAT.md, objects.log):
//
//	put IDX chunks/<IDX, 16 hex>/<VERSION, 16 hex>
//	ovl IDX logs/<VERSION, 16 hex> LOG_OFFSET OFFSET LENGTH
//	drop IDX
func ovlRecord(idx int64, o overlay) string { return string(appendOvl(nil, idx, o)) }

func putRecord(idx int64, seq uint64) string { return string(appendPut(nil, idx, seq)) }

func appendPut(b []byte, idx int64, seq uint64) []byte {
	b = append(b, "put "...)
	b = strconv.AppendInt(b, idx, 10)
	b = append(b, " chunks/"...)
	b = appendHex16(b, uint64(idx))
	b = append(b, '/')
	return append(appendHex16(b, seq), '\n')
}

func appendOvl(b []byte, idx int64, o overlay) []byte {
	b = append(b, "ovl "...)
	b = strconv.AppendInt(b, idx, 10)
	b = append(b, " logs/"...)
	b = appendHex16(b, o.log)
	for _, v := range []uint32{o.logOff, o.off, o.length} {
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(v), 10)
	}
	return append(b, '\n')
}

// appendHex16 appends v as 16 lowercase hex digits.
func appendHex16(b []byte, v uint64) []byte {
	const digits = "0123456789abcdef"
	for shift := 60; shift >= 0; shift -= 4 {
		b = append(b, digits[v>>uint(shift)&0xf])
	}
	return b
}

// parseHex16 parses exactly 16 lowercase hex digits.
func parseHex16(b []byte) (uint64, bool) {
	if len(b) != 16 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | uint64(c-'0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

// parseDec parses a non-negative decimal number.
func parseDec(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var v int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	return v, true
}

// splitFields splits line at spaces into out and returns how many fields
// it found (at most len(out)+1: more means too many).
func splitFields(line []byte, out [][]byte) int {
	n := 0
	for {
		for len(line) > 0 && line[0] == ' ' {
			line = line[1:]
		}
		if len(line) == 0 {
			return n
		}
		end := bytes.IndexByte(line, ' ')
		if end < 0 {
			end = len(line)
		}
		if n == len(out) {
			return n + 1
		}
		out[n], line, n = line[:end], line[end:], n+1
	}
}

// scanRecords splits a journal into its newline-terminated lines; a torn
// last line (a crash while appending, before its fsync) is dropped.
func scanRecords(data []byte, atEOF bool) (advance int, token []byte, err error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), nil, nil
	}
	return 0, nil, nil
}

// newRecordScanner reads the newline-terminated records of r.
func newRecordScanner(r io.Reader) *bufio.Scanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	sc.Split(scanRecords)
	return sc
}

// loadObjects replays objects.log. A torn last line (crash while
// appending) is ignored: its record was never fsynced, so nothing relied
// on it. Parsing allocates nothing per record: a large volume's journal
// holds a line per stored chunk and overlay.
func loadObjects(fsys vfs.FS, dir string, chunkSize int64, objs *objectMap) (*objectMap, error) {
	f, err := vfs.Open(fsys, filepath.Join(dir, "objects.log"))
	if errors.Is(err, fs.ErrNotExist) {
		return objs, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := newRecordScanner(bufio.NewReaderSize(f, 256<<10))
	var fld [6][]byte
	for sc.Scan() {
		line := sc.Bytes()
		n := splitFields(line, fld[:])
		if n < 2 {
			continue
		}
		idx, ok := parseDec(fld[1])
		if !ok {
			continue
		}
		switch {
		case string(fld[0]) == "put" && n == 3:
			seq, ok := keySeq(idx, fld[2])
			if !ok {
				return nil, fmt.Errorf("objects.log: chunk %d: key %q is not this chunk's", idx, fld[2])
			}
			objs.put(idx, seq)
		case string(fld[0]) == "ovl" && n == 6:
			o, ok := parseOverlay(fld[2:6], chunkSize)
			if !ok {
				return nil, fmt.Errorf("objects.log: chunk %d: bad overlay %q", idx, line)
			}
			objs.overlay(idx, o)
		case string(fld[0]) == "drop":
			objs.drop(idx)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("objects.log: %w", err)
	}
	return objs, nil
}

// parseOverlay parses an ovl record's LOG LOG_OFFSET OFFSET LENGTH.
func parseOverlay(f [][]byte, chunkSize int64) (overlay, bool) {
	hex, ok := bytes.CutPrefix(f[0], []byte("logs/"))
	seq, ok1 := parseHex16(hex)
	logOff, ok2 := parseDec(f[1])
	off, ok3 := parseDec(f[2])
	n, ok4 := parseDec(f[3])
	if !ok || !ok1 || !ok2 || !ok3 || !ok4 || logOff > 1<<32-1 || n <= 0 || off+n > chunkSize {
		return overlay{}, false
	}
	return overlay{log: seq, logOff: uint32(logOff), off: uint32(off), length: uint32(n)}, true
}

// rewriteObjects compacts the journal to one line per object, streaming.
// Replayed over the map it was opened from (empty, or a format-4
// manifest's read lazily), it gives objs: a chunk whose entry was
// replaced gets a drop before its overlays when it has no base object.
func rewriteObjects(fsys vfs.FS, dir string, objs *objectMap) error {
	return atomicfile.On(fsys).WriteFunc(filepath.Join(dir, "objects.log"), func(w *bufio.Writer) error {
		var line []byte
		for idx, seq := range objs.base {
			line = appendPut(line[:0], idx, seq)
			if _, err := w.Write(line); err != nil {
				return err
			}
		}
		for idx, replaced := range objs.own {
			if _, b := objs.base[idx]; b || !replaced {
				continue
			}
			line = strconv.AppendInt(append(line[:0], "drop "...), idx, 10)
			if _, err := w.Write(append(line, '\n')); err != nil {
				return err
			}
		}
		for idx, ovs := range objs.overlays {
			if _, b := objs.base[idx]; !b && objs.loaded(idx) {
				// Zeroes under the overlays, whatever a map this
				// journal is replayed over says.
				line = strconv.AppendInt(append(line[:0], "drop "...), idx, 10)
				if _, err := w.Write(append(line, '\n')); err != nil {
					return err
				}
			}
			for _, o := range ovs {
				line = appendOvl(line[:0], idx, o)
				if _, err := w.Write(line); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func chunkName(idx int64) string { return strconv.FormatInt(idx, 10) }

// keySeq returns the version in chunk idx's object key.
func keySeq(idx int64, key []byte) (uint64, bool) {
	rest, ok := bytes.CutPrefix(key, []byte("chunks/"))
	if !ok || len(rest) != 33 || rest[16] != '/' {
		return 0, false
	}
	i, ok1 := parseHex16(rest[:16])
	seq, ok2 := parseHex16(rest[17:])
	return seq, ok1 && ok2 && int64(i) == idx
}
