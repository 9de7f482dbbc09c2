package tier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/internal/atomicfile"
	"github.com/ferry-io/ferry/internal/vfs"
)

// The device's side of paged maps (mapfmt.go): a cache started from a
// format-4 recovery point reads its pages when a chunk in them is first
// needed and, in the background, all of them; recovery points upload the
// entries changed since the last one, or a new base.

// clone copies a source (its maps are replaced, never changed, so
// sharing them would do; copying keeps that a local matter).
func (src *mapSource) clone() *mapSource {
	c := *src
	c.pages = maps.Clone(src.pages)
	c.deltas = slices.Clone(src.deltas)
	c.touched = maps.Clone(src.touched)
	return &c
}

// readManifest reads and checks the manifest under key.
func readManifest(ctx context.Context, s store.Store, key string) (Manifest, error) {
	b, err := s.Get(ctx, key, nil)
	if err != nil {
		return Manifest{}, fmt.Errorf("%s: %w", key, err)
	}
	var m Manifest
	if json.Unmarshal(b, &m) != nil || !knownFormat(m.Format) || m.Checksum != m.sum() {
		return Manifest{}, fmt.Errorf("%s: damaged (checksum mismatch)", key)
	}
	return m, nil
}

// lazyFile is the local copy of what a cache started from a format-4
// recovery point needs to open without the store: the manifest, its base
// and its deltas (docs/FORMAT.md, the local cache). Written before
// meta.json names the manifest; deleted once the map is journaled whole.
type lazyFile struct {
	Manifest Manifest   `json:"manifest"`
	Base     *mapBase   `json:"base,omitempty"`
	Deltas   []mapDelta `json:"deltas"`
}

const lazyName = "lazy.json"

// saveLazy fetches m's base and deltas and keeps them in dir.
func saveLazy(ctx context.Context, fsys vfs.FS, s store.Store, dir string, m Manifest) error {
	base, deltas, err := fetchSource(ctx, s, m)
	if err != nil {
		return err
	}
	b, err := json.Marshal(lazyFile{Manifest: m, Base: base, Deltas: deltas})
	if err != nil {
		return err
	}
	return atomicfile.On(fsys).WriteFile(filepath.Join(dir, lazyName), b)
}

// openLazy opens the map of the format-4 manifest under key: its deltas
// applied, its pages pending. It reads the local copy of the manifest,
// base and deltas, or the store when there is none.
func openLazy(ctx context.Context, fsys vfs.FS, s store.Store, dir, key string) (*objectMap, *mapSource, error) {
	var (
		src    *mapSource
		deltas []map[int64]entry
	)
	if b, err := vfs.ReadFile(fsys, filepath.Join(dir, lazyName)); err == nil {
		var lf lazyFile
		if err := json.Unmarshal(b, &lf); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", lazyName, err)
		}
		m := lf.Manifest
		if manifestKey(m.Sequence) != key || m.Format != manifestV4 || m.Checksum != m.sum() {
			return nil, nil, fmt.Errorf("%s: not the copy of %s", lazyName, key)
		}
		if src, deltas, err = sourceFrom(m, lf.Base, lf.Deltas); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", lazyName, err)
		}
	} else {
		m, err := readManifest(ctx, s, key)
		if err != nil {
			return nil, nil, err
		}
		if m.Format != manifestV4 {
			return nil, nil, fmt.Errorf("%s: format %s has no pages", key, m.Format)
		}
		if src, deltas, err = openSource(ctx, s, m); err != nil {
			return nil, nil, err
		}
	}
	objs := newObjectMap()
	objs.pageChunks = src.pageChunks
	if len(src.pages) > 0 {
		objs.pending, objs.own = maps.Clone(src.pages), map[int64]bool{}
	}
	for _, ents := range deltas {
		for idx, e := range ents {
			objs.set(idx, e)
		}
	}
	return objs, src, nil
}

// pageIn makes sure chunk idx's entry is known: it reads its page when
// the map has not yet.
func (d *Device) pageIn(ctx context.Context, idx int64) error {
	d.mu.Lock()
	if d.objects.loaded(idx) {
		d.mu.Unlock()
		return nil
	}
	src, p := d.lazy, idx/d.objects.pageChunks
	d.mu.Unlock()
	_, err, _ := d.fetches.Do("page/"+strconv.FormatInt(p, 10), func() (any, error) {
		d.mu.Lock()
		done := d.objects.pending[p] == ""
		d.mu.Unlock()
		if done {
			return nil, nil
		}
		fctx, cancel := context.WithTimeout(ctx, d.cfg.FetchTimeout)
		defer cancel()
		ents, err := src.loadPage(fctx, d.cfg.Store, p, d.chunkSize(), src.size)
		if err != nil {
			if fctx.Err() != nil && ctx.Err() == nil {
				err = fmt.Errorf("%w: %v", store.ErrUnavailable, err)
			}
			return nil, fmt.Errorf("map page %d: %w", p, err)
		}
		d.mu.Lock()
		d.objects.mergePage(p, ents)
		d.mu.Unlock()
		return nil, nil
	})
	return err
}

// mapAll waits until the whole map is known.
func (d *Device) mapAll(ctx context.Context) error {
	select {
	case <-d.mapDone:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-d.bg.Done():
		return device.ErrClosed
	}
}

// mapLoaded reports whether the whole map is known.
func (d *Device) mapLoaded() bool {
	select {
	case <-d.mapDone:
		return true
	default:
		return false
	}
}

// loadPages reads every page not read yet, then journals the whole map
// and forgets the recovery point the cache started from.
func (d *Device) loadPages(ctx context.Context) {
	defer d.wg.Done()
	d.mu.Lock()
	pages := slices.Sorted(maps.Keys(d.objects.pending))
	pc := d.objects.pageChunks
	d.mu.Unlock()
	backoff := time.Second
	for len(pages) > 0 {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(4)
		for _, p := range pages {
			g.Go(func() error { return d.pageIn(gctx, p*pc) })
		}
		err := g.Wait()
		if ctx.Err() != nil {
			return
		}
		d.mu.Lock()
		pages = slices.Sorted(maps.Keys(d.objects.pending))
		d.mu.Unlock()
		if err != nil {
			d.log.Warn("reading the volume's map failed; will retry (reads fetch the pages they need)", "err", err, "backoff", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Minute)
		}
	}
	// The journal now gets the whole map, then meta.json forgets the
	// recovery point under it: a crash between the two replays a whole
	// map over that recovery point, which gives the same map.
	d.mu.Lock()
	err := d.rewriteJournalLocked()
	if err == nil {
		d.meta.Lazy, d.lazy = "", nil
	}
	d.mu.Unlock()
	if err == nil {
		err = d.saveMeta()
	}
	if err == nil {
		d.cfg.FS.Remove(filepath.Join(d.cfg.Dir, lazyName))
	} else {
		// Still lazy on disk: the next open reads the pages again.
		d.log.Warn("journaling the volume's map failed", "err", err)
	}
	close(d.mapDone)
	d.log.Info("volume map loaded")
}

// rewriteJournalLocked replaces objects.log with the current map; d.mu
// is held (so nothing appends meanwhile).
func (d *Device) rewriteJournalLocked() error {
	if err := rewriteObjects(d.cfg.FS, d.cfg.Dir, d.objects); err != nil {
		return err
	}
	j, err := d.cfg.FS.OpenFile(filepath.Join(d.cfg.Dir, "objects.log"), os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	d.journal.Close()
	d.journal = j
	return nil
}

// mapPlan is what a recovery point uploads for its map, taken under the
// checkpoint's gate: either a delta or a new base.
type mapPlan struct {
	delta map[int64]entry // the entries of the chunks changed since head
	// rebase: pages (by number) to write; an empty one leaves the table.
	rebase map[int64]map[int64]entry
	from   *mapSource // the map this one chains onto (nil: from nothing)
	since  map[int64]struct{}
	stored int64
}

// pageInChanged reads the pages of the chunks changed since the last
// recovery point whose entries are not wholly known: overlays replayed
// from the journal over a page not read yet (after a restart). Changes
// made while the volume runs read their page first.
func (d *Device) pageInChanged(ctx context.Context) error {
	d.mu.Lock()
	var need []int64
	for idx := range d.since {
		if !d.objects.loaded(idx) && !d.objects.own[idx] {
			need = append(need, idx)
		}
	}
	d.mu.Unlock()
	for _, idx := range need {
		if err := d.pageIn(ctx, idx); err != nil {
			return err
		}
	}
	return nil
}

// errMapUnknown: a changed chunk's entry is not known (its page unread).
var errMapUnknown = errors.New("a changed chunk's map page is not read")

// planMapLocked takes what the recovery point being published writes
// for its map; d.mu is held, writes are held.
func (d *Device) planMapLocked() (*mapPlan, error) {
	for idx := range d.since {
		if !d.objects.loaded(idx) && !d.objects.own[idx] {
			return nil, fmt.Errorf("chunk %d: %w", idx, errMapUnknown)
		}
	}
	pl := &mapPlan{since: d.since, from: d.head, stored: -1}
	d.since = map[int64]struct{}{}
	if d.lazy == nil {
		pl.stored = int64(len(d.objects.base))
		for idx := range d.objects.overlays {
			if _, b := d.objects.base[idx]; !b {
				pl.stored++
			}
		}
	}
	if !d.fullNext && d.head != nil {
		h := d.head
		pages := maps.Clone(h.touched)
		for idx := range pl.since {
			pages[idx/h.pageChunks] = true
		}
		n := h.deltaEntries + len(pl.since)
		long := len(h.deltas)+1 > maxDeltas || int64(n)*deltaShare > h.pageChunks*int64(max(1, len(pages)))
		if !long || d.lazy != nil {
			pl.delta = make(map[int64]entry, len(pl.since))
			for idx := range pl.since {
				pl.delta[idx] = d.objects.entryOf(idx)
			}
			return pl, nil
		}
		pl.rebase = d.pageEntriesLocked(pages, h.pageChunks)
		return pl, nil
	}
	pl.from = nil
	pl.rebase = d.pageEntriesLocked(nil, pageChunks)
	return pl, nil
}

// pageEntriesLocked returns the entries of the given pages (nil: of
// every page holding one).
func (d *Device) pageEntriesLocked(pages map[int64]bool, per int64) map[int64]map[int64]entry {
	out := map[int64]map[int64]entry{}
	for p := range pages {
		out[p] = map[int64]entry{}
	}
	add := func(idx int64) {
		p := idx / per
		if pages != nil && !pages[p] {
			return
		}
		if out[p] == nil {
			out[p] = map[int64]entry{}
		}
		out[p][idx] = d.objects.entryOf(idx)
	}
	if pages != nil && int64(len(pages))*per < int64(len(d.objects.base)+len(d.objects.overlays)) {
		for p := range pages {
			for idx := p * per; idx < (p+1)*per; idx++ {
				if d.objects.stored(idx) {
					add(idx)
				}
			}
		}
		return out
	}
	for idx := range d.objects.base {
		add(idx)
	}
	for idx := range d.objects.overlays {
		if _, b := d.objects.base[idx]; !b {
			add(idx)
		}
	}
	return out
}

// putMapObject uploads v as a new map object named by name(version); the
// version stays in flight until the caller settles it.
func (d *Device) putMapObject(ctx context.Context, name func(uint64) string, v any, seqs *[]uint64) (string, error) {
	seq, err := d.allocSeq()
	if err != nil {
		return "", err
	}
	*seqs = append(*seqs, seq)
	b, _ := json.Marshal(v)
	key := name(seq)
	if err := d.cfg.Store.Put(ctx, key, b, store.PutOptions{}); err != nil {
		return "", fmt.Errorf("upload %s: %w", key, err)
	}
	d.cfg.Metrics.upload(UploadManifest, len(b))
	return key, nil
}

// writeMap uploads the plan's objects and returns the map the manifest
// names. seqs gets every version it used (to settle once the manifest is
// published).
func (d *Device) writeMap(ctx context.Context, pl *mapPlan, seqs *[]uint64) (*mapSource, error) {
	next := &mapSource{pageChunks: pageChunks, pages: map[int64]string{}, touched: map[int64]bool{}}
	if pl.from != nil {
		next = pl.from.clone()
	}
	if pl.rebase != nil {
		per := next.pageChunks
		type up struct {
			p   int64
			key string
		}
		done := make(chan up, len(pl.rebase))
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(d.cfg.Uploaders)
		for p, ents := range pl.rebase {
			if len(ents) == 0 {
				done <- up{p, ""}
				continue
			}
			g.Go(func() error {
				pg := mapPage{Format: pageFormat, Page: p, PageChunks: per}
				pg.Chunks, pg.Overlays, _ = encodeEntries(ents)
				pg.Checksum = pg.sum()
				var mine []uint64
				key, err := d.putMapObject(gctx, pagePath, pg, &mine)
				d.mu.Lock()
				*seqs = append(*seqs, mine...)
				d.mu.Unlock()
				if err != nil {
					return err
				}
				done <- up{p, key}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
		close(done)
		for u := range done {
			if u.key == "" {
				delete(next.pages, u.p)
			} else {
				next.pages[u.p] = u.key
			}
		}
		b := mapBase{Format: baseFormat, PageChunks: per, Pages: map[string]string{}}
		for p, key := range next.pages {
			b.Pages[strconv.FormatInt(p, 10)] = key
		}
		b.Checksum = b.sum()
		key, err := d.putMapObject(ctx, basePath, b, seqs)
		if err != nil {
			return nil, err
		}
		next.baseKey, next.deltas, next.deltaEntries, next.touched = key, nil, 0, map[int64]bool{}
		return next, nil
	}
	if len(pl.delta) == 0 {
		return next, nil // nothing changed: the same map
	}
	dl := mapDelta{Format: deltaFormat}
	dl.Chunks, dl.Overlays, dl.Zero = encodeEntries(pl.delta)
	dl.Checksum = dl.sum()
	key, err := d.putMapObject(ctx, deltaPath, dl, seqs)
	if err != nil {
		return nil, err
	}
	next.deltas = append(next.deltas, key)
	next.deltaEntries += len(pl.delta)
	for idx := range pl.delta {
		next.touched[idx/next.pageChunks] = true
	}
	return next, nil
}

// unplan gives a recovery point's changes back after it failed: the next
// one writes them.
func (d *Device) unplanLocked(pl *mapPlan) {
	for idx := range pl.since {
		d.since[idx] = struct{}{}
	}
}

// headFile is the local record, written at a clean close, of the map
// the next recovery point chains onto and the chunks changed since: with
// it, the first recovery point after a restart is a delta, not a whole
// base. Open reads it and deletes it (durably) before anything changes,
// so a crash later finds none and the next recovery point writes a base.
type headFile struct {
	Base         string           `json:"base"`
	PageChunks   int64            `json:"page_chunks"`
	Pages        map[int64]string `json:"pages"`
	Deltas       []string         `json:"deltas"`
	DeltaEntries int              `json:"delta_entries"`
	Touched      []int64          `json:"touched"`
	Since        []int64          `json:"since"`
}

const headName = "head.json"

// saveHead writes head.json at a clean close (no recovery point running:
// the caller holds ckptMu).
func (d *Device) saveHead() error {
	d.mu.Lock()
	h := d.head
	if h == nil || d.fullNext || d.lazy != nil {
		d.mu.Unlock()
		return nil
	}
	hf := headFile{Base: h.baseKey, PageChunks: h.pageChunks, Pages: h.pages, Deltas: h.deltas, DeltaEntries: h.deltaEntries,
		Touched: slices.Sorted(maps.Keys(h.touched)), Since: slices.Sorted(maps.Keys(d.since))}
	b, err := json.Marshal(hf)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	return atomicfile.On(d.cfg.FS).WriteFile(filepath.Join(d.cfg.Dir, headName), b)
}

// takeHead reads and deletes head.json; ok is false when there is none
// (or it cannot be trusted).
func takeHead(fsys vfs.FS, dir string) (*mapSource, map[int64]struct{}, bool) {
	path := filepath.Join(dir, headName)
	b, err := vfs.ReadFile(fsys, path)
	if err != nil {
		return nil, nil, false
	}
	if err := fsys.Remove(path); err != nil || vfs.SyncDir(fsys, dir) != nil {
		return nil, nil, false
	}
	var hf headFile
	if json.Unmarshal(b, &hf) != nil || hf.Base == "" || hf.PageChunks <= 0 {
		return nil, nil, false
	}
	src := &mapSource{baseKey: hf.Base, pageChunks: hf.PageChunks, pages: hf.Pages, deltas: hf.Deltas,
		deltaEntries: hf.DeltaEntries, touched: map[int64]bool{}}
	if src.pages == nil {
		src.pages = map[int64]string{}
	}
	for _, p := range hf.Touched {
		src.touched[p] = true
	}
	since := map[int64]struct{}{}
	for _, idx := range hf.Since {
		since[idx] = struct{}{}
	}
	return src, since, true
}

// currentPagesLocked returns the keys of the pages of the last recovery
// point's base whose entries are all still the current map's: no delta
// of its chain and no change since touched them. Collection, whose roots
// include the current map, need not read them: whatever root names such
// a page, and whatever its deltas override, every entry of the page is
// the current map's. d.mu is held; the map is wholly read.
func (d *Device) currentPagesLocked() map[string]bool {
	h := d.head
	if h == nil || d.lazy != nil {
		return nil
	}
	out := make(map[string]bool, len(h.pages))
	for p, key := range h.pages {
		if !h.touched[p] {
			out[key] = true
		}
	}
	for idx := range d.since {
		delete(out, h.pages[idx/h.pageChunks])
	}
	return out
}
