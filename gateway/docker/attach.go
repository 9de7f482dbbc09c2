package docker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
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
	// Device is the block device the file system lives on (/dev/loopN,
	// /dev/nbdN, /dev/sdX).
	Device string `json:"device"`
	// NBDURL is the export the data path uses.
	NBDURL string `json:"nbd_url,omitempty"`
	// FUSE method: the FUSE mount point (holding DiskFile) and the helper
	// process serving it, named by pid and start time.
	FUSEDir string `json:"fuse_dir,omitempty"`
	// The helper (FUSE) or keeper (nbd) process, by pid and start time.
	HelperPID   int    `json:"helper_pid,omitempty"`
	HelperStart uint64 `json:"helper_start,omitempty"`
	// NBD method: the device's index (/dev/nbdN) and backend identifier.
	NBDIndex   *int   `json:"nbd_index,omitempty"`
	NBDBackend string `json:"nbd_backend,omitempty"`
	// iSCSI method: the node (target at portal) logged in to.
	ISCSITarget string `json:"iscsi_target,omitempty"`
	ISCSIPortal string `json:"iscsi_portal,omitempty"`
}

// AttachSpec is what an Attacher needs to attach a volume.
type AttachSpec struct {
	// Gateway is the gateway volume's name.
	Gateway string
	// NBDURL is the export (nbd, fuse methods), as this host reaches it.
	NBDURL string
	// ISCSITarget, ISCSIPortal and CHAPUser name the iSCSI target (iscsi
	// method); CHAPUser is set when the volume requires CHAP, MutualUser
	// when its target answers mutual CHAP (authenticates itself).
	ISCSITarget string
	ISCSIPortal string
	CHAPUser    string
	MutualUser  string
	ReadOnly    bool
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

// Candidate is an attach method PickAttacher can choose: an Attacher
// that can say whether it works on this host.
type Candidate interface {
	Attacher
	// Available returns why the method cannot work here, or nil.
	Available() error
}

// Sweeper is an attach method that can find what it attached on this
// host: Sweep takes down what it attached for host (the plugin's host ID)
// to one of the plugin's volumes (gateway names in known) and no recorded
// attachment (keep) holds. The driver calls it at start, after
// reconciling.
type Sweeper interface {
	Sweep(ctx context.Context, host string, known map[string]bool, keep []*Attachment) error
}

// PickAttacher returns the candidate for method; "auto" picks the first
// candidate that works on this host (pass them in order of preference:
// nbd, iscsi, fuse) and says why.
func PickAttacher(method string, candidates ...Candidate) (Attacher, string, error) {
	if method == MethodAuto || method == "" {
		var why []string
		for _, c := range candidates {
			err := c.Available()
			if err == nil {
				reason := c.Method() + " (auto: works here)"
				if len(why) > 0 {
					reason = c.Method() + " (auto: " + strings.Join(why, "; ") + ")"
				}
				return c, reason, nil
			}
			why = append(why, fmt.Sprintf("%s: %v", c.Method(), err))
		}
		return nil, "", fmt.Errorf("--attach auto: no attach method works here: %s", strings.Join(why, "; "))
	}
	var names []string
	for _, c := range candidates {
		names = append(names, c.Method())
		if c.Method() == method {
			if err := c.Available(); err != nil {
				return nil, "", fmt.Errorf("--attach %s: %w", method, err)
			}
			return c, method + " (asked for)", nil
		}
	}
	return nil, "", fmt.Errorf("--attach %q: use auto, %s", method, strings.Join(names, ", "))
}

// Endpoints says how this host reaches the gateway's data listeners. The
// gateway reports them as bound (nbd://127.0.0.1:10809/NAME, portal
// 127.0.0.1:3260), which is right only on its own host.
type Endpoints struct {
	// API is the admin API address the plugin uses (host:port or URL).
	API string
	// NBD and ISCSI, when set, replace the reported HOST:PORT outright
	// (NAT, a load balancer).
	NBD, ISCSI string
}

// Reachable returns the address (HOST:PORT) the gateway reported for a
// listener as this host must dial it: a loopback or wildcard host is
// replaced by the API address's host, keeping the port, unless the API is
// on loopback too. A loopback address on another machine is never right.
func Reachable(reported, api string) string {
	host, port, err := net.SplitHostPort(reported)
	if err != nil {
		return reported
	}
	if !loopbackOrAny(host) {
		return reported
	}
	if strings.Contains(api, "://") {
		if u, err := url.Parse(api); err == nil {
			api = u.Host
		}
	}
	apiHost, _, err := net.SplitHostPort(api)
	if err != nil {
		apiHost = strings.Trim(api, "[]")
	}
	if apiHost == "" || loopbackOrAny(apiHost) {
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			return net.JoinHostPort("127.0.0.1", port)
		}
		return reported
	}
	return net.JoinHostPort(apiHost, port)
}

func loopbackOrAny(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
}

// NBDURL returns the export URL to dial for the one the gateway reported.
func (e Endpoints) NBDURL(reported string) (string, error) {
	u, err := url.Parse(reported)
	if err != nil || u.Scheme != "nbd" || u.Host == "" {
		return "", fmt.Errorf("the gateway reported %q, not an nbd://HOST:PORT/NAME URL", reported)
	}
	if e.NBD != "" {
		u.Host = e.NBD
	} else {
		u.Host = Reachable(u.Host, e.API)
	}
	return u.String(), nil
}

// ISCSIPortal returns the portal to log in at for the one the gateway
// reported.
func (e Endpoints) ISCSIPortal(reported string) string {
	if e.ISCSI != "" {
		return e.ISCSI
	}
	return Reachable(reported, e.API)
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
	stopHelperProcess(a, f.Logger, "FUSE helper")
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
