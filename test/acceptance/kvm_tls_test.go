package acceptance

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ferry-io/ferry/kvm/wire"
)

// TestKVMNBDTLS: a gateway that requires NBD TLS (--nbd-tls require with
// a PSK file) serves a ferry-kvm VM whose daemon has --nbd-tls-psk-dir:
// the test guest boots, writes its marker to its ext4 disk over TLS, and
// the marker is on the volume. One VM boot.
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
	if out, err := exec.Command("nbdcopy", img, g.uri("t-root")).CombinedOutput(); err == nil {
		t.Fatalf("plain nbdcopy to a gateway requiring TLS succeeded: %s", out)
	}
	run(t, bootTimeout, "nbdcopy", img, pskURI(g, alice, "t-root"))

	// Misconfigured TLS is refused at start.
	bin, _ := requireKVM(t)
	if out, err := exec.Command(bin, "serve", "--state", t.TempDir(), "--nbd-tls-psk-dir", alice).CombinedOutput(); err == nil || !strings.Contains(string(out), "--nbd-tls-psk-user") {
		t.Fatalf("--nbd-tls-psk-dir without a user: %v %s", err, out)
	}

	d := startKVMD(t, g, "host-tls", "--nbd-tls-psk-dir", alice, "--nbd-tls-psk-user", "alice")
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
	d.mustVM("stop", "t1", "--force")

	out := filepath.Join(t.TempDir(), "back.img")
	run(t, bootTimeout, "nbdcopy", pskURI(g, alice, "t-root"), out)
	got, err := exec.Command("debugfs", "-R", "cat /marker", out).Output()
	if err != nil || strings.TrimSpace(string(got)) != "tls-0815" {
		t.Fatalf("marker on the volume: %q, %v", got, err)
	}
}
