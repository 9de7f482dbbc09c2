package docker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Attach methods.
const (
	MethodAuto  = "auto"
	MethodFUSE  = "fuse"
	MethodNBD   = "nbd"
	MethodISCSI = "iscsi"
)

// Attachment is a gateway volume made a local block device on this host,
// as the state file records it.
type Attachment struct {
	Method string `json:"method"`
	// Device is the block device the file system lives on (/dev/loopN).
	Device string `json:"device"`
	// NBDURL is the export the data path uses.
	NBDURL string `json:"nbd_url,omitempty"`
	// FUSE method: the FUSE mount point (holding DiskFile) and the helper
	// process serving it, named by pid and start time.
	FUSEDir     string `json:"fuse_dir,omitempty"`
	HelperPID   int    `json:"helper_pid,omitempty"`
	HelperStart uint64 `json:"helper_start,omitempty"`
}

// AttachSpec is what an Attacher needs to attach a volume.
type AttachSpec struct {
	// Gateway is the gateway volume's name.
	Gateway  string
	NBDURL   string
	ReadOnly bool
	// HostID names this host in the gateway's attachments, which the
	// data path renews while it runs.
	HostID string
}

// Attacher makes gateway volumes local block devices by one method. The
// kernel NBD and iSCSI initiators are further implementations of it.
type Attacher interface {
	// Method names the attach method (MethodFUSE, ...).
	Method() string
	// Attach makes the volume a block device.
	Attach(ctx context.Context, spec AttachSpec) (*Attachment, error)
	// Detach undoes Attach; it succeeds for what is already gone.
	Detach(ctx context.Context, a *Attachment) error
	// Healthy reports whether a recorded attachment still serves I/O
	// (after a plugin restart); the error says what is missing.
	Healthy(ctx context.Context, a *Attachment) error
}

// PickAttacher returns the attacher for method; "auto" picks the first
// that works on this host and says why.
func PickAttacher(method string, fuse *FUSEAttacher) (Attacher, string, error) {
	switch method {
	case MethodFUSE:
		if err := fuse.Available(); err != nil {
			return nil, "", err
		}
		return fuse, "fuse (asked for)", nil
	case MethodAuto, "":
		// nbd and iscsi come first once they exist; for now fuse is the
		// only method, and needs /dev/fuse and loop devices.
		if err := fuse.Available(); err != nil {
			return nil, "", fmt.Errorf("--attach auto: no attach method works here: fuse: %w", err)
		}
		return fuse, "fuse (auto: the kernel nbd and iscsi attach methods are not available yet)", nil
	case MethodNBD, MethodISCSI:
		return nil, "", fmt.Errorf("--attach %s is not available yet; use --attach fuse (or auto)", method)
	}
	return nil, "", fmt.Errorf("--attach %q: use auto or fuse (nbd and iscsi are not available yet)", method)
}

// FUSEAttacher serves each volume as a file in a FUSE file system of its
// own, run by a helper process (HelperCommand plus flags: see ServeFUSE),
// and puts a loop device with direct I/O on that file. The helper is a
// process of its own, in a session of its own, so that killing the plugin
// leaves the data path of mounted volumes running.
type FUSEAttacher struct {
	// Root holds one FUSE mount point per volume.
	Root string
	// LogDir receives one log file per helper.
	LogDir string
	// HelperCommand runs ServeFUSE; it gets --nbd URL --dir DIR
	// [--read-only] and, with GatewayAddr, --gateway ADDR --volume NAME
	// --host-id ID (to renew the attachment) appended.
	HelperCommand []string
	// GatewayAddr is the gateway's admin API, for the helpers' renewals.
	GatewayAddr string
	Logger      *slog.Logger
}

var _ Attacher = (*FUSEAttacher)(nil)

// Method implements Attacher.
func (f *FUSEAttacher) Method() string { return MethodFUSE }

// Available reports whether FUSE and loop devices are usable here.
func (f *FUSEAttacher) Available() error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("no /dev/fuse (modprobe fuse): %w", err)
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return fmt.Errorf("no /dev/loop-control (modprobe loop): %w", err)
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		return fmt.Errorf("losetup (util-linux) not found: %w", err)
	}
	return nil
}

// Attach implements Attacher.
func (f *FUSEAttacher) Attach(ctx context.Context, spec AttachSpec) (*Attachment, error) {
	dir := filepath.Join(f.Root, spec.Gateway)
	unmount(dir) // a FUSE mount left by a dead helper
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(f.LogDir, 0o700); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(f.LogDir, spec.Gateway+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer pr.Close()
	args := append(append([]string(nil), f.HelperCommand[1:]...), "--nbd", spec.NBDURL, "--dir", dir)
	if spec.ReadOnly {
		args = append(args, "--read-only")
	}
	if f.GatewayAddr != "" && spec.HostID != "" {
		args = append(args, "--gateway", f.GatewayAddr, "--volume", spec.Gateway, "--host-id", spec.HostID)
	}
	cmd := exec.Command(f.HelperCommand[0], args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{pw} // fd 3: "ready"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return nil, fmt.Errorf("start FUSE helper: %w", err)
	}
	pw.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it while this process lives
	a := &Attachment{Method: MethodFUSE, NBDURL: spec.NBDURL, FUSEDir: dir, HelperPID: cmd.Process.Pid, HelperStart: procStart(cmd.Process.Pid)}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(pr).ReadString('\n')
		if strings.TrimSpace(line) == "ready" {
			err = nil
		} else if err == nil {
			err = fmt.Errorf("unexpected %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			cmd.Process.Kill()
			<-exited
			return nil, fmt.Errorf("FUSE helper for %s failed to start (%v); see %s", spec.Gateway, err, logf.Name())
		}
	case <-ctx.Done():
		cmd.Process.Kill()
		<-exited
		return nil, ctx.Err()
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-exited
		return nil, fmt.Errorf("FUSE helper for %s not ready after 60s; see %s", spec.Gateway, logf.Name())
	}
	losetupArgs := []string{"--direct-io=on", "--find", "--show"}
	if spec.ReadOnly {
		losetupArgs = append(losetupArgs, "--read-only")
	}
	dev, err := run(ctx, "losetup", append(losetupArgs, filepath.Join(dir, DiskFile))...)
	if err != nil {
		f.stopHelper(a)
		return nil, err
	}
	a.Device = dev
	return a, nil
}

// Detach implements Attacher: loop device first, then the helper (which
// unmounts its FUSE file system and flushes).
func (f *FUSEAttacher) Detach(ctx context.Context, a *Attachment) error {
	var errs []error
	if a.Device != "" {
		loops, err := listLoops(ctx)
		if err != nil {
			errs = append(errs, err)
		}
		for _, l := range loops {
			if l.Name == a.Device && l.BackFile == filepath.Join(a.FUSEDir, DiskFile) {
				if _, err := run(ctx, "losetup", "-d", a.Device); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	if err := f.stopHelper(a); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// helperAlive reports whether the recorded helper process still runs.
func helperAlive(a *Attachment) bool {
	return a.HelperPID > 0 && a.HelperStart != 0 && procStart(a.HelperPID) == a.HelperStart
}

// stopHelper ends the helper with SIGTERM (it unmounts and flushes) and
// waits for it; a helper that does not go is killed and its mount
// detached.
func (f *FUSEAttacher) stopHelper(a *Attachment) error {
	if helperAlive(a) {
		syscall.Kill(a.HelperPID, syscall.SIGTERM)
		deadline := time.Now().Add(60 * time.Second)
		for helperAlive(a) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if helperAlive(a) {
			syscall.Kill(a.HelperPID, syscall.SIGKILL)
			f.Logger.Warn("FUSE helper did not stop within 60s of SIGTERM; killed", "pid", a.HelperPID)
		}
	}
	if a.FUSEDir != "" {
		return unmount(a.FUSEDir)
	}
	return nil
}

// Healthy implements Attacher.
func (f *FUSEAttacher) Healthy(ctx context.Context, a *Attachment) error {
	if !helperAlive(a) {
		return fmt.Errorf("its FUSE helper (pid %d) is gone", a.HelperPID)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(a.FUSEDir, DiskFile), &st); err != nil {
		return fmt.Errorf("its FUSE file: %w", err)
	}
	loops, err := listLoops(ctx)
	if err != nil {
		return err
	}
	for _, l := range loops {
		if l.Name == a.Device {
			if l.BackFile != filepath.Join(a.FUSEDir, DiskFile) {
				return fmt.Errorf("%s is backed by %s, not its FUSE file", a.Device, l.BackFile)
			}
			return nil
		}
	}
	return fmt.Errorf("loop device %s is gone", a.Device)
}
