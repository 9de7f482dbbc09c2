package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ferry-io/ferry/backends/s3"
	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/backends/tier"
	"github.com/ferry-io/ferry/internal/atomicfile"
)

type storesFile struct {
	Version int            `json:"version"`
	Stores  []*StoreConfig `json:"stores"`
}

var storeNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)

func (m *Manager) storesPath() string { return filepath.Join(m.cfg.DataDir, "stores.json") }

func (m *Manager) loadStores() error {
	b, err := os.ReadFile(m.storesPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read stores: %w", err)
	}
	var f storesFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("parse %s: %w", m.storesPath(), err)
	}
	for _, sc := range f.Stores {
		m.stores[sc.Name] = sc
	}
	return nil
}

func (m *Manager) saveStoresLocked() error {
	f := storesFile{Version: 1}
	for _, sc := range m.stores {
		f.Stores = append(f.Stores, sc)
	}
	slices.SortFunc(f.Stores, func(a, b *StoreConfig) int { return strings.Compare(a.Name, b.Name) })
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(m.storesPath(), b)
}

// objectStore opens the store sc scoped to prefix (relative to the
// store's own prefix), with retries and metrics.
func (m *Manager) objectStore(sc *StoreConfig, prefix string) (store.Store, *s3.Store, error) {
	raw, err := s3.New(s3.Config{Endpoint: sc.Endpoint, Bucket: sc.Bucket, Prefix: sc.Prefix + prefix, Region: sc.Region,
		AccessKey: sc.AccessKey, SecretKey: sc.SecretKey, Timeout: m.cfg.S3Timeout})
	if err != nil {
		return nil, nil, fmt.Errorf("store %q: %w", sc.Name, err)
	}
	var s store.Store = store.WithRetry(raw, store.RetryPolicy{Attempts: 4})
	s = m.storeMetrics.WithMetrics(s, sc.Name)
	return s, raw, nil
}

// AddStore checks that the store is reachable and writable with the given
// credentials and remembers it.
func (m *Manager) AddStore(ctx context.Context, sc StoreConfig) (StoreView, error) {
	if !storeNameRE.MatchString(sc.Name) {
		return StoreView{}, fmt.Errorf("store name %q: use 1-63 lower-case letters, digits, '.' or '-': %w", sc.Name, ErrInvalid)
	}
	if sc.Prefix != "" && !strings.HasSuffix(sc.Prefix, "/") {
		sc.Prefix += "/"
	}
	m.mu.Lock()
	_, exists := m.stores[sc.Name]
	m.mu.Unlock()
	if exists {
		return StoreView{}, fmt.Errorf("store %q: %w", sc.Name, ErrExists)
	}
	_, raw, err := m.objectStore(&sc, "")
	if err != nil {
		return StoreView{}, fmt.Errorf("%w: %w", err, ErrInvalid)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := raw.Check(cctx); err != nil {
		return StoreView{}, fmt.Errorf("store %q: %w: %w", sc.Name, err, ErrInvalid)
	}
	// Writer leases need conditional puts; without them the store works,
	// but its volumes cannot move between gateways.
	switch err := raw.CheckConditional(cctx); {
	case err == nil:
		sc.Conditional = ptrTo(true)
	case errors.Is(err, store.ErrNoSwap):
		sc.Conditional = ptrTo(false)
		m.log.Warn("the store's server does not honour conditional puts (If-Match): its volumes work, but cannot move between gateways", "store", sc.Name, "err", err)
	default:
		return StoreView{}, fmt.Errorf("store %q: probing conditional puts: %w: %w", sc.Name, err, ErrInvalid)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.stores[sc.Name]; ok {
		return StoreView{}, fmt.Errorf("store %q: %w", sc.Name, ErrExists)
	}
	m.stores[sc.Name] = &sc
	if err := m.saveStoresLocked(); err != nil {
		delete(m.stores, sc.Name)
		return StoreView{}, fmt.Errorf("save stores: %w", err)
	}
	m.log.Info("store added", "store", sc.Name, "endpoint", sc.Endpoint, "bucket", sc.Bucket, "prefix", sc.Prefix)
	return m.storeViewLocked(&sc), nil
}

func (m *Manager) storeViewLocked(sc *StoreConfig) StoreView {
	v := StoreView{Name: sc.Name, Endpoint: sc.Endpoint, Bucket: sc.Bucket, Prefix: sc.Prefix, Region: sc.Region,
		Movable: sc.Conditional != nil && *sc.Conditional}
	for _, r := range m.cat.Volumes {
		if r.Store == sc.Name {
			v.Volumes++
		}
	}
	return v
}

// Stores lists the stores, sorted by name.
func (m *Manager) Stores(ctx context.Context) []StoreView {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]StoreView, 0, len(m.stores))
	for _, sc := range m.stores {
		out = append(out, m.storeViewLocked(sc))
	}
	slices.SortFunc(out, func(a, b StoreView) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// StoreInfo describes a store with the objects Ferry keeps in it.
func (m *Manager) StoreInfo(ctx context.Context, name string) (StoreView, error) {
	m.mu.Lock()
	sc, ok := m.stores[name]
	var v StoreView
	if ok {
		v = m.storeViewLocked(sc)
	}
	m.mu.Unlock()
	if !ok {
		return StoreView{}, fmt.Errorf("store %q: %w", name, ErrNotFound)
	}
	s, _, err := m.objectStore(sc, "volumes/")
	if err != nil {
		return v, err
	}
	err = s.List(ctx, "", func(o store.ObjectInfo) error {
		v.Objects++
		v.Bytes += o.Size
		return nil
	})
	if err != nil {
		v.Error = err.Error()
	}
	return v, nil
}

// RemoveStore forgets a store no volume uses. Its objects stay.
func (m *Manager) RemoveStore(ctx context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	sc, ok := m.stores[name]
	if !ok {
		return fmt.Errorf("store %q: %w", name, ErrNotFound)
	}
	if n := m.storeViewLocked(sc).Volumes; n > 0 {
		return fmt.Errorf("store %q holds %d volume(s); remove them first: %w", name, n, ErrBusy)
	}
	for _, r := range m.cat.Volumes {
		if mr := r.Migration; mr != nil && (mr.From == name || mr.To == name) {
			return fmt.Errorf("store %q: volume %q is moving from %q to %q; let it finish or cancel it first: %w", name, r.Name, mr.From, mr.To, ErrBusy)
		}
	}
	delete(m.stores, name)
	if err := m.saveStoresLocked(); err != nil {
		m.stores[name] = sc
		return fmt.Errorf("save stores: %w", err)
	}
	m.log.Info("store removed", "store", name)
	return nil
}

// volumePrefix is where a volume's objects live in its store
// (docs/FORMAT.md).
func volumePrefix(rec *Record) string { return "volumes/" + rec.ID + "/" }

func (m *Manager) openTier(ctx context.Context, rec *Record, how tierOpen) (*tier.Device, error) {
	s, fence, err := m.volumeStore(ctx, rec, how)
	if err != nil {
		return nil, err
	}
	// The volume may move to another store while it serves (migrate.go):
	// its tier uploads through a switch, and checks a fence that can
	// change lease.
	vs := &volSwitch{sw: store.NewSwitch(s)}
	if fence != nil {
		vs.fence = newSwitchFence(fence)
		fence = vs.fence
	}
	s = vs.sw
	m.mu.Lock()
	m.switches[rec.ID] = vs
	m.mu.Unlock()
	if len(rec.Parents) > 0 {
		m.mu.Lock()
		sc := m.stores[rec.Store]
		m.mu.Unlock()
		// A clone's ancestors move with it: their layers are switches too.
		layers := make([]tier.Layer, len(rec.Parents))
		for i, p := range rec.Parents {
			ps, _, err := m.objectStore(sc, p.Prefix)
			if err != nil {
				m.dropLease(rec.ID)
				return nil, err
			}
			lsw := store.NewSwitch(ps)
			vs.layers = append(vs.layers, lsw)
			layers[i] = tier.Layer{Store: lsw, Below: p.Below}
		}
		s = tier.Layered(s, layers)
	}
	td, err := tier.Open(ctx, tier.Config{
		Dir: rec.Path, FS: m.fsys, Store: s, Size: rec.Size, ChunkSize: rec.ChunkSize, Fence: fence, Parents: rec.Parents,
		Budget: m.budget, Metrics: m.tierMetrics, FetchTimeout: m.cfg.FetchTimeout, DirtyWait: m.cfg.DirtyWait,
		Readahead: m.cfg.Readahead, Logger: m.log.With(attrVolume, rec.Name),
	})
	if err != nil {
		m.dropLease(rec.ID)
		return nil, err
	}
	return td, nil
}

func tierInfo(rec *Record, d *tier.Device) *TierInfo {
	st := d.TierStats()
	ti := &TierInfo{Store: rec.Store, ChunkSize: rec.ChunkSize, CachedBytes: st.CachedBytes, DirtyBytes: st.DirtyBytes,
		StoredChunks: st.StoredChunks, LastCheckpoint: st.LastCheckpoint, UploadError: st.UploadError}
	if !st.LastCheckpoint.IsZero() {
		ti.RPOSeconds = time.Since(st.LastCheckpoint).Seconds()
	}
	return ti
}

// Checkpoint publishes a recovery point of an S3-backed volume and
// returns once it is in the store.
func (m *Manager) Checkpoint(ctx context.Context, name string) (tier.Manifest, error) {
	m.mu.Lock()
	v, ok := m.vols[name]
	m.mu.Unlock()
	if !ok || v.removing {
		return tier.Manifest{}, fmt.Errorf("checkpoint %q: %w", name, ErrNotFound)
	}
	td, ok := v.dev.(*tier.Device)
	if !ok {
		return tier.Manifest{}, fmt.Errorf("checkpoint %q: a local volume has no S3 recovery points: %w", name, ErrInvalid)
	}
	mf, err := td.Checkpoint(ctx)
	if err != nil {
		return mf, fmt.Errorf("checkpoint %q: %w", name, err)
	}
	m.log.Info("recovery point published", attrVolume, name, "sequence", mf.Sequence, "chunks", mf.StoredChunks())
	return mf, nil
}

// checkpointer publishes recovery points of changed S3-backed volumes
// every interval until ctx ends.
func (m *Manager) checkpointer(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.mu.Lock()
		var names []string
		for n, v := range m.vols {
			fenced := m.elsewhere[v.rec.ID] != nil || (m.leases[v.rec.ID] != nil && m.leases[v.rec.ID].Writable() != nil)
			if td, ok := v.dev.(*tier.Device); ok && !v.removing && !fenced && td.Changed() {
				names = append(names, n)
			}
		}
		m.mu.Unlock()
		for _, n := range names {
			if _, err := m.Checkpoint(ctx, n); err != nil && ctx.Err() == nil {
				m.log.Warn("periodic recovery point failed; will retry", attrVolume, n, "err", err)
			}
		}
	}
}

// Cache reports the shared cache budget of S3-backed volumes.
func (m *Manager) Cache() CacheInfo {
	return CacheInfo{Budget: m.budget.Limit(), Used: m.budget.Used()}
}

// Location returns where an S3-backed volume keeps its objects.
func (m *Manager) Location(ctx context.Context, name string) (ExportLocation, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.vols[name]
	if !ok {
		return ExportLocation{}, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	sc, ok := m.stores[v.rec.Store]
	if !ok {
		return ExportLocation{}, fmt.Errorf("volume %q is not in an S3 store: %w", name, ErrInvalid)
	}
	return ExportLocation{Store: m.storeViewLocked(sc), Prefix: sc.Prefix + volumePrefix(v.rec), VolumeID: v.rec.ID}, nil
}

// probeMaxAge is how long a store probe's answer is reused, so that
// readiness checks polled often do not become a request load.
const probeMaxAge = 5 * time.Second

// ProbeStores asks every store whether it answers with the gateway's
// credentials (one metadata request each, at most every probeMaxAge),
// and returns them sorted by name.
func (m *Manager) ProbeStores(ctx context.Context) []StoreHealth {
	views := m.Stores(ctx)
	out := make([]StoreHealth, len(views))
	var wg sync.WaitGroup
	for i, v := range views {
		out[i].StoreView = v
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].Reachable, out[i].Error, out[i].Checked = m.probeStore(ctx, v.Name)
		}()
	}
	wg.Wait()
	return out
}

type probeResult struct {
	err     string
	checked time.Time
}

func (m *Manager) probeStore(ctx context.Context, name string) (bool, string, time.Time) {
	m.probeMu.Lock()
	r, ok := m.probes[name]
	m.probeMu.Unlock()
	if ok && time.Since(r.checked) < probeMaxAge {
		return r.err == "", r.err, r.checked
	}
	m.mu.Lock()
	sc, ok := m.stores[name]
	m.mu.Unlock()
	if !ok {
		return false, "store removed", time.Now()
	}
	r = probeResult{checked: time.Now().UTC()}
	_, raw, err := m.objectStore(sc, "")
	if err == nil {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = raw.Stat(pctx, ".ferry-reachability-probe")
		cancel()
		if errors.Is(err, store.ErrNotFound) {
			err = nil
		}
	}
	if err != nil {
		r.err = err.Error()
	}
	m.probeMu.Lock()
	if m.probes == nil {
		m.probes = map[string]probeResult{}
	}
	m.probes[name] = r
	m.probeMu.Unlock()
	return r.err == "", r.err, r.checked
}

func ptrTo[T any](v T) *T { return &v }
