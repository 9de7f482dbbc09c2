// Package tier is the S3 tier: a device.Device whose data lives in an
// object store as fixed-size chunk objects, with a local write-back cache.
//
// Writes land in the local cache and are acknowledged; Flush makes them
// durable on local disk (chunk files and directory fsynced). Uploaders copy
// dirty chunks to the store in the background, each version under a new,
// immutable key. Reads of chunks not cached fetch them once (singleflight).
// Checkpoint publishes a manifest describing the volume as of one flush
// point; see docs/FORMAT.md for the layout in the store.
package tier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/local"
	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/internal/vfs"
)

// Config describes one tiered volume.
type Config struct {
	// Dir is the volume's cache directory (created if missing).
	Dir string
	// FS is the file system of Dir; nil is the operating system's. Tests
	// set a crashable one (internal/vfs).
	FS vfs.FS
	// Store holds the volume's objects; it is already scoped to the volume
	// (keys are relative to the volume's prefix).
	Store store.Store
	// Size is the volume size for a new volume; an existing cache keeps
	// its own.
	Size int64
	// ChunkSize is the chunk size for a new volume (default 4 MiB, a power
	// of two between 64 KiB and 64 MiB).
	ChunkSize int64
	// Budget is the cache budget shared with other volumes; nil gives the
	// volume a budget of its own of CacheBytes.
	Budget *Budget
	// CacheBytes bounds the local cache when Budget is nil (default 1 GiB).
	CacheBytes int64
	// Uploaders is the number of concurrent uploads (default 4).
	Uploaders int
	// FetchTimeout bounds a read of an uncached chunk when the store does
	// not answer (default 30s); the read then fails with ErrUnavailable.
	FetchTimeout time.Duration
	// DirtyWait bounds how long a write waits for cache space held by
	// dirty chunks before failing with ErrNoSpace (default 60s).
	DirtyWait time.Duration
	// Parents, for a clone, are its ancestors: objects of versions below
	// a parent's bound are read from that parent's prefix (clone.go), and
	// every manifest names them (format 3). Store must be Layered over
	// them.
	Parents []Parent
	// Fence, when set, is the volume's writer lease: while it says no,
	// writes, trims, resizes and flushes fail with device.ErrReadOnly
	// (uploads are fenced by the store it decorates, lease.Fenced), and
	// object versions and recovery points are numbered from its
	// generation up.
	Fence Fence
	// Readahead is how many chunks are fetched ahead of a sequential
	// reader (default 8, at most a quarter of the cache budget; negative
	// turns it off).
	Readahead int
	// Metrics counts cache hits, misses and uploads; nil counts nothing.
	Metrics *Metrics
	Logger  *slog.Logger
}

// DefaultChunkSize is the chunk size of new volumes.
const DefaultChunkSize = 4 << 20

// chunk is one cached chunk. mu is held shared by reads and writes (pread
// and pwrite are safe together) and exclusively to snapshot, move,
// complete or evict the file.
type chunk struct {
	idx       int64
	mu        sync.RWMutex
	dev       *local.Device
	dirty     bool // under mu (write) or d.mu: has writes not uploaded
	uploading bool // under d.mu: an uploader holds it
	gone      bool // under mu: evicted; look the chunk up again
	// full is set (under mu and d.mu) when the file holds the whole
	// chunk; a partial chunk holds only the bytes in ext.
	full bool
	// ext and mapf track the writes of a chunk cached partially (and of
	// one completed since, until it uploads): ext in memory, mapf in
	// dirty/I.map. Set at creation or under mu.
	ext  *extents
	mapf vfs.File
	// since, of a partial chunk, holds the writes no upload has taken
	// yet: what its next log upload sends (ext less what uploads in
	// flight or done sent). ext keeps them all: they are the bytes the
	// file holds, for reads, the budget and the map. Set at creation, or
	// swapped under mu (exclusively) and d.mu.
	since   *extents
	charge  atomic.Int64 // bytes of the cache budget the chunk holds
	ver     atomic.Uint64
	lastUse atomic.Int64
	written atomic.Int64 // bytes written since its last upload began
}

// Device is a tiered volume.
//
// Lock order: ckptMu → gate → chunk.mu → metaMu → mu → Budget.mu, and
// raMu → mu; extents.mu is innermost. evict takes a chunk's mu under mu
// only with TryLock.
type Device struct {
	cfg Config
	log *slog.Logger

	gate   sync.RWMutex // writes hold it shared; Checkpoint exclusively
	ckptMu sync.Mutex   // one Checkpoint at a time

	metaMu sync.Mutex // serialises meta.json writes

	mu        sync.Mutex
	meta      meta
	seq       uint64 // next object version to hand out
	chunks    map[int64]*chunk
	objects   *objectMap          // where each stored chunk lives
	inflight  map[uint64]struct{} // versions handed out whose upload is not journaled yet
	unflushed map[*chunk]struct{}
	journal   vfs.File
	closed    bool
	space     *sync.Cond // signalled when cache space frees up
	lastCkpt  time.Time
	pressure  int // writers waiting for cache space: upload without delay

	fetches singleflight.Group
	wake    chan struct{}
	stop    context.CancelFunc
	wg      sync.WaitGroup
	upErr   atomic.Pointer[error] // last upload error, for Stats
	changed atomic.Bool           // modified since the last checkpoint began

	bg     context.Context // ends at Close: readahead fetches
	raMu   sync.Mutex
	raNext int64              // chunk a sequential reader reads next
	raRun  int                // chunks read in sequence so far
	raRead int64              // bytes read in the stream's window since its last step
	raBusy map[int64]struct{} // chunks being read ahead
	missed ghosts             // chunks recently read through: cache them next time
	credit int64              // under mu: bytes of admission credit (readthrough.go)

	streams    map[int64]*stream // under mu: chunks held in memory for sequential readers (stream.go)
	streamBorn uint64            // under mu

	hyd hydration // hydrate.go

	// Under mu (pagemap.go): the map of the last recovery point this
	// device published or started from (nil: not known, so the next one
	// writes a whole base), the chunks changed since, and whether the
	// next one must write a whole base. lazy is the source of the pages
	// objects has not read yet (nil once all are).
	head     *mapSource
	since    map[int64]struct{}
	fullNext bool
	lazy     *mapSource
	mapDone  chan struct{} // closed when every page is read
}

var (
	_ device.Device  = (*Device)(nil)
	_ device.Statter = (*Device)(nil)
)

// Open opens (or creates) a tiered volume. After an unclean shutdown every
// chunk in dirty/ is uploaded again and clean/ is discarded, so a torn
// cache file is never taken for uploaded data.
func Open(ctx context.Context, cfg Config) (*Device, error) {
	if cfg.Store == nil {
		return nil, errors.New("tier: no store")
	}
	if cfg.ChunkSize == 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	if cfg.ChunkSize < 64<<10 || cfg.ChunkSize > 64<<20 || cfg.ChunkSize&(cfg.ChunkSize-1) != 0 {
		return nil, fmt.Errorf("tier: chunk size %d: want a power of two from 64 KiB to 64 MiB", cfg.ChunkSize)
	}
	if cfg.CacheBytes <= 0 {
		cfg.CacheBytes = 1 << 30
	}
	cfg.CacheBytes = max(cfg.CacheBytes, 4*cfg.ChunkSize)
	if cfg.Uploaders <= 0 {
		cfg.Uploaders = 4
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 30 * time.Second
	}
	if cfg.DirtyWait <= 0 {
		cfg.DirtyWait = 60 * time.Second
	}
	if cfg.Readahead == 0 {
		cfg.Readahead = 8
	}
	cfg.FS = vfs.Or(cfg.FS)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, sub := range []string{"dirty", "clean"} {
		if err := cfg.FS.MkdirAll(filepath.Join(cfg.Dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("tier: %w", err)
		}
	}
	m, ok, err := loadMeta(cfg.FS, cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("tier: %w", err)
	}
	if !ok {
		// A new cache: a new volume, or one whose cache was lost (new
		// machine, lost disk). Either way, continue from the store.
		if m, err = resume(ctx, cfg, log); err != nil {
			return nil, fmt.Errorf("tier: %w", err)
		}
	}
	if len(cfg.Parents) > 0 && m.NextSeq < cfg.Parents[0].Below {
		// A clone's own versions start at its bound: below it, a version
		// is an ancestor's.
		m.NextSeq = cfg.Parents[0].Below
		if err := m.save(cfg.FS, cfg.Dir); err != nil {
			return nil, fmt.Errorf("tier: %w", err)
		}
	}
	if cfg.Fence != nil {
		// This writer's versions and recovery points start at its
		// generation: above everything an earlier writer may still
		// upload (docs/FORMAT.md, "Writer lease").
		base := cfg.Fence.Generation() << generationShift
		if m.NextSeq < base || m.Manifest < base {
			m.NextSeq, m.Manifest = max(m.NextSeq, base), max(m.Manifest, base)
			if err := m.save(cfg.FS, cfg.Dir); err != nil {
				return nil, fmt.Errorf("tier: %w", err)
			}
		}
	}
	cfg.ChunkSize = m.ChunkSize
	objs, src := newObjectMap(), (*mapSource)(nil)
	if m.Lazy != "" {
		// Started from a format-4 recovery point whose pages are not
		// all read: its base and deltas now, its pages when needed.
		if objs, src, err = openLazy(ctx, cfg.FS, cfg.Store, cfg.Dir, m.Lazy); err != nil {
			return nil, fmt.Errorf("tier: the recovery point the cache started from: %w", err)
		}
	}
	if m.Lazy == "" {
		cfg.FS.Remove(filepath.Join(cfg.Dir, lazyName)) // left by a crash after the map was journaled
	}
	since := map[int64]struct{}{}
	if src != nil {
		// What the journal changes since that recovery point goes into
		// the next one, which chains onto it.
		objs.changed = func(idx int64) { since[idx] = struct{}{} }
	}
	objs, err = loadObjects(cfg.FS, cfg.Dir, cfg.ChunkSize, objs)
	if err != nil {
		return nil, fmt.Errorf("tier: objects journal: %w", err)
	}
	// Compact the journal and start a fresh append handle.
	if err := rewriteObjects(cfg.FS, cfg.Dir, objs); err != nil {
		return nil, fmt.Errorf("tier: %w", err)
	}
	j, err := cfg.FS.OpenFile(filepath.Join(cfg.Dir, "objects.log"), os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("tier: %w", err)
	}
	d := &Device{
		cfg: cfg, log: log, meta: m, chunks: map[int64]*chunk{}, objects: objs,
		unflushed: map[*chunk]struct{}{}, journal: j, wake: make(chan struct{}, 1),
		seq: m.NextSeq, raNext: -1, raBusy: map[int64]struct{}{}, inflight: map[uint64]struct{}{},
		streams: map[int64]*stream{},
		since:   since, lazy: src, mapDone: make(chan struct{}),
	}
	head, changed, ok := takeHead(cfg.FS, cfg.Dir)
	switch {
	case src != nil:
		d.head = src.clone()
	case ok:
		// Closed cleanly: the next recovery point chains onto the last.
		d.head, d.since = head, changed
	default:
		// Changes since the last recovery point are not known: the
		// next one writes a whole base.
		d.fullNext = true
	}
	if src == nil {
		close(d.mapDone)
	}
	// Called under d.mu by every change of the map after loading.
	objs.changed = func(idx int64) {
		d.forgetStreamLocked(idx, nil)
		d.since[idx] = struct{}{}
	}
	d.space = sync.NewCond(&d.mu)
	if cfg.Budget == nil {
		d.cfg.Budget = NewBudget(cfg.CacheBytes)
	}
	// Clean copies may be torn by a crash and are cheap to fetch again.
	if err := cfg.FS.RemoveAll(filepath.Join(cfg.Dir, "clean")); err != nil {
		return nil, fmt.Errorf("tier: %w", err)
	}
	if err := cfg.FS.MkdirAll(filepath.Join(cfg.Dir, "clean"), 0o700); err != nil {
		return nil, fmt.Errorf("tier: %w", err)
	}
	ents, err := cfg.FS.ReadDir(filepath.Join(cfg.Dir, "dirty"))
	if err != nil {
		return nil, fmt.Errorf("tier: %w", err)
	}
	for _, e := range ents {
		if idx, ok := isMapName(e.Name()); ok {
			if _, err := cfg.FS.Stat(filepath.Join(cfg.Dir, "dirty", chunkName(idx))); err != nil {
				cfg.FS.Remove(filepath.Join(cfg.Dir, "dirty", e.Name())) // its chunk uploaded
			}
			continue
		}
		idx, err := strconv.ParseInt(e.Name(), 10, 64)
		if err != nil {
			continue // a temporary file
		}
		c, err := d.openDirty(idx)
		if err != nil {
			return nil, fmt.Errorf("tier: chunk %d: %w", idx, err)
		}
		if c == nil {
			continue // torn at creation, removed
		}
		d.chunks[idx] = c
		d.cfg.Budget.add(c.charge.Load())
	}
	d.cfg.Budget.register(d)
	uctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.stop, d.bg = cancel, uctx
	pending := len(d.chunks) > 0 // read before uploaders may change it
	for range cfg.Uploaders {
		d.wg.Add(1)
		go d.uploader(uctx)
	}
	d.wg.Add(1)
	go d.recallLastCheckpoint(uctx)
	if src != nil && readPagesAhead {
		d.wg.Add(1)
		go d.loadPages(uctx)
	}
	if pending {
		d.kick()
	}
	return d, nil
}

func (d *Device) chunkSize() int64 { return d.cfg.ChunkSize }

// Fence is a volume's writer lease as the tier sees it (lease.Fence).
type Fence interface {
	Writable() error
	Generation() uint64
	Fresh() bool
}

// writable says whether the writer lease lets this gateway write.
func (d *Device) writable() error {
	if d.cfg.Fence == nil {
		return nil
	}
	return d.cfg.Fence.Writable()
}

// Size implements device.Device.
func (d *Device) Size() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.meta.Size
}

func (d *Device) check(ctx context.Context, off, length int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return device.ErrClosed
	}
	return device.CheckRange(d.meta.Size, off, length)
}

// span calls fn for each chunk piece of [off, off+length).
func (d *Device) span(off, length int64, fn func(idx, coff, n, done int64) error) error {
	cs := d.chunkSize()
	var done int64
	for length > 0 {
		idx, coff := off/cs, off%cs
		n := min(length, cs-coff)
		if err := fn(idx, coff, n, done); err != nil {
			return err
		}
		off, length, done = off+n, length-n, done+n
	}
	return nil
}

// ReadAt implements device.Device.
func (d *Device) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := d.check(ctx, off, int64(len(p))); err != nil {
		return err
	}
	last := int64(-1)
	err := d.span(off, int64(len(p)), func(idx, coff, n, done int64) error {
		if err := d.pageIn(ctx, idx); err != nil {
			return err
		}
		buf := p[done : done+n]
		last = idx
		seq := d.cfg.Readahead >= 0 && d.sequential(idx)
		// rctx is ctx bounded by retryBy once the stream the read joined
		// failed (retrying).
		rctx, retrying := ctx, false
		for {
			done, retryBy, err := d.readStream(rctx, idx, coff, buf, seq)
			if done || err != nil {
				return boundErr(ctx, rctx, retrying, idx, err)
			}
			if !retryBy.IsZero() && !retrying {
				retrying = true
				// Its stream's fetch failed: fetch for itself, within
				// what is left of the bound.
				var cancel context.CancelFunc
				rctx, cancel = context.WithDeadline(ctx, retryBy)
				defer cancel()
				seq = false
			}
			if done, err := d.readThrough(rctx, idx, coff, buf, seq); done || err != nil {
				return boundErr(ctx, rctx, retrying, idx, err)
			}
			c, cached, err := d.lookupMode(rctx, idx, lookupRead)
			if err != nil {
				return boundErr(ctx, rctx, retrying, idx, err)
			}
			if c == nil {
				clear(buf)
				return nil
			}
			c.mu.RLock()
			if c.gone {
				c.mu.RUnlock()
				continue
			}
			if !c.full && c.ext.uncovered(coff, n) > 0 {
				// Partially cached: fetch the rest under it first.
				c.mu.RUnlock()
				if err := d.complete(rctx, c); err != nil && !errors.Is(err, errGone) {
					return boundErr(ctx, rctx, retrying, idx, err)
				}
				continue
			}
			err = c.dev.ReadAt(rctx, buf, coff)
			c.mu.RUnlock()
			c.lastUse.Store(time.Now().UnixNano())
			if cached {
				d.cfg.Metrics.hit()
			} else {
				d.cfg.Metrics.miss()
			}
			return boundErr(ctx, rctx, retrying, idx, err)
		}
	})
	if err == nil {
		d.readahead(off/d.chunkSize(), last, int64(len(p)))
	}
	return err
}

// boundErr reports a read that its retry's deadline (rctx, see
// readStream) cut short as the store being unavailable, as a fetch that
// timed out is.
func boundErr(ctx, rctx context.Context, retrying bool, idx int64, err error) error {
	if err != nil && retrying && rctx.Err() != nil && ctx.Err() == nil && !errors.Is(err, device.ErrUnavailable) {
		return fmt.Errorf("chunk %d: %w (%v)", idx, device.ErrUnavailable, err)
	}
	return err
}

// readahead notes a read of n bytes of chunks first..last and, once a
// reader has gone from one chunk to the next in order, having read most
// of the chunk it left, fetches the chunks after last in the background:
// into stream buffers (stream.go), or into the cache for chunks read
// lately or when no stream memory is free. It never waits for cache space
// held by dirty chunks.
//
// Going on to the next chunk is not enough to start a stream: a random
// reader does that by chance (3 reads in 256 over 1 GiB of 4 MiB chunks),
// and each time it fetched a chunk whole and eight more ahead (issue #16:
// 355 bytes downloaded per byte read). A sequential reader has read about
// a chunk in the stream's window when it moves on; a random one a few
// KiB.
func (d *Device) readahead(first, last, n int64) {
	if d.cfg.Readahead < 0 {
		return
	}
	d.raMu.Lock()
	defer d.raMu.Unlock()
	if !d.inStreamLocked(first) {
		d.raRun, d.raNext, d.raRead = 0, last+1, n
		return
	}
	d.raRead += n
	if last+1 <= d.raNext {
		return // more of chunks the stream has read
	}
	if d.raRun == 0 && d.raRead < d.chunkSize()/2 {
		// Landed on the next chunk without reading the last: random. (A
		// stream once established keeps going: reads in flight together
		// complete out of order.)
		d.raRun, d.raNext, d.raRead = 0, last+1, n
		return
	}
	d.raRun += int(last + 1 - d.raNext)
	d.raNext, d.raRead = last+1, n
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	var want []int64
	for idx := last + 1; idx <= last+d.readaheadChunks(); idx++ {
		_, cached := d.chunks[idx]
		_, streaming := d.streams[idx]
		_, busy := d.raBusy[idx]
		if cached || streaming || busy || !d.objects.stored(idx) {
			continue
		}
		if d.missed.has(idx) || d.startStreamLocked(idx) == nil {
			want = append(want, idx)
		}
	}
	// Close waits for the fetches (added under mu, before it closes), so
	// none caches a chunk or takes budget after Close returns.
	d.wg.Add(len(want))
	d.mu.Unlock()
	for _, idx := range want {
		d.raBusy[idx] = struct{}{}
		go func() {
			defer d.wg.Done()
			c, _, err := d.lookupMode(d.bg, idx, lookupAhead)
			if err != nil && d.bg.Err() == nil {
				d.log.Debug("readahead failed", "chunk", idx, "err", err)
			}
			if c != nil {
				d.cfg.Metrics.prefetch()
			}
			d.raMu.Lock()
			delete(d.raBusy, idx)
			d.raMu.Unlock()
		}()
	}
}

// readaheadChunks is how many chunks are read ahead of a sequential
// reader: Readahead, at most a quarter of the cache budget.
func (d *Device) readaheadChunks() int64 {
	return max(0, min(int64(d.cfg.Readahead), d.cfg.Budget.Limit()/d.chunkSize()/4))
}

// WriteAt implements device.Device.
func (d *Device) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := d.check(ctx, off, int64(len(p))); err != nil {
		return err
	}
	if err := d.writable(); err != nil {
		return err
	}
	d.gate.RLock()
	defer d.gate.RUnlock()
	return d.span(off, int64(len(p)), func(idx, coff, n, done int64) error {
		return d.modify(ctx, idx, coff, n, func(c *chunk) error {
			c.written.Add(n)
			return c.dev.WriteAt(ctx, p[done:done+n], coff)
		})
	})
}

// modify runs fn, which writes bytes [coff, coff+n) of chunk idx, on the
// chunk made dirty and cached: partially if it was not cached, unless fn
// overwrites all of it.
func (d *Device) modify(ctx context.Context, idx, coff, n int64, fn func(*chunk) error) error {
	if err := d.pageIn(ctx, idx); err != nil {
		return err
	}
	for {
		mode := lookupWrite
		if n == d.chunkSize() {
			mode = lookupReplace
		}
		c, _, err := d.lookupMode(ctx, idx, mode)
		if err != nil {
			return err
		}
		if err := d.markDirty(c); err != nil {
			if errors.Is(err, errGone) {
				continue
			}
			return err
		}
		// A partial chunk grows by the bytes it did not hold.
		c.mu.RLock()
		var grow int64
		if !c.full {
			grow = c.ext.uncovered(coff, n)
		}
		c.mu.RUnlock()
		if grow > 0 {
			if err := d.reserve(ctx, grow, false); err != nil {
				return err
			}
		}
		c.mu.RLock()
		if c.gone || !c.dirty {
			// Evicted, or uploaded and made clean while this writer
			// waited (markDirty ran before): written now, the chunk
			// would stay clean and the write go with its eviction.
			c.mu.RUnlock()
			d.cfg.Budget.release(grow)
			continue
		}
		if c.full {
			d.cfg.Budget.release(grow) // completed meanwhile: charged whole
		} else {
			c.charge.Add(grow)
		}
		c.ver.Add(1)
		d.changed.Store(true)
		err = fn(c)
		if err == nil && c.mapf != nil {
			err = c.track(coff, n)
		}
		c.mu.RUnlock()
		c.lastUse.Store(time.Now().UnixNano())
		d.mu.Lock()
		d.unflushed[c] = struct{}{}
		d.mu.Unlock()
		d.kick()
		return err
	}
}

var errGone = errors.New("chunk evicted")

// markDirty moves a clean chunk's file to dirty/ (durably, by the next
// Flush) before it is written.
func (d *Device) markDirty(c *chunk) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone {
		return errGone
	}
	if c.dirty {
		return nil
	}
	// The clean copy was never fsynced; make it durable before dirty/
	// names it, or a crash could tear the unwritten part of the chunk.
	if err := c.dev.Flush(context.Background()); err != nil {
		return fmt.Errorf("chunk %d: %w", c.idx, err)
	}
	from := filepath.Join(d.cfg.Dir, "clean", chunkName(c.idx))
	to := filepath.Join(d.cfg.Dir, "dirty", chunkName(c.idx))
	if err := d.cfg.FS.Rename(from, to); err != nil {
		return fmt.Errorf("chunk %d: %w", c.idx, err)
	}
	c.dev.SetPath(to)
	d.mu.Lock()
	c.dirty = true
	d.mu.Unlock()
	return nil
}

// lookupMode says what a chunk lookup may do.
type lookupMode struct {
	create  bool // make an empty cached chunk for a chunk that is all zeroes
	fetch   bool // fetch the chunk's object (else treat the chunk as new)
	partial bool // make a partial chunk instead: fetch nothing
	nowait  bool // fail rather than wait for cache space held by dirty chunks
	// direct: nobody waits to read the chunk soon (hydration), so its
	// cache file is written past the page cache: the copy into it and
	// its writeback cost more CPU than the fetch (docs/S3.md, "Readahead,
	// upload batching, memory"). Readahead does not: its reader follows.
	direct bool
	// gets, when set, bounds the store reads of fetches made in this
	// mode: each holds a slot of it while it reads (hydration keeps that
	// many reads in flight while other fetches write what they read).
	gets chan struct{}
}

var (
	// lookupRead returns nil for a chunk that is all zeroes.
	lookupRead = lookupMode{fetch: true}
	// lookupWrite returns the chunk cached, partially if it was not.
	lookupWrite = lookupMode{create: true, partial: true}
	// lookupReplace returns the chunk cached, empty if it was not cached:
	// for a write that replaces all of it.
	lookupReplace = lookupMode{create: true}
	// lookupAhead fetches for readahead.
	lookupAhead = lookupMode{fetch: true, nowait: true}
)

// lookup returns the cached chunk idx, fetching or creating it as mode
// allows, and whether it was cached already.
func (d *Device) lookupMode(ctx context.Context, idx int64, mode lookupMode) (*chunk, bool, error) {
	if err := d.pageIn(ctx, idx); err != nil {
		return nil, false, err
	}
	d.mu.Lock()
	if c := d.chunks[idx]; c != nil {
		d.mu.Unlock()
		return c, true, nil
	}
	stored := d.objects.stored(idx)
	d.mu.Unlock()
	if !(stored && mode.fetch) && !mode.create {
		return nil, false, nil // all zeroes
	}
	v, err, _ := d.fetches.Do(chunkName(idx), func() (any, error) {
		d.mu.Lock()
		if c := d.chunks[idx]; c != nil {
			d.mu.Unlock()
			return c, nil
		}
		// The map as it is now, not as it was before this call joined
		// the fetches: it may have changed since (a whole chunk trimmed
		// or zeroed), and what an older look names is gone.
		stored := d.objects.stored(idx)
		key, ovs := d.objects.baseKey(idx), slices.Clone(d.objects.overlays[idx])
		d.mu.Unlock()
		inStore := stored && mode.fetch
		if !inStore && !mode.create {
			return (*chunk)(nil), nil
		}
		if mode.partial || stored && !mode.fetch {
			// A chunk the store holds is replaced through a map too, so
			// a crash before the write lands uploads nothing of it.
			return d.newPartial(idx)
		}
		if err := d.reserve(ctx, d.chunkSize(), mode.nowait); err != nil {
			return nil, err
		}
		ok := false
		defer func() {
			if !ok {
				d.cfg.Budget.release(d.chunkSize())
			}
		}()
		var data []byte
		dir := "dirty"
		if inStore {
			if mode.gets != nil {
				select {
				case mode.gets <- struct{}{}:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			b, err := d.fetch(ctx, idx, key, ovs, getBuf(d.chunkSize()))
			if mode.gets != nil {
				<-mode.gets
			}
			if err != nil {
				return nil, err
			}
			defer putBuf(b, d.chunkSize())
			data, dir = b, "clean"
		}
		path := filepath.Join(d.cfg.Dir, dir, chunkName(idx))
		d.cfg.FS.Remove(path)
		dev, err := local.On(d.cfg.FS).CreateScratch(path, d.chunkSize())
		if err != nil {
			return nil, fmt.Errorf("chunk %d: %w", idx, err)
		}
		if len(data) > 0 {
			write := dev.WriteAt
			if mode.direct {
				write = dev.WriteDirect
			}
			if err := write(ctx, data[:min(int64(len(data)), d.chunkSize())], 0); err != nil {
				dev.Close()
				return nil, fmt.Errorf("chunk %d: %w", idx, err)
			}
		}
		c := &chunk{idx: idx, dev: dev, dirty: !inStore, full: true}
		c.charge.Store(d.chunkSize())
		c.lastUse.Store(time.Now().UnixNano())
		d.mu.Lock()
		if inStore && (key != d.objects.baseKey(idx) || !slices.Equal(ovs, d.objects.overlays[idx])) {
			// Trimmed, zeroed or rewritten while it was fetched: cached,
			// this copy would outlive the change (and a later write would
			// upload it whole). Look again.
			d.mu.Unlock()
			dev.Close()
			d.cfg.FS.Remove(path)
			return nil, errStaleFetch
		}
		ok = true
		d.chunks[idx] = c
		d.mu.Unlock()
		return c, nil
	})
	if errors.Is(err, errNoRoomAhead) && !mode.nowait || errors.Is(err, errStaleFetch) {
		// Joined a readahead that gave up, or a fetch the map outran:
		// look again for this caller.
		return d.lookupMode(ctx, idx, mode)
	}
	if err != nil {
		return nil, false, err
	}
	c := v.(*chunk)
	if c == nil && mode.create {
		return d.lookupMode(ctx, idx, mode) // joined a reader's look at a chunk now all zeroes
	}
	return c, false, nil
}

// errStaleFetch is a fetch whose chunk's map entry changed meanwhile.
var errStaleFetch = errors.New("chunk changed while it was fetched")

// errNoRoomAhead is a readahead finding no cache space it may take.
var errNoRoomAhead = errors.New("no cache space free for readahead")

// reserve takes cs bytes from the budget, evicting clean chunks (least
// recently used first, of any volume) or waiting for uploads up to
// DirtyWait (not at all with nowait).
func (d *Device) reserve(ctx context.Context, cs int64, nowait bool) error {
	b := d.cfg.Budget
	if b.tryTake(cs) {
		return nil
	}
	if nowait {
		if b.evictOne() && b.tryTake(cs) {
			return nil
		}
		return errNoRoomAhead
	}
	d.mu.Lock()
	d.pressure++
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.pressure--
		d.mu.Unlock()
	}()
	deadline := time.Now().Add(d.cfg.DirtyWait)
	for {
		if b.tryTake(cs) {
			return nil
		}
		if b.evictOne() {
			continue
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cache full of data not yet uploaded (%d of %d bytes): %w", b.Used(), b.Limit(), device.ErrNoSpace)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		b.kickAll()
		d.mu.Lock()
		t := time.AfterFunc(50*time.Millisecond, func() { d.mu.Lock(); d.space.Broadcast(); d.mu.Unlock() })
		d.space.Wait()
		d.mu.Unlock()
		t.Stop()
	}
}

// oldestClean returns the least recently used clean chunk and when it
// was used.
func (d *Device) oldestClean() (*chunk, int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var victim *chunk
	var use int64
	for _, c := range d.chunks {
		if u := c.lastUse.Load(); !c.dirty && (victim == nil || u < use) {
			victim, use = c, u
		}
	}
	return victim, use
}

// evict drops victim from the cache if it is still cached and clean and
// nobody holds it.
func (d *Device) evict(victim *chunk) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.chunks[victim.idx] != victim || !victim.mu.TryLock() {
		return false
	}
	defer victim.mu.Unlock()
	if victim.dirty {
		return false
	}
	victim.gone = true
	delete(d.chunks, victim.idx)
	delete(d.unflushed, victim)
	victim.dev.Close()
	d.cfg.FS.Remove(filepath.Join(d.cfg.Dir, "clean", chunkName(victim.idx)))
	d.cfg.Budget.release(victim.charge.Load())
	return true
}

// Flush implements device.Device: every chunk written since the last
// Flush, and the dirty/ directory, are fsynced.
func (d *Device) Flush(ctx context.Context) error {
	if err := d.writable(); err != nil {
		return err // what it would flush can no longer reach the store
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return device.ErrClosed
	}
	pending := make([]*chunk, 0, len(d.unflushed))
	for c := range d.unflushed {
		pending = append(pending, c)
	}
	clear(d.unflushed)
	d.mu.Unlock()
	var firstErr error
	for _, c := range pending {
		c.mu.RLock()
		if !c.gone {
			if err := c.dev.Flush(ctx); err != nil && firstErr == nil {
				firstErr = err
			}
			if c.mapf != nil {
				if err := c.mapf.Sync(); err != nil && firstErr == nil {
					firstErr = fmt.Errorf("chunk %d map: %w", c.idx, err)
				}
			}
		}
		c.mu.RUnlock()
	}
	if err := local.On(d.cfg.FS).SyncDir(filepath.Join(d.cfg.Dir, "dirty")); err != nil && firstErr == nil {
		firstErr = err
	}
	if firstErr != nil {
		// Keep them for the next Flush.
		d.mu.Lock()
		for _, c := range pending {
			d.unflushed[c] = struct{}{}
		}
		d.mu.Unlock()
	}
	return firstErr
}

// Trim implements device.Device: whole chunks are dropped (their objects
// leave the next manifest), partial ones zeroed in the cache.
func (d *Device) Trim(ctx context.Context, off, length int64) error {
	return d.zero(ctx, off, length, true)
}

// WriteZeroes implements device.Device.
func (d *Device) WriteZeroes(ctx context.Context, off, length int64, mayTrim bool) error {
	return d.zero(ctx, off, length, mayTrim)
}

func (d *Device) zero(ctx context.Context, off, length int64, punch bool) error {
	if err := d.check(ctx, off, length); err != nil {
		return err
	}
	if err := d.writable(); err != nil {
		return err
	}
	d.gate.RLock()
	defer d.gate.RUnlock()
	return d.span(off, length, func(idx, coff, n, done int64) error {
		if err := d.pageIn(ctx, idx); err != nil {
			return err
		}
		if n == d.chunkSize() {
			return d.dropChunk(idx)
		}
		d.mu.Lock()
		_, cached := d.chunks[idx]
		inStore := d.objects.stored(idx)
		d.mu.Unlock()
		if !cached && !inStore {
			return nil // already zeroes
		}
		return d.modify(ctx, idx, coff, n, func(c *chunk) error {
			return c.dev.WriteZeroes(ctx, coff, n, punch)
		})
	})
}

// dropChunk makes chunk idx all zeroes: the cached copy is deleted and the
// chunk leaves the object map (journaled before returning, so a crash
// cannot resurrect the old object).
func (d *Device) dropChunk(idx int64) error {
	for {
		d.mu.Lock()
		c := d.chunks[idx]
		if c == nil {
			if d.objects.stored(idx) {
				d.changed.Store(true)
				d.objects.drop(idx)
				err := d.journalLocked(fmt.Sprintf("drop %d\n", idx))
				d.mu.Unlock()
				return err
			}
			d.mu.Unlock()
			return nil
		}
		d.mu.Unlock()
		c.mu.Lock()
		if c.gone {
			c.mu.Unlock()
			continue
		}
		c.gone = true
		c.ver.Add(1)
		d.changed.Store(true)
		dir := "clean"
		if c.dirty {
			dir = "dirty"
		}
		c.dev.Close()
		d.cfg.FS.Remove(filepath.Join(d.cfg.Dir, dir, chunkName(idx)))
		c.closeMap(d.cfg.FS, d.cfg.Dir)
		d.mu.Lock()
		delete(d.chunks, idx)
		delete(d.unflushed, c)
		d.cfg.Budget.release(c.charge.Load())
		var err error
		if d.objects.stored(idx) {
			d.objects.drop(idx)
			err = d.journalLocked(fmt.Sprintf("drop %d\n", idx))
		}
		d.space.Broadcast()
		d.mu.Unlock()
		c.mu.Unlock()
		return err
	}
}

// journalLocked appends a durable record to objects.log; d.mu is held.
func (d *Device) journalLocked(line string) error {
	if _, err := d.journal.WriteString(line); err != nil {
		return fmt.Errorf("objects journal: %w", err)
	}
	if err := d.journal.Sync(); err != nil {
		return fmt.Errorf("objects journal: %w", err)
	}
	return nil
}

// Extents implements device.Device at chunk granularity: chunks neither
// cached nor in the store are holes.
func (d *Device) Extents(ctx context.Context, off, length int64) ([]device.Extent, error) {
	if err := d.check(ctx, off, length); err != nil {
		return nil, err
	}
	var out []device.Extent
	err := d.span(off, length, func(idx, coff, n, done int64) error {
		if err := d.pageIn(ctx, idx); err != nil {
			return err
		}
		d.mu.Lock()
		_, cached := d.chunks[idx]
		inStore := d.objects.stored(idx)
		d.mu.Unlock()
		var f device.ExtentFlags
		if !cached && !inStore {
			f = device.ExtentHole | device.ExtentZero
		}
		if k := len(out); k > 0 && out[k-1].Flags == f {
			out[k-1].Length += n
		} else {
			out = append(out, device.Extent{Offset: off + done, Length: n, Flags: f})
		}
		return nil
	})
	return out, err
}

// Resize implements device.Device. Shrinking drops the chunks past the new
// end and zeroes the tail of the last one.
func (d *Device) Resize(ctx context.Context, size int64) error {
	if size < 0 {
		return fmt.Errorf("resize to %d: %w", size, device.ErrOutOfRange)
	}
	if err := d.writable(); err != nil {
		return err
	}
	if size < d.Size() {
		// Shrinking drops every stored chunk past the end: the whole
		// map must be known (a cache started from a paged recovery
		// point reads it in the background).
		if err := d.mapAll(ctx); err != nil {
			return err
		}
	}
	d.gate.Lock()
	defer d.gate.Unlock()
	d.mu.Lock()
	old := d.meta.Size
	d.mu.Unlock()
	if size < old {
		if !d.mapLoaded() {
			// Grown meanwhile by another resize: the map was not needed.
			return fmt.Errorf("resize to %d: %w (the volume's map is still being read; retry)", size, errMapUnknown)
		}
		cs := d.chunkSize()
		if tail := size % cs; tail != 0 {
			// Zero the rest of the new last chunk while it is still in range.
			d.gate.Unlock()
			err := d.zero(ctx, size, min(cs-tail, old-size), true)
			d.gate.Lock()
			if err != nil {
				return err
			}
		}
		first := (size + cs - 1) / cs
		d.mu.Lock()
		var idxs []int64
		for idx := range d.chunks {
			if idx >= first {
				idxs = append(idxs, idx)
			}
		}
		for _, idx := range d.objects.indexes() {
			if idx >= first {
				idxs = append(idxs, idx)
			}
		}
		d.mu.Unlock()
		slices.Sort(idxs)
		for _, idx := range slices.Compact(idxs) {
			if err := d.dropChunk(idx); err != nil {
				return err
			}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.meta.Size = size
	d.changed.Store(true)
	d.mu.Unlock()
	err := d.saveMeta()
	d.mu.Lock()
	return err
}

// Close stops the uploaders and closes the cache. It does not upload: a
// reopened device finds dirty chunks in dirty/ and uploads them then.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	d.stop()
	d.wg.Wait()
	d.cfg.Budget.unregister(d)
	if d.ckptMu.TryLock() {
		// No recovery point is being published: record the map the
		// next one chains onto (with one running, the next start writes
		// a whole base instead).
		if err := d.saveHead(); err != nil {
			d.log.Warn("recording the last recovery point's map failed; the next one after a restart writes it whole", "err", err)
		}
		d.ckptMu.Unlock()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.chunks {
		c.dev.Close()
		if c.mapf != nil {
			c.mapf.Close()
		}
		d.cfg.Budget.release(c.charge.Load())
	}
	for idx := range d.streams {
		d.forgetStreamLocked(idx, nil)
	}
	return d.journal.Close()
}

// Stats implements device.Statter: Allocated is the local cache use.
func (d *Device) Stats(ctx context.Context) (device.Stats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var used int64
	for _, c := range d.chunks {
		used += c.charge.Load()
	}
	return device.Stats{Provisioned: d.meta.Size, Allocated: used}, nil
}

// TierStats is what `ferry volume info` shows of a tiered volume.
type TierStats struct {
	CachedBytes    int64
	DirtyBytes     int64
	StoredChunks   int
	LastCheckpoint time.Time
	UploadError    string
}

// TierStats reports cache and upload state.
func (d *Device) TierStats() TierStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	var s TierStats
	for _, c := range d.chunks {
		s.CachedBytes += c.charge.Load()
		if c.dirty {
			s.DirtyBytes += c.charge.Load()
		}
	}
	s.StoredChunks = len(d.objects.indexes())
	s.LastCheckpoint = d.lastCkpt
	if e := d.upErr.Load(); e != nil {
		s.UploadError = (*e).Error()
	}
	return s
}

func (d *Device) kick() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Changed reports whether the volume was written, trimmed or resized since
// the last recovery point began.
func (d *Device) Changed() bool { return d.changed.Load() }
