package acceptance

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
	"github.com/ferry-io/ferry/kvm/wire"
)

// TestKVMNBDTLS: a gateway that requires NBD TLS (--nbd-tls require with
// a PSK file) serves a ferry-kvm VM whose daemon has --nbd-tls-psk-dir:
// the test guest boots, writes its marker to its ext4 disk over TLS, and
// the marker is on the volume. Both daemons require their API tokens
// (--api-auth token): the VM live-migrates to the second daemon only with
// its token (vm migrate --to-token-file), and its destination QEMU opens
// the disk over TLS too. One VM boot.
func TestKVMNBDTLS(t *testing.T) {
	_, image := requireKVM(t)
	server, clients := pskDirs(t)
	g := startGateway(t, "--nbd-tls", "require", "--nbd-tls-psk", server)
	alice := clients["alice"]

	// The ext4 disk, written over TLS too (plain NBD is refused).
	g.mustCLI("volume", "create", "t-root", "--size", "64M")
	img := filepath.Join(t.TempDir(), "fs.img")
	run(t, bootTimeout, "truncate", "-s", "64M", img)
	run(t, bootTimeout, "mkfs.ext4", "-q", "-F", img)
	if out, err := runErr(bootTimeout, "nbdcopy", img, g.uri("t-root")); err == nil {
		t.Fatalf("plain nbdcopy to a gateway requiring TLS succeeded: %s", out)
	}
	run(t, bootTimeout, "nbdcopy", img, pskURI(g, alice, "t-root"))

	// Misconfigured TLS is refused at start.
	bin, _ := requireKVM(t)
	if out, err := runErr(bootTimeout, bin, "serve", "--state", t.TempDir(), "--nbd-tls-psk-dir", alice); err == nil || !strings.Contains(out, "--nbd-tls-psk-user") {
		t.Fatalf("--nbd-tls-psk-dir without a user: %v %s", err, out)
	}

	tlsFlags := []string{"--nbd-tls-psk-dir", alice, "--nbd-tls-psk-user", "alice", "--api-auth", "token"}
	d := startKVMD(t, g, "host-tls", tlsFlags...)
	d.env = []string{"FERRY_KVM_TOKEN_FILE=" + filepath.Join(d.state, "api-token")}
	d2 := startKVMD(t, g, "host-tls2", tlsFlags...)
	d2.env = []string{"FERRY_KVM_TOKEN_FILE=" + filepath.Join(d2.state, "api-token")}
	d.mustVM(append([]string{"create", "t1", "--disk", "t-root", "--cpus", "1"}, guestArgs(image, "marker", "ferry.token=tls-0815")...)...)
	d.mustVM("start", "t1")
	d.waitSerial("t1", regexp.MustCompile(`FERRY-KVM: marker (tls-0815)`), bootTimeout)
	in := d.info("t1")
	if in.State != wire.StateRunning || len(in.Disks) != 1 || !strings.Contains(in.Disks[0].Attach, "TLS psk as alice") {
		t.Fatalf("vm info: %+v", in)
	}
	// The gateway sees QEMU's connection with alice's TLS identity.
	if vi := g.mustCLI("volume", "info", "t-root", "--json"); !strings.Contains(vi, `"tls_identity": "alice"`) {
		t.Errorf("volume info does not show the TLS identity alice:\n%s", vi)
	}

	// A migration without the destination's token fails and the VM runs
	// on here; with it, the VM moves.
	if r := d.vm("migrate", "t1", "--to", d2.addr); r.code == 0 || !strings.Contains(r.stderr, "token") {
		t.Fatalf("migrate without the destination's token: exit %d, stderr %q", r.code, r.stderr)
	}
	if in := d.info("t1"); in.State != wire.StateRunning {
		t.Fatalf("after the refused migration: state %s", in.State)
	}
	out := d.mustVM("migrate", "t1", "--to", d2.addr, "--to-token-file", filepath.Join(d2.state, "api-token"))
	if !strings.Contains(out, "migrated t1") {
		t.Fatalf("migrate: %s", out)
	}
	if in := d2.info("t1"); in.State != wire.StateRunning || !strings.Contains(in.Disks[0].Attach, "TLS psk as alice") {
		t.Fatalf("vm info on the destination: %+v", in)
	}
	for _, tok := range []string{d.state, d2.state} {
		b, _ := os.ReadFile(filepath.Join(tok, "api-token"))
		if s := strings.TrimSpace(string(b)); strings.Contains(d.logs.String(), s) || strings.Contains(d2.logs.String(), s) {
			t.Fatal("a daemon logged an API token")
		}
	}
	d2.mustVM("stop", "t1", "--force")

	back := filepath.Join(t.TempDir(), "back.img")
	run(t, bootTimeout, "nbdcopy", pskURI(g, alice, "t-root"), back)
	got, err := testutil.Output(time.Minute, "debugfs", "-R", "cat /marker", back)
	if err != nil || strings.TrimSpace(got) != "tls-0815" {
		t.Fatalf("marker on the volume: %q, %v", got, err)
	}
}
