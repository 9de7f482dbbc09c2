package docker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-io/ferry/internal/chap"
)

// DefaultISCSIReplacementTimeout is how long the initiator queues I/O for
// a lost session before failing it (node.session.timeo.replacement_timeout):
// long enough for a gateway restart.
const DefaultISCSIReplacementTimeout = 120 * time.Second

// iscsiadm exit codes (open-iscsi include/iscsi_err.h).
const (
	iscsiErrSessExists = 15 // ISCSI_ERR_SESS_EXISTS: already logged in
	iscsiErrNoObjs     = 21 // ISCSI_ERR_NO_OBJS_FOUND: no such record or session
)

// iscsiadmAbstractSocket is iscsid's control socket (abstract namespace).
const iscsiadmAbstractSocket = "@ISCSIADM_ABSTRACT_NAMESPACE"

// ISCSIAttacher attaches volumes with open-iscsi: a node record per
// volume at the portal the gateway reports (made reachable: see
// Endpoints), logged in manually, with a replacement timeout that rides
// out gateway restarts. The kernel and iscsid reconnect the session; no
// process of Ferry's is in the data path.
type ISCSIAttacher struct {
	// CHAPUser and CHAPSecret log in to volumes that require CHAP;
	// CHAPUser defaults to the volume's CHAP user.
	CHAPUser, CHAPSecret string
	// MutualSecret, when set, makes every login authenticate the target
	// (mutual CHAP): the target must answer with the name MutualUser
	// (default: the volume's mutual CHAP user) and this secret, and a
	// volume without mutual CHAP is refused.
	MutualUser, MutualSecret string
	// ReplacementTimeout: 0 means DefaultISCSIReplacementTimeout.
	ReplacementTimeout time.Duration
	// Target names a gateway volume's iSCSI target, as the gateway reports
	// it. Sweep needs it to tell the sessions of the plugin's volumes from
	// any other on the host; without it Sweep does nothing.
	Target func(ctx context.Context, gateway string) (string, error)
	Logger *slog.Logger

	// sysRoot is where sysfs is ("" for /sys), for tests.
	sysRoot string
	// run runs iscsiadm (nil: the real one), for tests.
	run func(ctx context.Context, ok []int, args ...string) (string, error)
	// busy says why a block device is in use, "" if it is not (nil:
	// busyDevice), for tests.
	busy func(dev string) string
}

var (
	_ Candidate = (*ISCSIAttacher)(nil)
	_ Sweeper   = (*ISCSIAttacher)(nil)
)

// iscsiadm runs iscsiadm, or the tests' stand-in.
func (s *ISCSIAttacher) iscsiadm(ctx context.Context, ok []int, args ...string) (string, error) {
	if s.run != nil {
		return s.run(ctx, ok, args...)
	}
	return iscsiadm(ctx, ok, args...)
}

// Method implements Attacher.
func (s *ISCSIAttacher) Method() string { return MethodISCSI }

// Available reports whether iscsiadm, iscsid and the iscsi_tcp module are
// there; it needs root.
func (s *ISCSIAttacher) Available() error {
	if os.Geteuid() != 0 {
		return errors.New("open-iscsi needs root")
	}
	if _, err := exec.LookPath("iscsiadm"); err != nil {
		return fmt.Errorf("iscsiadm (open-iscsi) not found: %w", err)
	}
	c, err := net.DialTimeout("unix", iscsiadmAbstractSocket, 2*time.Second)
	if err != nil {
		return fmt.Errorf("iscsid is not running (systemctl start iscsid): %w", err)
	}
	c.Close()
	if _, err := os.Stat("/sys/module/iscsi_tcp"); err != nil {
		if _, err := run(context.Background(), "modprobe", "iscsi_tcp"); err != nil {
			return fmt.Errorf("no iscsi_tcp module: %w", err)
		}
	}
	return nil
}

// iscsiadm runs iscsiadm; an exit code in ok counts as success. Values
// after a "node.session.auth.password" name are left out of errors.
func iscsiadm(ctx context.Context, ok []int, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "iscsiadm", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		for _, c := range ok {
			if ee.ExitCode() == c {
				return out.String(), nil
			}
		}
	}
	if err != nil {
		return out.String(), fmt.Errorf("iscsiadm %s: %w: %s", strings.Join(redact(args), " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// redact replaces secrets in iscsiadm arguments.
func redact(args []string) []string {
	out := append([]string(nil), args...)
	for i := 0; i+2 < len(out); i++ {
		if out[i] == "-n" && strings.HasPrefix(out[i+1], "node.session.auth.password") && out[i+2] == "-v" && i+3 < len(out) {
			out[i+3] = "REDACTED"
		}
	}
	return out
}

// CheckCredentials refuses CHAP settings no login could succeed with, so
// that the plugin says so when it starts rather than at the first mount:
// a user name without its secret, mutual CHAP without one-way CHAP, and
// secrets a gateway's volume could not have.
func (s *ISCSIAttacher) CheckCredentials() error {
	switch {
	case s.CHAPUser != "" && s.CHAPSecret == "":
		return errors.New("--iscsi-chap-user needs --iscsi-chap-secret (or FERRY_ISCSI_CHAP_SECRET)")
	case s.MutualUser != "" && s.MutualSecret == "":
		return errors.New("--iscsi-mutual-chap-user needs --iscsi-mutual-chap-secret (or FERRY_ISCSI_MUTUAL_CHAP_SECRET)")
	case s.MutualSecret != "" && s.CHAPSecret == "":
		return errors.New("--iscsi-mutual-chap-secret needs --iscsi-chap-secret too: the target authenticates itself only to an initiator that authenticated with CHAP")
	}
	if err := chap.CheckSecrets(s.CHAPSecret, s.MutualSecret); err != nil {
		return fmt.Errorf("--iscsi-chap-secret, --iscsi-mutual-chap-secret: %w", err)
	}
	return nil
}

// Attach implements Attacher.
func (s *ISCSIAttacher) Attach(ctx context.Context, spec AttachSpec) (*Attachment, error) {
	if spec.ISCSITarget == "" || spec.ISCSIPortal == "" {
		return nil, errors.New("no iSCSI target or portal for the volume")
	}
	if spec.CHAPUser != "" && s.CHAPSecret == "" {
		return nil, fmt.Errorf("volume %s requires CHAP (user %q) and no secret was given: set --iscsi-chap-secret or FERRY_ISCSI_CHAP_SECRET", spec.Gateway, spec.CHAPUser)
	}
	if s.MutualSecret != "" && (spec.CHAPUser == "" || spec.MutualUser == "") {
		return nil, fmt.Errorf("volume %s has no mutual CHAP, and this plugin authenticates every target (--iscsi-mutual-chap-secret): give the volume CHAP and mutual CHAP (ferry volume update %s --chap-user U --chap-secret S --mutual-chap-user U2 --mutual-chap-secret S2)", spec.Gateway, spec.Gateway)
	}
	node := []string{"-m", "node", "-T", spec.ISCSITarget, "-p", spec.ISCSIPortal}
	set := func(name, value string) error {
		_, err := s.iscsiadm(ctx, nil, append(append([]string(nil), node...), "-o", "update", "-n", name, "-v", value)...)
		return err
	}
	a := &Attachment{Method: MethodISCSI, ISCSITarget: spec.ISCSITarget, ISCSIPortal: spec.ISCSIPortal}
	fail := func(err error) (*Attachment, error) {
		s.Detach(context.WithoutCancel(ctx), a)
		return nil, fmt.Errorf("iscsi %s at %s: %w", spec.ISCSITarget, spec.ISCSIPortal, err)
	}
	// The portal is the one given, never what discovery returns (the
	// target's own address, loopback on the gateway's host).
	if _, err := s.iscsiadm(ctx, nil, append(append([]string(nil), node...), "-o", "new")...); err != nil {
		return nil, fmt.Errorf("iscsi %s at %s: %w", spec.ISCSITarget, spec.ISCSIPortal, err)
	}
	rt := s.ReplacementTimeout
	if rt == 0 {
		rt = DefaultISCSIReplacementTimeout
	}
	// Manual: a reboot does not log in again behind the plugin's back.
	if err := set("node.startup", "manual"); err != nil {
		return fail(err)
	}
	if err := set("node.session.timeo.replacement_timeout", strconv.Itoa(int(rt/time.Second))); err != nil {
		return fail(err)
	}
	if spec.CHAPUser != "" {
		user := s.CHAPUser
		if user == "" {
			user = spec.CHAPUser
		}
		keys := [][2]string{{"node.session.auth.authmethod", "CHAP"}, {"node.session.auth.username", user}, {"node.session.auth.password", s.CHAPSecret}}
		if s.MutualSecret != "" {
			mutual := s.MutualUser
			if mutual == "" {
				mutual = spec.MutualUser
			}
			keys = append(keys, [2]string{"node.session.auth.username_in", mutual}, [2]string{"node.session.auth.password_in", s.MutualSecret})
		}
		for _, kv := range keys {
			if err := set(kv[0], kv[1]); err != nil {
				return fail(err)
			}
		}
	}
	if _, err := s.iscsiadm(ctx, []int{iscsiErrSessExists}, append(append([]string(nil), node...), "--login")...); err != nil {
		switch {
		case spec.CHAPUser != "" && s.MutualSecret != "":
			err = fmt.Errorf("%w (with CHAP both ways: check --iscsi-chap-secret against the volume's CHAP secret, and --iscsi-mutual-chap-secret against its mutual CHAP secret)", err)
		case spec.CHAPUser != "":
			err = fmt.Errorf("%w (with CHAP: check --iscsi-chap-secret against the volume's CHAP secret)", err)
		}
		return fail(err)
	}
	dev, err := s.waitDevice(ctx, spec.ISCSITarget, spec.ISCSIPortal, 30*time.Second)
	if err != nil {
		return fail(err)
	}
	a.Device = dev
	if spec.ReadOnly {
		if _, err := run(ctx, "blockdev", "--setro", dev); err != nil {
			return fail(err)
		}
	}
	if s.Logger != nil {
		s.Logger.Info("iscsi session logged in", "target", spec.ISCSITarget, "portal", spec.ISCSIPortal, "device", dev, "chap", spec.CHAPUser != "", "mutual_chap", spec.CHAPUser != "" && s.MutualSecret != "")
	}
	return a, nil
}

// waitDevice waits for the session's LUN 0 to show as a block device
// (sysfs, then /dev: devtmpfs makes the node without udev).
func (s *ISCSIAttacher) waitDevice(ctx context.Context, target, portal string, d time.Duration) (string, error) {
	deadline := time.Now().Add(d)
	var last error
	for {
		dev, err := s.sessionDevice(ctx, target, portal)
		if err == nil {
			if _, err = os.Stat(dev); err == nil {
				return dev, nil
			}
		}
		last = err
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no block device after %s: %w", d, last)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// errNoSession: no session to the target.
var errNoSession = errors.New("no iSCSI session")

// sessionDevice finds the session to target (at portal, preferably) and
// its LUN 0's block device.
func (s *ISCSIAttacher) sessionDevice(ctx context.Context, target, portal string) (string, error) {
	out, err := s.iscsiadm(ctx, []int{iscsiErrNoObjs}, "-m", "session")
	if err != nil {
		return "", err
	}
	sid, ok := findSession(parseSessions(out), target, portal)
	if !ok {
		return "", fmt.Errorf("%w to %s", errNoSession, target)
	}
	return sessionDisk(s.sysRoot, sid)
}

// iscsiSession is one line of `iscsiadm -m session`.
type iscsiSession struct {
	SID    int
	Portal string // HOST:PORT, without the ",TPGT"
	Target string
}

// parseSessions parses `iscsiadm -m session`:
//
//	tcp: [1] 10.0.2.100:3260,1 iqn.2024-01.io.ferry:v1 (non-flash)
//	tcp: [2] [fd00::5]:3260,1 iqn.2024-01.io.ferry:v2 (non-flash)
func parseSessions(out string) []iscsiSession {
	var ss []iscsiSession
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[1], "[") || !strings.HasSuffix(f[1], "]") {
			continue
		}
		sid, err := strconv.Atoi(strings.Trim(f[1], "[]"))
		if err != nil {
			continue
		}
		portal := f[2]
		if i := strings.LastIndexByte(portal, ','); i >= 0 {
			portal = portal[:i]
		}
		ss = append(ss, iscsiSession{SID: sid, Portal: portal, Target: f[3]})
	}
	return ss
}

// findSession picks the session to target, the one at portal if several.
func findSession(ss []iscsiSession, target, portal string) (int, bool) {
	sid, found := 0, false
	for _, s := range ss {
		if s.Target != target {
			continue
		}
		if samePortal(s.Portal, portal) {
			return s.SID, true
		}
		if !found {
			sid, found = s.SID, true
		}
	}
	return sid, found
}

func samePortal(a, b string) bool {
	ah, ap, err1 := net.SplitHostPort(a)
	bh, bp, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil {
		return a == b
	}
	if ap != bp {
		return false
	}
	ai, bi := net.ParseIP(ah), net.ParseIP(bh)
	if ai != nil && bi != nil {
		return ai.Equal(bi)
	}
	return ah == bh
}

// sessionDisk walks sysfs from session sid to its LUN 0's block device:
// /sys/class/iscsi_session/sessionN/device/targetH:C:T/H:C:T:0/block/sdX.
func sessionDisk(sysRoot string, sid int) (string, error) {
	if sysRoot == "" {
		sysRoot = "/sys"
	}
	dir := filepath.Join(sysRoot, "class/iscsi_session", "session"+strconv.Itoa(sid), "device")
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("session %d in sysfs: %w", sid, err)
	}
	matches, err := filepath.Glob(filepath.Join(dir, "target*", "*:*:*:0", "block", "*"))
	if err != nil {
		return "", err
	}
	if len(matches) == 0 {
		return "", fmt.Errorf("session %d has no LUN 0 block device (yet)", sid)
	}
	if len(matches) > 1 {
		return "", fmt.Errorf("session %d has %d LUN 0 block devices: %v", sid, len(matches), matches)
	}
	return "/dev/" + filepath.Base(matches[0]), nil
}

// Detach implements Attacher: log out and delete the node record; what
// is gone already is fine.
func (s *ISCSIAttacher) Detach(ctx context.Context, a *Attachment) error {
	if a.ISCSITarget == "" || a.ISCSIPortal == "" {
		return nil
	}
	node := []string{"-m", "node", "-T", a.ISCSITarget, "-p", a.ISCSIPortal}
	var errs []error
	if _, err := s.iscsiadm(ctx, []int{iscsiErrNoObjs}, append(append([]string(nil), node...), "--logout")...); err != nil {
		errs = append(errs, err)
	}
	if _, err := s.iscsiadm(ctx, []int{iscsiErrNoObjs}, append(append([]string(nil), node...), "-o", "delete")...); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Healthy implements Attacher: the session exists and its LUN 0 is still
// the recorded device. A session that is reconnecting counts: the
// initiator queues its I/O for the replacement timeout.
func (s *ISCSIAttacher) Healthy(ctx context.Context, a *Attachment) error {
	dev, err := s.sessionDevice(ctx, a.ISCSITarget, a.ISCSIPortal)
	if err != nil {
		return err
	}
	if dev != a.Device {
		return fmt.Errorf("the session's disk is %s, not %s", dev, a.Device)
	}
	return nil
}

// Sweep implements Sweeper: a session to the target of one of the
// plugin's volumes that no recorded attachment holds was left by a crash
// between logging in and saving the state (iSCSI sessions outlive the
// plugin: the kernel and iscsid keep them). It is logged out and its node
// record deleted, unless its disk is in use (mounted, held by another
// driver, or open exclusively): that is someone's, and only a warning says
// so. Sessions to other targets are never touched; a target counts as the
// plugin's only when the gateway names exactly it for the volume (Target).
func (s *ISCSIAttacher) Sweep(ctx context.Context, host string, known map[string]bool, keep []*Attachment) error {
	if s.Target == nil || len(known) == 0 {
		return nil
	}
	out, err := s.iscsiadm(ctx, []int{iscsiErrNoObjs}, "-m", "session")
	if err != nil {
		return err
	}
	kept := map[string]bool{}
	for _, a := range keep {
		if a.Method == MethodISCSI {
			kept[a.ISCSITarget] = true
		}
	}
	busy := s.busy
	if busy == nil {
		busy = busyDevice
	}
	targets := map[string]string{} // gateway name -> its target, as resolved
	var errs []error
	for _, ss := range parseSessions(out) {
		if kept[ss.Target] {
			continue
		}
		// A target of the gateway's is BASE:NAME; only a NAME of the
		// plugin's is worth asking the gateway about.
		i := strings.LastIndexByte(ss.Target, ':')
		if i < 0 || !known[ss.Target[i+1:]] {
			continue
		}
		gw := ss.Target[i+1:]
		want, ok := targets[gw]
		if !ok {
			t, err := s.Target(ctx, gw)
			if err != nil {
				errs = append(errs, fmt.Errorf("iscsi target of volume %s: %w", gw, err))
				continue
			}
			want, targets[gw] = t, t
		}
		if ss.Target != want {
			continue
		}
		log := s.log().With("target", ss.Target, "portal", ss.Portal, "session", ss.SID, "gateway_volume", gw)
		if dev, err := sessionDisk(s.sysRoot, ss.SID); err == nil {
			if why := busy(dev); why != "" {
				log.Warn("an iSCSI session to one of this plugin's volumes that its state does not record is in use; leaving it", "device", dev, "in_use", why)
				continue
			}
		}
		log.Warn("logging out an iSCSI session to one of this plugin's volumes that its state does not record (a crash while attaching)")
		if _, err := s.iscsiadm(ctx, []int{iscsiErrNoObjs}, "-m", "session", "-r", strconv.Itoa(ss.SID), "--logout"); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := s.iscsiadm(ctx, []int{iscsiErrNoObjs}, "-m", "node", "-T", ss.Target, "-o", "delete"); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *ISCSIAttacher) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// busyDevice says why the block device dev (/dev/sdX) is in use: a file
// system on it or on one of its partitions is mounted, another driver
// holds it (device mapper, md), or someone has it open exclusively. ""
// means none of these.
func busyDevice(dev string) string {
	name := filepath.Base(dev)
	if mounts, err := readMounts(); err == nil {
		for _, m := range mounts {
			src := filepath.Base(m.Source)
			if strings.HasPrefix(m.Source, "/dev/") && (src == name || isPartitionOf(src, name)) {
				return "mounted on " + m.Point
			}
		}
	}
	holders, _ := filepath.Glob(filepath.Join("/sys/class/block", name, "holders", "*"))
	parts, _ := filepath.Glob(filepath.Join("/sys/class/block", name, name+"*", "holders", "*"))
	if h := append(holders, parts...); len(h) > 0 {
		return "held by " + filepath.Base(h[0])
	}
	// The kernel's own test: an exclusive open fails while a file system,
	// a holder or another exclusive opener has it.
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_EXCL, 0)
	if errors.Is(err, syscall.EBUSY) {
		return "open exclusively"
	}
	if err == nil {
		f.Close()
	}
	return ""
}

// isPartitionOf reports whether part names a partition of disk: sdc1 of
// sdc.
func isPartitionOf(part, disk string) bool {
	rest, ok := strings.CutPrefix(part, disk)
	if !ok || rest == "" {
		return false
	}
	_, err := strconv.Atoi(rest)
	return err == nil
}
