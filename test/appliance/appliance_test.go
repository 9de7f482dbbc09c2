package appliance

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// TestApplianceImage checks what appliance/build produced besides the
// qcow2: the VMDK and VHDX are what qemu-img says they are, the Vagrant
// box holds libvirt metadata, box.img and its Vagrantfile; and the
// repository's Vagrantfile validates.
func TestApplianceImage(t *testing.T) {
	requireImage(t)
	for f, format := range map[string]string{"ferry-appliance.qcow2": "qcow2", "ferry-appliance.vmdk": "vmdk", "ferry-appliance.vhdx": "vhdx"} {
		out, err := exec.Command("qemu-img", "info", "--output=json", filepath.Join(imageDir, f)).Output()
		if err != nil {
			t.Fatalf("qemu-img info %s: %v", f, err)
		}
		var info struct {
			Format      string `json:"format"`
			VirtualSize int64  `json:"virtual-size"`
		}
		json.Unmarshal(out, &info)
		if info.Format != format || info.VirtualSize != 2<<30 {
			t.Errorf("%s: format %s, virtual size %d; want %s, 2 GiB", f, info.Format, info.VirtualSize, format)
		}
	}
	f, err := os.Open(filepath.Join(imageDir, "ferry-appliance.box"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	seen := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seen[h.Name] = true
		if h.Name == "metadata.json" {
			var md struct {
				Provider    string `json:"provider"`
				Format      string `json:"format"`
				VirtualSize int    `json:"virtual_size"`
			}
			if err := json.NewDecoder(tr).Decode(&md); err != nil {
				t.Fatal(err)
			}
			if md.Provider != "libvirt" || md.Format != "qcow2" || md.VirtualSize != 2 {
				t.Errorf("box metadata.json = %+v", md)
			}
		}
	}
	for _, n := range []string{"metadata.json", "Vagrantfile", "box.img"} {
		if !seen[n] {
			t.Errorf("the box lacks %s (has %v)", n, seen)
		}
	}
	if _, err := exec.LookPath("vagrant"); err != nil {
		if os.Getenv("FERRY_TEST_REQUIRE_TOOLS") == "1" {
			t.Fatal("vagrant is missing (scripts/install-test-deps)")
		}
		t.Skip("vagrant is missing")
	}
	cmd := exec.Command("vagrant", "validate")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("vagrant validate: %v\n%s", err, out)
	}
}

// TestAppliance boots the appliance (BIOS) on an empty data disk, uses it
// from the host, cuts its power under a flushing write load, then
// upgrades its system disk and boots that with UEFI.
func TestAppliance(t *testing.T) {
	img := requireImage(t)
	for _, tool := range []string{"iscsi-inq", "nbdinfo"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (scripts/install-test-deps)", tool)
		}
	}
	disks := newDisks(t, img)
	v := boot(t, disks, false)
	t.Logf("console: token %d characters, NBD certificate %s, CHAP user %q", len(v.token), v.fingerprint, v.chapUser)

	// The API: the CLI with the token from the console works, without
	// it is refused.
	if out, err := v.ferry("", "volume", "ls"); err == nil || !strings.Contains(strings.ToLower(out), "token") {
		t.Fatalf("ferry volume ls without the token: err %v, output %q; want a refusal about the token", err, out)
	}
	if out, err := v.ferry(v.token, "volume", "create", "vol1", "--size", "64M"); err != nil {
		t.Fatalf("ferry volume create with the token: %v\n%s", err, out)
	}
	if out, err := v.ferry(v.token, "volume", "create", "pc", "--size", "256M"); err != nil {
		t.Fatalf("ferry volume create pc: %v\n%s", err, out)
	}
	if got := httpStatus(t, "http://"+v.api+"/v1/volumes", ""); got != 401 {
		t.Errorf("GET /v1/volumes without the token = %d, want 401", got)
	}
	metrics := httpBody(t, "http://"+v.api+"/metrics", v.token)
	if !strings.Contains(metrics, "ferry_") {
		t.Errorf("/metrics holds no ferry_ metric:\n%.500s", metrics)
	}

	// NBD: TLS required; the appliance's own certificate is the CA.
	if out, err := testutil.CombinedOutput(time.Minute, "nbdinfo", "nbd://"+v.nbd+"/vol1"); err == nil {
		t.Errorf("nbdinfo without TLS succeeded:\n%s", out)
	}
	ca := v.trustNBD(t)
	if out, err := v.qemuIO(ca, "vol1", "write -P 0x5a 1M 1M", "flush"); err != nil {
		t.Fatalf("qemu-io write over NBD+TLS: %v\n%s", err, out)
	}
	if out, err := v.qemuIO(ca, "vol1", "read -P 0x5a 1M 1M"); err != nil {
		t.Fatalf("qemu-io read over NBD+TLS: %v\n%s", err, out)
	}

	// iSCSI: CHAP required; the default credentials from the console.
	if v.chapUser == "" {
		t.Fatal("the console shows no default CHAP credentials")
	}
	iqn := "iqn.2026-11.io.ferry:vol1"
	plain := fmt.Sprintf("iscsi://%s/%s/0", v.iscsi, iqn)
	withCHAP := fmt.Sprintf("iscsi://%s%%%s@%s/%s/0", v.chapUser, v.chapSecret, v.iscsi, iqn)
	if out, err := testutil.CombinedOutput(time.Minute, "iscsi-inq", plain); err == nil {
		t.Errorf("iscsi-inq without CHAP succeeded:\n%s", out)
	}
	if out, err := testutil.CombinedOutput(time.Minute, "iscsi-inq", withCHAP); err != nil || !strings.Contains(strings.ToLower(out), "ferry") {
		t.Errorf("iscsi-inq with CHAP: %v\n%s", err, out)
	}
	if out, err := testutil.CombinedOutput(2*time.Minute, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 1M 1M", "-c", "write -P 0x33 4M 64k", withCHAP); err != nil || strings.Contains(out, "fail") {
		t.Errorf("qemu-io over iSCSI with CHAP: %v\n%s", err, out)
	}

	// Power cuts under a flushing write load: 10 in CI, 50 in the long
	// mode; FERRY_APPLIANCE_CUTS=N overrides (doc.go).
	cycles, err := powerCuts()
	if err != nil {
		t.Fatal(err)
	}
	cutsStart := time.Now()
	var acked []int // epochs whose write and flush completed
	epoch := 0
	for c := 1; c <= cycles; c++ {
		cycleStart := time.Now()
		acked, epoch = powerCut(t, v, ca, acked, epoch, 3+c%3)
		v = boot(t, disks, false)
		ca = v.trustNBD(t)
		verifyEpochs(t, v, ca, acked)
		t.Logf("power cut %d/%d: %d acknowledged epochs intact (boot %s, cycle %s)", c, cycles, len(acked),
			v.bootTime.Round(time.Second), time.Since(cycleStart).Round(time.Second))
	}
	if cycles > 0 {
		t.Logf("%d power cuts in %s", cycles, time.Since(cutsStart).Round(time.Second))
	}

	// Upgrade: a fresh system disk, booted with UEFI; volumes, data and
	// the API token stay (they are on the data disk).
	token := v.token
	v.shutdown(t)
	disks.newSystem(t, img)
	v = boot(t, disks, true)
	if v.token != token {
		t.Errorf("the API token changed with the system disk")
	}
	out, err := v.ferry(token, "volume", "ls")
	if err != nil || !strings.Contains(out, "vol1") || !strings.Contains(out, "pc") {
		t.Fatalf("after the upgrade, ferry volume ls: %v\n%s", err, out)
	}
	ca = v.trustNBD(t)
	if out, err := v.qemuIO(ca, "vol1", "read -P 0x5a 1M 1M", "read -P 0x33 4M 64k"); err != nil {
		t.Fatalf("after the upgrade, vol1 data: %v\n%s", err, out)
	}
	verifyEpochs(t, v, ca, acked)
}

const epochSize = 256 << 10

// powerCuts is how many power cuts TestAppliance makes: 10, 50 with
// FERRY_APPLIANCE_LONG=1, or FERRY_APPLIANCE_CUTS.
func powerCuts() (int, error) {
	n := 10
	if os.Getenv("FERRY_APPLIANCE_LONG") == "1" {
		n = 50
	}
	if s := os.Getenv("FERRY_APPLIANCE_CUTS"); s != "" {
		c, err := strconv.Atoi(s)
		if err != nil || c < 0 {
			return 0, fmt.Errorf("FERRY_APPLIANCE_CUTS=%q: want a number of power cuts, 0 or more", s)
		}
		n = c
	}
	return n, nil
}

// powerCut writes epochs (each its own 256 KiB region with its own
// pattern, then flush) over NBD+TLS, one qemu-io per epoch, and kills
// QEMU once at least minEpochs more were acknowledged, while the next
// is in flight. It returns the acknowledged epochs.
func powerCut(t *testing.T, v *vm, ca string, acked []int, next, minEpochs int) ([]int, int) {
	t.Helper()
	var mu sync.Mutex
	done := make(chan struct{})
	stop := make(chan struct{})
	count := 0
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			e := next
			next++
			_, err := v.qemuIO(ca, "pc", fmt.Sprintf("write -P %d %d %d", e%251+1, e*epochSize, epochSize), "flush")
			if err != nil {
				return // the power is gone
			}
			mu.Lock()
			acked = append(acked, e)
			count++
			mu.Unlock()
		}
	}()
	for {
		mu.Lock()
		n := count
		mu.Unlock()
		if n >= minEpochs {
			break
		}
		select {
		case <-done:
			t.Fatalf("the write load stopped before the power cut; serial:\n%s", v.tail(20))
		case <-time.After(100 * time.Millisecond):
		}
	}
	v.kill() // mid-epoch: the loop's next qemu-io is writing
	close(stop)
	<-done
	mu.Lock()
	defer mu.Unlock()
	return append([]int(nil), acked...), next
}

func verifyEpochs(t *testing.T, v *vm, ca string, acked []int) {
	t.Helper()
	var cmds []string
	for _, e := range acked {
		cmds = append(cmds, fmt.Sprintf("read -P %d %d %d", e%251+1, e*epochSize, epochSize))
	}
	if out, err := v.qemuIO(ca, "pc", cmds...); err != nil {
		t.Fatalf("acknowledged epochs %v lost after the power cut: %v\n%s", acked, err, out)
	}
}

func httpStatus(t *testing.T, url, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func httpBody(t *testing.T, url, token string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return string(b)
}
