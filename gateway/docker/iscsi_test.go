package docker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestParseSessions(t *testing.T) {
	out := `tcp: [1] 10.0.2.100:3260,1 iqn.2024-01.io.ferry:v1 (non-flash)
tcp: [12] [fd00::5]:3260,1 iqn.2024-01.io.ferry:v2 (non-flash)
tcp: [3] 127.0.0.1:3260,1 iqn.2024-01.io.ferry:v1
iscsiadm: No active sessions.
garbage line
`
	got := parseSessions(out)
	want := []iscsiSession{
		{SID: 1, Portal: "10.0.2.100:3260", Target: "iqn.2024-01.io.ferry:v1"},
		{SID: 12, Portal: "[fd00::5]:3260", Target: "iqn.2024-01.io.ferry:v2"},
		{SID: 3, Portal: "127.0.0.1:3260", Target: "iqn.2024-01.io.ferry:v1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("parseSessions:\n got %+v\nwant %+v", got, want)
	}
	for _, c := range []struct {
		target, portal string
		sid            int
		ok             bool
	}{
		{"iqn.2024-01.io.ferry:v1", "127.0.0.1:3260", 3, true},  // the portal decides
		{"iqn.2024-01.io.ferry:v1", "10.0.2.100:3260", 1, true}, //
		{"iqn.2024-01.io.ferry:v1", "gw.example:3260", 1, true}, // a name iscsiadm resolved: the first
		{"iqn.2024-01.io.ferry:v2", "[fd00:0::5]:3260", 12, true},
		{"iqn.2024-01.io.ferry:v3", "10.0.2.100:3260", 0, false},
	} {
		sid, ok := findSession(got, c.target, c.portal)
		if sid != c.sid || ok != c.ok {
			t.Errorf("findSession(%s, %s) = %d, %v; want %d, %v", c.target, c.portal, sid, ok, c.sid, c.ok)
		}
	}
	if len(parseSessions("iscsiadm: No active sessions.\n")) != 0 {
		t.Error("sessions parsed from nothing")
	}
}

// fakeSysfs lays out sysfs as the kernel does for an iSCSI session:
// the class link to the session's transport device, whose "device" link
// is the session, holding the SCSI target and its LUNs.
func fakeSysfs(t *testing.T, sid, host int, luns map[string]string) string {
	root := t.TempDir()
	sess := filepath.Join(root, "devices/platform", "host"+itoa(host), "session"+itoa(sid))
	mk := func(p string) {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ln := func(target, link string) {
		mk(filepath.Dir(link))
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	mk(filepath.Join(sess, "iscsi_session", "session"+itoa(sid)))
	ln("../../../session"+itoa(sid), filepath.Join(sess, "iscsi_session", "session"+itoa(sid), "device"))
	ln("../../devices/platform/host"+itoa(host)+"/session"+itoa(sid)+"/iscsi_session/session"+itoa(sid), filepath.Join(root, "class/iscsi_session", "session"+itoa(sid)))
	tgt := filepath.Join(sess, "target"+itoa(host)+":0:0")
	for lun, disk := range luns {
		mk(filepath.Join(tgt, itoa(host)+":0:0:"+lun, "block", disk))
	}
	return root
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestSessionDisk(t *testing.T) {
	root := fakeSysfs(t, 14, 7, map[string]string{"0": "sdc", "1": "sdd"})
	dev, err := sessionDisk(root, 14)
	if err != nil || dev != "/dev/sdc" {
		t.Fatalf("sessionDisk = %q, %v; want /dev/sdc (LUN 0, not 1)", dev, err)
	}
	if _, err := sessionDisk(root, 5); err == nil {
		t.Fatal("a session that does not exist has a disk")
	}
	// Logged in, LUN not scanned yet: an error to wait on.
	root = fakeSysfs(t, 2, 3, nil)
	if _, err := sessionDisk(root, 2); err == nil || !strings.Contains(err.Error(), "no LUN 0") {
		t.Fatalf("session without LUNs: %v", err)
	}
}

func TestRedactCHAPSecret(t *testing.T) {
	args := []string{"-m", "node", "-T", "iqn.x:v", "-p", "1.2.3.4:3260", "-o", "update", "-n", "node.session.auth.password", "-v", "s3cret"}
	got := strings.Join(redact(args), " ")
	if strings.Contains(got, "s3cret") || !strings.Contains(got, "REDACTED") {
		t.Fatalf("redacted: %s", got)
	}
	if args[len(args)-1] != "s3cret" {
		t.Fatal("redact changed its argument")
	}
}

// A volume that requires CHAP is refused, before iscsiadm runs, when the
// plugin has no secret; the message says how to give one.
func TestISCSINeedsCHAPSecret(t *testing.T) {
	s := &ISCSIAttacher{}
	_, err := s.Attach(context.Background(), AttachSpec{Gateway: "v1", ISCSITarget: "iqn.x:v1", ISCSIPortal: "10.0.2.100:3260", CHAPUser: "alice"})
	if err == nil || !strings.Contains(err.Error(), "--iscsi-chap-secret") {
		t.Fatalf("got %v", err)
	}
}

// At start, a session to the target of one of the plugin's volumes that no
// recorded attachment holds (a crash between --login and saving the state)
// is logged out and its node record deleted. Left alone: the recorded
// session, a session whose disk is in use, sessions to other targets (of
// another iSCSI server, or of a gateway volume that is not the plugin's),
// and a target that merely ends in a volume's name.
func TestISCSISweep(t *testing.T) {
	sessions := `tcp: [1] 10.0.2.100:3260,1 iqn.2026-11.io.ferry:kept (non-flash)
tcp: [2] 10.0.2.100:3260,1 iqn.2026-11.io.ferry:orphan (non-flash)
tcp: [3] 10.0.2.100:3260,1 iqn.2026-11.io.ferry:busy (non-flash)
tcp: [4] 10.0.2.100:3260,1 iqn.2026-11.io.ferry:notours (non-flash)
tcp: [5] 192.168.1.9:3260,1 iqn.2003-01.org.linux-iscsi.nas:orphan (non-flash)
tcp: [6] [fd00::5]:3260,1 iqn.2026-11.io.ferry:d-data-1-3f2a000000 (non-flash)
`
	root := fakeSysfs(t, 3, 9, map[string]string{"0": "sdq"})
	var ran []string
	resolved := map[string]int{}
	s := &ISCSIAttacher{
		sysRoot: root,
		Target: func(ctx context.Context, gw string) (string, error) {
			resolved[gw]++
			return "iqn.2026-11.io.ferry:" + gw, nil
		},
		run: func(ctx context.Context, ok []int, args ...string) (string, error) {
			ran = append(ran, strings.Join(args, " "))
			if strings.Join(args, " ") == "-m session" {
				return sessions, nil
			}
			return "", nil
		},
		busy: func(dev string) string {
			if dev == "/dev/sdq" {
				return "mounted on /mnt/x"
			}
			return ""
		},
	}
	known := map[string]bool{"kept": true, "orphan": true, "busy": true, "d-data-1-3f2a000000": true}
	keep := []*Attachment{
		{Method: MethodISCSI, ISCSITarget: "iqn.2026-11.io.ferry:kept", ISCSIPortal: "10.0.2.100:3260", Device: "/dev/sdb"},
		{Method: MethodFUSE, Device: "/dev/loop0"},
	}
	if err := s.Sweep(context.Background(), "h1", known, keep); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-m session",
		"-m session -r 2 --logout",
		"-m node -T iqn.2026-11.io.ferry:orphan -o delete",
		"-m session -r 6 --logout",
		"-m node -T iqn.2026-11.io.ferry:d-data-1-3f2a000000 -o delete",
	}
	if !reflect.DeepEqual(ran, want) {
		t.Fatalf("iscsiadm runs:\n got %q\nwant %q", ran, want)
	}
	if resolved["orphan"] != 1 || resolved["kept"] != 0 || resolved["notours"] != 0 {
		t.Fatalf("asked the gateway for %v; want each candidate once, and nothing else", resolved)
	}

	// Without a way to name the plugin's targets, nothing is touched.
	ran = nil
	s.Target = nil
	if err := s.Sweep(context.Background(), "h1", known, nil); err != nil || len(ran) != 0 {
		t.Fatalf("Sweep without Target: %v, ran %q", err, ran)
	}

	// A gateway that cannot be asked: the candidate is left, the error said.
	ran = nil
	s.Target = func(ctx context.Context, gw string) (string, error) { return "", errors.New("gateway down") }
	err := s.Sweep(context.Background(), "h1", map[string]bool{"orphan": true}, nil)
	if err == nil || !strings.Contains(err.Error(), "gateway down") || len(ran) != 1 {
		t.Fatalf("Sweep with the gateway down: %v, ran %q", err, ran)
	}
}

func TestIsPartitionOf(t *testing.T) {
	for _, c := range []struct {
		part, disk string
		ok         bool
	}{
		{"sdc1", "sdc", true},
		{"sdc12", "sdc", true},
		{"sdc", "sdc", false},
		{"sdca", "sdc", false},
		{"sdca1", "sdc", false},
		{"sdd1", "sdc", false},
	} {
		if got := isPartitionOf(c.part, c.disk); got != c.ok {
			t.Errorf("isPartitionOf(%s, %s) = %v", c.part, c.disk, got)
		}
	}
}

// Mutual CHAP: with a mutual secret the plugin sets, before it logs in,
// the name and secret the target must answer with (the volume's mutual
// CHAP user unless one is given), and refuses a volume whose target does
// not answer mutual CHAP before iscsiadm runs; without one it sets only
// the one-way keys.
func TestISCSIMutualCHAP(t *testing.T) {
	attach := func(s *ISCSIAttacher, spec AttachSpec) (map[string]string, error) {
		var got map[string]string
		s.run = func(_ context.Context, _ []int, args ...string) (string, error) {
			if got == nil {
				got = map[string]string{}
			}
			for i := 0; i+3 < len(args); i++ {
				if args[i] == "-n" && args[i+2] == "-v" {
					got[args[i+1]] = args[i+3]
				}
			}
			if slices.Contains(args, "--login") {
				return "", errors.New("login refused (test)")
			}
			return "", nil
		}
		_, err := s.Attach(context.Background(), spec)
		return got, err
	}
	spec := AttachSpec{Gateway: "v1", ISCSITarget: "iqn.x:v1", ISCSIPortal: "10.0.2.100:3260", CHAPUser: "alice", MutualUser: "gw-v1"}
	for _, c := range []struct {
		name             string
		s                *ISCSIAttacher
		wantIn, wantPass string
	}{
		{"mutual, the volume's name", &ISCSIAttacher{CHAPSecret: "alice-secret-1", MutualSecret: "target-secret-1"}, "gw-v1", "target-secret-1"},
		{"mutual, a name given", &ISCSIAttacher{CHAPSecret: "alice-secret-1", MutualUser: "gw", MutualSecret: "target-secret-1"}, "gw", "target-secret-1"},
		{"one-way", &ISCSIAttacher{CHAPSecret: "alice-secret-1"}, "", ""},
	} {
		got, err := attach(c.s, spec)
		if err == nil || !strings.Contains(err.Error(), "login refused") {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got["node.session.auth.authmethod"] != "CHAP" || got["node.session.auth.username"] != "alice" || got["node.session.auth.password"] != "alice-secret-1" ||
			got["node.session.auth.username_in"] != c.wantIn || got["node.session.auth.password_in"] != c.wantPass {
			t.Errorf("%s: node record keys %v", c.name, got)
		}
	}
	for _, v := range []AttachSpec{{Gateway: "v2", ISCSITarget: "iqn.x:v2", ISCSIPortal: "10.0.2.100:3260", CHAPUser: "alice"}, {Gateway: "v3", ISCSITarget: "iqn.x:v3", ISCSIPortal: "10.0.2.100:3260"}} {
		got, err := attach(&ISCSIAttacher{CHAPSecret: "alice-secret-1", MutualSecret: "target-secret-1"}, v)
		if err == nil || !strings.Contains(err.Error(), "has no mutual CHAP") || !strings.Contains(err.Error(), "--mutual-chap-user") || got != nil {
			t.Errorf("volume %s without mutual CHAP: %v, iscsiadm ran with %v", v.Gateway, err, got)
		}
		if err != nil && strings.Contains(err.Error(), "target-secret-1") {
			t.Errorf("the error shows the secret: %v", err)
		}
	}
	if r := strings.Join(redact([]string{"-n", "node.session.auth.password_in", "-v", "target-secret-1"}), " "); strings.Contains(r, "target-secret-1") {
		t.Errorf("the mutual secret is not redacted: %s", r)
	}
}

// CHAP settings no login could succeed with are refused when the plugin
// starts, each with the flag to fix; workable ones pass.
func TestISCSICheckCredentials(t *testing.T) {
	const s1, s2 = "secret-one-123", "secret-two-456"
	for _, c := range []struct {
		a    ISCSIAttacher
		want string // "" for no error
	}{
		{ISCSIAttacher{}, ""},
		{ISCSIAttacher{CHAPSecret: s1}, ""},
		{ISCSIAttacher{CHAPUser: "alice", CHAPSecret: s1}, ""},
		{ISCSIAttacher{CHAPSecret: s1, MutualSecret: s2}, ""},
		{ISCSIAttacher{CHAPUser: "alice", CHAPSecret: s1, MutualUser: "tgt", MutualSecret: s2}, ""},
		{ISCSIAttacher{CHAPUser: "alice"}, "--iscsi-chap-user needs --iscsi-chap-secret"},
		{ISCSIAttacher{CHAPSecret: s1, MutualUser: "tgt"}, "--iscsi-mutual-chap-user needs --iscsi-mutual-chap-secret"},
		{ISCSIAttacher{MutualUser: "tgt", MutualSecret: s2}, "--iscsi-mutual-chap-secret needs --iscsi-chap-secret"},
		{ISCSIAttacher{CHAPSecret: "short"}, "12 to 255 characters"},
		{ISCSIAttacher{CHAPSecret: s1, MutualSecret: "short"}, "12 to 255 characters"},
		{ISCSIAttacher{CHAPSecret: s1, MutualSecret: s1}, "must differ"},
	} {
		err := c.a.CheckCredentials()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: %v, want no error", c.a, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: %v, want %q", c.a, err, c.want)
		case err != nil && (strings.Contains(err.Error(), s1) || strings.Contains(err.Error(), s2) || strings.Contains(err.Error(), "short")):
			t.Errorf("%+v: the error shows a secret: %v", c.a, err)
		}
	}
}
