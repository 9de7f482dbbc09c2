package tier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ferry-io/ferry/backends/store"
)

// Moving a volume to another store while it serves (docs/S3.md, "Moving
// a volume to another store"): a Copier copies the volume's objects from
// the store it uses to another, in passes, while the device goes on
// uploading to the first; Migrate then holds the device's uploads (not its
// clients' I/O: the write-back cache absorbs it), copies what they added
// since the last pass, and switches the device's store to the other one.
//
// A pass copies every object under the volume's prefix that the other
// store lacks, of the kinds a recovery point, a snapshot or the cache's
// map can name (chunks/, logs/, bases/, pages/, deltas/, manifests/,
// snapshots/): a superset of what
// the volume needs, since collection deletes what no root names at its
// next recovery point on the new store. Objects are immutable and never
// reuse a key, so a key the other store holds with the same size is the
// same object: a pass after an interruption copies only what is missing.

// CopyState is where a Copier stands.
type CopyState string

const (
	CopyIdle      CopyState = ""          // not started
	CopyCopying   CopyState = "copying"   // passes running while the volume uploads to its store
	CopySwitching CopyState = "switching" // uploads held: the last pass and the switch
	CopyDone      CopyState = "done"      // switched
	CopyFailed    CopyState = "failed"    // stopped; the volume stays on its store
)

// CopyStats reports a Copier's progress.
type CopyStats struct {
	State CopyState
	// Total is the bytes of the volume's objects found in the source at
	// the latest pass; Done is how many of them the destination holds.
	Total, Done int64
	// Copied is the bytes this Copier copied; Rate is Copied a second.
	Copied  int64
	Rate    float64
	Passes  int
	Started time.Time
	Err     string
}

// Copier copies a volume's objects from one store to another. Its
// methods are safe for concurrent use.
type Copier struct {
	// From and To are the volume's prefix in both stores. To should be
	// fenced by the volume's writer lease there.
	From, To store.Store
	// Rate bounds the copy, bytes a second (0: none).
	Rate int64
	// Workers is how many objects are copied at once (default 4).
	Workers int
	// Ancestors, for a clone, are its ancestors in both stores, nearest
	// first, as its Parents; CloneID names its markers there. The first
	// pass copies what the clone reads of each (what its marker names),
	// marker first.
	Ancestors []AncestorCopy
	CloneID   string
	// Grace is how long after writing its markers the copier waits
	// before it checks that the ancestors' objects it found in the
	// destination are still there (default markerGrace: a collector
	// there that read the markers before they were written may still be
	// deleting until then).
	Grace time.Duration

	ancestorsCopied bool
	ancestorBytes   int64              // what the clone reads of its ancestors
	ancestorReads   []map[string]int64 // per ancestor: the objects the clone reads of it, with their sizes
	markedAt        time.Time          // when the last marker was written
	skippedPresent  bool               // the first pass skipped an ancestor object the destination had

	mu    sync.Mutex
	stats CopyStats
	start time.Time // of the rate bound's accounting
	paced int64     // bytes counted against Rate since start
}

// AncestorCopy is one ancestor of a clone being moved: its prefix in
// the source and destination stores, and its bound (Parent.Below).
type AncestorCopy struct {
	From, To store.Store
	Below    uint64
}

// Migration tuning: the passes before the switch end when one copied at
// most switchBytes (or after maxPasses): the last pass, with uploads held,
// then has little to copy.
const (
	switchBytes = 64 << 20
	maxPasses   = 8
	// putGrace is how long a copy PUT in flight may go on after its move
	// was cancelled.
	putGrace = 30 * time.Second
)

// copyPrefixes are the kinds of objects a volume needs in its store.
var copyPrefixes = []string{"chunks/", "logs/", "bases/", "pages/", "deltas/", "manifests/", "snapshots/"}

// Stats reports the copy's progress.
func (c *Copier) Stats() CopyStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	if el := time.Since(s.Started).Seconds(); el > 0 && !s.Started.IsZero() {
		s.Rate = float64(s.Copied) / el
	}
	return s
}

func (c *Copier) set(f func(*CopyStats)) {
	c.mu.Lock()
	f(&c.stats)
	c.mu.Unlock()
}

// list returns the size of every object of the volume in s, by key.
func list(ctx context.Context, s store.Store) (map[string]int64, error) {
	out := map[string]int64{}
	for _, p := range copyPrefixes {
		if err := s.List(ctx, p, func(o store.ObjectInfo) error {
			out[o.Key] = o.Size
			return nil
		}); err != nil {
			return nil, fmt.Errorf("list %s: %w", p, err)
		}
	}
	return out, nil
}

// Pass copies every object of the volume From holds and To lacks (and,
// the first time, what a clone reads of its ancestors), and returns the
// bytes it copied.
func (c *Copier) Pass(ctx context.Context) (int64, error) {
	c.mu.Lock()
	if c.stats.Started.IsZero() {
		c.stats.Started, c.start = time.Now(), time.Now()
	}
	anc, ancDone := c.ancestorBytes, c.ancestorsCopied
	c.mu.Unlock()
	var copied int64
	if len(c.Ancestors) > 0 && !ancDone {
		n, total, err := c.copyAncestors(ctx)
		copied += n
		if err != nil {
			return copied, err
		}
		anc = total
		c.mu.Lock()
		c.ancestorBytes, c.ancestorsCopied = total, true
		c.mu.Unlock()
	}
	have, err := list(ctx, c.To)
	if err != nil {
		return copied, fmt.Errorf("destination: %w", err)
	}
	src, err := list(ctx, c.From)
	if err != nil {
		return copied, fmt.Errorf("source: %w", err)
	}
	var todo []string
	total, done := anc, anc
	for k, n := range src {
		total += n
		if m, ok := have[k]; ok && m == n {
			done += n
			continue
		}
		todo = append(todo, k)
	}
	c.set(func(s *CopyStats) { s.Total, s.Done = total, done; s.Passes++ })
	// Manifests and snapshots last: in every pass, what they name is
	// copied before them.
	var data, meta []string
	for _, k := range todo {
		if isData(k) {
			data = append(data, k)
		} else {
			meta = append(meta, k)
		}
	}
	n, err := c.copyAll(ctx, c.From, c.To, data)
	copied += n
	if err != nil {
		return copied, err
	}
	for _, k := range meta {
		n, err := c.copyOne(ctx, c.From, c.To, k)
		if err != nil {
			return copied, err
		}
		copied += n
	}
	return copied, ctx.Err()
}

// copyAll copies keys from one store to another, Workers at a time.
func (c *Copier) copyAll(ctx context.Context, from, to store.Store, keys []string) (int64, error) {
	workers := c.Workers
	if workers <= 0 {
		workers = 4
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		first  error
		copied int64
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan string)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range next {
				n, err := c.copyOne(ctx, from, to, k)
				mu.Lock()
				if err != nil && first == nil {
					first = err
					cancel()
				}
				copied += n
				mu.Unlock()
			}
		}()
	}
feed:
	for _, k := range keys {
		select {
		case next <- k:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return copied, first
}

// copyAncestors copies into each ancestor's prefix in the destination
// what the clone reads of it: the objects its marker there names whose
// versions are that ancestor's (docs/FORMAT.md, "Clones"), after the
// marker itself, so that a live ancestor's collection in the destination
// keeps them from the start. It returns the bytes it copied and the bytes
// the clone reads of its ancestors. An object the marker names and the
// ancestor lacks is an error: the copy would not read as the clone does.
func (c *Copier) copyAncestors(ctx context.Context) (copied, total int64, err error) {
	marker := cloneMarkerKey(c.CloneID)
	for i, a := range c.Ancestors {
		var lo uint64
		if i+1 < len(c.Ancestors) {
			lo = c.Ancestors[i+1].Below
		}
		b, err := a.From.Get(ctx, marker, nil)
		if err != nil {
			return copied, total, fmt.Errorf("the clone's marker in its ancestor %d: %w", i+1, err)
		}
		var m Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			return copied, total, fmt.Errorf("the clone's marker in its ancestor %d: %w", i+1, err)
		}
		refs := map[string]bool{}
		if err := manifestRefs(ctx, a.From, m, refs); err != nil {
			return copied, total, fmt.Errorf("the clone's marker in its ancestor %d: %w", i+1, err)
		}
		src, err := list(ctx, a.From)
		if err != nil {
			return copied, total, fmt.Errorf("ancestor %d in the source: %w", i+1, err)
		}
		have, err := list(ctx, a.To)
		if err != nil {
			return copied, total, fmt.Errorf("ancestor %d in the destination: %w", i+1, err)
		}
		var todo []string
		var size, done int64
		skipped := false
		reads := map[string]int64{}
		for k := range refs {
			if v, ok := objectVersion(k); !ok || v < lo || v >= a.Below {
				continue // another ancestor's, or the clone's own
			}
			n, ok := src[k]
			if !ok {
				return copied, total, fmt.Errorf("ancestor %d lacks %s, which the clone reads", i+1, k)
			}
			reads[k] = n
			size += n
			if m, ok := have[k]; ok && m == n {
				done += n
				skipped = true
				continue
			}
			todo = append(todo, k)
		}
		total += size
		c.set(func(s *CopyStats) { s.Total += size; s.Done += done })
		pctx, pcancel := PutContext(ctx)
		err = a.To.Put(pctx, marker, b, store.PutOptions{})
		pcancel()
		if err != nil {
			return copied, total, fmt.Errorf("mark the clone in ancestor %d in the destination: %w", i+1, err)
		}
		c.mu.Lock()
		c.ancestorReads = append(c.ancestorReads, reads)
		c.markedAt = time.Now()
		c.skippedPresent = c.skippedPresent || skipped
		c.mu.Unlock()
		n, err := c.copyAll(ctx, a.From, a.To, todo)
		copied += n
		if err != nil {
			return copied, total, err
		}
	}
	return copied, total, nil
}

// checkAncestors copies again what the clone reads of its ancestors and
// the destination no longer holds. The first pass skipped objects the
// destination already had, and a collector there (a live ancestor's, or
// the deletion of a removed one's leftovers) that read the markers before
// the clone's was written may have deleted some since; once Grace has
// passed from the marker none is still deleting on such a reading
// (CloneMarkers), so what is there now stays.
//
// If the first pass skipped nothing, there is nothing to check: every
// object it relies on was written after its marker, so a collector that
// lists one reads the markers after that and keeps it (docs/FORMAT.md,
// "Clones"), and the move does not wait.
func (c *Copier) checkAncestors(ctx context.Context) error {
	c.mu.Lock()
	reads, markedAt, skipped := c.ancestorReads, c.markedAt, c.skippedPresent
	c.mu.Unlock()
	if len(reads) == 0 || !skipped {
		return nil
	}
	grace := c.Grace
	if grace <= 0 {
		grace = markerGrace()
	}
	t := time.NewTimer(time.Until(markedAt.Add(grace)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	for i, r := range reads {
		a := c.Ancestors[i]
		have, err := list(ctx, a.To)
		if err != nil {
			return fmt.Errorf("ancestor %d in the destination: %w", i+1, err)
		}
		var todo []string
		for k, n := range r {
			if m, ok := have[k]; !ok || m != n {
				todo = append(todo, k)
			}
		}
		if len(todo) == 0 {
			continue
		}
		var size int64
		for _, k := range todo {
			size += r[k]
		}
		c.set(func(s *CopyStats) { s.Total += size })
		if _, err := c.copyAll(ctx, a.From, a.To, todo); err != nil {
			return err
		}
	}
	return nil
}

// isData: chunks, logs and map objects, which manifests name.
func isData(k string) bool {
	if _, ok := mapObjectSeq(k); ok {
		return true
	}
	return strings.HasPrefix(k, "chunks/") || strings.HasPrefix(k, "logs/")
}

// copyOne copies one object; one deleted from the source meanwhile (collection:
// nothing names it) is skipped.
func (c *Copier) copyOne(ctx context.Context, from, to store.Store, key string) (int64, error) {
	b, err := from.Get(ctx, key, nil)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", key, err)
	}
	opts := store.PutOptions{}
	if !isData(key) {
		// A manifest is written once (docs/FORMAT.md, rule 2); one the
		// destination has with another size is not ours to replace.
		opts.IfAbsent = true
	}
	pctx, pcancel := PutContext(ctx)
	defer pcancel()
	if err := to.Put(pctx, key, b, opts); err != nil && !(opts.IfAbsent && errors.Is(err, store.ErrExists)) {
		return 0, fmt.Errorf("write %s: %w", key, err)
	}
	n := int64(len(b))
	c.set(func(s *CopyStats) { s.Done += n; s.Copied += n })
	return n, c.pace(ctx, n)
}

// PutContext returns the context for a copy PUT made under ctx. A PUT
// the client gives up on can still land at the server after the give-up,
// and so after the clean-up of a cancelled move has listed the
// destination (an orphaned object). So a cancellation of ctx lets a PUT
// already sent finish, for up to putGrace: when a pass returns, every PUT
// it sent has been answered.
func PutContext(ctx context.Context) (context.Context, context.CancelFunc) {
	pctx, pcancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(putGrace, pcancel) })
	return pctx, func() { stop(); pcancel() }
}

// pace waits as long as the rate bound asks after n more bytes.
func (c *Copier) pace(ctx context.Context, n int64) error {
	if c.Rate <= 0 {
		return nil
	}
	c.mu.Lock()
	c.paced += n
	wait := time.Duration(float64(c.paced)/float64(c.Rate)*float64(time.Second)) - time.Since(c.start)
	c.mu.Unlock()
	if wait <= 0 {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(wait):
		return nil
	}
}

// Migrate moves the volume whose uploads go through sw from c.From to
// c.To: passes while it keeps uploading to c.From, until one copies
// little; then it holds sw's changes, copies the rest, calls commit (which
// records the switch durably: from then on the volume's store is c.To),
// and resumes sw's changes on to (c.To, fenced by the volume's lease
// there). On any error before commit succeeds, sw goes on with its old
// target and the volume is as it was. The caller publishes a recovery
// point on the new store next (Device.Checkpoint).
func (c *Copier) Migrate(ctx context.Context, sw *store.Switch, to store.Store, commit func(context.Context) error) error {
	c.set(func(s *CopyStats) { s.State, s.Err = CopyCopying, "" })
	fail := func(err error) error {
		c.set(func(s *CopyStats) { s.State, s.Err = CopyFailed, err.Error() })
		return err
	}
	for pass := 0; ; pass++ {
		n, err := c.Pass(ctx)
		if err != nil {
			return fail(fmt.Errorf("copy: %w", err))
		}
		if n <= switchBytes || pass+1 >= maxPasses {
			break
		}
	}
	if err := c.checkAncestors(ctx); err != nil {
		return fail(fmt.Errorf("copy: %w", err))
	}
	c.set(func(s *CopyStats) { s.State = CopySwitching })
	hctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err := sw.Hold(hctx)
	cancel()
	if err != nil {
		return fail(fmt.Errorf("hold uploads for the switch: %w", err))
	}
	if _, err := c.Pass(ctx); err != nil {
		sw.Resume(nil)
		return fail(fmt.Errorf("copy with uploads held: %w", err))
	}
	if err := commit(ctx); err != nil {
		sw.Resume(nil)
		return fail(fmt.Errorf("switch: %w", err))
	}
	sw.Resume(to)
	c.set(func(s *CopyStats) { s.State = CopyDone })
	return nil
}
