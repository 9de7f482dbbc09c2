package volume

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/lease"
	"github.com/ferry-io/ferry/backends/local"
	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/backends/tier"
	"github.com/ferry-io/ferry/internal/bootid"
	"github.com/ferry-io/ferry/internal/vfs"
)

// Log attribute keys.
const (
	attrVolume = "volume"
	attrClient = "client"
)

// Config configures a Manager.
type Config struct {
	// DataDir holds catalog.json and, unless PoolDirs says otherwise, the
	// local pool (DataDir/pool).
	DataDir string
	// PoolDirs are the local pool's directories; new volumes go to the one
	// with the most free space.
	PoolDirs []string
	// ForceTimeout bounds how long a forced remove waits for connected
	// clients to go away before closing the device under them.
	ForceTimeout time.Duration
	Logger       *slog.Logger
	Registerer   prometheus.Registerer

	// CacheBytes is the local cache budget shared by all S3-backed volumes
	// (default 1 GiB).
	CacheBytes int64
	// CheckpointInterval is how often changed S3-backed volumes publish a
	// recovery point (default 60s).
	CheckpointInterval time.Duration
	// S3Timeout bounds one S3 request (default 60s).
	S3Timeout time.Duration
	// FetchTimeout bounds a read of data only in S3 while S3 does not
	// answer (default 30s); the read then fails with EIO.
	FetchTimeout time.Duration
	// DirtyWait bounds how long a write waits for a cache full of data not
	// yet uploaded before failing with ENOSPC (default 60s).
	DirtyWait time.Duration
	// Readahead is how many chunks are fetched ahead of a sequential
	// reader (0: tier's default; negative: none).
	Readahead int
	// LeaseTTL is how long a renewal of an S3-backed volume's writer lease
	// holds (default 30s; renewed every third of it).
	LeaseTTL time.Duration
	// StreamMemory bounds the memory holding chunks for sequential
	// readers, over all volumes (0: tier.DefaultStreamMemory; negative:
	// none, sequential reads go through the cache).
	StreamMemory int64

	// fsys, set by tests only, is where the catalog, local volume files
	// and tier caches live (nil: the operating system's file system): a
	// crashable one (internal/vfs) in manager_crash_test.go. The data and
	// pool directories are made on the real file system too, for what is
	// not on the seam yet: the gateway identity, stores.json, statfs,
	// reflink probes, snapshots and migrations.
	fsys vfs.FS
}

// Manager owns the catalog and the open devices. It is safe for
// concurrent use. Lock order: Manager.mu, then a device's own locks
// (probeMu and reflinkMu are never held with another lock).
type Manager struct {
	cfg     Config
	log     *slog.Logger
	catPath string
	// fsys holds the catalog, local volume files and tier caches
	// (Config.fsys).
	fsys vfs.FS
	// bootID is the kernel's boot id: volumes whose devices are
	// device.KernelHeld report it (wire.Volume.WritesHeldBy).
	bootID string

	mu     sync.Mutex
	cat    *catalogFile
	vols   map[string]*vol         // by name
	stores map[string]*StoreConfig // by name

	storeMetrics *store.StoreMetrics
	budget       *tier.Budget
	tierMetrics  *tier.Metrics
	stopBG       context.CancelFunc
	bg           sync.WaitGroup

	probeMu sync.Mutex             // guards probes only; never held with mu
	probes  map[string]probeResult // by store name

	reflinkMu sync.Mutex       // guards reflink only; never held with another lock
	reflink   map[string]error // by pool directory: nil where files can share blocks

	closing    chan struct{}           // closed by Close: background retries end
	closed     bool                    // under mu
	holder     lease.Holder            // this gateway in writer leases
	leases     map[string]*lease.Lease // under mu: writer leases held, by volume id
	elsewhere  map[string]error        // under mu: volumes whose lease another gateway holds, by id
	switches   map[string]*volSwitch   // under mu: how each open S3-backed volume changes stores, by id (migrate.go)
	migrations map[string]*migration   // under mu: moves to another store, running or ended, by volume id
}

type vol struct {
	rec      *Record
	dev      device.Device
	clients  map[*Attachment]Client
	revoked  chan struct{}
	removing bool
	drained  chan struct{} // closed when a removing volume has no clients
	// sn is the volume's snapshot capability (snapshots.go).
	sn snapshotter
	// snaps are the volume's snapshots, by name, with their export's
	// device once a client opened it (snapshots.go).
	snaps map[string]device.Device
}

func newVol(rec *Record, dev device.Device, sn snapshotter) *vol {
	return &vol{rec: rec, dev: dev, sn: sn, clients: map[*Attachment]Client{}, revoked: make(chan struct{})}
}

var _ Exports = (*Manager)(nil)

// Open loads the catalog under cfg.DataDir, opens every volume and removes
// files a crash left behind (a volume file no catalog entry names).
func Open(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("open volumes: no data directory: %w", ErrInvalid)
	}
	if len(cfg.PoolDirs) == 0 {
		cfg.PoolDirs = []string{filepath.Join(cfg.DataDir, "pool")}
	}
	if cfg.ForceTimeout == 0 {
		cfg.ForceTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.CacheBytes <= 0 {
		cfg.CacheBytes = 1 << 30
	}
	if cfg.CheckpointInterval <= 0 {
		cfg.CheckpointInterval = 60 * time.Second
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 30 * time.Second
	}
	fsys := vfs.Or(cfg.fsys)
	for _, d := range append([]string{cfg.DataDir}, cfg.PoolDirs...) {
		if err := vfs.MkdirAllDurable(fsys, d); err != nil {
			return nil, fmt.Errorf("open volumes: %w", err)
		}
		if fsys != vfs.OS { // what is not on the seam yet needs them too
			if err := os.MkdirAll(d, 0o700); err != nil {
				return nil, fmt.Errorf("open volumes: %w", err)
			}
		}
	}
	m := &Manager{
		cfg:     cfg,
		log:     cfg.Logger,
		catPath: filepath.Join(cfg.DataDir, "catalog.json"),
		fsys:    fsys,
		vols:    map[string]*vol{},
		stores:  map[string]*StoreConfig{},
		leases:  map[string]*lease.Lease{},
		closing: make(chan struct{}),
		reflink: map[string]error{},
		bootID:  bootid.Get(),
	}
	m.elsewhere = map[string]error{}
	m.switches, m.migrations = map[string]*volSwitch{}, map[string]*migration{}
	holder, err := loadIdentity(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	m.holder = holder
	m.storeMetrics = store.NewStoreMetrics(cfg.Registerer)
	m.budget = tier.NewBudget(cfg.CacheBytes)
	if cfg.StreamMemory != 0 {
		m.budget.SetStreamMemory(max(0, cfg.StreamMemory))
	}
	m.tierMetrics = tier.NewMetrics(cfg.Registerer)
	if err := m.loadStores(); err != nil {
		return nil, err
	}
	cat, err := loadCatalog(m.fsys, m.catPath)
	if err != nil {
		return nil, err
	}
	m.cat = cat
	for _, rec := range cat.Volumes {
		dev, sn, err := m.openDevice(ctx, rec)
		if err != nil {
			m.closeAll()
			return nil, fmt.Errorf("open volume %q: %w", rec.Name, err)
		}
		m.vols[rec.Name] = newVol(rec, dev, sn)
	}
	m.removeOrphans()
	// Whether each pool directory can share blocks (local snapshots and
	// clones need it) is found once, and logged.
	for _, d := range cfg.PoolDirs {
		if err := m.reflinkIn(d); err != nil {
			m.log.Info("local pool directory cannot share blocks between files: its volumes have no snapshots or clones", "dir", d, "fs", local.FSName(d), "err", err)
		}
	}
	// Snapshot names load in the background: a store that does not answer
	// must not hold up the start.
	for _, v := range m.vols {
		m.bg.Add(1)
		go func() {
			defer m.bg.Done()
			m.loadSnapshotNames(context.WithoutCancel(ctx), v)
		}()
	}
	if cfg.Registerer != nil {
		m.registerMetrics(cfg.Registerer)
	}
	m.resumeMigrations()
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.stopBG = cancel
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		m.checkpointer(bctx, cfg.CheckpointInterval)
	}()
	return m, nil
}

// openDevice opens a volume's device and its snapshot capability.
func (m *Manager) openDevice(ctx context.Context, rec *Record) (device.Device, snapshotter, error) {
	switch rec.Backend {
	case "local":
		d, err := local.On(m.fsys).Open(rec.Path)
		if err != nil {
			return nil, nil, err
		}
		// A resize that crashed before its catalog update left the file
		// at the new size; the catalog is the truth.
		if d.Size() != rec.Size {
			m.log.Warn("volume file size differs from catalog; restoring catalog size",
				attrVolume, rec.Name, "file_size", d.Size(), "size", rec.Size)
			if err := d.Resize(ctx, rec.Size); err != nil {
				d.Close()
				return nil, nil, err
			}
		}
		return d, m.localSnapshotter(rec, d), nil
	case "tier":
		td, err := m.openTier(ctx, rec, tierOpen{})
		if err != nil {
			return nil, nil, err
		}
		return td, m.tierSnapshotter(rec, td), nil
	default:
		return nil, nil, fmt.Errorf("unknown backend %q", rec.Backend)
	}
}

// removeOrphans deletes volume files in the pool that no record names: a
// create that crashed before its catalog update, or a remove that crashed
// after it.
func (m *Manager) removeOrphans() {
	known, ids := map[string]bool{}, map[string]bool{}
	for _, r := range m.cat.Volumes {
		known[r.Path] = true
		if r.Backend == "local" {
			ids[r.ID] = true
		}
	}
	m.removeSnapshotOrphans(ids)
	for _, dir := range m.cfg.PoolDirs {
		for _, f := range m.glob(dir, "vol-*.img", "tier-*") {
			if !known[f] {
				m.log.Warn("removing orphaned volume file left by an interrupted create or remove", "path", f)
				m.fsys.RemoveAll(f)
			}
		}
	}
	for _, f := range m.glob(m.cfg.DataDir, ".*.tmp") { // torn atomicfile writes
		m.fsys.Remove(f)
	}
}

// glob returns the paths of the entries of dir whose names match any of
// patterns (filepath.Match), on m.fsys.
func (m *Manager) glob(dir string, patterns ...string) []string {
	ents, _ := m.fsys.ReadDir(dir)
	var out []string
	for _, e := range ents {
		for _, p := range patterns {
			if ok, _ := filepath.Match(p, e.Name()); ok {
				out = append(out, filepath.Join(dir, e.Name()))
				break
			}
		}
	}
	return out
}

// newID returns a random (version 4) UUID, a new volume's identity.
func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// pickPoolDir returns the pool directory with the most free space.
func (m *Manager) pickPoolDir() (string, error) {
	best, bestFree := "", int64(-1)
	for _, d := range m.cfg.PoolDirs {
		_, free, err := statfs(d)
		if err != nil {
			continue
		}
		if free > bestFree {
			best, bestFree = d, free
		}
	}
	if best == "" {
		return "", fmt.Errorf("no usable pool directory among %v", m.cfg.PoolDirs)
	}
	return best, nil
}

func statfs(dir string) (total, free int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Blocks) * st.Bsize, int64(st.Bavail) * st.Bsize, nil
}

// commit writes the catalog from the in-memory records.
func (m *Manager) commit() error {
	return saveCatalog(m.fsys, m.catPath, m.cat)
}

// CreateOptions are a new volume's optional settings.
type CreateOptions struct {
	// Access sets iSCSI access control (CHAP, allowed initiators).
	Access *AccessUpdate
	// Store puts the volume's data in that S3 store, with the local pool
	// as its cache. Empty means a local volume.
	Store string
	// ChunkSize is an S3-backed volume's chunk size (0: 4 MiB).
	ChunkSize int64
}

// Create makes a new, empty local volume. The volume file is created and
// synced before the catalog names it, so a crash leaves at worst an orphan
// file that the next Open removes.
func (m *Manager) Create(ctx context.Context, name string, size int64, opts CreateOptions) (Info, error) {
	if err := ValidateName(name); err != nil {
		return Info{}, err
	}
	if err := ValidateSize(size); err != nil {
		return Info{}, err
	}
	var access *Access
	if !opts.Access.Empty() {
		a, err := applyAccess(opts.Access, nil)
		if err != nil {
			return Info{}, fmt.Errorf("create volume %q: %w", name, err)
		}
		access = a
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.vols[name]; ok {
		return Info{}, fmt.Errorf("create volume %q: %w", name, ErrExists)
	}
	dir, err := m.pickPoolDir()
	if err != nil {
		return Info{}, fmt.Errorf("create volume %q: %w", name, err)
	}
	rec := &Record{ID: newID(), Name: name, Size: size, Backend: "local", Created: time.Now().UTC().Truncate(time.Second), Access: access}
	var dev device.Device
	var sn snapshotter
	if opts.Store != "" {
		if _, ok := m.stores[opts.Store]; !ok {
			return Info{}, fmt.Errorf("create volume %q: no store named %q (see ferry store ls): %w", name, opts.Store, ErrInvalid)
		}
		cs := opts.ChunkSize
		if cs == 0 {
			cs = tier.DefaultChunkSize
		}
		if cs < 64<<10 || cs > 64<<20 || cs&(cs-1) != 0 {
			return Info{}, fmt.Errorf("create volume %q: chunk size %d: want a power of two from 64 KiB to 64 MiB: %w", name, cs, ErrInvalid)
		}
		rec.Backend, rec.Store, rec.ChunkSize = "tier", opts.Store, cs
		rec.Path = filepath.Join(dir, "tier-"+rec.ID)
		m.mu.Unlock()
		td, err := m.openTier(ctx, rec, tierOpen{})
		if err == nil {
			if s, serr := m.volumeStoreFor(rec, m.leaseOf(rec.ID)); serr == nil {
				m.putVolumeObject(ctx, s, rec)
			}
		}
		m.mu.Lock()
		if err != nil {
			m.fsys.RemoveAll(rec.Path)
			return Info{}, fmt.Errorf("create volume %q: %w", name, err)
		}
		dropTier := func() {
			td.Close()
			m.mu.Unlock()
			m.dropLease(rec.ID)
			m.mu.Lock()
			m.fsys.RemoveAll(rec.Path)
		}
		if _, ok := m.vols[name]; ok {
			dropTier()
			return Info{}, fmt.Errorf("create volume %q: %w", name, ErrExists)
		}
		if err := local.On(m.fsys).SyncDir(dir); err != nil {
			dropTier()
			return Info{}, fmt.Errorf("create volume %q: %w", name, err)
		}
		dev, sn = td, m.tierSnapshotter(rec, td)
	} else {
		rec.Path = filepath.Join(dir, "vol-"+rec.ID+".img")
		ld, err := local.On(m.fsys).Create(rec.Path, size)
		if err != nil {
			return Info{}, fmt.Errorf("create volume %q: %w", name, tooLarge(err, dir, size))
		}
		dev, sn = ld, m.localSnapshotter(rec, ld)
	}
	m.cat.Volumes = append(m.cat.Volumes, rec)
	if err := m.commit(); err != nil {
		m.cat.Volumes = m.cat.Volumes[:len(m.cat.Volumes)-1]
		dev.Close()
		m.fsys.RemoveAll(rec.Path)
		return Info{}, fmt.Errorf("create volume %q: %w", name, err)
	}
	v := newVol(rec, dev, sn)
	m.vols[name] = v
	m.log.Info("volume created", attrVolume, name, "size", size, "path", rec.Path)
	return m.infoLocked(ctx, v), nil
}

// Names returns the names of every volume, sorted.
func (m *Manager) Names(ctx context.Context) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make([]string, 0, len(m.vols))
	for n, v := range m.vols {
		if !v.removing {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names
}

// List implements Exports.
func (m *Manager) List(ctx context.Context, client Client) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make([]string, 0, len(m.vols))
	for n, v := range m.vols {
		if !v.removing && v.rec.Access.admit(client) == nil {
			names = append(names, n)
			names = append(names, m.snapshotExportsLocked(v)...)
		}
	}
	slices.Sort(names)
	return names, nil
}

// Volumes returns every volume's Info, sorted by name.
func (m *Manager) Volumes(ctx context.Context) []Info {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Info, 0, len(m.vols))
	for _, v := range m.vols {
		out = append(out, m.infoLocked(ctx, v))
	}
	slices.SortFunc(out, func(a, b Info) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Info describes one volume.
func (m *Manager) Info(ctx context.Context, name string) (Info, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.vols[name]
	if !ok {
		return Info{}, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	return m.infoLocked(ctx, v), nil
}

func (m *Manager) infoLocked(ctx context.Context, v *vol) Info {
	in := Info{
		Name: v.rec.Name, ID: v.rec.ID, Size: v.rec.Size, Backend: v.rec.Backend,
		Created: v.rec.Created, Connections: []Client{}, Access: v.rec.Access.view(),
	}
	if st, ok := v.dev.(device.Statter); ok {
		if s, err := st.Stats(ctx); err == nil {
			in.Allocated = s.Allocated
		}
	}
	if device.WritesHeldByKernel(v.dev) {
		in.WritesHeldBy = m.bootID
	}
	if td, ok := v.dev.(*tier.Device); ok {
		in.Tier = tierInfo(v.rec, td)
		in.Tier.Lease = m.leaseViewLocked(v.rec)
		in.Tier.Hydration = hydrationInfo(td)
		in.Tier.Migration = m.migrationInfoLocked(v.rec)
	}
	for _, c := range v.clients {
		in.Connections = append(in.Connections, c)
	}
	slices.SortFunc(in.Connections, func(a, b Client) int {
		return cmp.Or(a.Since.Compare(b.Since), strings.Compare(a.Protocol, b.Protocol), strings.Compare(a.Remote, b.Remote))
	})
	return in
}

// Resize grows a volume online. Connected clients see the new size when
// they next negotiate. Shrinking is refused: it would destroy data.
func (m *Manager) Resize(ctx context.Context, name string, size int64) (Info, error) {
	if err := ValidateSize(size); err != nil {
		return Info{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.vols[name]
	if !ok || v.removing {
		return Info{}, fmt.Errorf("resize volume %q: %w", name, ErrNotFound)
	}
	if size < v.rec.Size {
		return Info{}, fmt.Errorf("resize volume %q from %d to %d bytes: shrinking would destroy data; only growing is supported: %w",
			name, v.rec.Size, size, ErrInvalid)
	}
	if size == v.rec.Size {
		return m.infoLocked(ctx, v), nil
	}
	old := v.rec.Size
	if err := v.dev.Resize(ctx, size); err != nil {
		if v.rec.Backend == "local" {
			err = tooLarge(err, filepath.Dir(v.rec.Path), size)
		}
		return Info{}, fmt.Errorf("resize volume %q: %w", name, err)
	}
	v.rec.Size = size
	if err := m.commit(); err != nil {
		v.rec.Size = old
		if rerr := v.dev.Resize(ctx, old); rerr != nil {
			m.log.Error("undo resize failed", attrVolume, name, "err", rerr)
		}
		return Info{}, fmt.Errorf("resize volume %q: %w", name, err)
	}
	m.log.Info("volume resized", attrVolume, name, "from", old, "to", size)
	return m.infoLocked(ctx, v), nil
}

// Remove deletes a volume. With clients connected it fails with ErrBusy
// unless force is set; then the clients are disconnected first.
func (m *Manager) Remove(ctx context.Context, name string, force bool) error {
	m.mu.Lock()
	v, ok := m.vols[name]
	if !ok || v.removing {
		m.mu.Unlock()
		return fmt.Errorf("remove volume %q: %w", name, ErrNotFound)
	}
	if err := m.migratingLocked(v.rec); err != nil {
		m.mu.Unlock()
		return fmt.Errorf("remove volume %q: %w", name, err)
	}
	if err := m.evictLocked(ctx, v, force); err != nil {
		return fmt.Errorf("remove volume %q: %w", name, err)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	recs := slices.DeleteFunc(slices.Clone(m.cat.Volumes), func(r *Record) bool { return r == v.rec })
	old := m.cat.Volumes
	m.cat.Volumes = recs
	if err := m.commit(); err != nil {
		m.cat.Volumes = old
		v.removing = false
		v.revoked = make(chan struct{})
		return fmt.Errorf("remove volume %q: %w", name, err)
	}
	delete(m.vols, name)
	closeSnapshotsLocked(v)
	v.dev.Close()
	os.Remove(m.prPath(v.rec))
	v.sn.Drop(ctx)
	if v.rec.Backend == "tier" {
		l, other := m.leases[v.rec.ID], m.elsewhere[v.rec.ID]
		delete(m.leases, v.rec.ID)
		delete(m.elsewhere, v.rec.ID)
		switch {
		case other != nil || (l != nil && l.State() == lease.Lost):
			// Another gateway writes the volume now: its objects are not
			// this gateway's to delete.
			m.log.Warn("volume removed here only; another gateway holds its writer lease, so its objects stay in the store", attrVolume, name)
		default:
			if l != nil {
				l.Close()
			}
			m.deleteObjects(v.rec)
		}
	}
	if v.rec.Path != "" {
		if err := m.fsys.RemoveAll(v.rec.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("volume removed from catalog but its file remains", attrVolume, name, "path", v.rec.Path, "err", err)
		}
	}
	m.log.Info("volume removed", attrVolume, name, "forced", force)
	return nil
}

// evictLocked, called with m.mu held, refuses new clients of v and, when
// it has clients, fails with ErrBusy unless force, which revokes their
// attachments and waits (up to ForceTimeout) for them to go. It returns
// with m.mu released.
func (m *Manager) evictLocked(ctx context.Context, v *vol, force bool) error {
	if n := len(v.clients); n > 0 && !force {
		m.mu.Unlock()
		return fmt.Errorf("%d client(s) connected (use --force to disconnect them): %w", n, ErrBusy)
	}
	v.removing = true
	v.drained = make(chan struct{})
	if len(v.clients) == 0 {
		close(v.drained)
	}
	close(v.revoked)
	m.mu.Unlock()
	select {
	case <-v.drained:
	case <-time.After(m.cfg.ForceTimeout):
		m.log.Warn("clients did not disconnect in time; going on under them", attrVolume, v.rec.Name)
	case <-ctx.Done():
	}
	return nil
}

// Attach implements Exports.
func (m *Manager) Attach(ctx context.Context, name string, client Client) (*Attachment, error) {
	if _, _, isSnap := splitExport(name); isSnap {
		return m.attachSnapshot(ctx, name, client)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.vols[name]
	if !ok || v.removing {
		return nil, fmt.Errorf("attach %q: %w", name, ErrNotFound)
	}
	if err := v.rec.Access.admit(client); err != nil {
		m.log.Warn("client refused by the volume's access rules", attrVolume, name, "protocol", client.Protocol, attrClient, client.Remote, "err", err)
		return nil, fmt.Errorf("attach %q: %w", name, err)
	}
	if client.Since.IsZero() {
		client.Since = time.Now().UTC()
	}
	var a *Attachment
	a = NewAttachment(name, v.dev, v.revoked, func() { m.detach(v, a) })
	a.ID = v.rec.ID
	v.clients[a] = client
	m.log.Debug("client attached", attrVolume, name, "protocol", client.Protocol, attrClient, client.Remote)
	return a, nil
}

func (m *Manager) detach(v *vol, a *Attachment) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(v.clients, a)
	if v.removing && len(v.clients) == 0 {
		select {
		case <-v.drained:
		default:
			close(v.drained)
		}
	}
}

// Pool describes the local pool's capacity and use.
func (m *Manager) Pool(ctx context.Context) PoolInfo {
	var p PoolInfo
	for _, d := range m.cfg.PoolDirs {
		total, free, err := statfs(d)
		if err != nil {
			continue
		}
		pd := PoolDir{Path: d, Total: total, Free: free, FS: local.FSName(d)}
		if err := m.reflinkIn(d); err == nil {
			pd.Reflink = true
		}
		p.Dirs = append(p.Dirs, pd)
	}
	p.Cache = m.Cache()
	for _, in := range m.Volumes(ctx) {
		p.Volumes++
		p.Provisioned += in.Size
		p.Allocated += in.Allocated
		if in.Tier != nil {
			p.Cache.Dirty += in.Tier.DirtyBytes
		}
	}
	return p
}

// FlushAll flushes every volume, returning the first error.
func (m *Manager) FlushAll(ctx context.Context) error {
	m.mu.Lock()
	devs := make(map[string]device.Device, len(m.vols))
	for n, v := range m.vols {
		devs[n] = v.dev
	}
	m.mu.Unlock()
	var first error
	for n, d := range devs {
		err := d.Flush(ctx)
		if errors.Is(err, device.ErrReadOnly) {
			// A volume this gateway may no longer write (its lease is
			// elsewhere): nothing of it can be flushed to its store.
			m.log.Warn("volume not flushed: this gateway does not hold its writer lease", attrVolume, n, "err", err)
			continue
		}
		if err != nil && first == nil {
			first = fmt.Errorf("flush volume %q: %w", n, err)
		}
	}
	return first
}

// Close flushes and closes every volume.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	if !m.closed {
		m.closed = true
		close(m.closing)
	}
	m.mu.Unlock()
	if m.stopBG != nil {
		m.stopBG()
		m.bg.Wait()
	}
	err := m.FlushAll(ctx)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closeAll()
	return err
}

func (m *Manager) closeAll() {
	for _, v := range m.vols {
		closeSnapshotsLocked(v)
		v.dev.Close()
	}
	m.vols = map[string]*vol{}
	for id, l := range m.leases {
		l.Close() // held leases expire unless this gateway comes back
		delete(m.leases, id)
	}
}

func (m *Manager) registerMetrics(reg prometheus.Registerer) {
	sum := func(f func(Info) float64) func() float64 {
		return func() float64 {
			var t float64
			for _, in := range m.Volumes(context.Background()) {
				t += f(in)
			}
			return t
		}
	}
	hyd := func(f func(*HydrationInfo) int64) func() float64 {
		return sum(func(in Info) float64 {
			return tierf(in, func(t *TierInfo) float64 {
				if t.Hydration == nil {
					return 0
				}
				return float64(f(t.Hydration))
			})
		})
	}
	mig := func(f func(*MigrationInfo) float64) func() float64 {
		return sum(func(in Info) float64 {
			return tierf(in, func(t *TierInfo) float64 {
				if mi := t.Migration; mi == nil || mi.State == "done" || mi.State == "failed" || mi.State == "cancelled" {
					return 0 // only moves that run count
				}
				return f(t.Migration)
			})
		})
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_volume_count", Help: "Number of volumes."},
			sum(func(Info) float64 { return 1 })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_volume_provisioned_bytes", Help: "Sum of volume sizes."},
			sum(func(in Info) float64 { return float64(in.Size) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_volume_allocated_bytes", Help: "Bytes allocated by volumes in their backends."},
			sum(func(in Info) float64 { return float64(in.Allocated) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_volume_connections", Help: "Connected clients over all volumes."},
			sum(func(in Info) float64 { return float64(len(in.Connections)) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_cache_bytes", Help: "Local cache bytes of S3-backed volumes."},
			sum(func(in Info) float64 { return tierf(in, func(t *TierInfo) float64 { return float64(t.CachedBytes) }) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_cache_dirty_bytes", Help: "Cached bytes of S3-backed volumes not yet uploaded (the upload backlog)."},
			sum(func(in Info) float64 { return tierf(in, func(t *TierInfo) float64 { return float64(t.DirtyBytes) }) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_upload_queue_chunks", Help: "Dirty chunks of S3-backed volumes waiting to upload."},
			sum(func(in Info) float64 {
				return tierf(in, func(t *TierInfo) float64 { return float64(t.DirtyBytes / max(t.ChunkSize, 1)) })
			})),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_volume_writes_fenced", Help: "S3-backed volumes refusing writes because this gateway does not hold their writer lease (suspended, lost, or held by another gateway)."},
			sum(func(in Info) float64 {
				return tierf(in, func(t *TierInfo) float64 {
					if t.Lease != nil && t.Lease.State != "held" {
						return 1
					}
					return 0
				})
			})),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_hydration_done_bytes", Help: "Bytes adopted volumes have hydrated into the cache so far."},
			hyd(func(h *HydrationInfo) int64 { return h.DoneBytes })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_hydration_total_bytes", Help: "Bytes adopted volumes hydrate into the cache in all."},
			hyd(func(h *HydrationInfo) int64 { return h.TotalBytes })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_migrations_running", Help: "Volumes moving to another store (ferry volume migrate)."},
			mig(func(*MigrationInfo) float64 { return 1 })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_migration_done_bytes", Help: "Bytes of moving volumes' objects their destination store holds."},
			mig(func(mi *MigrationInfo) float64 { return float64(mi.DoneBytes) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_migration_total_bytes", Help: "Bytes of moving volumes' objects in their source store."},
			mig(func(mi *MigrationInfo) float64 { return float64(mi.TotalBytes) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_migration_bytes_per_second", Help: "Copy rate of moving volumes."},
			mig(func(mi *MigrationInfo) float64 { return mi.BytesPerSec })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_rpo_seconds", Help: "Age of the oldest newest-recovery-point over S3-backed volumes."},
			func() float64 {
				var worst float64
				for _, in := range m.Volumes(context.Background()) {
					if in.Tier != nil {
						worst = max(worst, in.Tier.RPOSeconds)
					}
				}
				return worst
			}),
	)
}

func tierf(in Info, f func(*TierInfo) float64) float64 {
	if in.Tier == nil {
		return 0
	}
	return f(in.Tier)
}

// deleteObjects removes a removed volume's objects from its store in the
// background; what it misses stays as unreferenced garbage. Objects its
// clones still read stay, with a tombstone (removed.json) so that the
// last clone's removal deletes them. A removed clone is unmarked in its
// ancestors (docs/FORMAT.md, "Clones").
func (m *Manager) deleteObjects(rec *Record) {
	sc, ok := m.stores[rec.Store]
	if !ok {
		return
	}
	s, _, err := m.objectStore(sc, volumePrefix(rec))
	if err != nil {
		return
	}
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		if n, err := m.deleteVolumeObjects(ctx, s); err != nil {
			m.log.Warn("deleting a removed volume's objects failed; the rest stay in the store", attrVolume, rec.Name, "err", err)
		} else {
			m.log.Info("removed volume's objects deleted from its store", attrVolume, rec.Name, "objects", n)
		}
		m.unmarkClone(ctx, rec, sc)
	}()
}

// unmarkClone removes a clone's markers from its ancestors in a store; a
// removed ancestor (holdsVolume false) whose last clone this was goes
// with it.
func (m *Manager) unmarkClone(ctx context.Context, rec *Record, sc *StoreConfig) {
	for _, p := range rec.Parents {
		as, _, err := m.objectStore(sc, p.Prefix)
		if err == nil {
			err = tier.UnmarkClone(ctx, as, rec.ID)
		}
		if err != nil {
			m.log.Warn("unmarking a clone in its ancestor failed; the ancestor keeps what it read", attrVolume, rec.Name, "store", sc.Name, "ancestor", p.Prefix, "err", err)
			continue
		}
		if _, err := as.Stat(ctx, removedKey); err != nil {
			continue
		}
		if live, err := holdsVolume(ctx, as); err != nil || live {
			continue
		}
		if _, err := m.deleteVolumeObjects(ctx, as); err != nil {
			m.log.Warn("deleting a removed ancestor's last objects failed", attrVolume, rec.Name, "store", sc.Name, "ancestor", p.Prefix, "err", err)
		}
	}
}

// holdsVolume reports whether a volume's prefix holds a volume (its writer
// lease or volume.json), not only what clones read of a removed one.
func holdsVolume(ctx context.Context, s store.Store) (bool, error) {
	for _, k := range []string{lease.Key, volumeObjectKey} {
		_, err := s.Stat(ctx, k)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return false, err
		}
	}
	return false, nil
}

// removedKey marks a removed volume whose clones still read some of its
// objects.
const removedKey = "removed.json"

var removedObject = []byte(`{"format":"ferry-removed/1"}`)

// deleteVolumeObjects deletes a volume's objects but for what its clones
// read (and their markers, with a tombstone), and returns how many it
// deleted.
func (m *Manager) deleteVolumeObjects(ctx context.Context, s store.Store) (int, error) {
	markers, err := tier.ReadCloneMarkers(ctx, s, map[string]bool{})
	if err != nil {
		return 0, err
	}
	var keys []string
	if err := s.List(ctx, "", func(o store.ObjectInfo) error {
		if !strings.HasPrefix(o.Key, "clones/") && !markers.Keeps(o.Key) && o.Key != removedKey {
			keys = append(keys, o.Key)
		}
		return nil
	}); err != nil {
		return 0, err
	}
	// A clone moving into this store wrote its marker before the objects
	// it names, which the listing may have found: the markers are read
	// again after it (and during a long deletion) before anything goes.
	if err := markers.Refresh(ctx); err != nil {
		return 0, err
	}
	marked := markers.Count() > 0
	if marked {
		if err := s.Put(ctx, removedKey, removedObject, store.PutOptions{}); err != nil {
			return 0, err
		}
	}
	n, err := markers.Sweep(ctx, keys)
	if err != nil {
		return n, err
	}
	if markers.Count() == 0 {
		if err := markers.Refresh(ctx); err != nil {
			return n, err
		}
	}
	if markers.Count() == 0 {
		// No marker appeared meanwhile: the tombstone goes. A clone
		// moving in after this reading writes it again when its move
		// commits, after this deletion is over (markRemoved,
		// tier.Copier.Grace).
		markers.Delete(ctx, removedKey)
		return n, nil
	}
	if !marked {
		// A clone moved in during the deletion.
		if err := s.Put(ctx, removedKey, removedObject, store.PutOptions{}); err != nil {
			return n, err
		}
	}
	return n, nil
}
