package kvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	gwire "github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/atomicfile"
	"github.com/ferry-io/ferry/kvm/qmp"
	"github.com/ferry-io/ferry/kvm/wire"
)

// record is a VM's state file, vm.json.
type record struct {
	Spec      wire.VMSpec     `json:"spec"`
	State     string          `json:"state"`
	PID       int             `json:"pid,omitempty"`
	PIDStart  uint64          `json:"pid_start,omitempty"`
	Started   time.Time       `json:"started,omitzero"`
	LastError string          `json:"last_error,omitempty"`
	Disks     []nbdDisk       `json:"disks,omitempty"` // as attached by the running QEMU
	Migration *wire.Migration `json:"migration,omitempty"`
	// Cross is an incoming migration from another gateway, until done.
	Cross *crossIncoming `json:"cross,omitempty"`
}

// VM is one virtual machine: its QEMU process, QMP connection and state
// file.
type VM struct {
	m   *Manager
	dir string

	// hmu serialises the steps of an incoming migration's hand-over
	// (park, adopt, done), which run QMP commands; taken before mu.
	hmu sync.Mutex

	mu   sync.Mutex
	rec  record
	conn *qmp.Conn
	// exited is closed when the current QEMU is gone.
	exited chan struct{}
	// leaseHeld says the daemon renews the disks' attachments.
	leaseHeld bool
	// sawShutdown: QEMU reported SHUTDOWN (the guest powered off, or quit).
	sawShutdown bool
	// gone says what to do when QEMU exits on purpose: "" (crash unless
	// stopping), "migrated" or "aborted" (forget the VM).
	gone string
	// detached: the daemon let go of the QMP connection (shutdown), QEMU
	// runs on.
	detached bool
}

var transitions = map[string][]string{
	wire.StateStopped:   {wire.StateStarting},
	wire.StateCrashed:   {wire.StateStarting, wire.StateStopped},
	wire.StateStarting:  {wire.StateRunning, wire.StateCrashed, wire.StateStopped},
	wire.StateRunning:   {wire.StateStopping, wire.StateMigrating, wire.StateCrashed, wire.StateStopped},
	wire.StateStopping:  {wire.StateStopped, wire.StateCrashed},
	wire.StateMigrating: {wire.StateRunning, wire.StateCrashed, wire.StateStopped},
	wire.StateIncoming:  {wire.StateRunning, wire.StateCrashed, wire.StateStopped},
}

// transition moves the VM to state to, saves its record and counts it;
// called with v.mu held. It is the only place state changes.
func (v *VM) transition(to, why string) error {
	from := v.rec.State
	ok := false
	for _, s := range transitions[from] {
		ok = ok || s == to
	}
	if !ok && from != to {
		return fmt.Errorf("vm %s is %s, cannot go %s: %w", v.rec.Spec.Name, from, to, gwire.ErrBusy)
	}
	v.rec.State = to
	switch to {
	case wire.StateRunning:
		v.rec.LastError = ""
	case wire.StateStopped:
		v.rec.PID, v.rec.PIDStart, v.rec.Started = 0, 0, time.Time{}
	}
	v.m.log.Info("vm state", "vm", v.rec.Spec.Name, "from", from, "to", to, "why", why)
	return v.saveLocked()
}

func (v *VM) saveLocked() error {
	b, err := json.MarshalIndent(v.rec, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(v.dir, "vm.json"), append(b, '\n')); err != nil {
		return fmt.Errorf("save vm %s: %w", v.rec.Spec.Name, err)
	}
	return nil
}

func (v *VM) name() string { return v.rec.Spec.Name }

// holder is the attachment host name for this VM's disks here.
func (v *VM) holder() string { return v.m.holder(v.rec.Spec.Name) }

// info returns the API view; called with v.mu held.
func (v *VM) infoLocked() wire.VMInfo {
	in := wire.VMInfo{VMSpec: v.rec.Spec, State: v.rec.State, PID: v.rec.PID, Started: v.rec.Started, LastError: v.rec.LastError, Host: v.m.cfg.HostID}
	if v.rec.Migration != nil {
		mg := *v.rec.Migration
		in.Migration = &mg
	}
	if !v.rec.Started.IsZero() && (v.rec.State == wire.StateRunning || v.rec.State == wire.StateMigrating || v.rec.State == wire.StateStopping) {
		in.UptimeSeconds = time.Since(v.rec.Started).Seconds()
	}
	for i, d := range v.rec.Spec.Disks {
		di := wire.DiskInfo{Volume: d.Volume, Device: fmt.Sprintf("vd%d (virtio-blk)", i), Holder: v.holder(), Created: d.Created}
		if i < len(v.rec.Disks) && v.rec.State != wire.StateStopped && v.rec.State != wire.StateCrashed {
			di.Attach = fmt.Sprintf("qemu nbd %s (reconnect-delay %s, cache=none, discard=unmap)", v.rec.Disks[i].url(), v.m.cfg.ReconnectDelay)
			if t := v.m.cfg.NBDTLS.describe(); t != "" {
				di.Attach = strings.Replace(di.Attach, "(", "("+t+", ", 1)
			}
			if g := v.rec.Disks[i].Gateway; g != "" {
				di.Attach += " on gateway " + g + ", not this host's"
			}
		} else {
			di.Attach = "not attached"
		}
		in.Disks = append(in.Disks, di)
	}
	return in
}

// launch starts QEMU for the VM (state starting or incoming) and connects
// to its QMP socket; called with v.mu held. paused: see qemuArgs.
func (v *VM) launchLocked(ctx context.Context, incoming string, paused bool) error {
	args, err := qemuArgs(v.rec.Spec, v.dir, v.rec.Disks, v.m.cfg.ReconnectDelay, resolveAccel(v.rec.Spec.Accel), incoming, paused, v.m.cfg.NBDTLS)
	if err != nil {
		return err
	}
	for _, f := range []string{"qmp.sock", "console.sock", "qemu.pid"} {
		os.Remove(filepath.Join(v.dir, f))
	}
	errf, err := os.Create(filepath.Join(v.dir, "stderr.log"))
	if err != nil {
		return err
	}
	defer errf.Close()
	cmd := exec.Command(v.m.cfg.QEMU, args...)
	cmd.Stdout, cmd.Stderr = errf, errf
	cmd.Dir = v.dir
	// Its own session: QEMU outlives the daemon and its terminal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start QEMU (%s): %w", v.m.cfg.QEMU, err)
	}
	v.m.log.Debug("qemu", "vm", v.name(), "args", args)
	waited := make(chan struct{})
	go func() { cmd.Wait(); close(waited) }() // reap; exits are seen through QMP
	v.rec.PID = cmd.Process.Pid
	v.rec.PIDStart, _ = procStart(cmd.Process.Pid)
	sock := filepath.Join(v.dir, "qmp.sock")
	deadline := time.Now().Add(30 * time.Second)
	for {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := qmp.Dial(dctx, sock, v.onEvent)
		cancel()
		if err == nil {
			v.attachConnLocked(conn)
			return nil
		}
		select {
		case <-waited:
			time.Sleep(100 * time.Millisecond) // let stderr land
			return fmt.Errorf("QEMU exited at start: %s", tailLines(filepath.Join(v.dir, "stderr.log"), 10))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return fmt.Errorf("QEMU's QMP socket did not answer within 30s: %w", err)
		}
	}
}

// attachConnLocked adopts a QMP connection and watches for QEMU's exit.
func (v *VM) attachConnLocked(conn *qmp.Conn) {
	v.conn = conn
	v.sawShutdown = false
	v.gone = ""
	v.detached = false
	exited := make(chan struct{})
	v.exited = exited
	go func() {
		<-conn.Done()
		v.qemuGone(conn, exited)
	}()
}

func (v *VM) onEvent(e qmp.Event) {
	if e.Event == "SHUTDOWN" {
		v.mu.Lock()
		v.sawShutdown = true
		v.mu.Unlock()
	}
}

// qemuGone runs when a QMP connection ends: QEMU exited (or the daemon let
// go of it).
func (v *VM) qemuGone(conn *qmp.Conn, exited chan struct{}) {
	v.mu.Lock()
	if v.conn != conn {
		v.mu.Unlock()
		return
	}
	v.conn = nil
	if v.detached {
		v.mu.Unlock()
		return
	}
	// The socket closes a moment before the process is gone.
	for i := 0; i < 50 && alive(v.rec.PID, v.rec.PIDStart); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	name := v.name()
	switch {
	case v.gone != "":
		reason := v.gone
		v.mu.Unlock()
		close(exited)
		v.m.qemuExits.WithLabelValues(reason).Inc()
		if reason == "migrated" {
			v.m.keepLog(name, v.dir)
		}
		v.m.forget(name)
		return
	case v.rec.State == wire.StateIncoming:
		v.mu.Unlock()
		close(exited)
		v.m.qemuExits.WithLabelValues("incoming-exit").Inc()
		v.m.log.Warn("incoming QEMU exited", "vm", name)
		v.m.forget(name)
		return
	case v.rec.State == wire.StateStopping || v.sawShutdown:
		v.m.qemuExits.WithLabelValues("shutdown").Inc()
		v.transition(wire.StateStopped, "QEMU exited after shutdown")
	default:
		v.m.qemuExits.WithLabelValues("crashed").Inc()
		v.rec.LastError = "QEMU exited on its own: " + tailLines(filepath.Join(v.dir, "stderr.log"), 10)
		v.transition(wire.StateCrashed, "QEMU exited unexpectedly")
		v.m.log.Error("vm crashed", "vm", name, "stderr", v.rec.LastError)
	}
	held := v.leaseHeld
	v.leaseHeld = false
	disks := v.rec.Spec.Disks
	served := v.rec.Disks
	v.mu.Unlock()
	// Detach before telling waiters: a stopped VM's volumes are free.
	if held {
		v.m.detachAll(context.Background(), name, disks, served...)
	}
	close(exited)
}

// exec runs a QMP command on the VM's QEMU.
func (v *VM) exec(ctx context.Context, cmd string, args, out any) error {
	v.mu.Lock()
	c := v.conn
	v.mu.Unlock()
	if c == nil {
		return fmt.Errorf("vm %s: no QEMU: %w", v.name(), qmp.ErrClosed)
	}
	return c.Execute(ctx, cmd, args, out)
}

// waitExit waits for the current QEMU to exit, up to d.
func (v *VM) waitExit(exited chan struct{}, d time.Duration) bool {
	if exited == nil {
		return true
	}
	select {
	case <-exited:
		return true
	case <-time.After(d):
		return false
	}
}

// kill sends SIGKILL to QEMU if it still runs.
func (v *VM) kill() {
	v.mu.Lock()
	pid, st := v.rec.PID, v.rec.PIDStart
	v.mu.Unlock()
	if alive(pid, st) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// quit asks QEMU to quit, then kills it if it lingers.
func (v *VM) quit(ctx context.Context) {
	v.mu.Lock()
	exited := v.exited
	v.mu.Unlock()
	if err := v.exec(ctx, "quit", nil, nil); err != nil && !errors.Is(err, qmp.ErrClosed) {
		v.m.log.Warn("qmp quit", "vm", v.name(), "err", err)
	}
	if !v.waitExit(exited, 10*time.Second) {
		v.kill()
		v.waitExit(exited, 10*time.Second)
	}
}
