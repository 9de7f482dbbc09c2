package kvm

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	gwclient "github.com/ferry-io/ferry/gateway/api/client"
	gwire "github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/kvm/client"
	"github.com/ferry-io/ferry/kvm/qmp"
	"github.com/ferry-io/ferry/kvm/wire"
)

// Gateway is what ferry-kvm needs of a Ferry gateway's admin API
// (gateway/api/client.Client implements it). Store, Stores, Release and
// Adopt serve a live migration between two gateways sharing a bucket:
// the source's gateway releases each volume, the destination's adopts it.
type Gateway interface {
	Volume(ctx context.Context, name string) (gwire.VolumeInfo, error)
	Create(ctx context.Context, req gwire.CreateRequest) (gwire.VolumeInfo, error)
	RemoveVolume(ctx context.Context, name string, force bool) error
	Attach(ctx context.Context, name, host string, req gwire.AttachRequest) (gwire.Attachment, error)
	Detach(ctx context.Context, name, host string) error
	Attachments(ctx context.Context, name string) ([]gwire.Attachment, error)
	Store(ctx context.Context, name string) (gwire.StoreView, error)
	Stores(ctx context.Context) ([]gwire.StoreView, error)
	Release(ctx context.Context, name string, force bool) (gwire.CheckpointResponse, error)
	Adopt(ctx context.Context, req gwire.AdoptRequest) (gwire.AdoptResponse, error)
}

var _ Gateway = (*gwclient.Client)(nil)

// Config configures a Manager.
type Config struct {
	Gateway Gateway
	// APIAddr is this daemon's API address as other hosts reach it: a
	// destination asks it whether a hand-over between gateways is still
	// driven from here (handover.go).
	APIAddr string
	// APIToken is this daemon's API token ("" when it requires none) and
	// GatewayToken the one it sends its gateway: a migration to a host on
	// another gateway gives both to the destination, which calls this
	// daemon and this gateway during the hand-over.
	APIToken, GatewayToken string
	// HandoverTimeout is how long a destination waits for the source's
	// next hand-over call once the migration completed before it checks
	// on the source (default 20 s).
	HandoverTimeout time.Duration
	// GatewayAddr is Gateway's API address as other hosts reach it: a
	// migration to a host on another gateway leaves a volume that cannot
	// move on this gateway, renewed there by the destination.
	GatewayAddr string
	StateDir    string
	// HostID names this ferry-kvm to the gateway; a VM's disks are held
	// as "HOSTID:VM".
	HostID string
	// QEMU is the qemu-system binary.
	QEMU string
	// MigrationAddr is the address incoming migrations listen on.
	MigrationAddr string
	// ReconnectDelay is QEMU's NBD reconnect-delay.
	ReconnectDelay time.Duration
	// StopTimeout bounds the wait for an ACPI powerdown.
	StopTimeout time.Duration
	// NBDTLS, when set, makes QEMU's NBD disks negotiate TLS with the
	// gateway (and with the other gateway of a migration between them:
	// the same credentials must work there).
	NBDTLS *NBDTLS
	// PeerTLS, when set, is the TLS configuration for https:// migration
	// destinations (their CA); nil trusts the system's roots.
	PeerTLS    *tls.Config
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Manager runs the VMs of one ferry-kvm host.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu  sync.Mutex
	vms map[string]*VM
	// done keeps the last report of VMs migrated away, for `vm migrate`.
	done map[string]wire.VMInfo

	migrations *prometheus.CounterVec
	qemuExits  *prometheus.CounterVec
	// newGateway, if set, makes the client of another gateway (tests).
	newGateway func(addr string) Gateway
	// newPeer, if set, makes the client of another ferry-kvm (tests).
	newPeer func(addr string) *client.Client
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// New loads the VMs under cfg.StateDir, adopts the QEMUs still running,
// marks the ones that exited while no daemon watched as crashed, and
// starts the VMs marked autostart.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	if cfg.ReconnectDelay == 0 {
		cfg.ReconnectDelay = 60 * time.Second
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 60 * time.Second
	}
	if cfg.HandoverTimeout == 0 {
		cfg.HandoverTimeout = 20 * time.Second
	}
	if cfg.MigrationAddr == "" {
		cfg.MigrationAddr = "127.0.0.1"
	}
	if !gatewayHostRE.MatchString(cfg.HostID) {
		return nil, fmt.Errorf("host id %q: use letters, digits, '.', '_', '-'", cfg.HostID)
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, vms: map[string]*VM{}, done: map[string]wire.VMInfo{},
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_kvm_migrations_total", Help: "Live migrations started here, by result (completed, failed)."}, []string{"result"}),
		qemuExits:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_kvm_qemu_exits_total", Help: "QEMU processes that ended, by reason (shutdown, crashed, migrated, aborted, incoming-exit)."}, []string{"reason"}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{m.migrations, m.qemuExits, vmCollector{m}} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "vms"), 0o755); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(filepath.Join(cfg.StateDir, "vms"))
	if err != nil {
		return nil, err
	}
	var autostart []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		v, err := m.load(ctx, filepath.Join(cfg.StateDir, "vms", e.Name()))
		if err != nil {
			m.log.Error("load vm", "dir", e.Name(), "err", err)
			continue
		}
		if v == nil {
			continue
		}
		m.vms[v.name()] = v
		if v.rec.Spec.Autostart && (v.rec.State == wire.StateStopped || v.rec.State == wire.StateCrashed) {
			autostart = append(autostart, v.name())
		}
	}
	for _, n := range autostart {
		if _, err := m.Start(ctx, n); err != nil {
			m.log.Error("autostart", "vm", n, "err", err)
		}
	}
	return m, nil
}

var gatewayHostRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,190}$`)

// load reads one VM's record and reconciles it with its QEMU.
func (m *Manager) load(ctx context.Context, dir string) (*VM, error) {
	b, err := os.ReadFile(filepath.Join(dir, "vm.json"))
	if err != nil {
		return nil, err
	}
	v := &VM{m: m, dir: dir}
	if err := json.Unmarshal(b, &v.rec); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	switch v.rec.State {
	case wire.StateStopped, wire.StateCrashed:
		return v, nil
	}
	live := alive(v.rec.PID, v.rec.PIDStart)
	if v.rec.State == wire.StateIncoming {
		if live && v.rec.Cross != nil && m.resumeHandover(ctx, v) {
			return v, nil
		}
		if live && v.rec.Cross == nil && m.incomingRuns(ctx, v) {
			// On one gateway the migration completed and the guest runs
			// here; only the source's done call was missing. The VM is
			// this host's: adopt it as running (below).
			v.rec.State = wire.StateRunning
			v.rec.Started = time.Now()
			v.rec.LastError = "the source did not report the migration's end; this host took the VM over at its restart"
			v.saveLocked()
		} else {
			// An unfinished incoming migration: its source has given up.
			if live {
				syscallKill(v.rec.PID)
			}
			os.RemoveAll(dir)
			return nil, nil
		}
	}
	if live {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		conn, err := qmp.Dial(dctx, filepath.Join(dir, "qmp.sock"), v.onEvent)
		cancel()
		if err == nil && m.migratedAway(ctx, v, conn) {
			return nil, nil
		}
		if err == nil {
			v.attachConnLocked(conn)
			v.leaseHeld = true
			if v.rec.State != wire.StateRunning {
				// A stop or migration the last daemon did not finish: the
				// guest runs on.
				if v.rec.Migration != nil && !v.rec.Migration.Done() {
					v.rec.Migration.Status, v.rec.Migration.Error = "failed", "ferry-kvm restarted during the migration"
					v.exec0(ctx, "migrate_cancel")
					m.takeBackLocked(ctx, v)
					v.exec0(ctx, "cont")
				}
				v.rec.State = wire.StateRunning
			}
			v.saveLocked()
			m.log.Info("adopted running VM", "vm", v.name(), "pid", v.rec.PID)
			go m.renewOnce(context.Background(), v)
			return v, nil
		}
		m.log.Warn("QEMU alive but its QMP socket does not answer", "vm", v.name(), "pid", v.rec.PID, "err", err)
		return nil, fmt.Errorf("vm %s: QEMU pid %d alive but QMP does not answer: %w", v.name(), v.rec.PID, err)
	}
	if v.rec.State == wire.StateMigrating && v.rec.Migration != nil && v.rec.Migration.Status == "handover" {
		// Migrated away: this host quit its QEMU during the hand-over.
		m.log.Info("VM migrated away while ferry-kvm was down: forgotten here", "vm", v.name(), "to", v.rec.Migration.To)
		m.keepLog(v.name(), dir)
		os.RemoveAll(dir)
		return nil, nil
	}
	v.rec.LastError = "QEMU exited while ferry-kvm was not running: " + tailLines(filepath.Join(dir, "stderr.log"), 10)
	v.m.qemuExits.WithLabelValues("crashed").Inc()
	v.rec.State = wire.StateCrashed
	v.rec.PID, v.rec.PIDStart = 0, 0
	v.saveLocked()
	go m.detachAll(context.Background(), v.name(), v.rec.Spec.Disks, v.rec.Disks...)
	return v, nil
}

// exec0 runs a QMP command with no arguments on a VM whose lock the
// caller holds, ignoring its result.
func (v *VM) exec0(ctx context.Context, cmd string) {
	if v.conn != nil {
		v.conn.Execute(ctx, cmd, nil, nil)
	}
}

func (m *Manager) holder(vm string) string { return m.cfg.HostID + ":" + vm }

func (m *Manager) get(name string) (*VM, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v := m.vms[name]
	if v == nil {
		if in, ok := m.done[name]; ok {
			return nil, &migratedError{in}
		}
		return nil, fmt.Errorf("vm %q: %w here (see `ferry-kvm vm ls`)", name, gwire.ErrNotFound)
	}
	return v, nil
}

// keepLog moves a migrated VM's serial logs to STATE/migrated/NAME, where
// `vm log` on this host still finds the output from before the migration.
func (m *Manager) keepLog(name, dir string) {
	dst := filepath.Join(m.cfg.StateDir, "migrated", name)
	os.RemoveAll(dst)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return
	}
	for _, f := range []string{"serial.log.1", "serial.log", "stderr.log"} {
		os.Rename(filepath.Join(dir, f), filepath.Join(dst, f))
	}
}

func (m *Manager) forget(name string) {
	m.mu.Lock()
	v := m.vms[name]
	delete(m.vms, name)
	m.mu.Unlock()
	if v != nil {
		os.RemoveAll(v.dir)
	}
}

// List returns every VM, by name.
func (m *Manager) List() []wire.VMInfo {
	m.mu.Lock()
	vs := make([]*VM, 0, len(m.vms))
	for _, v := range m.vms {
		vs = append(vs, v)
	}
	m.mu.Unlock()
	out := make([]wire.VMInfo, 0, len(vs))
	for _, v := range vs {
		v.mu.Lock()
		out = append(out, v.infoLocked())
		v.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// migratedError: the VM left this host by a live migration. It is
// gwire.ErrNotFound for the API's status and code.
type migratedError struct{ info wire.VMInfo }

func (e *migratedError) Error() string {
	return fmt.Sprintf("vm %s migrated to %s; it is not here any more", e.info.Name, e.info.Migration.To)
}

func (e *migratedError) Unwrap() error { return gwire.ErrNotFound }

// Info returns one VM; a VM migrated away is reported with state
// "migrated" and its migration's figures.
func (m *Manager) Info(name string) (wire.VMInfo, error) {
	v, err := m.get(name)
	var me *migratedError
	if errors.As(err, &me) {
		return me.info, nil
	}
	if err != nil {
		return wire.VMInfo{}, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.infoLocked(), nil
}

// checkSpec validates what a VM asks of this host.
func (m *Manager) checkSpec(spec *wire.VMSpec) error {
	if !nameRE.MatchString(spec.Name) {
		return fmt.Errorf("VM name %q: use 1-63 letters, digits, '.', '_', '-': %w", spec.Name, gwire.ErrInvalid)
	}
	if spec.CPUs <= 0 {
		spec.CPUs = 1
	}
	if spec.MemoryMiB <= 0 {
		return fmt.Errorf("--memory must be positive: %w", gwire.ErrInvalid)
	}
	if total, err := hostMemory(); err == nil && spec.MemoryMiB > total>>20 { // MiB: the shifted request could overflow
		return fmt.Errorf("--memory %d MiB is more than this host has (%d MiB): %w", spec.MemoryMiB, total>>20, gwire.ErrInvalid)
	}
	if spec.Accel == "" {
		spec.Accel = wire.AccelAuto
	}
	switch spec.Accel {
	case wire.AccelAuto, wire.AccelKVM, wire.AccelTCG:
	default:
		return fmt.Errorf("--accel %q: want auto, kvm or tcg: %w", spec.Accel, gwire.ErrInvalid)
	}
	if spec.Net == "" {
		spec.Net = "user"
	}
	if !validNet(spec.Net) {
		return fmt.Errorf("--net %q: want user, tap:IF, bridge:BR or none: %w", spec.Net, gwire.ErrInvalid)
	}
	for _, f := range []struct{ flag, path string }{{"--kernel", spec.Kernel}, {"--initrd", spec.Initrd}, {"--cdrom", spec.CDROM}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%s: %w: %w", f.flag, err, gwire.ErrInvalid)
		}
	}
	if spec.Initrd != "" && spec.Kernel == "" {
		return fmt.Errorf("--initrd needs --kernel: %w", gwire.ErrInvalid)
	}
	if _, err := exec.LookPath(m.cfg.QEMU); err != nil {
		return fmt.Errorf("QEMU is missing on this host (%s): install qemu-system-x86 or set --qemu: %w", m.cfg.QEMU, gwire.ErrInvalid)
	}
	return nil
}

// Create defines a VM: checks its volumes (creating the new ones) and
// writes its state file. It does not start it.
func (m *Manager) Create(ctx context.Context, req wire.CreateRequest) (wire.VMInfo, error) {
	spec := req.VMSpec
	if err := m.checkSpec(&spec); err != nil {
		return wire.VMInfo{}, err
	}
	if len(spec.Disks)+len(req.NewDisks) == 0 && spec.Kernel == "" && spec.CDROM == "" {
		return wire.VMInfo{}, fmt.Errorf("a VM needs something to boot: --disk, --cdrom or --kernel: %w", gwire.ErrInvalid)
	}
	m.mu.Lock()
	if _, dup := m.vms[spec.Name]; dup {
		m.mu.Unlock()
		return wire.VMInfo{}, fmt.Errorf("vm %s: %w (ferry-kvm vm rm %s first)", spec.Name, gwire.ErrExists, spec.Name)
	}
	// Reserve the name while the gateway is asked.
	v := &VM{m: m, dir: filepath.Join(m.cfg.StateDir, "vms", spec.Name)}
	v.rec = record{Spec: spec, State: wire.StateStopped}
	m.vms[spec.Name] = v
	m.mu.Unlock()
	fail := func(err error) (wire.VMInfo, error) {
		m.mu.Lock()
		delete(m.vms, spec.Name)
		m.mu.Unlock()
		return wire.VMInfo{}, err
	}
	seen := map[string]bool{}
	for _, d := range spec.Disks {
		if seen[d.Volume] {
			return fail(fmt.Errorf("volume %s is given twice: %w", d.Volume, gwire.ErrInvalid))
		}
		seen[d.Volume] = true
		if err := m.checkVolumeFree(ctx, spec.Name, d.Volume); err != nil {
			return fail(err)
		}
	}
	for _, nd := range req.NewDisks {
		if seen[nd.Name] {
			return fail(fmt.Errorf("volume %s is given twice: %w", nd.Name, gwire.ErrInvalid))
		}
		seen[nd.Name] = true
	}
	for _, nd := range req.NewDisks {
		if _, err := m.cfg.Gateway.Create(ctx, gwire.CreateRequest{Name: nd.Name, Size: nd.Size, Store: nd.Store}); err != nil {
			if errors.Is(err, gwire.ErrExists) {
				err = fmt.Errorf("cannot create disk new:%s: a volume named %s exists already (use --disk %s to use it): %w", nd.Name, nd.Name, nd.Name, err)
			} else {
				err = fmt.Errorf("create volume %s: %w", nd.Name, err)
			}
			return fail(err)
		}
		spec.Disks = append(spec.Disks, wire.Disk{Volume: nd.Name, Created: true})
	}
	v.rec.Spec = spec
	if err := os.MkdirAll(v.dir, 0o755); err != nil {
		return fail(err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.saveLocked(); err != nil {
		return fail(err)
	}
	m.log.Info("vm created", "vm", spec.Name, "disks", len(spec.Disks))
	return v.infoLocked(), nil
}

// checkVolumeFree refuses a volume that does not exist, that another VM
// here uses, or that another holder has attached.
func (m *Manager) checkVolumeFree(ctx context.Context, vm, vol string) error {
	if _, err := m.cfg.Gateway.Volume(ctx, vol); err != nil {
		if errors.Is(err, gwire.ErrNotFound) {
			return fmt.Errorf("no volume %s on the gateway (create it with `ferry volume create %s SIZE`, or use --disk new:%s:SIZE): %w", vol, vol, vol, err)
		}
		return fmt.Errorf("volume %s: %w", vol, err)
	}
	m.mu.Lock()
	for n, o := range m.vms {
		if n == vm {
			continue
		}
		for _, d := range o.rec.Spec.Disks {
			if d.Volume == vol {
				m.mu.Unlock()
				return fmt.Errorf("volume %s is a disk of VM %s on this host; one volume belongs to one VM: %w", vol, n, gwire.ErrBusy)
			}
		}
	}
	m.mu.Unlock()
	atts, err := m.cfg.Gateway.Attachments(ctx, vol)
	if err != nil {
		return fmt.Errorf("volume %s attachments: %w", vol, err)
	}
	for _, a := range atts {
		if a.Host != m.holder(vm) && !a.ReadOnly {
			return fmt.Errorf("volume %s is in use: attached by %s over %s since %s: %w", vol, a.Host, a.Protocol, a.Since.UTC().Format(time.RFC3339), gwire.ErrBusy)
		}
	}
	return nil
}

// attach takes the attachment of every disk (waiting out a gateway's
// start-up grace), or none, each on the gateway that serves it (served:
// as resolve found them).
func (m *Manager) attach(ctx context.Context, vm string, disks []wire.Disk, served []nbdDisk) error {
	for i, d := range disks {
		if err := attachOne(ctx, m.gatewayOf(served, d.Volume), d.Volume, m.holder(vm), false); err != nil {
			m.detachAll(ctx, vm, disks[:i], served...)
			if errors.Is(err, gwire.ErrBusy) {
				return fmt.Errorf("volume %s is in use elsewhere: %w", d.Volume, err)
			}
			return fmt.Errorf("attach volume %s: %w", d.Volume, err)
		}
	}
	return nil
}

// takeBackLocked ends, for a migration a daemon restart cut short, the
// destination's attachments of the VM's disks (the last daemon may have
// moved them at the switchover) and takes the VM's own again, before its
// guest resumes. The destination never ran the guest: its QEMU only starts
// once the switchover is let through, which ends the source QEMU's part
// (it is then migrated away, not cancelled here). Called with v.mu held.
func (m *Manager) takeBackLocked(ctx context.Context, v *VM) {
	holder := v.rec.Migration.DestinationHolder
	if holder == "" {
		return
	}
	vols := make([]string, len(v.rec.Spec.Disks))
	for i, d := range v.rec.Spec.Disks {
		vols[i] = d.Volume
	}
	m.takeBack(ctx, v.name(), vols, v.rec.Disks, holder)
}

// takeBack ends holder's attachments of the VM's volumes vols (holder:
// the destination of a migration that failed after the switchover moved
// them) and attaches them for the VM again, as their earlier holder
// (Reclaim). Left to holder they would not lapse: the gateway keeps a
// lease while the volume has any connection open, and the VM's QEMU keeps
// its own. Unlike a hand-over, a failed attach is never answered by
// attaching for holder again. Errors are logged; the renewal retries the
// VM's attachments.
func (m *Manager) takeBack(ctx context.Context, name string, vols []string, served []nbdDisk, holder string) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, vol := range vols {
		gw := m.gatewayOf(served, vol)
		if err := gw.Detach(ctx, vol, holder); err != nil && !errors.Is(err, gwire.ErrNotFound) {
			m.log.Error("take the attachment back from the migration's destination", "vm", name, "volume", vol, "holder", holder, "err", err)
			continue
		}
		if _, err := gw.Attach(ctx, vol, m.holder(name), gwire.AttachRequest{Protocol: "nbd", Reclaim: true}); err != nil {
			m.log.Error("take the attachment back from the migration's destination", "vm", name, "volume", vol, "err", err)
			continue
		}
		m.log.Info("took the attachment back from the migration's destination", "vm", name, "volume", vol, "from", holder)
	}
}

// gatewayOf is the gateway serving volume vol as served lists it: this
// host's unless a migration between gateways left it on another.
func (m *Manager) gatewayOf(served []nbdDisk, vol string) Gateway {
	for _, d := range served {
		if d.Volume == vol && d.Gateway != "" {
			return m.sourceGateway(d.Gateway, d.GatewayToken)
		}
	}
	return m.cfg.Gateway
}

// detachAll ends the VM's attachments of disks, each on the gateway that
// serves it (served: the VM's record.Disks, nil for this host's).
func (m *Manager) detachAll(ctx context.Context, vm string, disks []wire.Disk, served ...nbdDisk) {
	for _, d := range disks {
		if err := m.gatewayOf(served, d.Volume).Detach(ctx, d.Volume, m.holder(vm)); err != nil && !errors.Is(err, gwire.ErrNotFound) {
			m.log.Warn("detach", "vm", vm, "volume", d.Volume, "err", err)
		}
	}
}

// resolve looks up the disks' NBD exports on gw.
func (m *Manager) resolve(ctx context.Context, gw servingGateway, disks []wire.Disk) ([]nbdDisk, error) {
	var out []nbdDisk
	for _, d := range disks {
		in, err := gw.Volume(ctx, d.Volume)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", d.Volume, err)
		}
		if in.Attach.NBD == nil {
			return nil, fmt.Errorf("volume %s: the gateway serves no NBD: %w", d.Volume, gwire.ErrInvalid)
		}
		nd, err := parseNBDURL(d.Volume, in.Attach.NBD.URL)
		if err != nil {
			return nil, err
		}
		if !gw.here {
			nd.Gateway, nd.GatewayToken = gw.addr, gw.token
		}
		out = append(out, nd)
	}
	return out, nil
}

// Start starts a stopped or crashed VM.
func (m *Manager) Start(ctx context.Context, name string) (wire.VMInfo, error) {
	v, err := m.get(name)
	if err != nil {
		return wire.VMInfo{}, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.rec.State == wire.StateRunning {
		return v.infoLocked(), nil
	}
	if err := m.checkSpec(&v.rec.Spec); err != nil {
		return wire.VMInfo{}, err
	}
	if err := v.transition(wire.StateStarting, "start"); err != nil {
		return wire.VMInfo{}, err
	}
	fail := func(err error) (wire.VMInfo, error) {
		v.rec.LastError = err.Error()
		v.transition(wire.StateStopped, "start failed")
		return wire.VMInfo{}, err
	}
	// The disks are where the VM last ran them: on this host's gateway, or
	// on the one a migration left them on; from there they may have been
	// brought home since (released there, adopted here).
	gw, err := m.servingGateway(v.rec.Disks)
	if err != nil {
		return fail(err)
	}
	disks, err := m.resolve(ctx, gw, v.rec.Spec.Disks)
	if err != nil && !gw.here && errors.Is(err, gwire.ErrNotFound) {
		local, err2 := m.resolve(ctx, m.localGateway(), v.rec.Spec.Disks)
		if err2 != nil {
			err = fmt.Errorf("on gateway %s, where a migration left the VM's disks: %w; on this host's gateway: %v", gw.addr, err, err2)
		} else {
			m.log.Info("the VM's disks are on this host's gateway again", "vm", name, "was", gw.addr)
			disks, err = local, nil
		}
	}
	if err != nil {
		return fail(err)
	}
	if err := m.attach(ctx, name, v.rec.Spec.Disks, disks); err != nil {
		return fail(err)
	}
	v.rec.Disks = disks
	if err := v.launchLocked(ctx, "", false); err != nil {
		m.detachAll(ctx, name, v.rec.Spec.Disks, disks...)
		return fail(err)
	}
	v.leaseHeld = true
	v.rec.Started = time.Now()
	v.rec.Migration = nil
	if err := v.transition(wire.StateRunning, "QEMU started"); err != nil {
		return wire.VMInfo{}, err
	}
	return v.infoLocked(), nil
}

// Stop powers the guest down through ACPI and quits QEMU after timeout
// (or at once with force); it returns once QEMU is gone.
func (m *Manager) Stop(ctx context.Context, name string, req wire.StopRequest) (wire.VMInfo, error) {
	v, err := m.get(name)
	if err != nil {
		return wire.VMInfo{}, err
	}
	v.mu.Lock()
	if v.rec.State == wire.StateStopped || v.rec.State == wire.StateCrashed {
		in := v.infoLocked()
		v.mu.Unlock()
		return in, nil
	}
	if err := v.transition(wire.StateStopping, "stop"); err != nil {
		v.mu.Unlock()
		return wire.VMInfo{}, err
	}
	exited := v.exited
	v.mu.Unlock()
	timeout := m.cfg.StopTimeout
	if req.TimeoutSeconds > 0 {
		timeout = time.Duration(req.TimeoutSeconds) * time.Second
	}
	if !req.Force {
		if err := v.exec(ctx, "system_powerdown", nil, nil); err != nil {
			m.log.Warn("system_powerdown", "vm", name, "err", err)
		}
		if !v.waitExit(exited, timeout) {
			m.log.Info("guest did not power off in time; quitting QEMU", "vm", name, "timeout", timeout)
		}
	}
	v.quit(ctx)
	return m.Info(name)
}

// Remove deletes a stopped VM; unless keepDisks it also removes its
// volumes from the gateway.
func (m *Manager) Remove(ctx context.Context, name string, keepDisks bool) error {
	v, err := m.get(name)
	if err != nil {
		return err
	}
	v.mu.Lock()
	st := v.rec.State
	disks := v.rec.Spec.Disks
	served := v.rec.Disks
	v.mu.Unlock()
	if st != wire.StateStopped && st != wire.StateCrashed {
		return fmt.Errorf("vm %s is %s; stop it first (ferry-kvm vm stop %s): %w", name, st, name, gwire.ErrBusy)
	}
	m.detachAll(ctx, name, disks, served...)
	if !keepDisks {
		for _, d := range disks {
			if err := m.gatewayOf(served, d.Volume).RemoveVolume(ctx, d.Volume, false); err != nil && !errors.Is(err, gwire.ErrNotFound) {
				return fmt.Errorf("remove volume %s (the VM is kept; use --keep-disks to keep its volumes): %w", d.Volume, err)
			}
		}
	}
	m.forget(name)
	m.log.Info("vm removed", "vm", name, "keep_disks", keepDisks)
	return nil
}

// Log writes the last max bytes of the VM's serial output to w.
func (m *Manager) Log(name string, max int64, w io.Writer) error {
	v, err := m.get(name)
	var me *migratedError
	var dir string
	switch {
	case errors.As(err, &me):
		dir = filepath.Join(m.cfg.StateDir, "migrated", name)
	case err != nil:
		return err
	default:
		dir = v.dir
		// A VM migrated away a moment ago: its logs may have moved already.
		kept := filepath.Join(m.cfg.StateDir, "migrated", name)
		if _, err := os.Stat(filepath.Join(dir, "serial.log")); err != nil {
			dir = kept
		}
	}
	old := tailBytes(filepath.Join(dir, "serial.log.1"), max)
	cur := tailBytes(filepath.Join(dir, "serial.log"), max)
	all := append(old, cur...)
	if int64(len(all)) > max {
		all = all[int64(len(all))-max:]
	}
	_, err = w.Write(all)
	return err
}

// ConsolePath is the VM's serial console socket.
func (m *Manager) ConsolePath(name string) (string, error) {
	v, err := m.get(name)
	if err != nil {
		return "", err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.conn == nil {
		return "", fmt.Errorf("vm %s is %s; start it first: %w", name, v.rec.State, gwire.ErrInvalid)
	}
	return filepath.Join(v.dir, "console.sock"), nil
}

// Run renews the attachments of running VMs and keeps serial logs in
// their ring (serial.log, serial.log.1) until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	t := time.NewTicker(gwire.AttachRenew)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.mu.Lock()
		vs := make([]*VM, 0, len(m.vms))
		for _, v := range m.vms {
			vs = append(vs, v)
		}
		m.mu.Unlock()
		for _, v := range vs {
			m.renewOnce(ctx, v)
			rotate(filepath.Join(v.dir, "serial.log"), serialRing)
		}
	}
}

// serialRing is the size at which serial.log moves to serial.log.1.
const serialRing = 1 << 20

// rotate moves a QEMU log file (opened O_APPEND) aside once it is big.
func rotate(path string, limit int64) {
	fi, err := os.Stat(path)
	if err != nil || fi.Size() < limit {
		return
	}
	b := tailBytes(path, limit)
	if os.WriteFile(path+".1", b, 0o644) == nil {
		os.Truncate(path, 0)
	}
}

func (m *Manager) renewOnce(ctx context.Context, v *VM) {
	v.mu.Lock()
	held := v.leaseHeld
	disks := v.rec.Spec.Disks
	served := v.rec.Disks
	name := v.name()
	v.mu.Unlock()
	if !held {
		return
	}
	for _, d := range disks {
		if _, err := m.gatewayOf(served, d.Volume).Attach(ctx, d.Volume, m.holder(name), gwire.AttachRequest{Protocol: "nbd", Reclaim: true}); err != nil {
			m.log.Warn("renew attachment", "vm", name, "volume", d.Volume, "err", err)
		}
	}
}

// Close lets go of the QMP connections; the VMs run on.
func (m *Manager) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, v := range m.vms {
		v.mu.Lock()
		if v.conn != nil {
			v.detached = true
			v.conn.Close()
		}
		v.mu.Unlock()
	}
}

// vmCollector reports ferry_kvm_vms by state.
type vmCollector struct{ m *Manager }

var vmsDesc = prometheus.NewDesc("ferry_kvm_vms", "VMs on this host by state.", []string{"state"}, nil)

func (c vmCollector) Describe(ch chan<- *prometheus.Desc) { ch <- vmsDesc }

func (c vmCollector) Collect(ch chan<- prometheus.Metric) {
	n := map[string]int{}
	for _, s := range []string{wire.StateStopped, wire.StateStarting, wire.StateRunning, wire.StateStopping, wire.StateMigrating, wire.StateIncoming, wire.StateCrashed} {
		n[s] = 0
	}
	for _, in := range c.m.List() {
		n[in.State]++
	}
	for s, k := range n {
		ch <- prometheus.MustNewConstMetric(vmsDesc, prometheus.GaugeValue, float64(k), s)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return strings.TrimSpace(err.Error())
}
