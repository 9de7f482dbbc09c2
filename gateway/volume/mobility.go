package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/lease"
	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/backends/tier"
	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/atomicfile"
)

// Volumes that move between gateways sharing a bucket (docs/FORMAT.md,
// "Writer lease"; docs/S3.md, "Moving a volume"). The lock order of
// manager.go holds; store requests are never made under m.mu.

type (
	HydrationInfo = wire.HydrationInfo
	LeaseInfo     = wire.LeaseInfo
	BucketVolume  = wire.BucketVolume
	AdoptRequest  = wire.AdoptRequest
	AdoptResponse = wire.AdoptResponse
)

// volumeObjectKey is the key, under a volume's prefix, of the object that
// describes the volume to another gateway.
const volumeObjectKey = "volume.json"

// volumeObject is volume.json (docs/FORMAT.md).
type volumeObject struct {
	Format    string    `json:"format"`
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Size      int64     `json:"size"`
	ChunkSize int64     `json:"chunk_size"`
	Created   time.Time `json:"created"`
}

const volumeObjectFormat = "ferry-volume/1"

// loadIdentity returns this gateway's identity, DATA/gateway.json,
// created at first start: it names the gateway in the writer leases it
// holds.
func loadIdentity(dataDir string) (lease.Holder, error) {
	path := filepath.Join(dataDir, "gateway.json")
	var id struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	}
	b, err := os.ReadFile(path)
	if err == nil {
		if err := json.Unmarshal(b, &id); err != nil || id.ID == "" {
			return lease.Holder{}, fmt.Errorf("gateway identity %s: not valid (%v); remove it to make a new one", path, err)
		}
		return lease.Holder{ID: id.ID, Name: id.Name}, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return lease.Holder{}, fmt.Errorf("gateway identity: %w", err)
	}
	host, _ := os.Hostname()
	id.ID, id.Name = newID(), host
	b, _ = json.MarshalIndent(id, "", "  ")
	if err := atomicfile.WriteFile(path, append(b, '\n')); err != nil {
		return lease.Holder{}, fmt.Errorf("gateway identity: %w", err)
	}
	return lease.Holder{ID: id.ID, Name: id.Name}, nil
}

// GatewayID is this gateway's identity in writer leases.
func (m *Manager) GatewayID() (id, name string) { return m.holder.ID, m.holder.Name }

// tierOpen says how openTier treats the volume's writer lease.
type tierOpen struct {
	// takeover: take a released or expired lease (adopt); steal: also a
	// live one (adopt --steal).
	takeover, steal bool
	// minGeneration is the lowest generation a new lease may take (a
	// clone's versions must start above its parent's).
	minGeneration uint64
}

// fresh reports whether the volume is new here (a clone): its lease must
// be taken now.
func (h tierOpen) fresh() bool { return h.minGeneration > 0 }

// heldElsewhere is the fence of a volume whose lease another gateway
// holds: it opens, but refuses every write.
type heldElsewhere struct{ err error }

func (h heldElsewhere) Writable() error    { return h.err }
func (h heldElsewhere) Generation() uint64 { return 0 }
func (h heldElsewhere) Fresh() bool        { return false }

// volumeStore opens a volume's store, decorated with its writer lease
// when the store has conditional puts: taken (or taken over, as how
// allows) now, and kept in m.leases until the volume closes.
func (m *Manager) volumeStore(ctx context.Context, rec *Record, how tierOpen) (store.Store, tier.Fence, error) {
	s, sc, err := m.rawVolumeStore(rec)
	if err != nil {
		return nil, nil, err
	}
	sw, ok := store.AsSwapper(s)
	if !ok || !m.conditional(ctx, sc) {
		if how.takeover || how.steal {
			return nil, nil, fmt.Errorf("store %q has no conditional put, so its volumes have no writer lease and cannot move: %w", rec.Store, ErrInvalid)
		}
		return s, nil, nil
	}
	opts := lease.Options{TTL: m.cfg.LeaseTTL, Takeover: how.takeover, Steal: how.steal,
		MinGeneration: how.minGeneration, Logger: m.log.With(attrVolume, rec.Name)}
	actx, cancel := context.WithTimeout(ctx, 15*time.Second)
	l, err := lease.Acquire(actx, sw, m.holder, opts)
	cancel()
	var held *lease.HeldError
	switch {
	case err == nil:
		m.mu.Lock()
		m.leases[rec.ID] = l
		m.mu.Unlock()
		return lease.Fenced(s, l), l, nil
	case errors.As(err, &held) && !how.takeover && !how.steal:
		// Another gateway adopted the volume while this one was down:
		// serve what this gateway has, read-only, and say why.
		f := heldElsewhere{fmt.Errorf("%w: %w", device.ErrReadOnly, err)}
		m.mu.Lock()
		m.elsewhere[rec.ID] = err
		m.mu.Unlock()
		m.log.Error("volume is written by another gateway now; serving it read-only here (release it there and adopt it here, or remove it here)",
			attrVolume, rec.Name, "err", err)
		return lease.Fenced(s, f), f, nil
	case errors.As(err, &held):
		return nil, nil, fmt.Errorf("%w: %w", err, ErrBusy)
	case !how.takeover && !how.steal && !how.fresh():
		// The store does not answer as the gateway starts: serve what the
		// cache holds, read-only, and take the lease when it answers.
		// (Its versions are numbered in the generation this gateway held
		// before, which the renewal keeps.)
		f := &lateLease{err: fmt.Errorf("%w: writer lease not taken yet: %w", device.ErrReadOnly, err)}
		m.log.Warn("could not take the volume's writer lease (store unreachable?); serving it read-only until it is taken",
			attrVolume, rec.Name, "err", err)
		m.mu.Lock()
		m.elsewhere[rec.ID] = f.err
		m.mu.Unlock()
		m.bg.Add(1)
		go func() {
			defer m.bg.Done()
			m.acquireLate(rec, sw, opts, f)
		}()
		return lease.Fenced(s, f), f, nil
	default:
		return nil, nil, err
	}
}

// lateLease is the fence of a volume whose lease could not be taken when
// it opened: read-only until acquireLate takes it, then the lease's.
type lateLease struct {
	mu  sync.Mutex
	l   *lease.Lease
	err error
}

func (f *lateLease) Writable() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.l != nil {
		return f.l.Writable()
	}
	return f.err
}

func (f *lateLease) Generation() uint64 { return 0 } // read at open only: the cache keeps its numbering
func (f *lateLease) Fresh() bool        { return false }

// acquireLate retries taking a volume's lease until it succeeds, another
// gateway turns out to hold it, or the manager closes.
func (m *Manager) acquireLate(rec *Record, sw store.Swapper, opts lease.Options, f *lateLease) {
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		select {
		case <-m.closing:
			return
		case <-time.After(wait):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		l, err := lease.Acquire(ctx, sw, m.holder, opts)
		cancel()
		var held *lease.HeldError
		switch {
		case err == nil:
			m.mu.Lock()
			if _, open := m.vols[rec.Name]; !open || m.closed {
				m.mu.Unlock()
				l.Close()
				return
			}
			m.leases[rec.ID] = l
			delete(m.elsewhere, rec.ID)
			f.mu.Lock()
			f.l = l
			f.mu.Unlock()
			m.mu.Unlock()
			m.log.Info("writer lease taken; the volume takes writes again", attrVolume, rec.Name, "generation", l.Generation())
			return
		case errors.As(err, &held):
			f.mu.Lock()
			f.err = fmt.Errorf("%w: %w", device.ErrReadOnly, err)
			f.mu.Unlock()
			m.mu.Lock()
			m.elsewhere[rec.ID] = err
			m.mu.Unlock()
			m.log.Error("volume is written by another gateway now; serving it read-only here", attrVolume, rec.Name, "err", err)
			return
		}
	}
}

// conditional reports (probing once and remembering) whether the store's
// server honours conditional puts.
func (m *Manager) conditional(ctx context.Context, sc *StoreConfig) bool {
	m.mu.Lock()
	c := sc.Conditional
	m.mu.Unlock()
	if c != nil {
		return *c
	}
	_, raw, err := m.objectStore(sc, "")
	if err != nil {
		return false
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = raw.CheckConditional(pctx)
	if err != nil && !errors.Is(err, store.ErrNoSwap) {
		m.log.Warn("could not probe the store for conditional puts; its volumes open without a writer lease this time", "store", sc.Name, "err", err)
		return false
	}
	ok := err == nil
	m.mu.Lock()
	sc.Conditional = &ok
	if err := m.saveStoresLocked(); err != nil {
		m.log.Warn("saving the store's conditional-put support failed", "store", sc.Name, "err", err)
	}
	m.mu.Unlock()
	return ok
}

func (m *Manager) leaseOf(id string) *lease.Lease {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leases[id]
}

// dropLease stops renewing a volume's lease (it then expires) and forgets it.
func (m *Manager) dropLease(id string) {
	m.mu.Lock()
	l := m.leases[id]
	delete(m.leases, id)
	m.mu.Unlock()
	if l != nil {
		l.Close()
	}
}

func leaseInfo(r lease.Record, state string, why error) *LeaseInfo {
	li := &LeaseInfo{State: state, Generation: r.Generation, Holder: r.Holder, HolderName: r.HolderName, Expires: r.Expires, Released: r.Released}
	if why != nil {
		li.Error = why.Error()
	}
	return li
}

// leaseView is a volume's lease for Info; nil when it has none.
func (m *Manager) leaseViewLocked(rec *Record) *LeaseInfo {
	if err := m.elsewhere[rec.ID]; err != nil {
		var held *lease.HeldError
		if errors.As(err, &held) {
			return leaseInfo(held.Record, "lost", err)
		}
		return &LeaseInfo{State: "pending", Error: err.Error()}
	}
	l := m.leases[rec.ID]
	if l == nil {
		return nil
	}
	err := l.Writable()
	return leaseInfo(l.Record(), l.State().String(), err)
}

// putVolumeObject writes volume.json, so another gateway can find the
// volume in the store (best effort: adopt by id works without it).
func (m *Manager) putVolumeObject(ctx context.Context, s store.Store, rec *Record) {
	b, _ := json.Marshal(volumeObject{Format: volumeObjectFormat, ID: rec.ID, Name: rec.Name, Size: rec.Size, ChunkSize: rec.ChunkSize, Created: rec.Created})
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.Put(pctx, volumeObjectKey, b, store.PutOptions{}); err != nil {
		m.log.Warn("could not describe the volume in its store; other gateways can adopt it by id only", attrVolume, rec.Name, "err", err)
	}
}

// Release hands a volume over: it disconnects nobody unless force (then
// everyone), refuses new clients, uploads everything dirty, publishes a
// final recovery point and gives up the writer lease. The volume then
// leaves this gateway's catalog; its objects stay in the store for
// another gateway to adopt.
func (m *Manager) Release(ctx context.Context, name string, force bool) (tier.Manifest, error) {
	m.mu.Lock()
	v, ok := m.vols[name]
	if !ok || v.removing {
		m.mu.Unlock()
		return tier.Manifest{}, fmt.Errorf("release volume %q: %w", name, ErrNotFound)
	}
	td, isTier := v.dev.(*tier.Device)
	l := m.leases[v.rec.ID]
	switch {
	case !isTier:
		m.mu.Unlock()
		return tier.Manifest{}, fmt.Errorf("release volume %q: a local volume has no copy in a store to hand over (use an S3-backed volume): %w", name, ErrInvalid)
	case l == nil:
		m.mu.Unlock()
		return tier.Manifest{}, fmt.Errorf("release volume %q: its store has no conditional put, so the volume has no writer lease to hand over: %w", name, ErrInvalid)
	case l.Writable() != nil:
		m.mu.Unlock()
		return tier.Manifest{}, fmt.Errorf("release volume %q: this gateway does not hold its writer lease (%v): %w", name, l.Writable(), ErrBusy)
	case m.migratingLocked(v.rec) != nil:
		err := m.migratingLocked(v.rec)
		m.mu.Unlock()
		return tier.Manifest{}, fmt.Errorf("release volume %q: %w", name, err)
	}
	if err := m.evictLocked(ctx, v, force); err != nil {
		return tier.Manifest{}, fmt.Errorf("release volume %q: %w", name, err)
	}
	undo := func(err error) (tier.Manifest, error) {
		m.mu.Lock()
		v.removing = false
		v.revoked = make(chan struct{})
		m.mu.Unlock()
		return tier.Manifest{}, fmt.Errorf("release volume %q: %w", name, err)
	}
	mf, err := td.Checkpoint(ctx)
	if err != nil {
		return undo(fmt.Errorf("final recovery point: %w", err))
	}
	if err := l.Release(ctx); err != nil {
		return undo(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cat.Volumes = slices.DeleteFunc(m.cat.Volumes, func(r *Record) bool { return r == v.rec })
	if err := m.commit(); err != nil {
		// The lease is released and the store has everything; the next
		// start finds the record, sees the lease given up and serves the
		// volume read-only until it is removed here.
		m.cat.Volumes = append(m.cat.Volumes, v.rec)
		return mf, fmt.Errorf("release volume %q: released, but the catalog was not updated: %w", name, err)
	}
	delete(m.vols, name)
	delete(m.leases, v.rec.ID)
	closeSnapshotsLocked(v)
	v.dev.Close()
	os.Remove(m.prPath(v.rec))
	os.RemoveAll(v.rec.Path)
	m.log.Info("volume released: final recovery point published and writer lease given up", attrVolume, name,
		"recovery_point", mf.Sequence, "generation", l.Generation())
	return mf, nil
}

// looksLikeID reports whether s is a volume id rather than a name.
func looksLikeID(s string) bool {
	return len(s) == 36 && strings.Count(s, "-") == 4 || len(s) == 16 && strings.Trim(s, "0123456789abcdef") == ""
}

// bucketVolume is a volume a store holds, and, for a clone, its ancestors.
type bucketVolume struct {
	BucketVolume
	parents []tier.Parent
}

// bucketVolume reads one volume's description and state from a store.
func (m *Manager) bucketVolume(ctx context.Context, sc *StoreConfig, id string) (bucketVolume, error) {
	s, _, err := m.objectStore(sc, "volumes/"+id+"/")
	if err != nil {
		return bucketVolume{}, err
	}
	bv := bucketVolume{BucketVolume: BucketVolume{ID: id}}
	b, err := s.Get(ctx, volumeObjectKey, nil)
	switch {
	case err == nil:
		var vo volumeObject
		if json.Unmarshal(b, &vo) == nil && vo.Format == volumeObjectFormat {
			bv.Name, bv.Size, bv.ChunkSize, bv.Created = vo.Name, vo.Size, vo.ChunkSize, vo.Created
		}
	case !errors.Is(err, store.ErrNotFound):
		return bv, err
	}
	mf, err := tier.LatestManifest(ctx, s)
	switch {
	case err == nil:
		bv.RecoveryPoint, bv.RecoveryPointCreated = mf.Sequence, mf.Created
		bv.Size, bv.ChunkSize, bv.parents = max(bv.Size, mf.Size), mf.ChunkSize, mf.Parents
	case !errors.Is(err, store.ErrNotFound):
		return bv, err
	}
	if sw, ok := store.AsSwapper(s); ok {
		r, _, err := lease.Read(ctx, sw)
		switch {
		case err == nil:
			state := "expired"
			if r.Released {
				state = "released"
			} else if r.Live(time.Now()) {
				state = "held"
			}
			bv.Lease = leaseInfo(r, state, nil)
		case !errors.Is(err, store.ErrNotFound):
			return bv, err
		}
	}
	if bv.Size == 0 && bv.Lease == nil {
		return bv, fmt.Errorf("volume %s in store %q: %w", id, sc.Name, ErrNotFound)
	}
	m.mu.Lock()
	for _, r := range m.cat.Volumes {
		if r.ID == id && r.Store == sc.Name {
			bv.Local = r.Name
		}
	}
	m.mu.Unlock()
	return bv, nil
}

// StoreVolumes lists the volumes a store holds, whichever gateway serves
// them, with their newest recovery point and writer lease.
func (m *Manager) StoreVolumes(ctx context.Context, storeName string) ([]BucketVolume, error) {
	m.mu.Lock()
	sc, ok := m.stores[storeName]
	m.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("store %q: %w", storeName, ErrNotFound)
	}
	ids, err := m.bucketVolumeIDs(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("list volumes of store %q: %w", storeName, err)
	}
	out := make([]BucketVolume, 0, len(ids))
	for _, id := range ids {
		bv, err := m.bucketVolume(ctx, sc, id)
		if errors.Is(err, ErrNotFound) {
			continue // leftovers of a removed volume
		}
		if err != nil {
			return nil, fmt.Errorf("volume %s of store %q: %w", id, storeName, err)
		}
		out = append(out, bv.BucketVolume)
	}
	slices.SortFunc(out, func(a, b BucketVolume) int { return strings.Compare(a.Name+a.ID, b.Name+b.ID) })
	return out, nil
}

// bucketVolumeIDs lists the volume ids under a store's volumes/ prefix.
func (m *Manager) bucketVolumeIDs(ctx context.Context, sc *StoreConfig) ([]string, error) {
	s, _, err := m.objectStore(sc, "volumes/")
	if err != nil {
		return nil, err
	}
	var ids []string
	err = store.ListDirs(ctx, s, "", func(dir string) error {
		ids = append(ids, strings.TrimSuffix(dir, "/"))
		return nil
	})
	return ids, err
}

// Adopt serves a volume a store holds: it takes the volume's writer lease
// (a released or, with Force, an expired one; with Steal, any), starts a
// cache from the newest recovery point and publishes a recovery point of
// its own generation at once, which fences off anything the previous
// holder still uploads. Reads of data not cached come from the store.
func (m *Manager) Adopt(ctx context.Context, req AdoptRequest) (AdoptResponse, Info, error) {
	fail := func(err error) (AdoptResponse, Info, error) {
		return AdoptResponse{}, Info{}, fmt.Errorf("adopt %q from store %q: %w", req.Volume, req.Store, err)
	}
	m.mu.Lock()
	sc, ok := m.stores[req.Store]
	m.mu.Unlock()
	if !ok {
		return fail(fmt.Errorf("no store named %q (see ferry store ls): %w", req.Store, ErrNotFound))
	}
	id := req.Volume
	if !looksLikeID(id) {
		vols, err := m.StoreVolumes(ctx, req.Store)
		if err != nil {
			return fail(err)
		}
		var match []string
		for _, bv := range vols {
			if bv.Name == req.Volume {
				match = append(match, bv.ID)
			}
		}
		switch len(match) {
		case 0:
			return fail(fmt.Errorf("the store holds no volume named %q (ferry store volumes %s): %w", req.Volume, req.Store, ErrNotFound))
		case 1:
			id = match[0]
		default:
			return fail(fmt.Errorf("the store holds %d volumes named %q (%s): adopt one by id: %w", len(match), req.Volume, strings.Join(match, ", "), ErrInvalid))
		}
	}
	bv, err := m.bucketVolume(ctx, sc, id)
	if err != nil {
		return fail(err)
	}
	if bv.Local != "" {
		return fail(fmt.Errorf("this gateway serves it already, as %q: %w", bv.Local, ErrExists))
	}
	switch req.Hydrate {
	case "", "all", "none":
	default:
		return fail(fmt.Errorf("hydrate %q: want all or none: %w", req.Hydrate, ErrInvalid))
	}
	if req.HydrateRate < 0 {
		return fail(fmt.Errorf("hydrate rate %d: want bytes a second, 0 for no bound: %w", req.HydrateRate, ErrInvalid))
	}
	name := req.Name
	if name == "" {
		name = bv.Name
	}
	if err := ValidateName(name); err != nil {
		return fail(fmt.Errorf("%w (give another with --name)", err))
	}
	if li := bv.Lease; li != nil && !req.Steal {
		switch li.State {
		case "held":
			return fail(fmt.Errorf("gateway %s holds its writer lease until %s: release it there, or take it with --steal (which fences that gateway: what it had not uploaded is lost): %w",
				orID(li), li.Expires.Format(time.RFC3339), ErrBusy))
		case "expired":
			if !req.Force {
				return fail(fmt.Errorf("gateway %s let its writer lease expire at %s without releasing it: writes after the recovery point of %s are lost if you take it; take it with --force: %w",
					orID(li), li.Expires.Format(time.RFC3339), bv.RecoveryPointCreated.Format(time.RFC3339), ErrBusy))
			}
		}
	}
	if bv.RecoveryPoint == 0 {
		return fail(fmt.Errorf("the volume has no recovery point to start from: %w", ErrInvalid))
	}
	m.mu.Lock()
	if _, ok := m.vols[name]; ok {
		m.mu.Unlock()
		return fail(fmt.Errorf("a volume named %q exists here (give another with --name): %w", name, ErrExists))
	}
	m.mu.Unlock()
	dir, err := m.pickPoolDir()
	if err != nil {
		return fail(err)
	}
	rec := &Record{ID: id, Name: name, Size: bv.Size, Backend: "tier", Store: req.Store, ChunkSize: bv.ChunkSize,
		Created: bv.Created, Path: filepath.Join(dir, "tier-"+id), Parents: bv.parents}
	if rec.Created.IsZero() {
		rec.Created = time.Now().UTC().Truncate(time.Second)
	}
	os.RemoveAll(rec.Path) // a cache left by an earlier stay here is stale
	td, err := m.openTier(ctx, rec, tierOpen{takeover: true, steal: req.Steal})
	if err != nil {
		os.RemoveAll(rec.Path)
		return fail(err)
	}
	l := m.leaseOf(id)
	cleanup := func(err error) (AdoptResponse, Info, error) {
		td.Close()
		m.dropLease(id)
		os.RemoveAll(rec.Path)
		return fail(err)
	}
	// A recovery point of the new generation, before any write: a stale
	// holder's later recovery points number below it.
	mf, err := td.Checkpoint(ctx)
	if err != nil {
		return cleanup(fmt.Errorf("first recovery point: %w", err))
	}
	m.mu.Lock()
	if _, ok := m.vols[name]; ok {
		m.mu.Unlock()
		return cleanup(fmt.Errorf("a volume named %q exists here: %w", name, ErrExists))
	}
	m.cat.Volumes = append(m.cat.Volumes, rec)
	if err := m.commit(); err != nil {
		m.cat.Volumes = m.cat.Volumes[:len(m.cat.Volumes)-1]
		m.mu.Unlock()
		return cleanup(err)
	}
	v := newVol(rec, td, m.tierSnapshotter(rec, td))
	m.vols[name] = v
	if req.Hydrate != "none" {
		td.Hydrate(req.HydrateRate)
	}
	in := m.infoLocked(ctx, v)
	m.mu.Unlock()
	if s, err := m.volumeStoreFor(rec, l); err == nil {
		m.putVolumeObject(ctx, s, rec)
	}
	resp := AdoptResponse{RecoveryPoint: bv.RecoveryPoint, RecoveryPointCreated: bv.RecoveryPointCreated,
		AgeSeconds: time.Since(bv.RecoveryPointCreated).Seconds(), Generation: l.Generation(), Previous: bv.Lease}

	m.log.Info("volume adopted", attrVolume, name, "id", id, "store", req.Store, "from_recovery_point", bv.RecoveryPoint,
		"age", time.Since(bv.RecoveryPointCreated).Round(time.Second).String(), "generation", l.Generation(), "first_own_point", mf.Sequence)
	return resp, in, nil
}

// volumeStoreFor is a volume's store, fenced by its lease when it has one
// (l), for writes outside the tier (volume.json, snapshot removal) and
// reads of its objects.
func (m *Manager) volumeStoreFor(rec *Record, l *lease.Lease) (store.Store, error) {
	s, _, err := m.rawVolumeStore(rec)
	if err != nil || l == nil {
		return s, err
	}
	return lease.Fenced(s, l), nil
}

// rawVolumeStore is a volume's store (retries and metrics, no fence) and
// its store's configuration.
func (m *Manager) rawVolumeStore(rec *Record) (store.Store, *StoreConfig, error) {
	m.mu.Lock()
	sc, ok := m.stores[rec.Store]
	m.mu.Unlock()
	if !ok {
		return nil, nil, fmt.Errorf("store %q is not configured", rec.Store)
	}
	s, _, err := m.objectStore(sc, volumePrefix(rec))
	return s, sc, err
}

func orID(li *LeaseInfo) string {
	if li.HolderName != "" {
		return li.HolderName + " (" + li.Holder + ")"
	}
	return li.Holder
}

// hydrationInfo is a tier's hydration for Info; nil when none ran.
func hydrationInfo(td *tier.Device) *HydrationInfo {
	h := td.Hydration()
	if h.State == tier.HydrationOff {
		return nil
	}
	hi := &HydrationInfo{State: string(h.State), TotalBytes: h.Total, DoneBytes: h.Done, BytesPerSec: h.Rate, Error: h.Err, Percent: 100}
	switch {
	case h.Total > 0:
		hi.Percent = 100 * float64(h.Done) / float64(h.Total)
	case h.State == tier.HydrationRunning:
		hi.Percent = 0 // the volume's map is still being read: no total yet
	}
	if h.State == tier.HydrationRunning && h.Rate > 0 {
		hi.ETASeconds = float64(h.Total-h.Done) / h.Rate
	}
	return hi
}
