package tier

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-io/ferry/backends/store"
)

// Paged maps (docs/FORMAT.md, "Manifests, format 4"): a format-4
// manifest does not hold the volume's map. It names a base, a page table
// listing one map page per pageChunks chunk indices, and a bounded chain
// of deltas, each holding the entries of the chunks that changed between
// two recovery points. A recovery point uploads one delta and the
// manifest; every maxDeltas recovery points (or when the deltas grow
// large) it writes a new base instead, rewriting only the pages that
// changed since the last one. A reader of the newest manifest fetches the
// base and the deltas (a bounded number of objects, whatever the size of
// the volume) and each page when it first needs a chunk in it.

const (
	manifestV4  = "ferry-manifest/4"
	baseFormat  = "ferry-map-base/1"
	pageFormat  = "ferry-map-page/1"
	deltaFormat = "ferry-map-delta/1"
)

// pageChunks is how many chunk indices a map page covers (the base
// records it; readers use the base's figure). Tests make it small.
var pageChunks int64 = 4096

// readPagesAhead, when false (tests), leaves pages to be read only when a
// chunk in them is needed.
var readPagesAhead = true

// maxDeltas bounds a manifest's chain of deltas: the recovery point that
// would make it longer writes a new base instead.
const maxDeltas = 16

// deltaShare bounds the entries the deltas may hold in total: a new base
// is written when they exceed the capacity of the pages they touch
// divided by deltaShare (rewriting those pages then costs at most
// deltaShare times what the deltas hold). Tests set 0: no bound.
var deltaShare int64 = 4

// Keys of the map's objects; versions come from the volume's object
// version sequence (so they carry the writer's generation and are never
// reused).
func basePath(seq uint64) string  { return fmt.Sprintf("bases/%016x", seq) }
func pagePath(seq uint64) string  { return fmt.Sprintf("pages/%016x", seq) }
func deltaPath(seq uint64) string { return fmt.Sprintf("deltas/%016x", seq) }

// mapPrefixes are where the map objects of format 4 live.
var mapPrefixes = []string{"bases/", "pages/", "deltas/"}

// mapObjectSeq parses the version of a base, page or delta key.
func mapObjectSeq(key string) (uint64, bool) {
	for _, p := range mapPrefixes {
		if len(key) == len(p)+16 && key[:len(p)] == p {
			return parseHex16([]byte(key[len(p):]))
		}
	}
	return 0, false
}

// mapBase is a page table.
type mapBase struct {
	Format     string `json:"format"`
	PageChunks int64  `json:"page_chunks"`
	// Pages: decimal page number → key of the page object. A page not
	// listed holds no entries (its chunks are zeroes, unless a delta
	// says otherwise).
	Pages    map[string]string `json:"pages"`
	Checksum string            `json:"checksum,omitempty"`
}

// mapPage holds the entries of the chunks [Page×PageChunks,
// (Page+1)×PageChunks) as of its base; a chunk not listed is zeroes.
type mapPage struct {
	Format     string               `json:"format"`
	Page       int64                `json:"page"`
	PageChunks int64                `json:"page_chunks"`
	Chunks     map[string]string    `json:"chunks"`
	Overlays   map[string][]Overlay `json:"overlays,omitempty"`
	Checksum   string               `json:"checksum,omitempty"`
}

// mapDelta holds the entries that changed between two recovery points: a
// chunk listed in Chunks or Overlays has exactly that entry (its base
// object, or zeroes, then its overlays); a chunk listed in Zero is
// zeroes.
type mapDelta struct {
	Format   string               `json:"format"`
	Chunks   map[string]string    `json:"chunks"`
	Overlays map[string][]Overlay `json:"overlays,omitempty"`
	Zero     []int64              `json:"zero,omitempty"`
	Checksum string               `json:"checksum,omitempty"`
}

// checksumOf is the lower-case hex SHA-256 of v's JSON encoding; v's
// Checksum must be empty (and so omitted).
func checksumOf(v any) string {
	b, _ := json.Marshal(v)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func (b mapBase) sum() string  { b.Checksum = ""; return checksumOf(b) }
func (p mapPage) sum() string  { p.Checksum = ""; return checksumOf(p) }
func (d mapDelta) sum() string { d.Checksum = ""; return checksumOf(d) }

// errDamaged: a map object whose checksum does not match, or that is not
// what its manifest says it is.
var errDamaged = errors.New("damaged map object")

func getMapObject(ctx context.Context, s store.Store, key string, v any) error {
	b, err := s.Get(ctx, key, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w: %v", key, errDamaged, err)
	}
	return nil
}

func readBase(ctx context.Context, s store.Store, key string) (mapBase, error) {
	var b mapBase
	if err := getMapObject(ctx, s, key, &b); err != nil {
		return b, err
	}
	if b.Format != baseFormat || b.Checksum != b.sum() || b.PageChunks <= 0 {
		return b, fmt.Errorf("%s: %w", key, errDamaged)
	}
	return b, nil
}

func readPage(ctx context.Context, s store.Store, key string, page, perPage int64) (mapPage, error) {
	var p mapPage
	if err := getMapObject(ctx, s, key, &p); err != nil {
		return p, err
	}
	if p.Format != pageFormat || p.Checksum != p.sum() || p.Page != page || p.PageChunks != perPage {
		return p, fmt.Errorf("%s: %w", key, errDamaged)
	}
	return p, nil
}

func readDelta(ctx context.Context, s store.Store, key string) (mapDelta, error) {
	var d mapDelta
	if err := getMapObject(ctx, s, key, &d); err != nil {
		return d, err
	}
	if d.Format != deltaFormat || d.Checksum != d.sum() {
		return d, fmt.Errorf("%s: %w", key, errDamaged)
	}
	return d, nil
}

// basePages parses a base's page table.
func basePages(b mapBase) (map[int64]string, error) {
	out := make(map[int64]string, len(b.Pages))
	for p, key := range b.Pages {
		n, err := strconv.ParseInt(p, 10, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("page table: bad page number %q", p)
		}
		if _, ok := mapObjectSeq(key); !ok || key[:6] != "pages/" {
			return nil, fmt.Errorf("page table: page %d: bad key %q", n, key)
		}
		out[n] = key
	}
	return out, nil
}

// entry is one chunk's place in the store: its base object version (ok
// false: zeroes) and its overlays.
type entry struct {
	seq uint64
	ok  bool
	ovs []overlay
}

// parseEntries parses a page's or delta's chunks and overlays into
// entries, checking every index against [lo, hi). Entries of chunks at
// or past the volume's size are left out: the volume shrank after they
// were written (a delta zeroes them, so they do not come back if it
// grows again).
func parseEntries(chunks map[string]string, ovls map[string][]Overlay, lo, hi, chunkSize, size int64) (map[int64]entry, error) {
	out := make(map[int64]entry, len(chunks)+len(ovls))
	idxOf := func(i string) (int64, error) {
		idx, ok := parseDec([]byte(i))
		if !ok || idx < lo || idx >= hi {
			return 0, fmt.Errorf("bad chunk index %q", i)
		}
		return idx, nil
	}
	for i, key := range chunks {
		idx, err := idxOf(i)
		if err != nil {
			return nil, err
		}
		seq, ok := keySeq(idx, []byte(key))
		if !ok {
			return nil, fmt.Errorf("chunk %d: bad key %q", idx, key)
		}
		out[idx] = entry{seq: seq, ok: true}
	}
	for i, list := range ovls {
		idx, err := idxOf(i)
		if err != nil {
			return nil, err
		}
		e := out[idx]
		for _, o := range list {
			ov, err := o.private(chunkSize)
			if err != nil {
				return nil, fmt.Errorf("chunk %d: %w", idx, err)
			}
			e.ovs = append(e.ovs, ov)
		}
		out[idx] = e
	}
	for idx := range out {
		if idx*chunkSize >= size {
			delete(out, idx)
		}
	}
	return out, nil
}

// pageEntries parses page p of a base.
func pageEntries(pg mapPage, chunkSize, size int64) (map[int64]entry, error) {
	lo := pg.Page * pg.PageChunks
	return parseEntries(pg.Chunks, pg.Overlays, lo, lo+pg.PageChunks, chunkSize, size)
}

// deltaEntries parses a delta: zeroed chunks are entries without a base
// or overlays.
func deltaEntries(d mapDelta, chunkSize, size int64) (map[int64]entry, error) {
	out, err := parseEntries(d.Chunks, d.Overlays, 0, 1<<62, chunkSize, size)
	if err != nil {
		return nil, err
	}
	for _, idx := range d.Zero {
		if idx < 0 || idx >= 1<<62/chunkSize {
			return nil, fmt.Errorf("bad zeroed chunk %d", idx)
		}
		if _, dup := out[idx]; dup {
			return nil, fmt.Errorf("chunk %d both zeroed and stored", idx)
		}
		out[idx] = entry{}
	}
	return out, nil
}

// encodeEntries is the chunks and overlays fields of a page or delta.
func encodeEntries(ents map[int64]entry) (map[string]string, map[string][]Overlay, []int64) {
	chunks := map[string]string{}
	var ovls map[string][]Overlay
	var zero []int64
	for idx, e := range ents {
		i := strconv.FormatInt(idx, 10)
		if e.ok {
			chunks[i] = chunkKey(idx, e.seq)
		}
		if len(e.ovs) > 0 {
			if ovls == nil {
				ovls = map[string][]Overlay{}
			}
			list := make([]Overlay, len(e.ovs))
			for k, o := range e.ovs {
				list[k] = o.public()
			}
			ovls[i] = list
		}
		if !e.ok && len(e.ovs) == 0 {
			zero = append(zero, idx)
		}
	}
	slices.Sort(zero)
	return chunks, ovls, zero
}

// set makes idx's entry e (replacing whatever it had).
func (m *objectMap) set(idx int64, e entry) {
	if e.ok {
		m.put(idx, e.seq)
	} else {
		m.drop(idx)
	}
	for _, o := range e.ovs {
		m.overlay(idx, o)
	}
}

// entryOf is chunk idx's entry in m.
func (m *objectMap) entryOf(idx int64) entry {
	seq, ok := m.base[idx]
	return entry{seq: seq, ok: ok, ovs: slices.Clone(m.overlays[idx])}
}

// mapSource is a format-4 manifest's map, as far as it was read: the page
// table and the deltas, in order.
type mapSource struct {
	baseKey    string
	pageChunks int64
	pages      map[int64]string
	deltas     []string
	// deltaEntries is how many entries the deltas hold in total.
	deltaEntries int
	// touched are the pages whose chunks the deltas change.
	touched map[int64]bool
	// size is the manifest's volume size (what its entries are checked
	// against).
	size int64
}

// openSource reads a format-4 manifest's base and deltas (not its pages)
// and returns the source with the deltas' entries, oldest first.
func openSource(ctx context.Context, s store.Store, m Manifest) (*mapSource, []map[int64]entry, error) {
	base, deltas, err := fetchSource(ctx, s, m)
	if err != nil {
		return nil, nil, err
	}
	return sourceFrom(m, base, deltas)
}

// fetchSource reads a format-4 manifest's base (nil when it has none)
// and deltas.
func fetchSource(ctx context.Context, s store.Store, m Manifest) (*mapBase, []mapDelta, error) {
	var base *mapBase
	if m.Base != "" {
		if _, ok := mapObjectSeq(m.Base); !ok || m.Base[:6] != "bases/" {
			return nil, nil, fmt.Errorf("manifest %d: bad base key %q", m.Sequence, m.Base)
		}
		b, err := readBase(ctx, s, m.Base)
		if err != nil {
			return nil, nil, fmt.Errorf("manifest %d: %w", m.Sequence, err)
		}
		base = &b
	}
	deltas := make([]mapDelta, len(m.Deltas))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, key := range m.Deltas {
		if _, ok := mapObjectSeq(key); !ok || key[:7] != "deltas/" {
			return nil, nil, fmt.Errorf("manifest %d: bad delta key %q", m.Sequence, key)
		}
		g.Go(func() error {
			d, err := readDelta(gctx, s, key)
			deltas[i] = d
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, fmt.Errorf("manifest %d: %w", m.Sequence, err)
	}
	return base, deltas, nil
}

// sourceFrom is the source a manifest, its base and its deltas make.
func sourceFrom(m Manifest, base *mapBase, deltas []mapDelta) (*mapSource, []map[int64]entry, error) {
	src := &mapSource{baseKey: m.Base, pageChunks: pageChunks, pages: map[int64]string{}, deltas: slices.Clone(m.Deltas),
		touched: map[int64]bool{}, size: m.Size}
	if (base == nil) != (m.Base == "") || len(deltas) != len(m.Deltas) {
		return nil, nil, fmt.Errorf("manifest %d: %w: its base or deltas are missing", m.Sequence, errDamaged)
	}
	if base != nil {
		if base.Format != baseFormat || base.Checksum != base.sum() || base.PageChunks <= 0 {
			return nil, nil, fmt.Errorf("manifest %d: %s: %w", m.Sequence, m.Base, errDamaged)
		}
		var err error
		if src.pages, err = basePages(*base); err != nil {
			return nil, nil, fmt.Errorf("manifest %d: %s: %w", m.Sequence, m.Base, err)
		}
		src.pageChunks = base.PageChunks
	}
	out := make([]map[int64]entry, len(deltas))
	for i, d := range deltas {
		if d.Format != deltaFormat || d.Checksum != d.sum() {
			return nil, nil, fmt.Errorf("manifest %d: %s: %w", m.Sequence, m.Deltas[i], errDamaged)
		}
		ents, err := deltaEntries(d, m.ChunkSize, m.Size)
		if err != nil {
			return nil, nil, fmt.Errorf("manifest %d: %s: %w", m.Sequence, m.Deltas[i], err)
		}
		out[i] = ents
		src.deltaEntries += len(ents)
		for idx := range ents {
			src.touched[idx/src.pageChunks] = true
		}
	}
	return src, out, nil
}

// loadPage reads page p of src.
func (src *mapSource) loadPage(ctx context.Context, s store.Store, p, chunkSize, size int64) (map[int64]entry, error) {
	key := src.pages[p]
	if key == "" {
		return nil, nil
	}
	pg, err := readPage(ctx, s, key, p, src.pageChunks)
	if err != nil {
		return nil, err
	}
	ents, err := pageEntries(pg, chunkSize, size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return ents, nil
}

// loadManifestMap is the whole object map a manifest describes, of any
// format; for format 4 it reads every page.
func loadManifestMap(ctx context.Context, s store.Store, m Manifest) (*objectMap, error) {
	if m.Format != manifestV4 {
		return manifestObjects(m)
	}
	src, deltas, err := openSource(ctx, s, m)
	if err != nil {
		return nil, err
	}
	objs := newObjectMap()
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, p := range slices.Sorted(maps.Keys(src.pages)) {
		g.Go(func() error {
			ents, err := src.loadPage(gctx, s, p, m.ChunkSize, m.Size)
			if err != nil {
				return err
			}
			mu.Lock()
			for idx, e := range ents {
				objs.set(idx, e)
			}
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("manifest %d: %w", m.Sequence, err)
	}
	for _, ents := range deltas {
		for idx, e := range ents {
			objs.set(idx, e)
		}
	}
	return objs, nil
}

// refs gathers the object keys a set of manifests name (garbage
// collection's roots): for format 4 their bases, pages and deltas and
// every chunk and log object their maps name. An entry of a page that
// every manifest naming the page overrides with a delta is not named: the
// old versions a chain of deltas replaced go as soon as no root reads
// them. Each page is read once, however many manifests name it.
type refs struct {
	s    store.Store
	keep map[string]bool
	// users: page key → for each manifest naming it, the chunks its
	// deltas override.
	users map[string][]map[int64]bool
	// current: pages whose every entry keep holds already (the current
	// map's, Device.currentPagesLocked): not read.
	current map[string]bool
}

func newRefs(s store.Store, keep map[string]bool) *refs {
	return &refs{s: s, keep: keep, users: map[string][]map[int64]bool{}}
}

// add adds the keys m names (its pages' entries at finish).
func (r *refs) add(ctx context.Context, m Manifest) error {
	if m.Format != manifestV4 {
		manifestKeys(m, r.keep)
		return nil
	}
	// The deltas' entries, newest last: only each chunk's last one is
	// the manifest's.
	final := map[int64]entry{}
	for _, key := range m.Deltas {
		r.keep[key] = true
		d, err := readDelta(ctx, r.s, key)
		if err != nil {
			return fmt.Errorf("manifest %d: %w", m.Sequence, err)
		}
		ents, err := deltaEntries(d, m.ChunkSize, m.Size)
		if err != nil {
			return fmt.Errorf("manifest %d: %s: %w", m.Sequence, key, err)
		}
		maps.Copy(final, ents)
	}
	over := make(map[int64]bool, len(final))
	for idx, e := range final {
		over[idx] = true
		if e.ok {
			r.keep[chunkKey(idx, e.seq)] = true
		}
		for _, o := range e.ovs {
			r.keep[logKey(o.log)] = true
		}
	}
	if m.Base == "" {
		return nil
	}
	r.keep[m.Base] = true
	b, err := readBase(ctx, r.s, m.Base)
	if err != nil {
		return fmt.Errorf("manifest %d: %w", m.Sequence, err)
	}
	for _, key := range b.Pages {
		r.keep[key] = true
		r.users[key] = append(r.users[key], over)
	}
	return nil
}

// finish reads the pages the manifests name and adds their entries.
func (r *refs) finish(ctx context.Context) error {
	for key, users := range r.users {
		if r.current[key] {
			continue
		}
		var pg mapPage
		if err := getMapObject(ctx, r.s, key, &pg); err != nil {
			return err
		}
		if pg.Format != pageFormat || pg.Checksum != pg.sum() {
			return fmt.Errorf("%s: %w", key, errDamaged)
		}
		named := func(i string) bool {
			idx, err := strconv.ParseInt(i, 10, 64)
			if err != nil {
				return true // not ours to judge: keep what it names
			}
			for _, over := range users {
				if !over[idx] {
					return true
				}
			}
			return false
		}
		for i, k := range pg.Chunks {
			if named(i) {
				r.keep[k] = true
			}
		}
		for i, list := range pg.Overlays {
			if named(i) {
				for _, o := range list {
					r.keep[o.Log] = true
				}
			}
		}
	}
	r.users = map[string][]map[int64]bool{}
	return nil
}

// manifestRefs adds to keep every object key m names.
func manifestRefs(ctx context.Context, s store.Store, m Manifest, keep map[string]bool) error {
	r := newRefs(s, keep)
	if err := r.add(ctx, m); err != nil {
		return err
	}
	return r.finish(ctx)
}

// StoredChunks is how many chunks a manifest says the store holds (a
// format-4 manifest records it when its writer knew it; -1 when not).
func (m Manifest) StoredChunks() int {
	if m.Format == manifestV4 {
		return int(m.Stored)
	}
	n := len(m.Chunks)
	for i := range m.Overlays {
		if _, ok := m.Chunks[i]; !ok {
			n++
		}
	}
	return n
}
