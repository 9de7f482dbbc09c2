package tier

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-io/ferry/backends/store"
)

// Object keys, relative to the volume's prefix (docs/FORMAT.md):
//
//	chunks/<index, 16 hex digits>/<version, 16 hex digits>   chunk data
//	manifests/<sequence, 20 decimal digits>.json             recovery points
func chunkKey(idx int64, seq uint64) string {
	return fmt.Sprintf("chunks/%016x/%016x", idx, seq)
}

func manifestKey(seq uint64) string { return fmt.Sprintf("manifests/%020d.json", seq) }

// uploader uploads dirty chunks until ctx ends.
func (d *Device) uploader(ctx context.Context) {
	defer d.wg.Done()
	backoff := 100 * time.Millisecond
	for {
		if d.writable() != nil {
			// Fenced: nothing may be uploaded until the lease holds again.
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
				continue
			}
		}
		c := d.nextDirty()
		if c == nil {
			select {
			case <-ctx.Done():
				return
			case <-d.wake:
				continue
			case <-time.After(uploadDelay / 2):
				continue
			}
		}
		if err := d.upload(ctx, c); err != nil {
			if ctx.Err() != nil {
				return
			}
			d.upErr.Store(&err)
			d.log.Warn("chunk upload failed; will retry", "chunk", c.idx, "err", err, "backoff", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		d.upErr.Store(nil)
		backoff = 100 * time.Millisecond
	}
}

// uploadDelay is how long a chunk must go unwritten before it uploads,
// unless the cache is under pressure or as many bytes were written to it
// as it holds: a chunk being filled by small writes then uploads once,
// not once per write, and a chunk under constant writes uploads once per
// chunk size written (so uploads never exceed the bytes written, plus
// one version per chunk for idleness and recovery points).
const uploadDelay = 200 * time.Millisecond

// partialDelay is how long a partial chunk holding less than
// partialBatch of writes not yet uploaded must go unwritten before it
// uploads (without cache pressure or a recovery point). Each upload of a
// partial chunk adds a log object to what a read of it meets, and after
// maxChunkLogs of them it is rewritten whole: a chunk uploaded after
// every few writes (on a slow machine, random writes over many chunks
// leave each idle for uploadDelay between two writes) cost a 4 MiB
// rewrite per 16 small uploads. Holding small partial chunks until they
// gather partialBatch, the cache fills, or the volume rests keeps each
// log upload of a chunk large.
const partialDelay = 5 * time.Second

// partialBatch is how much a partial chunk's log upload should carry:
// with maxChunkLogs uploads between whole rewrites, a rewrite then costs
// at most half a byte per byte written.
func (d *Device) partialBatch() int64 { return d.chunkSize() / 8 }

// dueLocked reports whether dirty chunk c may upload now, without cache
// pressure; d.mu is held.
func (d *Device) dueLocked(c *chunk, now time.Time) bool {
	if d.pressure > 0 || c.written.Load() >= d.chunkSize() {
		return true
	}
	last := c.lastUse.Load()
	if c.full || c.since == nil {
		return last <= now.Add(-uploadDelay).UnixNano()
	}
	if n, _ := c.since.size(); n >= d.partialBatch() {
		return last <= now.Add(-uploadDelay).UnixNano()
	}
	return last <= now.Add(-partialDelay).UnixNano()
}

// nextDirty picks a dirty chunk no other uploader holds, least recently
// written first, once it has been idle for uploadDelay (at once when
// writers wait for cache space).
func (d *Device) nextDirty() *chunk {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	var pick *chunk
	for _, c := range d.chunks {
		if !c.dirty || c.uploading || !d.dueLocked(c, now) {
			continue
		}
		if pick == nil || c.lastUse.Load() < pick.lastUse.Load() {
			pick = c
		}
	}
	if pick != nil {
		pick.uploading = true
	}
	return pick
}

// upload copies one chunk version to the store. The chunk becomes clean
// only if nobody wrote it meanwhile and the new key is journaled.
func (d *Device) upload(ctx context.Context, c *chunk) error {
	defer func() {
		d.mu.Lock()
		c.uploading = false
		d.mu.Unlock()
		d.cfg.Budget.wake() // the chunk may have become evictable
	}()
	if err := d.pageIn(ctx, c.idx); err != nil {
		return err
	}
	d.mu.Lock()
	partial, compact := !c.full && c.dirty, false
	if partial {
		compact = d.compactLocked(c)
	}
	d.mu.Unlock()
	switch {
	case partial && compact:
		return d.uploadCompact(ctx, c)
	case partial:
		return d.uploadLog(ctx, d.gather(c))
	}
	// The snapshot excludes writers (they hold mu shared while they bump
	// the version and write), so its content matches its version.
	data := getBuf(d.chunkSize())[:d.chunkSize()]
	defer putBuf(data, d.chunkSize())
	c.mu.Lock()
	d.mu.Lock()
	clean := !c.dirty
	d.mu.Unlock()
	if c.gone || clean {
		c.mu.Unlock()
		return nil
	}
	ver := c.ver.Load()
	c.written.Store(0)
	err := c.dev.ReadAt(ctx, data, 0)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	seq, key, err := d.putVersion(ctx, c.idx, data, UploadChunk)
	if err != nil {
		return err
	}
	defer d.settle(seq)
	if afterPut != nil {
		afterPut(d, c.idx)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone {
		// Dropped while uploading: the object is garbage.
		d.cfg.Store.Delete(context.WithoutCancel(ctx), key)
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.journalPutLocked(c.idx, seq); err != nil {
		return err
	}
	if c.ver.Load() != ver {
		return nil // written meanwhile: stays dirty, uploads again
	}
	from := filepath.Join(d.cfg.Dir, "dirty", chunkName(c.idx))
	to := filepath.Join(d.cfg.Dir, "clean", chunkName(c.idx))
	if err := d.cfg.FS.Rename(from, to); err != nil {
		return err
	}
	c.dev.SetPath(to)
	c.closeMap(d.cfg.FS, d.cfg.Dir)
	c.dirty = false
	d.space.Broadcast()
	return nil
}

// putVersion uploads data as a new version of chunk idx. The version
// stays in flight (spared by collect) until the caller settles it, once
// it is journaled or abandoned.
func (d *Device) putVersion(ctx context.Context, idx int64, data []byte, reason string) (uint64, string, error) {
	seq, err := d.allocSeq()
	if err != nil {
		return 0, "", err
	}
	key := chunkKey(idx, seq)
	body := trimZeroTail(data)
	if err := d.cfg.Store.Put(ctx, key, body, store.PutOptions{}); err != nil {
		d.settle(seq)
		return 0, "", err
	}
	d.cfg.Metrics.upload(reason, len(body))
	return seq, key, nil
}

// journalPutLocked records version seq as chunk idx's new base (replacing
// its overlays) in the journal, durably, then in the object map; d.mu is
// held.
func (d *Device) journalPutLocked(idx int64, seq uint64) error {
	if err := d.journalLocked(putRecord(idx, seq)); err != nil {
		return err
	}
	d.objects.put(idx, seq)
	delete(d.inflight, seq) // journaled: collect now sees it in objects
	return nil
}

// trimZeroTail drops trailing zero bytes: a short object reads as its data
// followed by zeroes up to the chunk size.
func trimZeroTail(b []byte) []byte {
	n := len(b)
	for n > 0 && b[n-1] == 0 {
		n--
	}
	return b[:n]
}

// Manifest is one recovery point (docs/FORMAT.md).
type Manifest struct {
	Format    string            `json:"format"` // "ferry-manifest/1"
	Sequence  uint64            `json:"sequence"`
	Created   time.Time         `json:"created"`
	Size      int64             `json:"size"`
	ChunkSize int64             `json:"chunk_size"`
	Chunks    map[string]string `json:"chunks"` // decimal chunk index → object key
	// Overlays: decimal chunk index → byte ranges of log objects applied,
	// in order, over the chunk's object (or zeroes). Format 2 only.
	Overlays map[string][]Overlay `json:"overlays,omitempty"`
	// Base and Deltas: the map of a format-4 manifest (mapfmt.go), which
	// has no Chunks or Overlays of its own; Stored is how many chunks
	// that map holds (-1: the writer did not know).
	Base   string   `json:"base,omitempty"`
	Deltas []string `json:"deltas,omitempty"`
	Stored int64    `json:"stored_chunks,omitempty"`
	// Parents: a clone's ancestors, nearest first (formats 3 and 4).
	Parents  []Parent `json:"parents,omitempty"`
	Checksum string   `json:"checksum,omitempty"`
}

// Manifest formats: 1 has whole-chunk objects only; 2 adds overlays; 3
// adds a clone's parents; 4 names a paged map (mapfmt.go) instead of
// holding the map.
const (
	manifestV1 = "ferry-manifest/1"
	manifestV2 = "ferry-manifest/2"
	manifestV3 = "ferry-manifest/3"
)

// knownFormat reports whether a reader of this package reads f.
func knownFormat(f string) bool {
	return f == manifestV1 || f == manifestV2 || f == manifestV3 || f == manifestV4
}

func (m Manifest) sum() string {
	m.Checksum = ""
	b, _ := json.Marshal(m)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// Checkpoint publishes a recovery point: a manifest describing the volume
// as of one flush point, referencing only uploaded objects. It lets the
// upload backlog drain while writes go on, then briefly holds writes,
// flushes, uploads what is still dirty and publishes.
func (d *Device) Checkpoint(ctx context.Context) (Manifest, error) {
	return d.checkpoint(ctx, "")
}

// checkpoint publishes a recovery point and, with a snapshot name, keeps
// it as that snapshot before garbage collection runs.
func (d *Device) checkpoint(ctx context.Context, snapshot string) (Manifest, error) {
	// Chunks under constant writes never go idle long enough to upload,
	// so the wait is short; whatever is left uploads with writes held.
	deadline := time.Now().Add(3 * time.Second)
	d.mu.Lock()
	d.pressure++ // upload without waiting for chunks to go idle
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.pressure--
		d.mu.Unlock()
	}()
	for time.Now().Before(deadline) && d.dirtyCount() > 2*d.cfg.Uploaders {
		d.kick()
		select {
		case <-ctx.Done():
			return Manifest{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	d.ckptMu.Lock()
	defer d.ckptMu.Unlock()
	if err := d.pageInChanged(ctx); err != nil {
		return Manifest{}, fmt.Errorf("checkpoint: %w", err)
	}
	d.gate.Lock()
	gated := true
	defer func() {
		if gated {
			d.gate.Unlock()
		}
	}()
	d.changed.Store(false)
	if err := d.Flush(ctx); err != nil {
		d.changed.Store(true)
		return Manifest{}, fmt.Errorf("checkpoint: flush: %w", err)
	}
	for {
		d.mu.Lock()
		var dirty []*chunk
		for _, c := range d.chunks {
			if c.dirty {
				dirty = append(dirty, c)
			}
		}
		d.mu.Unlock()
		if len(dirty) == 0 {
			break
		}
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(d.cfg.Uploaders)
		for _, c := range dirty {
			g.Go(func() error {
				for {
					d.mu.Lock()
					busy := c.uploading
					if !busy {
						c.uploading = true
					}
					d.mu.Unlock()
					if !busy {
						return d.upload(gctx, c)
					}
					select {
					case <-gctx.Done():
						return gctx.Err()
					case <-time.After(5 * time.Millisecond):
					}
				}
			})
		}
		if err := g.Wait(); err != nil {
			d.changed.Store(true)
			return Manifest{}, fmt.Errorf("checkpoint: upload: %w", err)
		}
	}
	d.mu.Lock()
	d.meta.Manifest++
	m := Manifest{Format: manifestV4, Parents: d.cfg.Parents, Sequence: d.meta.Manifest, Created: time.Now().UTC(),
		Size: d.meta.Size, ChunkSize: d.meta.ChunkSize, Chunks: map[string]string{}}
	plan, err := d.planMapLocked()
	if err != nil {
		d.meta.Manifest--
		d.mu.Unlock()
		d.changed.Store(true)
		return Manifest{}, fmt.Errorf("checkpoint: %w", err)
	}
	d.mu.Unlock()
	// The manifest is the flush point; writes may go on while it is
	// published. What they upload gets newer keys, which collect spares.
	d.gate.Unlock()
	gated = false
	var seqs []uint64 // the map objects' versions, in flight until published
	defer func() {
		for _, s := range seqs {
			d.settle(s)
		}
	}()
	fail := func(err error) (Manifest, error) {
		d.mu.Lock()
		d.unplanLocked(plan)
		d.mu.Unlock()
		d.changed.Store(true)
		return Manifest{}, err
	}
	if err := d.saveMeta(); err != nil {
		return fail(err)
	}
	next, err := d.writeMap(ctx, plan, &seqs)
	if err != nil {
		return fail(fmt.Errorf("checkpoint: the map of recovery point %d: %w", m.Sequence, err))
	}
	m.Base, m.Deltas, m.Stored = next.baseKey, next.deltas, plan.stored
	m.Checksum = m.sum()
	b, _ := json.MarshalIndent(m, "", " ")
	if err := d.cfg.Store.Put(ctx, manifestKey(m.Sequence), b, store.PutOptions{IfAbsent: true}); err != nil {
		return fail(fmt.Errorf("checkpoint: publish manifest %d: %w", m.Sequence, err))
	}
	for _, s := range seqs {
		d.settle(s) // named by the newest manifest: collect keeps them
	}
	seqs = nil
	next.size = m.Size
	d.mu.Lock()
	d.head, d.fullNext = next, false
	d.mu.Unlock()
	d.cfg.Metrics.upload(UploadManifest, len(b))
	if snapshot != "" {
		if err := d.cfg.Store.Put(ctx, snapshotKey(snapshot), b, store.PutOptions{IfAbsent: true}); err != nil {
			if errors.Is(err, store.ErrExists) {
				err = ErrSnapshotExists
			}
			return Manifest{}, fmt.Errorf("snapshot %q: %w", snapshot, err)
		}
		d.cfg.Metrics.upload(UploadManifest, len(b))
	}
	d.mu.Lock()
	d.lastCkpt = m.Created
	d.mu.Unlock()
	logs, err := d.collect(ctx)
	if err != nil {
		d.log.Warn("garbage collection after recovery point failed; will retry at the next one", "err", err)
	} else if logs == nil {
		// Collection waits for the map (collect).
	} else if err := d.reclaimLogs(ctx, logs); err != nil && ctx.Err() == nil {
		d.log.Warn("rewriting chunks out of mostly dead log objects failed; will retry at the next recovery point", "err", err)
	}
	return m, nil
}

// keepManifests is how many recovery points stay in the store.
const keepManifests = 3

// collect deletes what no kept recovery point and no current chunk needs:
// manifests older than the newest keepManifests, and chunk versions none
// of those manifests reference. Versions handed out after the listing
// began are never touched, so uploads in flight are safe. It returns the
// size of every log object it kept, by version.
func (d *Device) collect(ctx context.Context) (map[uint64]int64, error) {
	if !d.mapLoaded() {
		// The map is still being read from the recovery point the
		// cache started from: that recovery point's objects are the
		// rest of it, and collection waits until they are journaled.
		return nil, nil
	}
	d.mu.Lock()
	// Spare every version from the oldest upload not yet journaled on:
	// its object may exist before objects names it.
	bound := d.seq
	for seq := range d.inflight {
		bound = min(bound, seq)
	}
	keep := d.objects.keys()
	current := d.currentPagesLocked()
	d.mu.Unlock()
	var manifests []string
	if err := d.cfg.Store.List(ctx, "manifests/", func(o store.ObjectInfo) error {
		manifests = append(manifests, o.Key)
		return nil
	}); err != nil {
		return nil, err
	}
	slices.Sort(manifests)
	old := manifests[:max(0, len(manifests)-keepManifests)]
	// Snapshots are roots too (docs/FORMAT.md, "Snapshots").
	snaps, err := snapshots(ctx, d.cfg.Store)
	if err != nil {
		return nil, err
	}
	roots := newRefs(d.cfg.Store, keep)
	roots.current = current
	for _, sn := range snaps {
		if err := roots.add(ctx, sn.Manifest); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", sn.Name, err)
		}
	}
	// And so are clones' markers.
	markers, err := ReadCloneMarkers(ctx, d.cfg.Store, keep)
	if err != nil {
		return nil, err
	}
	for _, key := range manifests[len(old):] {
		b, err := d.cfg.Store.Get(ctx, key, nil)
		if err != nil {
			return nil, err
		}
		var m Manifest
		if json.Unmarshal(b, &m) != nil || !knownFormat(m.Format) || m.Checksum != m.sum() {
			continue
		}
		if err := roots.add(ctx, m); err != nil {
			// A kept manifest whose map cannot be read: delete
			// nothing rather than what it may name.
			return nil, err
		}
	}
	if err := roots.finish(ctx); err != nil {
		return nil, err
	}
	// The map the next recovery point chains onto.
	d.mu.Lock()
	if h := d.head; h != nil {
		keep[h.baseKey] = true
		for _, k := range h.pages {
			keep[k] = true
		}
		for _, k := range h.deltas {
			keep[k] = true
		}
	}
	d.mu.Unlock()
	var garbage []string
	for _, p := range mapPrefixes {
		if err := d.cfg.Store.List(ctx, p, func(o store.ObjectInfo) error {
			if ver, ok := mapObjectSeq(o.Key); ok && ver < bound && !keep[o.Key] {
				garbage = append(garbage, o.Key)
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	if err := d.cfg.Store.List(ctx, "chunks/", func(o store.ObjectInfo) error {
		var idx int64
		var ver uint64
		if _, err := fmt.Sscanf(o.Key, "chunks/%016x/%016x", &idx, &ver); err != nil || ver >= bound || keep[o.Key] {
			return nil
		}
		garbage = append(garbage, o.Key)
		return nil
	}); err != nil {
		return nil, err
	}
	logs := map[uint64]int64{}
	if err := d.cfg.Store.List(ctx, "logs/", func(o store.ObjectInfo) error {
		ver, ok := logSeq(o.Key)
		switch {
		case ok && ver < bound && !keep[o.Key]:
			garbage = append(garbage, o.Key)
		case ok:
			logs[ver] = o.Size
		}
		return nil
	}); err != nil {
		return nil, err
	}
	// A clone moved into this store meanwhile wrote its marker before the
	// objects it names, which the listings above may have found: markers
	// that appeared since keep theirs (CloneMarkers.Sweep).
	if _, err := markers.Sweep(ctx, append(garbage, old...)); err != nil {
		return nil, err
	}
	return logs, nil
}

func (d *Device) dirtyCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, c := range d.chunks {
		if c.dirty {
			n++
		}
	}
	return n
}

// recallLastCheckpoint reads back when the newest recovery point in the
// store was published, so TierStats (the RPO `ferry volume info` shows)
// does not forget it across a restart. Opening a volume never waits for
// the store: this runs in the background and retries (every few seconds,
// up to a minute apart) until the store answers or the volume closes. The
// time is the newest manifest's Last-Modified in the listing, which is
// when it was published; reading the manifest itself could cost
// megabytes for a large volume.
func (d *Device) recallLastCheckpoint(ctx context.Context) {
	defer d.wg.Done()
	backoff := 2 * time.Second
	for {
		var newest store.ObjectInfo
		err := d.cfg.Store.List(ctx, "manifests/", func(o store.ObjectInfo) error {
			if strings.HasSuffix(o.Key, ".json") && o.Key > newest.Key {
				newest = o
			}
			return nil
		})
		if err == nil {
			d.mu.Lock()
			if d.lastCkpt.IsZero() && !newest.Modified.IsZero() {
				d.lastCkpt = newest.Modified.UTC()
			}
			d.mu.Unlock()
			return
		}
		if ctx.Err() != nil {
			return
		}
		d.log.Debug("reading the last recovery point's time failed; will retry", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
	}
}

// LatestManifest reads the newest valid manifest in s.
func LatestManifest(ctx context.Context, s store.Store) (Manifest, error) {
	var keys []string
	if err := s.List(ctx, "manifests/", func(o store.ObjectInfo) error {
		if strings.HasSuffix(o.Key, ".json") {
			keys = append(keys, o.Key)
		}
		return nil
	}); err != nil {
		return Manifest{}, err
	}
	slices.Sort(keys)
	for i := len(keys) - 1; i >= 0; i-- {
		b, err := s.Get(ctx, keys[i], nil)
		if err != nil {
			return Manifest{}, err
		}
		var m Manifest
		if json.Unmarshal(b, &m) != nil || !knownFormat(m.Format) || m.Checksum != m.sum() {
			continue // torn or foreign: an older one is still good
		}
		return m, nil
	}
	return Manifest{}, fmt.Errorf("no manifest: %w", store.ErrNotFound)
}

// Export writes the image a manifest describes into w, which must read as
// zeroes to begin with (a new file truncated to m.Size): chunks absent from
// the manifest and the tails of short objects are left as they are. It uses
// only objects in s.
func Export(ctx context.Context, s store.Store, m Manifest, w io.WriterAt) error {
	objs, err := loadManifestMap(ctx, s, m)
	if err != nil {
		return fmt.Errorf("manifest %d: %w", m.Sequence, err)
	}
	idxs := objs.indexes()
	slices.Sort(idxs)
	var buf []byte // one chunk's, reused
	for _, idx := range idxs {
		b, err := assemble(ctx, s, objs.baseKey(idx), objs.overlays[idx], m.ChunkSize, buf)
		if err != nil {
			return fmt.Errorf("chunk %d: %w", idx, err)
		}
		buf = b
		off := idx * m.ChunkSize
		n := min(int64(len(b)), m.ChunkSize, m.Size-off)
		if _, err := w.WriteAt(b[:n], off); err != nil {
			return err
		}
	}
	return nil
}

// seqLease is how many object versions one meta.json write reserves.
const seqLease = 1024

// allocSeq hands out a new object version. The bound in meta.json is
// durable before any version under it names an object, so a key is never
// reused after a crash.
func (d *Device) allocSeq() (uint64, error) {
	d.mu.Lock()
	if d.seq < d.meta.NextSeq {
		s := d.seq
		d.seq++
		d.inflight[s] = struct{}{}
		d.mu.Unlock()
		return s, nil
	}
	d.mu.Unlock()
	d.metaMu.Lock()
	defer d.metaMu.Unlock()
	d.mu.Lock()
	if d.seq >= d.meta.NextSeq {
		d.meta.NextSeq = d.seq + seqLease
		m := d.meta
		d.mu.Unlock()
		if err := m.save(d.cfg.FS, d.cfg.Dir); err != nil {
			return 0, err
		}
		d.mu.Lock()
	}
	s := d.seq
	d.seq++
	d.inflight[s] = struct{}{}
	d.mu.Unlock()
	return s, nil
}

// settle forgets version seq as in flight (journaled, or abandoned: then
// its object, if any, is garbage).
func (d *Device) settle(seq uint64) {
	d.mu.Lock()
	delete(d.inflight, seq)
	d.mu.Unlock()
}

// afterPut, when set by a test, runs between an upload's Put and its
// journal record.
var afterPut func(d *Device, idx int64)

// saveMeta writes meta.json; saves are serialised so an older snapshot
// never overwrites a newer one.
func (d *Device) saveMeta() error {
	d.metaMu.Lock()
	defer d.metaMu.Unlock()
	d.mu.Lock()
	m := d.meta
	d.mu.Unlock()
	return m.save(d.cfg.FS, d.cfg.Dir)
}
