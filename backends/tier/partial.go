package tier

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/local"
	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/internal/vfs"
)

// Small writes to chunks that are not cached do not fetch the chunk.
// The chunk is cached *partially*: a sparse file holding only the bytes
// written, an extent set saying which ones, and a map file (dirty/I.map)
// recording the extents durably. Its writes upload as extents of a shared
// log object, which the object map layers over the chunk's base object
// as overlays (docs/FORMAT.md). A chunk that collects too many overlays
// is compacted: fetched whole and uploaded as a new base version.

// extents is a set of byte ranges of one chunk, kept sorted and merged.
type extents struct {
	mu sync.Mutex
	r  []span // sorted by off, non-overlapping, non-adjacent
}

type span struct{ off, end int64 }

// add inserts [off, off+n).
func (e *extents) add(off, n int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.r = addSpan(e.r, span{off, off + n})
}

func addSpan(r []span, s span) []span {
	i := 0
	for i < len(r) && r[i].end < s.off {
		i++
	}
	j := i
	for j < len(r) && r[j].off <= s.end {
		s.off, s.end = min(s.off, r[j].off), max(s.end, r[j].end)
		j++
	}
	return slices.Replace(r, i, j, s)
}

// uncovered returns how many bytes of [off, off+n) the set lacks.
func (e *extents) uncovered(off, n int64) int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	missing := n
	for _, s := range e.r {
		if lo, hi := max(s.off, off), min(s.end, off+n); lo < hi {
			missing -= hi - lo
		}
	}
	return missing
}

// spans returns a copy of the set.
func (e *extents) spans() []span {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.r)
}

// mapName is the map file of chunk idx's partial copy in dirty/.
func mapName(idx int64) string { return chunkName(idx) + ".map" }

// loadMap reads a map file: one "OFFSET LENGTH" line per write. A torn
// last line (crash while appending, before any Flush) is ignored.
func loadMap(fsys vfs.FS, path string, chunkSize int64) (*extents, error) {
	f, err := vfs.Open(fsys, path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	e := &extents{}
	sc := newRecordScanner(f)
	var fld [2][]byte
	for sc.Scan() {
		n := splitFields(sc.Bytes(), fld[:])
		off, ok1 := parseDec(fld[0])
		length, ok2 := parseDec(fld[1])
		if n != 2 || !ok1 || !ok2 || length <= 0 || off+length > chunkSize {
			return nil, fmt.Errorf("%s: bad record %q", path, sc.Bytes())
		}
		e.add(off, length)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return e, nil
}

// overlay says bytes [off, off+n) of a chunk are bytes [logOff, logOff+n)
// of log object version log. Overlays apply in order over the chunk's
// base object (or zeroes).
type overlay struct {
	log         uint64
	logOff      uint32
	off, length uint32
}

// logKey is the key of log object version seq.
func logKey(seq uint64) string { return fmt.Sprintf("logs/%016x", seq) }

func logSeq(key string) (uint64, bool) {
	var seq uint64
	if n, err := fmt.Sscanf(key, "logs/%016x", &seq); n != 1 || err != nil {
		return 0, false
	}
	return seq, logKey(seq) == key
}

// Overlay is an overlay as a manifest records it (docs/FORMAT.md).
type Overlay struct {
	Log       string `json:"log"`
	LogOffset int64  `json:"log_offset"`
	Offset    int64  `json:"offset"`
	Length    int64  `json:"length"`
}

func (o overlay) public() Overlay {
	return Overlay{Log: logKey(o.log), LogOffset: int64(o.logOff), Offset: int64(o.off), Length: int64(o.length)}
}

func (o Overlay) private(chunkSize int64) (overlay, error) {
	seq, ok := logSeq(o.Log)
	if !ok || o.LogOffset < 0 || o.LogOffset > 1<<32-1 || o.Offset < 0 || o.Length <= 0 || o.Offset+o.Length > chunkSize {
		return overlay{}, fmt.Errorf("bad overlay %+v", o)
	}
	return overlay{log: seq, logOff: uint32(o.LogOffset), off: uint32(o.Offset), length: uint32(o.Length)}, nil
}

// assemble reads a chunk's content from s: its base object (key, or
// zeroes when key is empty) with the overlays applied in order. The result
// may be shorter than the chunk: the rest is zeroes. It is read into
// buf's storage when that has room for a chunk.
func assemble(ctx context.Context, s store.Store, key string, ovs []overlay, chunkSize int64, buf []byte) ([]byte, error) {
	b := buf[:0]
	if key != "" {
		// A whole-object Get: the store checks it against its checksum.
		got, err := s.Get(ctx, key, b)
		if err != nil {
			return nil, err
		}
		b = got[:min(int64(len(got)), chunkSize)]
	}
	if len(ovs) == 0 {
		return b, nil
	}
	b = zeroExtend(b, chunkSize)
	if err := applyOverlays(ctx, s, ovs, 0, b, nil); err != nil {
		return nil, err
	}
	return trimZeroTail(b), nil
}

// zeroExtend returns b extended to n bytes, the new ones zero.
func zeroExtend(b []byte, n int64) []byte {
	have := len(b)
	b = slices.Grow(b, int(n)-have)[:n]
	clear(b[have:])
	return b
}

// readChunkRange fills buf with bytes [lo, lo+len(buf)) of a chunk whose
// base object is key ("" for zeroes) under overlays ovs. It costs one
// request for the base and one per log object the range meets (a chunk's
// ranges in one log object are stored together), run concurrently.
func readChunkRange(ctx context.Context, s store.Store, key string, ovs []overlay, lo int64, buf []byte) error {
	clear(buf)
	var base func(context.Context) error
	if key != "" {
		base = func(ctx context.Context) error {
			b, err := s.GetRange(ctx, key, lo, int64(len(buf)))
			copy(buf, b) // a short object reads as zeroes past its end
			return err
		}
	}
	return applyOverlays(ctx, s, ovs, lo, buf, base)
}

// applyOverlays applies overlays ovs to buf, which holds bytes
// [lo, lo+len(buf)) of a chunk, after running base (if any) to fill it;
// base runs concurrently with the log reads.
func applyOverlays(ctx context.Context, s store.Store, ovs []overlay, lo int64, buf []byte, base func(context.Context) error) error {
	hi := lo + int64(len(buf))
	// The log bytes needed, per log object: [from, to).
	type need struct{ from, to int64 }
	needs := map[uint64]*need{}
	var order []uint64
	for _, o := range ovs {
		a, b := max(int64(o.off), lo), min(int64(o.off)+int64(o.length), hi)
		if a >= b {
			continue
		}
		la, lb := int64(o.logOff)+a-int64(o.off), int64(o.logOff)+b-int64(o.off)
		if n := needs[o.log]; n != nil {
			n.from, n.to = min(n.from, la), max(n.to, lb)
		} else {
			needs[o.log] = &need{la, lb}
			order = append(order, o.log)
		}
	}
	pieces := make([][]byte, len(order))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	if base != nil {
		g.Go(func() error { return base(gctx) })
	}
	for i, seq := range order {
		g.Go(func() error {
			n := needs[seq]
			b, err := s.GetRange(gctx, logKey(seq), n.from, n.to-n.from)
			if err != nil {
				return fmt.Errorf("%s: %w", logKey(seq), err)
			}
			if int64(len(b)) != n.to-n.from {
				return fmt.Errorf("%s: %d bytes at %d, want %d", logKey(seq), len(b), n.from, n.to-n.from)
			}
			pieces[i] = b
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	at := make(map[uint64][]byte, len(order))
	for i, seq := range order {
		at[seq] = pieces[i]
	}
	for _, o := range ovs {
		a, b := max(int64(o.off), lo), min(int64(o.off)+int64(o.length), hi)
		if a >= b {
			continue
		}
		la := int64(o.logOff) + a - int64(o.off) - needs[o.log].from
		copy(buf[a-lo:b-lo], at[o.log][la:])
	}
	return nil
}

// covered is the number of bytes in the set.
func (e *extents) covered() int64 {
	n, _ := e.size()
	return n
}

// size returns the bytes in the set and how many ranges hold them,
// without copying it (compactLocked runs for every candidate of a batch).
func (e *extents) size() (bytes int64, ranges int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.r {
		bytes += s.end - s.off
	}
	return bytes, len(e.r)
}

// newPartial caches chunk idx partially: an empty sparse file and an
// empty map in dirty/. It holds no budget until written.
//
// The map comes first: a crash that leaves the file but no map would
// have it taken for a whole chunk, and its zeroes uploaded over what the
// store holds. (A map without its file is removed at start-up.)
func (d *Device) newPartial(idx int64) (*chunk, error) {
	path := filepath.Join(d.cfg.Dir, "dirty", chunkName(idx))
	mpath := filepath.Join(d.cfg.Dir, "dirty", mapName(idx))
	d.cfg.FS.Remove(path)
	f, err := d.cfg.FS.OpenFile(mpath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("chunk %d: %w", idx, err)
	}
	dev, err := local.On(d.cfg.FS).CreateScratch(path, d.chunkSize())
	if err != nil {
		f.Close()
		d.cfg.FS.Remove(mpath)
		return nil, fmt.Errorf("chunk %d: %w", idx, err)
	}
	c := &chunk{idx: idx, dev: dev, dirty: true, ext: &extents{}, since: &extents{}, mapf: f}
	c.lastUse.Store(time.Now().UnixNano())
	d.mu.Lock()
	d.chunks[idx] = c
	d.mu.Unlock()
	return c, nil
}

// openDirty opens chunk idx found in dirty/ at start-up. With a map it is
// partial: only the mapped bytes are its writes (the rest of the file may
// be a fetched copy a crash tore), and only they upload.
//
// A file shorter than a chunk was torn while it was created (a crash
// between its creation and its ftruncate): it never held a write, since
// writes come after, and a Flush makes its size durable with its data.
// It is removed and nil returned: the chunk is what the store holds.
func (d *Device) openDirty(idx int64) (*chunk, error) {
	path := filepath.Join(d.cfg.Dir, "dirty", chunkName(idx))
	dev, err := local.On(d.cfg.FS).Open(path)
	if err != nil {
		return nil, err
	}
	if dev.Size() != d.chunkSize() {
		dev.Close()
		d.log.Warn("dropping a chunk file torn at its creation; it never held a write", "chunk", idx, "bytes", dev.Size())
		for _, p := range []string{path, filepath.Join(d.cfg.Dir, "dirty", mapName(idx))} {
			if err := d.cfg.FS.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
		}
		return nil, nil
	}
	c := &chunk{idx: idx, dev: dev, dirty: true, full: true}
	c.ver.Store(1)
	mpath := filepath.Join(d.cfg.Dir, "dirty", mapName(idx))
	ext, err := loadMap(d.cfg.FS, mpath, d.chunkSize())
	if errors.Is(err, fs.ErrNotExist) {
		c.charge.Store(d.chunkSize())
		return c, nil
	}
	if err == nil {
		c.mapf, err = d.cfg.FS.OpenFile(mpath, os.O_WRONLY|os.O_APPEND, 0)
	}
	if err != nil {
		dev.Close()
		return nil, err
	}
	c.full, c.ext, c.since = false, ext, &extents{r: ext.spans()}
	c.charge.Store(ext.covered())
	return c, nil
}

// track records a write of [off, off+n) in the chunk's extents and map;
// c.mu is held.
func (c *chunk) track(off, n int64) error {
	c.ext.add(off, n)
	if c.since != nil {
		c.since.add(off, n)
	}
	if _, err := fmt.Fprintf(c.mapf, "%d %d\n", off, n); err != nil {
		return fmt.Errorf("chunk %d map: %w", c.idx, err)
	}
	return nil
}

// closeMap closes and deletes the chunk's map; c.mu is held exclusively.
func (c *chunk) closeMap(fsys vfs.FS, dir string) {
	if c.mapf == nil {
		return
	}
	c.mapf.Close()
	fsys.Remove(filepath.Join(dir, "dirty", mapName(c.idx)))
	c.mapf = nil
}

// fetch reads chunk idx from the store (base object key, overlays ovs)
// within FetchTimeout.
func (d *Device) fetch(ctx context.Context, idx int64, key string, ovs []overlay, buf []byte) ([]byte, error) {
	fctx, cancel := context.WithTimeout(ctx, d.cfg.FetchTimeout)
	defer cancel()
	b, err := assemble(fctx, d.cfg.Store, key, ovs, d.chunkSize(), buf)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, store.ErrUnavailable) {
			return nil, fmt.Errorf("chunk %d: %w (%v)", idx, device.ErrUnavailable, err)
		}
		return nil, fmt.Errorf("chunk %d (%s): %w", idx, key, err)
	}
	return b, nil
}

// complete makes a partial chunk full: the bytes it lacks are fetched
// from the store (nothing is fetched when it lacks none, or when the store
// holds nothing of it). Its map stays until it uploads, so a crash still
// uploads only its writes.
func (d *Device) complete(ctx context.Context, c *chunk) error {
	cs := d.chunkSize()
	c.mu.RLock()
	gone, full := c.gone, c.full
	c.mu.RUnlock()
	if gone {
		return errGone
	}
	if full {
		return nil
	}
	need := max(0, cs-c.charge.Load())
	if err := d.reserve(ctx, need, false); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone || c.full {
		d.cfg.Budget.release(need)
		if c.gone {
			return errGone
		}
		return nil
	}
	var holes []span
	at := int64(0)
	for _, s := range c.ext.spans() {
		if s.off > at {
			holes = append(holes, span{at, s.off})
		}
		at = s.end
	}
	if at < cs {
		holes = append(holes, span{at, cs})
	}
	d.mu.Lock()
	stored := d.objects.stored(c.idx)
	key, ovs := d.objects.baseKey(c.idx), slices.Clone(d.objects.overlays[c.idx])
	d.mu.Unlock()
	if len(holes) > 0 && stored {
		data, err := d.fetch(ctx, c.idx, key, ovs, getBuf(cs))
		if err != nil {
			d.cfg.Budget.release(need)
			return err
		}
		defer putBuf(data, cs)
		for _, h := range holes {
			if h.off >= int64(len(data)) {
				break // the file reads as zeroes there
			}
			if err := c.dev.WriteAt(ctx, data[h.off:min(h.end, int64(len(data)))], h.off); err != nil {
				d.cfg.Budget.release(need)
				return fmt.Errorf("chunk %d: %w", c.idx, err)
			}
		}
	}
	if extra := c.charge.Load() + need - cs; extra > 0 {
		d.cfg.Budget.release(extra)
	}
	c.charge.Store(cs)
	d.mu.Lock()
	c.full = true
	d.mu.Unlock()
	return nil
}

// Compaction limits. A partial chunk is rewritten whole at its next
// upload (instead of adding overlays) when
//
//   - its overlays would come from more than maxChunkLogs log objects: a
//     read of the chunk costs one request per log object it meets, plus
//     one for the base, so this bounds the requests of any read;
//   - it would have more than maxOverlays overlays (memory of one chunk);
//   - the volume holds overlayCap overlays or more and the chunk has
//     some (memory of the volume: about 24 bytes an overlay, so 6 MiB for
//     the 262,144 any volume may hold, 24 MiB per TiB above 64 GiB).
//
// Until issue #16 the per-chunk limit was 64 overlays, ranges rather than
// log objects: random 4 KiB writes put a few hundred separate ranges into
// a 4 MiB chunk before it uploads, so almost every such upload became a
// whole-chunk rewrite, 4 MiB for a few hundred KiB written (3.9 bytes
// uploaded per byte written, TestRandomWritesFourTimesCacheAmplification).
// Ranges from one upload sit together in one log object, so they cost one
// request; what a read pays for is the number of uploads, which
// maxChunkLogs bounds.
const (
	maxChunkLogs = 16
	maxOverlays  = 1024
)

func (d *Device) overlayCap() int {
	return max(1<<18, int(4*d.meta.Size/d.chunkSize()))
}

// chunkLogs is how many log objects overlays ovs come from. One upload's
// overlays of a chunk are consecutive and name one log object no other
// upload names, so that is the number of runs.
func chunkLogs(ovs []overlay) int {
	n := 0
	for i, o := range ovs {
		if i == 0 || o.log != ovs[i-1].log {
			n++
		}
	}
	return n
}

// compactLocked reports whether partial chunk c should upload whole
// rather than as overlays; d.mu is held.
func (d *Device) compactLocked(c *chunk) bool {
	n, ranges := c.since.size() // what a log upload would send
	if n >= d.chunkSize()/2 {
		return true // mostly rewritten: whole is cheaper than overlays
	}
	ovs := d.objects.overlays[c.idx]
	have := len(ovs)
	if have+ranges > maxOverlays || (have > 0 && d.objects.n >= d.overlayCap()) {
		return true
	}
	return have > 0 && chunkLogs(ovs)+1 > maxChunkLogs
}

// logMax bounds the bytes of one log object.
const logMax = 8 << 20

// gather picks partial chunks to upload in one log object with c, which
// the caller holds; they are marked uploading.
func (d *Device) gather(c *chunk) []*chunk {
	d.mu.Lock()
	defer d.mu.Unlock()
	batch := []*chunk{c}
	total := c.charge.Load()
	now := time.Now()
	// The chunks with the most writes not yet uploaded first: fewer,
	// larger uploads per chunk (see partialDelay).
	type cand struct {
		c *chunk
		n int64
	}
	var cands []cand
	for _, o := range d.chunks {
		if o == c || !o.dirty || o.uploading || o.full || o.since == nil || !d.dueLocked(o, now) {
			continue
		}
		if d.compactLocked(o) {
			continue
		}
		n, _ := o.since.size()
		cands = append(cands, cand{o, n})
	}
	slices.SortFunc(cands, func(a, b cand) int { return cmp.Compare(b.n, a.n) })
	for _, o := range cands {
		if total+o.c.charge.Load() > logMax {
			continue
		}
		o.c.uploading = true
		batch = append(batch, o.c)
		total += o.c.charge.Load()
	}
	return batch
}

// uploadLog uploads the writes of partial chunks as one log object and
// journals them as overlays. A chunk not written meanwhile then leaves
// the cache: the store has all of it.
//
// batch[0] is the caller's chunk: the caller marked it uploading and
// releases it. gather marked the others, and uploadLog releases them.
// Every mark is cleared once, by whoever set it. (upload used to clear
// batch[0] again after uploadLog had: in between, another uploader could
// gather the chunk, the second clear released it, and a third took it
// too. Of two log uploads of one chunk at once, the one that found no
// writes to take dropped the chunk from the cache, and the other then
// left the dropped chunk's overlays out: flushed writes were lost.)
func (d *Device) uploadLog(ctx context.Context, batch []*chunk) error {
	owner := batch[0] // batch is sorted below
	defer func() {
		d.mu.Lock()
		for _, c := range batch {
			if c != owner {
				c.uploading = false
			}
		}
		d.mu.Unlock()
		d.cfg.Budget.wake()
	}()
	slices.SortFunc(batch, func(a, b *chunk) int { return cmp.Compare(a.idx, b.idx) })
	type piece struct {
		c    *chunk
		ver  uint64
		ovs  []overlay
		prev *extents // c.since when the upload took the chunk's writes
	}
	var pieces []piece
	var body []byte
	ok := false
	defer func() { // after the chunks' locks below are released
		if !ok {
			for _, p := range pieces {
				p.c.restoreSince(p.prev)
			}
		}
	}()
	for _, c := range batch {
		c.mu.Lock()
		if c.gone || !c.dirty || c.mapf == nil {
			c.mu.Unlock()
			continue
		}
		// Written since gather chose it (it may have been new and empty
		// then): a chunk now due for compaction uploads whole, by itself.
		d.mu.Lock()
		compact := !c.full && d.compactLocked(c)
		d.mu.Unlock()
		if compact || c.full {
			c.mu.Unlock()
			continue
		}
		p := piece{c: c, ver: c.ver.Load(), prev: c.since}
		c.written.Store(0)
		d.mu.Lock() // dueLocked and compactLocked read c.since under d.mu
		c.since = &extents{}
		d.mu.Unlock()
		pieces = append(pieces, p)
		// Only the writes no earlier upload sent: a chunk written during
		// its last upload keeps all its writes in the cache (ext), but
		// the store has those that upload took. Resending them was 3
		// bytes uploaded per byte written under constant small writes
		// when uploads were slow.
		for _, s := range p.prev.spans() {
			at := len(body)
			body = append(body, make([]byte, s.end-s.off)...)
			if err := c.dev.ReadAt(ctx, body[at:], s.off); err != nil {
				c.mu.Unlock()
				return fmt.Errorf("chunk %d: %w", c.idx, err)
			}
			pieces[len(pieces)-1].ovs = append(pieces[len(pieces)-1].ovs, overlay{logOff: uint32(at), off: uint32(s.off), length: uint32(s.end - s.off)})
		}
		c.mu.Unlock()
	}
	if len(pieces) == 0 {
		return nil
	}
	seq, err := d.allocSeq()
	if err != nil {
		return err
	}
	defer d.settle(seq)
	if len(body) > 0 {
		if err := d.cfg.Store.Put(ctx, logKey(seq), body, store.PutOptions{}); err != nil {
			return err
		}
		d.cfg.Metrics.upload(UploadLog, len(body))
	}
	for _, p := range pieces {
		p.c.mu.Lock()
		defer p.c.mu.Unlock()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var rec strings.Builder
	for _, p := range pieces {
		if p.c.gone {
			continue // dropped meanwhile: its overlays must not return
		}
		for i := range p.ovs {
			p.ovs[i].log = seq
			rec.WriteString(ovlRecord(p.c.idx, p.ovs[i]))
		}
	}
	if rec.Len() > 0 {
		if err := d.journalLocked(rec.String()); err != nil {
			return err
		}
	}
	delete(d.inflight, seq)
	ok = true
	for _, p := range pieces {
		c := p.c
		if c.gone {
			continue
		}
		for _, o := range p.ovs {
			d.objects.overlay(c.idx, o)
		}
		d.dropUploadedLocked(c, p.ver)
	}
	return nil
}

// restoreSince puts back the writes an upload took (prev) and failed to
// store, so the chunk's next upload sends them again.
func (c *chunk) restoreSince(prev *extents) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev == nil || c.since == nil {
		return
	}
	for _, s := range prev.spans() {
		c.since.add(s.off, s.end-s.off)
	}
}

// dropUploadedLocked drops partial chunk c from the cache once the store
// holds all of it, unless it was written since version ver; c.mu and d.mu
// are held.
func (d *Device) dropUploadedLocked(c *chunk, ver uint64) {
	if c.ver.Load() != ver || d.chunks[c.idx] != c {
		// Written meanwhile: stays dirty, and its next upload sends what
		// was written since this one took its writes (c.since).
		return
	}
	c.gone, c.dirty = true, false
	delete(d.chunks, c.idx)
	delete(d.unflushed, c)
	c.dev.Close()
	d.cfg.FS.Remove(filepath.Join(d.cfg.Dir, "dirty", chunkName(c.idx)))
	c.closeMap(d.cfg.FS, d.cfg.Dir)
	d.cfg.Budget.release(c.charge.Load())
	d.space.Broadcast()
}

// uploadCompact uploads partial chunk c whole, as a new base version:
// what the store holds of it with the chunk's writes on top, assembled in
// memory (so compaction takes no cache space). The new version replaces
// the chunk's overlays.
func (d *Device) uploadCompact(ctx context.Context, c *chunk) error {
	cs := d.chunkSize()
	d.mu.Lock()
	key, ovs := d.objects.baseKey(c.idx), slices.Clone(d.objects.overlays[c.idx])
	d.mu.Unlock()
	data := getBuf(cs)
	if c.ext.covered() < cs { // else the writes replace all of it
		var err error
		if data, err = d.fetch(ctx, c.idx, key, ovs, data); err != nil {
			return err
		}
	}
	stored := int64(len(data)) // bytes past it are zeroes
	data = slices.Grow(data, int(cs)-len(data))[:cs]
	defer putBuf(data, cs)
	c.mu.Lock()
	if c.gone || !c.dirty || c.full {
		c.mu.Unlock()
		return nil // dropped, or completed: the whole-chunk path uploads it
	}
	ver := c.ver.Load()
	c.written.Store(0)
	prev := c.since
	d.mu.Lock() // dueLocked and compactLocked read c.since under d.mu
	c.since = &extents{}
	d.mu.Unlock()
	ok := false
	defer func() { // after c.mu is released below
		if !ok {
			c.restoreSince(prev)
		}
	}()
	at := stored // zero what neither the store nor the writes fill
	for _, s := range c.ext.spans() {
		if s.off > at {
			clear(data[at:s.off])
		}
		at = max(at, s.end)
		if err := c.dev.ReadAt(ctx, data[s.off:s.end], s.off); err != nil {
			c.mu.Unlock()
			return fmt.Errorf("chunk %d: %w", c.idx, err)
		}
	}
	clear(data[at:])
	c.mu.Unlock()
	seq, newKey, err := d.putVersion(ctx, c.idx, data, UploadCompaction)
	if err != nil {
		return err
	}
	defer d.settle(seq)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone {
		d.cfg.Store.Delete(context.WithoutCancel(ctx), newKey)
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !slices.Equal(ovs, d.objects.overlays[c.idx]) || key != d.objects.baseKey(c.idx) {
		// The store's copy changed under the fetch (cannot happen while
		// this uploader holds the chunk; kept as a guard).
		return fmt.Errorf("chunk %d: overlays changed during compaction", c.idx)
	}
	if err := d.journalPutLocked(c.idx, seq); err != nil {
		return err
	}
	ok = true
	d.dropUploadedLocked(c, ver)
	return nil
}

// isMapName reports whether a dirty/ entry is a map file, and whose.
func isMapName(name string) (int64, bool) {
	base, ok := strings.CutSuffix(name, ".map")
	if !ok {
		return 0, false
	}
	idx, err := strconv.ParseInt(base, 10, 64)
	return idx, err == nil
}
