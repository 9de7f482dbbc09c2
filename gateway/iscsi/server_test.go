package iscsi

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/testutil"
)

type testServer struct {
	s    *Server
	addr string
	devs map[string]device.Device
}

func startServer(t *testing.T, cfg Config, devs map[string]device.Device) *testServer {
	t.Helper()
	s := NewServer(volume.NewStaticExports(devs), cfg)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-done
	})
	return &testServer{s: s, addr: l.Addr().String(), devs: devs}
}

func (ts *testServer) url(vol string) string {
	return "iscsi://" + ts.addr + "/" + ts.s.TargetName(vol) + "/0"
}

func runTool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	path := testutil.RequireTool(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	return string(out), err
}

func newMem(_ *testing.T, size int64) device.Device { return mem.New(size) }

func TestInquiryAndCapacity(t *testing.T) {
	ts := startServer(t, Config{}, map[string]device.Device{"disk1": newMem(t, 64<<20)})
	out, err := runTool(t, "iscsi-inq", ts.url("disk1"))
	if err != nil || !strings.Contains(out, "FERRY") {
		t.Fatalf("iscsi-inq: %v\n%s", err, out)
	}
	out, err = runTool(t, "iscsi-inq", "-e", "1", "-c", "178", ts.url("disk1"))
	if err != nil || !strings.Contains(strings.ToLower(out), "lbpu:1") {
		t.Fatalf("iscsi-inq LBP page: %v\n%s", err, out)
	}
	out, err = runTool(t, "iscsi-readcapacity16", ts.url("disk1"))
	if err != nil || !strings.Contains(out, "LOGICAL BLOCK LENGTH IN BYTES:512") || !strings.Contains(out, "LBPME:1 LBPRZ:1") {
		t.Fatalf("iscsi-readcapacity16: %v\n%s", err, out)
	}
	if !strings.Contains(out, "RETURNED LOGICAL BLOCK ADDRESS:131071") {
		t.Fatalf("capacity of a 64 MiB volume:\n%s", out)
	}
}

func TestDiscovery(t *testing.T) {
	ts := startServer(t, Config{Access: func(_ context.Context, vol string) (Access, error) {
		if vol == "private" {
			return Access{Initiators: []string{"iqn.2026-11.test:allowed"}}, nil
		}
		return Access{}, nil
	}}, map[string]device.Device{"a": newMem(t, 1<<20), "b": newMem(t, 1<<20), "private": newMem(t, 1<<20)})
	out, err := runTool(t, "iscsi-ls", "-i", "iqn.2026-11.test:other", "iscsi://"+ts.addr)
	if err != nil {
		t.Fatalf("iscsi-ls: %v\n%s", err, out)
	}
	for _, want := range []string{ts.s.TargetName("a"), ts.s.TargetName("b")} {
		if !strings.Contains(out, want) {
			t.Errorf("discovery lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, ts.s.TargetName("private")) {
		t.Errorf("discovery shows a target the initiator may not log in to:\n%s", out)
	}
	if _, err := runTool(t, "iscsi-inq", "-i", "iqn.2026-11.test:other", ts.url("private")); err == nil {
		t.Error("a disallowed initiator logged in")
	}
	if out, err := runTool(t, "iscsi-inq", "-i", "iqn.2026-11.test:allowed", ts.url("private")); err != nil {
		t.Errorf("an allowed initiator was refused: %v\n%s", err, out)
	}
	if _, err := runTool(t, "iscsi-inq", ts.url("nosuch")); err == nil {
		t.Error("login to an unknown target succeeded")
	}
}

func TestCHAP(t *testing.T) {
	ts := startServer(t, Config{Access: func(context.Context, string) (Access, error) {
		return Access{CHAPUser: "alice", CHAPSecret: "secret-0123456789"}, nil
	}}, map[string]device.Device{"v": newMem(t, 1<<20)})
	good := "iscsi://alice%secret-0123456789@" + ts.addr + "/" + ts.s.TargetName("v") + "/0"
	if out, err := runTool(t, "iscsi-inq", good); err != nil {
		t.Fatalf("right secret refused: %v\n%s", err, out)
	}
	bad := "iscsi://alice%wrong-secret-000@" + ts.addr + "/" + ts.s.TargetName("v") + "/0"
	if _, err := runTool(t, "iscsi-inq", bad); err == nil {
		t.Fatal("wrong secret accepted")
	}
	if _, err := runTool(t, "iscsi-inq", ts.url("v")); err == nil {
		t.Fatal("no CHAP accepted where CHAP is required")
	}
}

// An access rule that refuses a volume outright (volume.ErrDenied: e.g.
// no CHAP on a listener off loopback) refuses the login as an
// authorization failure, with its reason, and hides the target from
// discovery.
func TestAccessDeniedLogin(t *testing.T) {
	ts := startServer(t, Config{Access: func(_ context.Context, vol string) (Access, error) {
		if vol == "closed" {
			return Access{}, fmt.Errorf("volume closed needs CHAP: %w", volume.ErrDenied)
		}
		return Access{}, nil
	}}, map[string]device.Device{"closed": newMem(t, 1<<20), "open": newMem(t, 1<<20)})
	out, err := runTool(t, "iscsi-inq", ts.url("closed"))
	if err == nil {
		t.Fatalf("login to a refused volume succeeded:\n%s", out)
	}
	if !strings.Contains(strings.ToLower(out), "authoriz") && !strings.Contains(out, "0202") && !strings.Contains(strings.ToLower(out), "forbidden") {
		t.Errorf("iscsi-inq does not name an authorization failure: %s", out)
	}
	if out, err := runTool(t, "iscsi-inq", ts.url("open")); err != nil {
		t.Fatalf("login to an open volume: %v\n%s", err, out)
	}
	out, _ = runTool(t, "iscsi-ls", "-s", "iscsi://"+ts.addr)
	if strings.Contains(out, ts.s.TargetName("closed")) || !strings.Contains(out, ts.s.TargetName("open")) {
		t.Errorf("discovery should list open and hide closed:\n%s", out)
	}
}

// qemu-io writes patterns over iSCSI, reads them back and discards; the
// device holds what was written.
func TestQemuIO(t *testing.T) {
	dev := newMem(t, 64<<20)
	ts := startServer(t, Config{}, map[string]device.Device{"q": dev})
	out, err := runTool(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 0 1M", "-c", "write -P 0xcd 5M 300k", "-c", "flush",
		"-c", "read -P 0xab 0 1M", "-c", "read -P 0xcd 5M 300k",
		"-c", "discard 0 64k", "-c", "read -P 0 0 64k", "-c", "read -P 0xab 64k 960k",
		ts.url("q"))
	if err != nil || strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification") {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	got := make([]byte, 300<<10)
	if err := dev.ReadAt(context.Background(), got, 5<<20); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0xcd}, len(got))) {
		t.Fatalf("device content after qemu-io: %v", err)
	}
	// A large transfer: 8 MiB through R2T bursts, then read back.
	src := filepath.Join(t.TempDir(), "src")
	data := bytes.Repeat([]byte("ferry-iscsi-"), (8<<20)/12+1)[:8<<20]
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = runTool(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, ts.url("q"))
	if err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	got = make([]byte, len(data))
	if err := dev.ReadAt(context.Background(), got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("8 MiB written through qemu-img differs: %v", err)
	}
}

// Mutual CHAP: the target proves itself with the mutual secret; an
// initiator expecting another secret refuses the target.
func TestMutualCHAP(t *testing.T) {
	ts := startServer(t, Config{Access: func(context.Context, string) (Access, error) {
		return Access{CHAPUser: "alice", CHAPSecret: "secret-0123456789", MutualUser: "target", MutualSecret: "mutual-9876543210"}, nil
	}}, map[string]device.Device{"v": newMem(t, 1<<20)})
	url := func(targetSecret string) string {
		return "iscsi://alice%secret-0123456789@" + ts.addr + "/" + ts.s.TargetName("v") + "/0?target_user=target&target_password=" + targetSecret
	}
	if out, err := runTool(t, "iscsi-inq", url("mutual-9876543210")); err != nil {
		t.Fatalf("mutual CHAP with the right secrets refused: %v\n%s", err, out)
	}
	if _, err := runTool(t, "iscsi-inq", url("not-the-target-secret")); err == nil {
		t.Fatal("initiator accepted a target that answered with another mutual secret")
	}
}
