package kvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	gwire "github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/kvm/client"
	"github.com/ferry-io/ferry/kvm/wire"
)

// handOff moves a volume's attachment on gw, the gateway serving it, from
// one holder to another at a migration's switchover, while the guest is
// paused, so one holder owns the volume at every instant: it ends from's
// lease and takes one for to; if that fails it takes from's back. A
// migration between two gateways sharing a bucket does it too (on the
// source's gateway, whose exports the destination opened), then, once the
// source's QEMU is gone, hands the volume itself over: release on the
// source's gateway, adopt on the destination's (finishCrossGateway).
func handOff(ctx context.Context, gw Gateway, volume, from, to string) error {
	if err := gw.Detach(ctx, volume, from); err != nil && !errors.Is(err, gwire.ErrNotFound) {
		return fmt.Errorf("detach %s from %s: %w", volume, from, err)
	}
	if _, err := gw.Attach(ctx, volume, to, gwire.AttachRequest{Protocol: "nbd"}); err != nil {
		if _, err2 := gw.Attach(ctx, volume, from, gwire.AttachRequest{Protocol: "nbd", Reclaim: true}); err2 != nil {
			return fmt.Errorf("attach %s to %s: %w (and taking it back failed: %v)", volume, to, err, err2)
		}
		return fmt.Errorf("attach %s to %s: %w", volume, to, err)
	}
	return nil
}

// DefaultMigrationBandwidth caps a migration stream not given a
// bandwidth: 10 GiB/s, in effect unthrottled (QEMU's own default is
// 32 MiB/s).
const DefaultMigrationBandwidth = 10 << 30

func syscallKill(pid int) { syscall.Kill(pid, syscall.SIGKILL) }

// migrationStatus is the part of query-migrate ferry-kvm reads.
type migrationStatus struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	TotalTime int64  `json:"total-time"`
	Downtime  int64  `json:"downtime"`
	RAM       struct {
		Transferred    int64   `json:"transferred"`
		Remaining      int64   `json:"remaining"`
		Total          int64   `json:"total"`
		DirtyPagesRate int64   `json:"dirty-pages-rate"`
		Mbps           float64 `json:"mbps"`
	} `json:"ram"`
}

// Migrate starts a live migration of a running VM to the ferry-kvm at
// req.To; it runs in the background (follow it with Info).
func (m *Manager) Migrate(ctx context.Context, name string, req wire.MigrateRequest) (wire.VMInfo, error) {
	if req.To == "" {
		return wire.VMInfo{}, fmt.Errorf("--to: the destination ferry-kvm's address is needed: %w", gwire.ErrInvalid)
	}
	v, err := m.get(name)
	if err != nil {
		return wire.VMInfo{}, err
	}
	v.mu.Lock()
	if v.rec.State != wire.StateRunning {
		st := v.rec.State
		v.mu.Unlock()
		return wire.VMInfo{}, fmt.Errorf("vm %s is %s; only a running VM migrates: %w", name, st, gwire.ErrInvalid)
	}
	v.rec.Migration = &wire.Migration{To: req.To, Status: "setup", Started: time.Now()}
	if err := v.transition(wire.StateMigrating, "migrate to "+req.To); err != nil {
		v.mu.Unlock()
		return wire.VMInfo{}, err
	}
	in := v.infoLocked()
	v.mu.Unlock()
	go m.runMigration(context.WithoutCancel(ctx), v, req)
	return in, nil
}

func (m *Manager) runMigration(ctx context.Context, v *VM, req wire.MigrateRequest) {
	v.mu.Lock()
	spec := v.rec.Spec
	name := v.name()
	v.mu.Unlock()
	log := m.log.With("vm", name, "to", req.To)
	dst := m.peer(req.To, req.ToToken)
	var (
		handed []string // volumes whose attachment moved
		rep    wire.IncomingReply
		asked  bool
	)
	fail := func(err error) {
		log.Error("migration failed", "err", err)
		m.migrations.WithLabelValues("failed").Inc()
		if len(handed) > 0 {
			v.mu.Lock()
			served := v.rec.Disks
			v.mu.Unlock()
			m.takeBack(ctx, name, handed, served, rep.Holder)
		}
		v.exec(ctx, "migrate_cancel", nil, nil)
		var st struct {
			Status string `json:"status"`
		}
		if v.exec(ctx, "query-status", nil, &st) == nil && st.Status != "running" {
			if err := v.exec(ctx, "cont", nil, nil); err != nil {
				log.Error("resume guest", "err", err)
			}
		}
		if asked {
			if err := dst.IncomingAbort(ctx, name); err != nil && !errors.Is(err, gwire.ErrNotFound) {
				log.Warn("destination cleanup", "err", err)
			}
		}
		v.mu.Lock()
		v.leaseHeld = true
		if v.rec.Migration != nil {
			v.rec.Migration.Status = "failed"
			v.rec.Migration.Error = errString(err)
			v.rec.Migration.Finished = time.Now()
		}
		if v.rec.State == wire.StateMigrating {
			v.transition(wire.StateRunning, "migration failed")
		}
		v.mu.Unlock()
		go m.renewOnce(ctx, v)
	}
	v.mu.Lock()
	served := v.rec.Disks
	v.mu.Unlock()
	gw, err := m.servingGateway(served)
	if err != nil {
		fail(err)
		return
	}
	src, err := m.sourceDisks(ctx, gw, spec.Disks)
	if err != nil {
		fail(err)
		return
	}
	rep, err = dst.Incoming(ctx, wire.IncomingRequest{Spec: spec, SourceHost: m.cfg.HostID, Disks: src.wire(), SourceGateway: gw.addr, SourceAPI: m.cfg.APIAddr,
		SourceToken: m.cfg.APIToken, SourceGatewayToken: gw.token})
	if err != nil {
		fail(fmt.Errorf("destination %s: %w", req.To, err))
		return
	}
	asked = true
	// Recorded before any attachment moves: a daemon restarted after the
	// hand-over below takes them back from this holder.
	v.mu.Lock()
	if v.rec.Migration != nil {
		v.rec.Migration.DestinationHolder = rep.Holder
	}
	err = v.saveLocked()
	v.mu.Unlock()
	if err != nil {
		fail(fmt.Errorf("record the migration: %w", err))
		return
	}
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "pause-before-switchover", "state": true}}}
	if err := v.exec(ctx, "migrate-set-capabilities", caps, nil); err != nil {
		fail(err)
		return
	}
	// Parameters persist in QEMU: set the cap every time (an earlier
	// throttled attempt must not slow this one).
	bw := req.MaxBandwidth
	if bw <= 0 {
		bw = DefaultMigrationBandwidth
	}
	params := map[string]any{"downtime-limit": 300, "max-bandwidth": bw}
	if err := v.exec(ctx, "migrate-set-parameters", params, nil); err != nil {
		fail(err)
		return
	}
	if err := v.exec(ctx, "migrate", map[string]any{"uri": rep.URI}, nil); err != nil {
		fail(err)
		return
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for range t.C {
		var st migrationStatus
		if err := v.exec(ctx, "query-migrate", nil, &st); err != nil {
			fail(fmt.Errorf("query-migrate: %w", err))
			return
		}
		v.mu.Lock()
		if mg := v.rec.Migration; mg != nil {
			// The end states are published once handled (fail,
			// finishMigration): whoever follows sees them only when the VM
			// is settled.
			if st.Status != "completed" && st.Status != "failed" && st.Status != "cancelled" {
				mg.Status = st.Status
			}
			mg.TransferredBytes, mg.RemainingBytes, mg.TotalBytes = st.RAM.Transferred, st.RAM.Remaining, st.RAM.Total
			mg.DirtyPagesRate, mg.MbpsRate = st.RAM.DirtyPagesRate, st.RAM.Mbps
			mg.DowntimeMS, mg.TotalMS = st.Downtime, st.TotalTime
		}
		v.mu.Unlock()
		switch st.Status {
		case "pre-switchover":
			if len(handed) > 0 {
				continue
			}
			// The guest is paused: move the attachments, then switch over.
			v.mu.Lock()
			v.leaseHeld = false
			v.mu.Unlock()
			for _, d := range spec.Disks {
				if err := handOff(ctx, gw, d.Volume, m.holder(name), rep.Holder); err != nil {
					fail(fmt.Errorf("hand volume %s to the destination: %w", d.Volume, err))
					return
				}
				handed = append(handed, d.Volume)
			}
			testDie("handoff")
			if err := testFail("handoff"); err != nil {
				fail(err)
				return
			}
			if err := v.exec(ctx, "migrate-continue", map[string]any{"state": "pre-switchover"}, nil); err != nil {
				fail(err)
				return
			}
		case "completed":
			testDie("completed")
			if rep.CrossGateway {
				m.finishCrossGateway(ctx, v, dst, name, st, rep.Holder, gw, src)
				return
			}
			m.finishMigration(ctx, v, dst, name, st)
			return
		case "failed", "cancelled":
			fail(fmt.Errorf("QEMU: migration %s: %s", st.Status, st.ErrorDesc))
			return
		}
	}
}

// finishMigration hands the VM to the destination and quits the source's
// QEMU.
func (m *Manager) finishMigration(ctx context.Context, v *VM, dst *client.Client, name string, st migrationStatus) {
	log := m.log.With("vm", name)
	if err := dst.IncomingDone(ctx, name, wire.IncomingDoneRequest{}); err != nil {
		log.Error("destination did not take the VM over (it runs there regardless)", "err", err)
	}
	m.migrations.WithLabelValues("completed").Inc()
	v.mu.Lock()
	v.gone = "migrated"
	if mg := v.rec.Migration; mg != nil {
		mg.Status, mg.Finished = "completed", time.Now()
	}
	v.saveLocked()
	v.mu.Unlock()
	log.Info("migration completed", "downtime_ms", st.Downtime, "total_ms", st.TotalTime, "transferred", st.RAM.Transferred)
	// Keep the final report a while for `vm migrate` to read.
	m.mu.Lock()
	m.done[name] = v.infoLockedCopy()
	m.mu.Unlock()
	v.quit(ctx)
}

func (v *VM) infoLockedCopy() wire.VMInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	in := v.infoLocked()
	in.State = "migrated"
	return in
}

// Incoming starts QEMU waiting for a migration of req.Spec.
func (m *Manager) Incoming(ctx context.Context, req wire.IncomingRequest) (wire.IncomingReply, error) {
	spec := req.Spec
	if err := m.checkSpec(&spec); err != nil {
		return wire.IncomingReply{}, err
	}
	m.mu.Lock()
	if _, dup := m.vms[spec.Name]; dup {
		m.mu.Unlock()
		return wire.IncomingReply{}, fmt.Errorf("vm %s: %w on the destination", spec.Name, gwire.ErrExists)
	}
	v := &VM{m: m, dir: filepath.Join(m.cfg.StateDir, "vms", spec.Name)}
	v.rec = record{Spec: spec, State: wire.StateIncoming}
	m.vms[spec.Name] = v
	delete(m.done, spec.Name)
	m.mu.Unlock()
	fail := func(err error) (wire.IncomingReply, error) {
		m.forget(spec.Name)
		return wire.IncomingReply{}, err
	}
	if err := os.MkdirAll(v.dir, 0o755); err != nil {
		return fail(err)
	}
	cross, err := m.crossGateway(ctx, spec, req.Disks)
	if err != nil {
		return fail(err)
	}
	var disks []nbdDisk
	if cross {
		// Open the source gateway's exports; QEMU keeps them inactive
		// until the switchover and the guest paused (-S) until the
		// volumes are this gateway's (IncomingDone).
		for _, d := range req.Disks {
			nd, err := parseNBDURL(d.Volume, d.NBDURL)
			if err != nil {
				return fail(err)
			}
			nd.Gateway, nd.GatewayToken = req.SourceGateway, req.SourceGatewayToken
			disks = append(disks, nd)
		}
		v.rec.Cross = &crossIncoming{Source: req.Disks, SourceGateway: req.SourceGateway, SourceAPI: req.SourceAPI,
			SourceToken: req.SourceToken, SourceGatewayToken: req.SourceGatewayToken, Parked: make([]bool, len(req.Disks))}
	} else if disks, err = m.resolve(ctx, m.localGateway(), spec.Disks); err != nil {
		return fail(err)
	}
	// Checked before QEMU starts, for a clear error at once; QEMU binds
	// its own port below.
	l, err := net.Listen("tcp", net.JoinHostPort(m.cfg.MigrationAddr, "0"))
	if err != nil {
		return fail(fmt.Errorf("migration address %s: %w", m.cfg.MigrationAddr, err))
	}
	l.Close()
	v.mu.Lock()
	v.rec.Disks = disks
	v.saveLocked()
	err = v.launchLocked(ctx, "defer", cross)
	conn := v.conn
	v.mu.Unlock()
	if err != nil {
		return fail(err)
	}
	// Not under v.mu: QMP delivers events (SHUTDOWN takes v.mu) before
	// the replies behind them.
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	uri, err := listenIncoming(qctx, conn.Execute, m.cfg.MigrationAddr)
	cancel()
	if err == nil {
		v.mu.Lock()
		err = v.saveLocked()
		v.mu.Unlock()
	}
	if err != nil {
		m.IncomingAbort(ctx, spec.Name) // QEMU runs: quit it
		return fail(err)
	}
	if cross {
		go m.watchHandover(v)
	} else {
		go m.watchIncoming(v)
	}
	m.log.Info("waiting for incoming migration", "vm", spec.Name, "from", req.SourceHost, "uri", uri, "cross_gateway", cross)
	return wire.IncomingReply{URI: uri, Holder: m.holder(spec.Name), CrossGateway: cross}, nil
}

// IncomingDone makes a migrated VM this host's: it runs here now. After
// a migration between gateways it first switches each parked disk to the
// export req names and resumes the guest (doneCross).
func (m *Manager) IncomingDone(ctx context.Context, name string, req wire.IncomingDoneRequest) error {
	v, err := m.get(name)
	if err != nil {
		return err
	}
	v.hmu.Lock()
	defer v.hmu.Unlock()
	v.mu.Lock()
	st, cross := v.rec.State, v.rec.Cross
	if cross != nil {
		cross.lastCall = time.Now()
	}
	v.mu.Unlock()
	if st != wire.StateIncoming {
		return fmt.Errorf("vm %s is %s, not incoming: %w", name, st, gwire.ErrInvalid)
	}
	if cross != nil {
		if err := m.doneCross(ctx, v, cross, req); err != nil {
			return err
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.rec.Started = time.Now()
	v.leaseHeld = true
	go m.renewOnce(context.WithoutCancel(ctx), v)
	if err := v.transition(wire.StateRunning, "incoming migration completed"); err != nil {
		return err
	}
	if req.Note != "" {
		v.rec.LastError = req.Note
		v.saveLocked()
	}
	return nil
}

// listenIncoming has a QEMU started with "-incoming defer" listen for the
// migration on addr, on a port the kernel picks as QEMU binds it, and
// returns the URI the source migrates to. (A port ferry-kvm picked and
// handed to QEMU on its command line could be taken by another program,
// or an outgoing connection, between the two.)
func listenIncoming(ctx context.Context, exec func(context.Context, string, any, any) error, addr string) (string, error) {
	if err := exec(ctx, "migrate-incoming", map[string]string{"uri": "tcp:" + net.JoinHostPort(addr, "0")}, nil); err != nil {
		return "", fmt.Errorf("migration address %s: %w", addr, err)
	}
	var st struct {
		SocketAddress []struct {
			Type string `json:"type"`
			Port string `json:"port"`
		} `json:"socket-address"`
	}
	if err := exec(ctx, "query-migrate", nil, &st); err != nil {
		return "", fmt.Errorf("query-migrate: %w", err)
	}
	for _, a := range st.SocketAddress {
		if port, err := strconv.Atoi(a.Port); a.Type == "inet" && err == nil && port > 0 && port < 65536 {
			return "tcp:" + net.JoinHostPort(addr, a.Port), nil
		}
	}
	return "", fmt.Errorf("QEMU reports no TCP port it listens on for the migration (query-migrate: %+v)", st.SocketAddress)
}

// IncomingAbort quits an incoming VM's QEMU and forgets it.
func (m *Manager) IncomingAbort(ctx context.Context, name string) error {
	v, err := m.get(name)
	if err != nil {
		return err
	}
	v.mu.Lock()
	if v.rec.State != wire.StateIncoming {
		v.mu.Unlock()
		return fmt.Errorf("vm %s is %s, not incoming: %w", name, v.rec.State, gwire.ErrInvalid)
	}
	v.gone = "aborted"
	conn := v.conn
	v.mu.Unlock()
	if conn == nil {
		m.forget(name)
		return nil
	}
	v.quit(ctx)
	return nil
}
