package kvm

// Recovering a hand-over between gateways whose source daemon died.
//
// After QEMU's completed the source drives the hand-over (crossgw.go:
// quit its QEMU, park, release, adopt, done). If the source ferry-kvm
// dies in between, the destination's guest would stay paused in state
// incoming. So the destination watches (watchHandover): once its QEMU
// is paused after the incoming migration (completed) and no hand-over
// call came for Config.HandoverTimeout, it asks the source's API about
// the VM. A source that does not answer, does not know the VM, or has
// finished its part without resuming the guest is silent: the
// destination finishes the hand-over itself (takeOver) with the same
// steps, each idempotent:
//
//   - park: disks already parked are skipped;
//   - release on the source's gateway: a volume it does not serve (any
//     more) counts as released. Released with force: the only NBD client
//     left can be the source's QEMU, which flushed and inactivated its
//     disks at completion and never writes to them again (its restarted
//     daemon quits it, migratedAway); a reader opened by hand is
//     disconnected, as by `ferry volume release --force`;
//   - adopt on this host's gateway: a volume it serves already with the
//     same id counts as adopted (adoptedAlready);
//   - done: switch the disks to this gateway's exports and cont.
//
// A source that says it runs the VM, or still hands it over, is waited
// for. A restarted destination daemon resumes the watch for an incoming
// VM whose QEMU is paused after a completed migration (resumeHandover);
// a restarted source daemon that finds its QEMU in postmigrate quits it
// and forgets the VM (migratedAway).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	gwclient "github.com/ferry-io/ferry/gateway/api/client"
	gwire "github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/jsonapi"
	"github.com/ferry-io/ferry/kvm/client"
	"github.com/ferry-io/ferry/kvm/qmp"
	"github.com/ferry-io/ferry/kvm/wire"
)

// testDieEnv names the step after which a source daemon kills itself
// (SIGKILL), for tests of the recovery: "handoff" (the attachments moved
// to the destination, the switchover not yet let through) or "completed".
const testDieEnv = "FERRY_KVM_TEST_DIE_AFTER"

// testFailEnv names the step after which a source daemon fails the
// migration as if QEMU had refused the next command, for tests of the
// failure path: "handoff".
const testFailEnv = "FERRY_KVM_TEST_FAIL_AFTER"

func testFail(step string) error {
	if os.Getenv(testFailEnv) == step {
		return fmt.Errorf("test hook: the migration fails after %s", step)
	}
	return nil
}

func testDie(step string) {
	if os.Getenv(testDieEnv) == step {
		slog.Warn("test hook: ferry-kvm dies", "after", step)
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

// queryStatus is QEMU's run state (query-status).
func queryStatus(ctx context.Context, exec func(context.Context, string, any, any) error) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	err := exec(ctx, "query-status", nil, &st)
	return st.Status, err
}

// watchHandover finishes an incoming migration from another gateway on
// this host when the source goes silent after completion; it returns once
// the VM is no longer incoming.
func (m *Manager) watchHandover(v *VM) {
	ctx := context.Background()
	name := v.name()
	log := m.log.With("vm", name)
	var since time.Time // when QEMU was first seen completed, or the last call
	for {
		time.Sleep(time.Second)
		v.mu.Lock()
		cross, st, conn := v.rec.Cross, v.rec.State, v.conn
		var last time.Time
		if cross != nil {
			last = cross.lastCall
		}
		v.mu.Unlock()
		if st != wire.StateIncoming || cross == nil || conn == nil {
			return
		}
		qs, err := queryStatus(ctx, v.exec)
		if errors.Is(err, qmp.ErrClosed) {
			return
		}
		if err != nil || qs != "paused" {
			continue // inmigrate: the source is migrating
		}
		if since.IsZero() {
			since = time.Now()
		}
		if last.After(since) {
			since = last
		}
		if time.Since(since) < m.cfg.HandoverTimeout {
			continue
		}
		if alive, why := m.sourceDrives(ctx, name, cross.SourceAPI, cross.SourceToken); alive {
			log.Info("migration completed; waiting for the source to hand the volumes over", "source", cross.SourceAPI, "why", why)
			since = time.Now()
			continue
		} else {
			log.Warn("the source went silent after the migration completed: finishing the hand-over here", "source", cross.SourceAPI, "why", why)
		}
		if err := m.takeOver(ctx, v, cross); err != nil {
			log.Error("finish the hand-over (retried)", "err", err)
			since = time.Now()
			continue
		}
		return
	}
}

// sourceDrives asks the source's ferry-kvm whether it still drives the
// hand-over of VM name (or runs it): true means wait.
func (m *Manager) sourceDrives(ctx context.Context, name, api, token string) (bool, string) {
	if api == "" {
		return false, "the source gave no API address"
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	in, err := m.peer(api, token).Info(cctx, name)
	var ae *jsonapi.Error
	switch {
	case errors.Is(err, gwire.ErrNotFound):
		return false, "the source does not know the VM"
	case errors.As(err, &ae):
		return true, fmt.Sprintf("the source answers: %v", err)
	case err != nil:
		return false, fmt.Sprintf("the source does not answer: %v", err)
	}
	switch {
	case in.State == wire.StateMigrating || in.State == wire.StateRunning:
		return true, "the source's VM is " + in.State
	case in.Migration != nil && in.Migration.Status == "handover":
		return true, "the source is handing the volumes over"
	}
	return false, fmt.Sprintf("the source's VM is %s (migration %s) and the guest here is still paused", in.State, migrationStatusOf(in))
}

func migrationStatusOf(in wire.VMInfo) string {
	if in.Migration == nil {
		return "none"
	}
	if in.Migration.Error != "" {
		return in.Migration.Status + ": " + in.Migration.Error
	}
	return in.Migration.Status
}

// takeOver runs the source's half of the hand-over from here: park,
// release on the source's gateway, adopt, done.
func (m *Manager) takeOver(ctx context.Context, v *VM, cross *crossIncoming) error {
	name := v.name()
	if err := m.ParkIncoming(ctx, name); err != nil {
		return fmt.Errorf("park: %w", err)
	}
	src := m.sourceGateway(cross.SourceGateway, cross.SourceGatewayToken)
	holder := m.holder(name)
	servers := make([]wire.DiskServer, len(cross.Source))
	var released, notes []string
	for i, d := range cross.Source {
		servers[i] = wire.DiskServer{Volume: d.Volume, NBDURL: d.NBDURL, Gateway: cross.SourceGateway, GatewayToken: cross.SourceGatewayToken}
		if err := releaseOn(ctx, src, d, holder); err != nil {
			notes = append(notes, fmt.Sprintf("volume %s stays on the source's gateway: release failed: %v", d.Volume, err))
			if err := attachOne(ctx, src, d.Volume, holder, true); err != nil {
				m.log.Error("attach on the source's gateway again", "vm", name, "volume", d.Volume, "err", err)
			}
			continue
		}
		m.log.Info("volume released on the source's gateway by the destination", "vm", name, "volume", d.Volume)
		released = append(released, d.Volume)
	}
	if len(released) > 0 {
		ar, err := m.AdoptIncoming(ctx, name, wire.IncomingAdoptRequest{Volumes: released})
		if err != nil {
			return fmt.Errorf("adopt: %w", err)
		}
		for i, d := range cross.Source {
			if url, ok := ar.Adopted[d.Volume]; ok {
				servers[i] = wire.DiskServer{Volume: d.Volume, NBDURL: url}
			} else if msg, ok := ar.Errors[d.Volume]; ok {
				// Released, not adopted: done refuses and the guest stays
				// paused; the next attempt adopts it again.
				return fmt.Errorf("volume %s released on the source's gateway but not adopted here: %s", d.Volume, msg)
			}
		}
	}
	note := "the source's ferry-kvm went silent after the migration completed; this host finished the hand-over"
	if len(notes) > 0 {
		note += ": " + strings.Join(notes, "; ")
	}
	return m.IncomingDone(ctx, name, wire.IncomingDoneRequest{Disks: servers, Note: note})
}

// peer is a client for the ferry-kvm at addr (a migration's destination,
// or its source), sending token and trusting PeerTLS.
func (m *Manager) peer(addr, token string) *client.Client {
	if m.newPeer != nil {
		return m.newPeer(addr)
	}
	var opts []client.Option
	if m.cfg.PeerTLS != nil {
		opts = append(opts, client.WithTLS(m.cfg.PeerTLS))
	}
	if token != "" {
		opts = append(opts, client.WithToken(token))
	}
	return client.New(addr, opts...)
}

// sourceGateway is a client for the source's gateway.
func (m *Manager) sourceGateway(addr, token string) Gateway {
	if m.newGateway != nil {
		return m.newGateway(addr)
	}
	var opts []gwclient.Option
	if token != "" {
		opts = append(opts, gwclient.WithToken(token))
	}
	return gwclient.New(addr, opts...)
}

// releaseOn releases d on g for the destination: detach holder, release
// with force (see the top of this file). A volume g does not serve, or
// serves under another id, is released already.
func releaseOn(ctx context.Context, g Gateway, d wire.SourceDisk, holder string) error {
	in, err := g.Volume(ctx, d.Volume)
	if errors.Is(err, gwire.ErrNotFound) || (err == nil && in.ID != d.ID) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := g.Detach(ctx, d.Volume, holder); err != nil && !errors.Is(err, gwire.ErrNotFound) {
		return fmt.Errorf("detach %s: %w", holder, err)
	}
	if _, err := g.Release(ctx, d.Volume, true); err != nil && !errors.Is(err, gwire.ErrNotFound) {
		return err
	}
	return nil
}

// adoptedAlready: this host's gateway serves sd (same id) already; it
// attaches it for the VM and returns its export.
func (m *Manager) adoptedAlready(ctx context.Context, name string, sd wire.SourceDisk) (string, bool) {
	in, err := m.cfg.Gateway.Volume(ctx, sd.Volume)
	if err != nil || in.ID != sd.ID || in.Attach.NBD == nil {
		return "", false
	}
	if err := attachOne(ctx, m.cfg.Gateway, sd.Volume, m.holder(name), true); err != nil {
		m.log.Warn("attach the adopted volume", "vm", name, "volume", sd.Volume, "err", err)
	}
	return in.Attach.NBD.URL, true
}

// watchIncoming takes over an incoming VM on one gateway whose guest
// runs here (QEMU's migration completed: the destination's guest runs at
// once) when the source's done call does not come within
// HandoverTimeout: the source daemon died between completed and done.
// The attachment moved to this host at the switchover, so the VM is this
// host's; without this it would stay incoming, its attachment unrenewed.
func (m *Manager) watchIncoming(v *VM) {
	ctx := context.Background()
	name := v.name()
	var since time.Time // when the guest was first seen running here
	for {
		time.Sleep(time.Second)
		v.mu.Lock()
		st, cross, conn := v.rec.State, v.rec.Cross, v.conn
		v.mu.Unlock()
		if st != wire.StateIncoming || cross != nil || conn == nil {
			return
		}
		qs, err := queryStatus(ctx, v.exec)
		if errors.Is(err, qmp.ErrClosed) {
			return
		}
		if err != nil || qs != "running" {
			since = time.Time{}
			continue
		}
		if since.IsZero() {
			since = time.Now()
		}
		if time.Since(since) < m.cfg.HandoverTimeout {
			continue
		}
		m.log.Warn("the guest runs here but the source never said the migration ended: taking the VM over", "vm", name)
		if err := m.IncomingDone(ctx, name, wire.IncomingDoneRequest{Note: "the source did not report the migration's end; this host took the VM over when its guest had run here for " + m.cfg.HandoverTimeout.String()}); err != nil {
			m.log.Warn("taking over the incoming VM", "vm", name, "err", err)
			continue
		}
		return
	}
}

// incomingRuns says, on a daemon restart, whether an incoming VM on one
// gateway already runs its guest here (the migration completed, the
// source's done call never came); called with v.mu held.
func (m *Manager) incomingRuns(ctx context.Context, v *VM) bool {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := qmp.Dial(dctx, filepath.Join(v.dir, "qmp.sock"), nil)
	if err != nil {
		return false
	}
	defer conn.Close()
	st, err := queryStatus(dctx, conn.Execute)
	return err == nil && st == "running"
}

// resumeHandover adopts, on a daemon restart, an incoming VM from
// another gateway whose migration completed (QEMU paused, guest not
// resumed) and watches its hand-over again; called with v.mu held.
// False: the VM is handled as an unfinished incoming migration.
func (m *Manager) resumeHandover(ctx context.Context, v *VM) bool {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := qmp.Dial(dctx, filepath.Join(v.dir, "qmp.sock"), v.onEvent)
	if err != nil {
		return false
	}
	st, err := queryStatus(dctx, conn.Execute)
	if err != nil || st != "paused" {
		conn.Close()
		return false
	}
	v.attachConnLocked(conn)
	m.log.Info("adopted incoming VM whose migration completed: waiting for the hand-over", "vm", v.name(), "pid", v.rec.PID)
	go m.watchHandover(v)
	return true
}

// migratedAway quits, on a daemon restart, a source QEMU whose migration
// completed (postmigrate: its disks are inactive, the destination owns
// the VM) and forgets the VM; called with v.mu held.
func (m *Manager) migratedAway(ctx context.Context, v *VM, conn *qmp.Conn) bool {
	if v.rec.State != wire.StateMigrating {
		return false
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	st, err := queryStatus(qctx, conn.Execute)
	cancel()
	if err != nil || st != "postmigrate" {
		return false
	}
	// Its NBD exports may be gone (released), so QEMU may hang quitting:
	// bounded, then SIGKILL, which loses nothing (its disks are inactive).
	qctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	conn.Execute(qctx, "quit", nil, nil)
	cancel()
	conn.Close()
	for i := 0; i < 30 && alive(v.rec.PID, v.rec.PIDStart); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if alive(v.rec.PID, v.rec.PIDStart) {
		syscallKill(v.rec.PID)
	}
	to := ""
	if v.rec.Migration != nil {
		to = v.rec.Migration.To
	}
	m.log.Info("VM migrated away while ferry-kvm was down: its QEMU quit, the VM forgotten here", "vm", v.name(), "to", to)
	m.keepLog(v.name(), v.dir)
	os.RemoveAll(v.dir)
	return true
}
