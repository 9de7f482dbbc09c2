package volume

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-io/ferry/backends/lease"
	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/backends/tier"
)

// Moving an S3-backed volume to another store while it serves (ferry
// volume migrate; docs/S3.md, "Moving a volume to another store").
//
//  1. Migrate takes the volume's writer lease in the destination (same
//     volume id, so the same prefix), writes volume.json there and records
//     the move in the catalog (Record.Migration).
//  2. In the background a tier.Copier copies the volume's objects, in
//     passes, while the volume serves and uploads to its store.
//  3. The switch: the volume's store.Switch holds uploads, the last pass
//     copies what they added, the catalog names the destination as the
//     volume's store (from here on the move is done, whatever happens),
//     the switch resumes uploads to the destination, fenced by its lease,
//     and a recovery point is published there.
//  4. The source's lease is released (and its objects deleted with
//     DeleteSource), and the record cleared.
//
// A gateway restarted during 2 resumes the copy (objects already copied
// are not copied again); one restarted after 3 finishes 4. A failure
// before 3 (destination unreachable, lease refused, copy error) leaves the
// volume on its store; the copies and the lease in the destination are
// deleted (best effort) and the error stays in the volume's info.
//
// Lock order: m.mu, then a migration's mu; store requests are never made
// under either.

// MigrationRecord is a move in progress, in the catalog.
type MigrationRecord struct {
	From         string    `json:"from"`
	To           string    `json:"to"`
	Rate         int64     `json:"rate,omitempty"`
	DeleteSource bool      `json:"delete_source,omitempty"`
	Started      time.Time `json:"started"`
	// Switched: the volume's store is To now; what is left is to release
	// From.
	Switched bool `json:"switched,omitempty"`
}

// migration is a move this gateway runs (or ran: its end stays for Info).
type migration struct {
	ctx    context.Context // ends when the move is cancelled or the manager closes
	cancel context.CancelFunc
	done   chan struct{} // closed when the move's goroutine ends

	mu     sync.Mutex
	rec    MigrationRecord
	copier *tier.Copier
	state  string
	err    string
	ended  time.Time
}

func (m *Manager) newMigration(mr MigrationRecord, state string) *migration {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-m.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	return &migration{ctx: ctx, cancel: cancel, done: make(chan struct{}), rec: mr, state: state}
}

// end marks the move's goroutine ended.
func (g *migration) end() {
	g.cancel()
	close(g.done)
}

func (g *migration) set(state string, err error) {
	g.mu.Lock()
	g.state = state
	if err != nil {
		g.err = err.Error()
	}
	if state == "done" || state == "failed" || state == "cancelled" {
		g.ended = time.Now()
	}
	g.mu.Unlock()
}

func (g *migration) running() bool {
	select {
	case <-g.done:
		return false
	default:
		return true
	}
}

// volSwitch is what lets an open S3-backed volume change stores: the
// store its tier uploads through and the fence its tier checks.
type volSwitch struct {
	sw    *store.Switch
	fence *switchFence // nil: the store has no writer lease
	// layers, for a clone, are where it reads its ancestors' objects, as
	// its Parents.
	layers []*store.Switch
}

// switchFence is a tier.Fence whose lease changes when the volume moves.
type switchFence struct{ cur atomic.Pointer[fenceBox] }

type fenceBox struct{ f tier.Fence }

func newSwitchFence(f tier.Fence) *switchFence {
	s := &switchFence{}
	s.cur.Store(&fenceBox{f})
	return s
}

func (s *switchFence) set(f tier.Fence)   { s.cur.Store(&fenceBox{f}) }
func (s *switchFence) Writable() error    { return s.cur.Load().f.Writable() }
func (s *switchFence) Generation() uint64 { return s.cur.Load().f.Generation() }
func (s *switchFence) Fresh() bool        { return s.cur.Load().f.Fresh() }

// migratingLocked reports whether a move of the volume runs, as an error
// to refuse what would race with it (snapshots, release, remove).
func (m *Manager) migratingLocked(rec *Record) error {
	if g := m.migrations[rec.ID]; g != nil && g.running() || rec.Migration != nil {
		return fmt.Errorf("volume %q is moving to store %q (ferry volume migrate %s --cancel stops it): %w", rec.Name, rec.Migration.orTo(g), rec.Name, ErrBusy)
	}
	return nil
}

func (r *MigrationRecord) orTo(g *migration) string {
	if r != nil {
		return r.To
	}
	return g.rec.To
}

// Migrate starts moving a volume to another store while it serves. It
// returns once the destination's writer lease is taken and the move is in
// the catalog; the copy runs in the background (Info shows its progress).
func (m *Manager) Migrate(ctx context.Context, name string, req MigrateRequest) (Info, error) {
	fail := func(err error) (Info, error) {
		return Info{}, fmt.Errorf("migrate volume %q to store %q: %w", name, req.ToStore, err)
	}
	if req.Rate < 0 {
		return fail(fmt.Errorf("rate %d: want bytes a second, 0 for no bound: %w", req.Rate, ErrInvalid))
	}
	m.mu.Lock()
	v, ok := m.vols[name]
	if !ok || v.removing {
		m.mu.Unlock()
		return fail(ErrNotFound)
	}
	rec := v.rec
	td, isTier := v.dev.(*tier.Device)
	dst, dstOK := m.stores[req.ToStore]
	l := m.leases[rec.ID]
	vs := m.switches[rec.ID]
	var err error
	switch {
	case !isTier:
		err = fmt.Errorf("it is a local volume, with no objects in a store to move (S3-backed volumes move between stores): %w", ErrInvalid)
	case req.ToStore == "":
		err = fmt.Errorf("no destination store given: %w", ErrInvalid)
	case !dstOK:
		err = fmt.Errorf("no store named %q (see ferry store ls): %w", req.ToStore, ErrNotFound)
	case req.ToStore == rec.Store:
		err = fmt.Errorf("the volume is in store %q already: %w", rec.Store, ErrInvalid)
	case l == nil || vs == nil || vs.fence == nil:
		err = fmt.Errorf("store %q has no conditional put, so the volume has no writer lease to hand over: %w", rec.Store, ErrInvalid)
	case l.Writable() != nil:
		err = fmt.Errorf("this gateway does not hold the volume's writer lease (%v): %w", l.Writable(), ErrBusy)
	default:
		err = m.migratingLocked(rec)
	}
	if err != nil {
		m.mu.Unlock()
		return fail(err)
	}
	// Reserve the move before any store request: a second one is refused.
	mr := MigrationRecord{From: rec.Store, To: req.ToStore, Rate: req.Rate, DeleteSource: req.DeleteSource, Started: time.Now().UTC().Truncate(time.Second)}
	g := m.newMigration(mr, "starting")
	m.migrations[rec.ID] = g
	m.mu.Unlock()
	abandon := func(err error) (Info, error) {
		g.set("failed", err)
		g.end()
		return fail(err)
	}
	dl, err := m.destinationLease(ctx, rec, dst, l.Generation(), true)
	if err != nil {
		return abandon(err)
	}
	m.mu.Lock()
	rec.Migration = &mr
	if err := m.commit(); err != nil {
		rec.Migration = nil
		m.mu.Unlock()
		dl.Close()
		return abandon(err)
	}
	m.mu.Unlock()
	m.log.Info("volume migration started: copying its objects to the other store while it serves", attrVolume, name,
		"from", mr.From, "to", mr.To, "rate", mr.Rate, "delete_source", mr.DeleteSource)
	m.startMigration(rec, td, g, dl)
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.infoLocked(ctx, v), nil
}

// destinationLease takes the volume's writer lease in the destination,
// checking first that the store answers, has conditional puts, and holds
// no other gateway's copy of the volume; fresh is a new move (not one
// resumed after a restart).
func (m *Manager) destinationLease(ctx context.Context, rec *Record, dst *StoreConfig, gen uint64, fresh bool) (*lease.Lease, error) {
	ds, raw, err := m.objectStore(dst, volumePrefix(rec))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrInvalid)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	switch err := raw.CheckConditional(cctx); {
	case errors.Is(err, store.ErrNoSwap):
		return nil, fmt.Errorf("store %q has no conditional put, so it cannot hold a writer lease: move volumes only to stores that have one: %w", dst.Name, ErrInvalid)
	case err != nil:
		return nil, fmt.Errorf("store %q does not answer (%w); the volume stays on its store: %w", dst.Name, err, ErrInvalid)
	}
	sw, ok := store.AsSwapper(ds)
	if !ok {
		return nil, fmt.Errorf("store %q has no conditional put: %w", dst.Name, ErrInvalid)
	}
	r, _, err := lease.Read(cctx, sw)
	switch {
	case err == nil && r.Holder != m.holder.ID:
		return nil, fmt.Errorf("store %q holds this volume already, written by gateway %s (generation %d): adopt or remove it there first: %w",
			dst.Name, orID(leaseInfo(r, "", nil)), r.Generation, ErrExists)
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("read the writer lease in store %q: %w", dst.Name, err)
	case errors.Is(err, store.ErrNotFound) && fresh:
		if mf, err := tier.LatestManifest(cctx, ds); err == nil {
			return nil, fmt.Errorf("store %q holds recovery points of this volume (up to %d) without a writer lease: remove them there first: %w", dst.Name, mf.Sequence, ErrExists)
		}
	}
	l, err := lease.Acquire(cctx, sw, m.holder, lease.Options{TTL: m.cfg.LeaseTTL, Takeover: true, MinGeneration: gen,
		Logger: m.log.With(attrVolume, rec.Name, "store", dst.Name)})
	if err != nil {
		return nil, fmt.Errorf("take the volume's writer lease in store %q: %w", dst.Name, err)
	}
	m.putVolumeObject(ctx, lease.Fenced(ds, l), rec)
	return l, nil
}

// startMigration runs a move in the background until it ends or the
// manager closes (a restart resumes it).
func (m *Manager) startMigration(rec *Record, td *tier.Device, g *migration, dl *lease.Lease) {
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		defer g.end()
		m.runMigration(g.ctx, rec, td, g, dl)
	}()
}

// runMigration is steps 2-4 of a move.
func (m *Manager) runMigration(ctx context.Context, rec *Record, td *tier.Device, g *migration, dl *lease.Lease) {
	name := rec.Name
	m.mu.Lock()
	src, dst := m.stores[g.rec.From], m.stores[g.rec.To]
	vs := m.switches[rec.ID]
	sl := m.leases[rec.ID]
	m.mu.Unlock()
	failed := func(err error) {
		if m.isClosing() {
			// Not a failure: the next start resumes the move.
			dl.Close()
			return
		}
		state := "failed"
		if errors.Is(err, context.Canceled) {
			state = "cancelled"
		}
		g.set(state, err)
		m.log.Error("volume migration did not complete; the volume stays on its store", attrVolume, name, "from", g.rec.From, "to", g.rec.To, "err", err)
		m.abandonMigration(rec, dst, dl)
	}
	if src == nil || dst == nil || vs == nil || sl == nil {
		failed(fmt.Errorf("store %q or %q is not configured, or the volume has no writer lease here", g.rec.From, g.rec.To))
		return
	}
	from, _, err := m.objectStore(src, volumePrefix(rec))
	var to store.Store
	if err == nil {
		to, _, err = m.objectStore(dst, volumePrefix(rec))
	}
	var ancestors []tier.AncestorCopy
	if err == nil {
		ancestors, err = m.cloneAncestors(ctx, rec, src, dst)
	}
	if err == nil {
		fto := lease.Fenced(to, dl)
		c := &tier.Copier{From: from, To: fto, Rate: g.rec.Rate, Ancestors: ancestors, CloneID: rec.ID}
		g.mu.Lock()
		g.copier = c
		g.mu.Unlock()
		g.set("copying", nil)
		err = c.Migrate(ctx, vs.sw, fto, func(ctx context.Context) error {
			// Again: a deletion of a removed ancestor's leftovers
			// there that read no marker may have taken it since.
			for i, a := range ancestors {
				if err := markRemoved(ctx, a.To); err != nil {
					return fmt.Errorf("ancestor %s in store %q: %w", rec.Parents[i].Prefix, dst.Name, err)
				}
			}
			if err := m.commitSwitch(rec, vs, dl, g); err != nil {
				return err
			}
			for i, a := range ancestors {
				vs.layers[i].Resume(a.To)
			}
			return nil
		})
	}
	if err != nil {
		failed(err)
		return
	}
	m.log.Info("volume switched to the other store; publishing a recovery point there", attrVolume, name, "to", g.rec.To)
	if mf, err := td.Checkpoint(ctx); err != nil {
		m.log.Warn("first recovery point in the new store failed; the next one is due at the checkpoint interval", attrVolume, name, "err", err)
	} else {
		m.log.Info("recovery point published in the new store", attrVolume, name, "sequence", mf.Sequence)
	}
	g.set("finishing", nil)
	m.finishMigration(ctx, rec, g, sl)
}

// cloneAncestors returns, for a clone, its ancestors in the move's source
// and destination, nearest first. Each ancestor's prefix in the
// destination that holds no volume (no writer lease, no volume.json) is
// marked removed first (removed.json: it holds only what clones read),
// so that it goes with the last clone that reads it there, like a removed
// ancestor's leftovers (docs/FORMAT.md, "Clones").
func (m *Manager) cloneAncestors(ctx context.Context, rec *Record, src, dst *StoreConfig) ([]tier.AncestorCopy, error) {
	m.mu.Lock()
	vs := m.switches[rec.ID]
	m.mu.Unlock()
	if vs == nil || len(vs.layers) != len(rec.Parents) {
		return nil, fmt.Errorf("the clone's ancestors are not open here")
	}
	out := make([]tier.AncestorCopy, 0, len(rec.Parents))
	for _, p := range rec.Parents {
		from, _, err := m.objectStore(src, p.Prefix)
		if err != nil {
			return nil, err
		}
		to, _, err := m.objectStore(dst, p.Prefix)
		if err != nil {
			return nil, err
		}
		if err := markRemoved(ctx, to); err != nil {
			return nil, fmt.Errorf("ancestor %s in store %q: %w", p.Prefix, dst.Name, err)
		}
		out = append(out, tier.AncestorCopy{From: from, To: to, Below: p.Below})
	}
	return out, nil
}

// markRemoved writes removed.json into an ancestor's prefix that holds no
// volume.
func markRemoved(ctx context.Context, to store.Store) error {
	live, err := holdsVolume(ctx, to)
	if err != nil || live {
		return err
	}
	pctx, cancel := tier.PutContext(ctx)
	defer cancel()
	return to.Put(pctx, removedKey, removedObject, store.PutOptions{})
}

// commitSwitch is step 3, with the volume's uploads held: the catalog
// names the destination as the volume's store, and the lease there fences
// its uploads from now on.
func (m *Manager) commitSwitch(rec *Record, vs *volSwitch, dl *lease.Lease, g *migration) error {
	if err := dl.Writable(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *rec.Migration
	rec.Store = g.rec.To
	rec.Migration.Switched = true
	if err := m.commit(); err != nil {
		rec.Store, *rec.Migration = old.From, old
		return err
	}
	g.mu.Lock()
	g.rec.Switched = true
	g.mu.Unlock()
	vs.fence.set(dl)
	m.leases[rec.ID] = dl
	return nil
}

// finishMigration is step 4: give up the source's lease (sl, taken now
// when nil), delete the source's objects when asked, clear the record.
func (m *Manager) finishMigration(ctx context.Context, rec *Record, g *migration, sl *lease.Lease) {
	m.mu.Lock()
	src := m.stores[g.rec.From]
	m.mu.Unlock()
	for wait := time.Second; ; wait = min(2*wait, time.Minute) {
		err := m.releaseSource(ctx, rec, src, g, sl)
		if err == nil {
			break
		}
		m.log.Warn("releasing the volume's old store failed; retrying (the volume serves from the new one)", attrVolume, rec.Name, "store", g.rec.From, "err", err)
		select {
		case <-ctx.Done():
			if sl != nil {
				sl.Close()
			}
			return // finished at the next start
		case <-time.After(wait):
		}
	}
	m.mu.Lock()
	rec.Migration = nil
	if err := m.commit(); err != nil {
		m.log.Warn("clearing the finished migration from the catalog failed; the next start finishes it again", attrVolume, rec.Name, "err", err)
	}
	m.mu.Unlock()
	g.set("done", nil)
	m.log.Info("volume migrated", attrVolume, rec.Name, "from", g.rec.From, "to", g.rec.To, "deleted_source", g.rec.DeleteSource)
}

func (m *Manager) releaseSource(ctx context.Context, rec *Record, src *StoreConfig, g *migration, sl *lease.Lease) error {
	if src == nil {
		return nil // the store was removed here: nothing to release
	}
	s, _, err := m.objectStore(src, volumePrefix(rec))
	if err != nil {
		return err
	}
	if sl == nil {
		sw, ok := store.AsSwapper(s)
		if !ok {
			return nil
		}
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		sl, err = lease.Acquire(actx, sw, m.holder, lease.Options{TTL: m.cfg.LeaseTTL})
		cancel()
		var held *lease.HeldError
		switch {
		case errors.As(err, &held) && held.Record.Holder == m.holder.ID && held.Record.Released:
			return nil // released before a restart
		case errors.As(err, &held):
			m.log.Warn("the volume's old store is written by another gateway now; leaving it alone", attrVolume, rec.Name, "store", src.Name, "err", err)
			return nil
		case err != nil:
			return err
		}
	}
	if g.rec.DeleteSource {
		// The lease goes with the rest: stop renewing it first (this
		// gateway holds it until it expires, so nobody else writes).
		sl.Close()
		n, err := m.deleteVolumeObjects(ctx, s)
		if err != nil {
			return fmt.Errorf("delete the old store's objects: %w", err)
		}
		m.log.Info("volume's objects deleted from its old store", attrVolume, rec.Name, "store", src.Name, "objects", n)
		// A clone's ancestors there no longer keep what it read.
		m.unmarkClone(ctx, rec, src)
		return nil
	}
	return sl.Release(ctx)
}

// abandonMigration undoes step 1 after a failure: the copies and the
// lease in the destination are deleted (best effort, in the background)
// and the record cleared.
func (m *Manager) abandonMigration(rec *Record, dst *StoreConfig, dl *lease.Lease) {
	m.mu.Lock()
	rec.Migration = nil
	if err := m.commit(); err != nil {
		m.log.Warn("clearing the failed migration from the catalog failed; the next start tries it again", attrVolume, rec.Name, "err", err)
	}
	m.mu.Unlock()
	if dst == nil {
		if dl != nil {
			dl.Close()
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ds, _, err := m.objectStore(dst, volumePrefix(rec))
	if dl != nil {
		// The lease goes with the copy: stop renewing it first (this
		// gateway holds it until it expires, so nobody else writes).
		dl.Close()
		if err == nil {
			_, err = m.deleteVolumeObjects(ctx, ds)
		}
		if err == nil {
			// A clone's copies of its ancestors' objects go too.
			m.unmarkClone(ctx, rec, dst)
		}
	}
	if err != nil {
		m.log.Warn("deleting the partial copy in the destination failed; it stays there, with this gateway's expired lease", attrVolume, rec.Name, "store", dst.Name, "err", err)
	}
}

// CancelMigration stops a volume's move before it switched: the volume
// stays on its store, and the copy in the destination is deleted.
func (m *Manager) CancelMigration(ctx context.Context, name string) (Info, error) {
	m.mu.Lock()
	v, ok := m.vols[name]
	if !ok {
		m.mu.Unlock()
		return Info{}, fmt.Errorf("cancel migration of %q: %w", name, ErrNotFound)
	}
	g := m.migrations[v.rec.ID]
	m.mu.Unlock()
	if g == nil || !g.running() {
		return Info{}, fmt.Errorf("cancel migration of %q: no migration runs: %w", name, ErrInvalid)
	}
	g.mu.Lock()
	switched := g.rec.Switched
	g.mu.Unlock()
	if switched {
		return Info{}, fmt.Errorf("cancel migration of %q: it switched to store %q already and is only releasing the old one: %w", name, g.rec.To, ErrBusy)
	}
	g.cancel()
	select {
	case <-g.done:
	case <-ctx.Done():
		return Info{}, ctx.Err()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.infoLocked(ctx, v), nil
}

func (m *Manager) isClosing() bool {
	select {
	case <-m.closing:
		return true
	default:
		return false
	}
}

// resumeMigrations restarts the moves the catalog records (at Open).
func (m *Manager) resumeMigrations() {
	m.mu.Lock()
	var recs []*Record
	for _, v := range m.vols {
		if v.rec.Migration != nil {
			recs = append(recs, v.rec)
		}
	}
	m.mu.Unlock()
	for _, rec := range recs {
		m.mu.Lock()
		v := m.vols[rec.Name]
		mr := *rec.Migration
		g := m.newMigration(mr, "starting")
		m.migrations[rec.ID] = g
		m.mu.Unlock()
		td, _ := v.dev.(*tier.Device)
		if mr.Switched {
			g.set("finishing", nil)
			m.log.Info("finishing the volume's migration: releasing its old store", attrVolume, rec.Name, "from", mr.From, "to", mr.To)
			m.bg.Add(1)
			go func() {
				defer m.bg.Done()
				defer g.end()
				m.finishMigration(g.ctx, rec, g, nil)
			}()
			continue
		}
		m.log.Info("resuming the volume's migration", attrVolume, rec.Name, "from", mr.From, "to", mr.To)
		m.bg.Add(1)
		go func() {
			defer m.bg.Done()
			m.resumeCopy(rec, td, g)
		}()
	}
}

// resumeCopy takes the destination's lease again (retrying while the
// store does not answer) and runs the move.
func (m *Manager) resumeCopy(rec *Record, td *tier.Device, g *migration) {
	m.mu.Lock()
	dst := m.stores[g.rec.To]
	l := m.leases[rec.ID]
	m.mu.Unlock()
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		var err error
		var dl *lease.Lease
		if dst == nil || td == nil || l == nil {
			err = fmt.Errorf("store %q is not configured here, or the volume has no writer lease", g.rec.To)
		} else {
			dl, err = m.destinationLease(context.Background(), rec, dst, l.Generation(), false)
		}
		if err == nil {
			m.startMigration(rec, td, g, dl)
			return
		}
		var held *lease.HeldError
		if dst == nil || td == nil || l == nil || errors.As(err, &held) || errors.Is(err, ErrExists) {
			g.set("failed", err)
			m.abandonMigration(rec, nil, nil)
			g.end()
			return
		}
		m.log.Warn("could not resume the volume's migration; retrying", attrVolume, rec.Name, "to", g.rec.To, "err", err)
		select {
		case <-g.ctx.Done():
			if m.isClosing() {
				g.end()
				return
			}
			g.set("cancelled", g.ctx.Err())
			m.abandonMigration(rec, nil, nil)
			g.end()
			return
		case <-time.After(wait):
		}
	}
}

// migrationInfo is a volume's move for Info; nil when none ran.
func (m *Manager) migrationInfoLocked(rec *Record) *MigrationInfo {
	g := m.migrations[rec.ID]
	if g == nil {
		return nil
	}
	g.mu.Lock()
	mi := &MigrationInfo{State: g.state, From: g.rec.From, To: g.rec.To, DeleteSource: g.rec.DeleteSource,
		Started: g.rec.Started, Ended: g.ended, Error: g.err}
	c := g.copier
	g.mu.Unlock()
	if c != nil {
		st := c.Stats()
		mi.TotalBytes, mi.DoneBytes, mi.CopiedBytes, mi.BytesPerSec, mi.Passes = st.Total, st.Done, st.Copied, st.Rate, st.Passes
		if st.State == tier.CopySwitching && mi.State == "copying" {
			mi.State = "switching"
		}
		if mi.TotalBytes > 0 {
			mi.Percent = 100 * float64(mi.DoneBytes) / float64(mi.TotalBytes)
		}
		if mi.State == "copying" && st.Rate > 0 {
			mi.ETASeconds = float64(st.Total-st.Done) / st.Rate
		}
	}
	if mi.State == "done" || mi.State == "finishing" {
		mi.Percent = 100
	}
	return mi
}
