package acceptance

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gwire "github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/testutil"
	"github.com/ferry-io/ferry/kvm/wire"
)

// ferry-kvm tests: real QEMU (TCG), a real gateway, and the tiny guest
// scripts/kvm-guest-image builds (busybox /init whose behaviour the kernel
// command line picks: ferry.mode=marker|counter|files).

var (
	kvmOnce  sync.Once
	kvmBin   string
	kvmImage string
	kvmErr   error
)

// requireKVM builds ferry-kvm and the guest image once per run.
func requireKVM(t *testing.T) (bin, image string) {
	t.Helper()
	testutil.RequireTool(t, "qemu-system-x86_64")
	testutil.RequireTool(t, "nbdcopy")
	testutil.RequireTool(t, "debugfs")
	testutil.RequireTool(t, "mkfs.ext4")
	kvmOnce.Do(func() {
		bin := filepath.Join(filepath.Dir(ferryBin), "ferry-kvm")
		out, err := exec.Command("go", "build", "-o", bin, "github.com/ferry-io/ferry/cmd/ferry-kvm").CombinedOutput()
		if err != nil {
			kvmErr = fmt.Errorf("build ferry-kvm: %v\n%s", err, out)
			return
		}
		kvmBin = bin
		var stderr bytes.Buffer
		cmd := exec.Command("../../scripts/kvm-guest-image")
		cmd.Stderr = &stderr
		img, err := cmd.Output()
		if err != nil {
			kvmErr = fmt.Errorf("scripts/kvm-guest-image: %v\n%s", err, stderr.String())
			return
		}
		kvmImage = strings.TrimSpace(string(img))
	})
	if kvmErr != nil {
		t.Fatal(kvmErr)
	}
	return kvmBin, kvmImage
}

// kvmd is one `ferry-kvm serve`.
type kvmd struct {
	t      *testing.T
	bin    string
	addr   string
	state  string
	hostID string
	gw     *gateway
	cmd    *exec.Cmd
	logs   *testutil.SyncBuffer
	exited chan struct{}
	extra  []string
	// env is added to the CLI's environment (FERRY_KVM_TOKEN_FILE=...).
	env []string
	// daemonEnv is added to the daemon's environment at its next start.
	daemonEnv []string
	// ca, when set, is the CA of the daemon's --api-tls-cert: it serves
	// HTTPS.
	ca string
}

// api is the daemon's API address as the CLI takes it.
func (d *kvmd) api() string {
	if d.ca != "" {
		return "https://" + d.addr
	}
	return d.addr
}

func startKVMD(t *testing.T, gw *gateway, hostID string, extra ...string) *kvmd {
	t.Helper()
	d := newKVMD(t, gw, hostID, extra...)
	d.start()
	return d
}

// newKVMD is startKVMD without the start: set ca (and TLS flags in
// extra) first for a daemon serving HTTPS.
func newKVMD(t *testing.T, gw *gateway, hostID string, extra ...string) *kvmd {
	t.Helper()
	bin, _ := requireKVM(t)
	d := &kvmd{t: t, bin: bin, gw: gw, hostID: hostID, state: t.TempDir(), addr: fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)), logs: &testutil.SyncBuffer{}, extra: extra}
	t.Cleanup(func() {
		if d.cmd != nil {
			select {
			case <-d.exited:
			default:
				d.cmd.Process.Signal(syscall.SIGTERM)
				<-d.exited
			}
		}
		// The VMs outlive the daemon by design: end the QEMUs this test
		// started, by their pid files.
		pids, _ := filepath.Glob(filepath.Join(d.state, "vms", "*", "qemu.pid"))
		for _, p := range pids {
			b, _ := os.ReadFile(p)
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if t.Failed() {
			t.Logf("ferry-kvm %s log:\n%s", hostID, tail(d.logs.String(), 80))
		}
	})
	return d
}

func (d *kvmd) start() {
	d.t.Helper()
	d.cmd = exec.Command(d.bin, append([]string{"serve", "--listen", d.addr, "--state", d.state, "--host-id", d.hostID, "--stop-timeout", "3s", "--reconnect-delay", "60s"}, d.extra...)...)
	d.cmd.Env = append(append(os.Environ(), "FERRY_KVM_GATEWAY="+d.gw.apiAddr), d.daemonEnv...)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.exited = make(chan struct{})
	go func() { d.cmd.Wait(); close(d.exited) }()
	hc, health := http.DefaultClient, "http://"+d.addr+"/healthz"
	if d.ca != "" {
		health = d.api() + "/healthz"
		pem, _ := os.ReadFile(d.ca)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		hc = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	}
	waitHealthy(d.t, "ferry-kvm", hc, health, 30*time.Second, d.exited, d.logs)
}

// restartWith stops the daemon (SIGTERM: its VMs run on) and starts it
// again with env added to its environment (nil: none), e.g. a test hook.
func (d *kvmd) restartWith(env ...string) {
	d.t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.exited
	d.daemonEnv = env
	d.start()
}

// migrateUntilDeath migrates VM name to b and waits for the daemon to
// kill itself by its test hook at step (vm migrate returns when it dies).
func (d *kvmd) migrateUntilDeath(name string, b *kvmd, step string) {
	d.t.Helper()
	r := d.vm("migrate", name, "--to", b.addr)
	select {
	case <-d.exited:
	case <-time.After(time.Minute):
		d.t.Fatalf("the source daemon did not die at %s; vm migrate: exit %d\n%s%s", step, r.code, r.stdout, r.stderr)
	}
}

// startCounterVM creates and starts VM name on d with the counter guest
// and disk, and waits for its count to pass 5; it returns QEMU's pid and
// the count seen.
func startCounterVM(t *testing.T, d *kvmd, image, name, disk string) (pid, n int) {
	t.Helper()
	d.mustVM(append([]string{"create", name, "--disk", disk}, guestArgs(image, "counter")...)...)
	d.mustVM("start", name)
	return d.info(name).PID, d.waitCounterPast(name, 5, bootTimeout)
}

// wantHolder fails the test unless g lists holder as vol's one attachment.
func wantHolder(t *testing.T, g *gateway, vol, holder, when string) {
	t.Helper()
	if l := attachments(t, g, vol); len(l) != 1 || l[0] != holder {
		t.Fatalf("attachments of %s %s: %v, want [%s]", vol, when, l, holder)
	}
}

// waitForgotten waits for d to no longer list VM name.
func (d *kvmd) waitForgotten(name string) {
	d.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); strings.Contains(d.mustVM("ls"), name); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			d.t.Fatalf("%s still lists the VM:\n%s", d.hostID, d.mustVM("ls"))
		}
	}
}

func (d *kvmd) kill9() {
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.exited
}

// vm runs `ferry-kvm vm ARGS` against this daemon.
func (d *kvmd) vm(args ...string) cliResult {
	d.t.Helper()
	cmd := exec.Command(d.bin, append([]string{"vm"}, args...)...)
	cmd.Env = append(append(os.Environ(), "FERRY_KVM_API="+d.api()), d.env...)
	if d.ca != "" {
		cmd.Env = append(cmd.Env, "FERRY_KVM_API_CA="+d.ca)
	}
	return runCLI(d.t, cmd)
}

func (d *kvmd) mustVM(args ...string) string {
	d.t.Helper()
	r := d.vm(args...)
	if r.code != 0 {
		d.t.Fatalf("ferry-kvm vm %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func (d *kvmd) info(name string) wire.VMInfo {
	d.t.Helper()
	var in wire.VMInfo
	if err := json.Unmarshal([]byte(d.mustVM("info", name, "--json")), &in); err != nil {
		d.t.Fatal(err)
	}
	return in
}

func (d *kvmd) serial(name string) string {
	d.t.Helper()
	return d.mustVM("log", name, "--bytes", "4000000")
}

// waitSerial waits until the VM's serial log matches re and returns the
// last match's first group (or the whole match).
func (d *kvmd) waitSerial(name string, re *regexp.Regexp, timeout time.Duration) string {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := d.serial(name)
		if m := re.FindAllStringSubmatch(s, -1); len(m) > 0 {
			last := m[len(m)-1]
			return last[len(last)-1]
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("vm %s: no %q on the serial console within %s:\n%s", name, re, timeout, tail(s, 30))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// guestArgs are the create flags that boot the test guest in mode.
func guestArgs(image, mode string, extra ...string) []string {
	return []string{"--memory", "192M", "--accel", "tcg", "--net", "none",
		"--kernel", filepath.Join(image, "vmlinuz"), "--initrd", filepath.Join(image, "initrd"),
		"--append", strings.TrimSpace("console=ttyS0 quiet panic=-1 ferry.mode=" + mode + " " + strings.Join(extra, " "))}
}

// ext4Volume creates a volume holding an empty ext4 file system.
func ext4Volume(t *testing.T, g *gateway, name string) {
	t.Helper()
	g.mustCLI("volume", "create", name, "--size", "64M")
	img := filepath.Join(t.TempDir(), "fs.img")
	run(t, time.Minute, "truncate", "-s", "64M", img)
	run(t, time.Minute, "mkfs.ext4", "-q", "-F", img)
	if out, err := runErr(2*time.Minute, "nbdcopy", img, g.uri(name)); err != nil {
		t.Fatalf("nbdcopy: %v %s", err, out)
	}
}

// volumeImage copies a volume to a file through NBD.
func volumeImage(t *testing.T, g *gateway, name string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), name+".img")
	if out, err := runErr(2*time.Minute, "nbdcopy", g.uri(name), img); err != nil {
		t.Fatalf("nbdcopy %s: %v %s", name, err, out)
	}
	return img
}

const bootTimeout = 4 * time.Minute

// TestKVMCreateStartMarkerStop: a VM boots from its kernel, writes a
// marker file to its Ferry disk (ext4), is stopped, and the marker is on
// the volume. Around it: bad input is refused clearly, a second daemon
// cannot take the running VM's volume, metrics and info say what runs.
func TestKVMCreateStartMarkerStop(t *testing.T) {
	_, image := requireKVM(t)
	g := startGateway(t)
	a := startKVMD(t, g, "host-a")
	b := startKVMD(t, g, "host-b")
	ext4Volume(t, g, "m-root")

	for _, c := range []struct {
		args []string
		want string
	}{
		{append([]string{"create", "bad1", "--disk", "no-such-vol"}, guestArgs(image, "marker")...), "no volume no-such-vol"},
		{append([]string{"create", "bad2", "--disk", "m-root", "--memory", "100T"}, guestArgs(image, "marker")[2:]...), "more than this host has"},
		{append([]string{"create", "bad3", "--disk", "new:m-root:1G"}, guestArgs(image, "marker")...), "exists already"},
	} {
		r := a.vm(c.args...)
		if r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Fatalf("vm %v: exit %d, stderr %q; want an error saying %q", c.args[:3], r.code, r.stderr, c.want)
		}
	}
	noQEMU := startKVMD(t, g, "host-c", "--qemu", "/nonexistent/qemu-system-x86_64")
	if r := noQEMU.vm(append([]string{"create", "q1", "--disk", "m-root"}, guestArgs(image, "marker")...)...); r.code == 0 || !strings.Contains(r.stderr, "QEMU is missing") {
		t.Fatalf("create without QEMU: exit %d, stderr %q", r.code, r.stderr)
	}

	a.mustVM(append([]string{"create", "m1", "--disk", "m-root", "--cpus", "1", "--autostart"}, guestArgs(image, "marker", "ferry.token=tok-4711")...)...)
	if r := a.vm(append([]string{"create", "m1", "--disk", "new:other:64M"}, guestArgs(image, "marker")...)...); r.code == 0 || !strings.Contains(r.stderr, "vm m1: already exists") {
		t.Fatalf("duplicate name: exit %d, stderr %q", r.code, r.stderr)
	}
	a.mustVM("start", "m1")
	a.waitSerial("m1", regexp.MustCompile(`FERRY-KVM: marker (tok-4711)`), bootTimeout)

	in := a.info("m1")
	if in.State != wire.StateRunning || in.PID == 0 || len(in.Disks) != 1 || !strings.Contains(in.Disks[0].Attach, "nbd://"+g.nbdAddr+"/m-root") || in.Disks[0].Holder != "host-a:m1" {
		t.Fatalf("vm info: %+v", in)
	}
	// The gateway's attachment names the VM, and another daemon's VM
	// cannot have the volume.
	atts := g.mustCLI("volume", "info", "m-root")
	if !strings.Contains(atts, "host-a:m1") {
		t.Fatalf("volume info does not show the VM's attachment:\n%s", atts)
	}
	r := b.vm(append([]string{"create", "m2", "--disk", "m-root"}, guestArgs(image, "marker")...)...)
	if r.code == 0 || !strings.Contains(r.stderr, "in use") || !strings.Contains(r.stderr, "host-a:m1") {
		t.Fatalf("second VM on the same volume: exit %d, stderr %q; want refused, naming host-a:m1", r.code, r.stderr)
	}
	metrics := httpGet(t, "http://"+a.addr+"/metrics")
	if !strings.Contains(metrics, `ferry_kvm_vms{state="running"} 1`) {
		t.Fatalf("metrics do not count the running VM:\n%s", metrics)
	}

	// The guest powers off on the ACPI power button, well within the
	// (generous) timeout: QEMU is not quit under it.
	a.mustVM("stop", "m1", "--timeout", "120s")
	if in := a.info("m1"); in.State != wire.StateStopped {
		t.Fatalf("after stop: state %s", in.State)
	}
	if s := a.serial("m1"); !strings.Contains(s, "FERRY-KVM: ACPI power button: powering off") {
		t.Fatalf("the guest did not power off through ACPI:\n%s", tail(s, 10))
	}
	if strings.Contains(a.logs.String(), "guest did not power off in time") {
		t.Fatal("vm stop quit QEMU instead of waiting for the ACPI powerdown")
	}
	img := volumeImage(t, g, "m-root")
	out, err := testutil.Output(time.Minute, "debugfs", "-R", "cat /marker", img)
	if err != nil || strings.TrimSpace(out) != "tok-4711" {
		t.Fatalf("marker on the volume: %q, %v", out, err)
	}
	// An autostart VM starts with the daemon.
	a.cmd.Process.Signal(syscall.SIGTERM)
	<-a.exited
	a.start()
	if in := a.info("m1"); in.State != wire.StateRunning || in.PID == 0 {
		t.Fatalf("autostart VM after the daemon's restart: state %s pid %d", in.State, in.PID)
	}
	a.mustVM("stop", "m1", "--force")
	// Stopped, the volume is free: the other daemon can have it now.
	b.mustVM(append([]string{"create", "m2", "--disk", "m-root"}, guestArgs(image, "marker")...)...)
	a.mustVM("rm", "m1", "--keep-disks")
	if r := a.vm("info", "m1"); r.code == 0 {
		t.Fatalf("vm info after rm succeeded: %s", r.stdout)
	}
	g.info("m-root") // kept
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return b.String()
}

var counterRE = regexp.MustCompile(`FERRY-KVM: counter (\d+)`)

// counters returns the counter values printed in s, in order.
func counters(s string) []int {
	var out []int
	for _, m := range counterRE.FindAllStringSubmatch(s, -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

// waitCounterPast waits until the VM printed a counter above n.
func (d *kvmd) waitCounterPast(name string, n int, timeout time.Duration) int {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := counters(d.serial(name))
		if len(c) > 0 && c[len(c)-1] > n {
			return c[len(c)-1]
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("vm %s: counter did not pass %d within %s:\n%s", name, n, timeout, tail(d.serial(name), 20))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// checkConsecutive fails unless cs counts 1, 2, 3, ... without a gap or
// a restart.
func checkConsecutive(t *testing.T, what string, cs []int) {
	t.Helper()
	if len(cs) == 0 || cs[0] != 1 {
		t.Fatalf("%s: counter does not start at 1: %v", what, cs[:min(len(cs), 10)])
	}
	for i := 1; i < len(cs); i++ {
		if cs[i] != cs[i-1]+1 {
			t.Fatalf("%s: counter goes %d -> %d (gap or restart)", what, cs[i-1], cs[i])
		}
	}
}

// TestKVMSurvivesDaemonKillAndMigrates: a guest counts (write + fsync to
// its disk every 100 ms, printed on the console). ferry-kvm is killed -9
// and restarted: the VM never stops and is found again. A migration whose
// destination QEMU is killed half-way fails and the VM runs on at the
// source. A second migration moves it: the count continues on the
// destination without a gap or restart, the source QEMU is gone, the
// attachment names the destination, and the disk holds the latest value.
func TestKVMSurvivesDaemonKillAndMigrates(t *testing.T) {
	_, image := requireKVM(t)
	g := startGateway(t)
	a := startKVMD(t, g, "host-a")
	b := startKVMD(t, g, "host-b")
	a.mustVM(append([]string{"create", "c1", "--disk", "new:c-root:64M"}, guestArgs(image, "counter")...)...)
	a.mustVM("start", "c1")
	pid := a.info("c1").PID
	n := a.waitCounterPast("c1", 5, bootTimeout)

	// kill -9 the daemon; the guest keeps counting; a new daemon adopts it.
	a.kill9()
	time.Sleep(time.Second)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("QEMU pid %d gone after ferry-kvm was killed: %v", pid, err)
	}
	a.start()
	in := a.info("c1")
	if in.State != wire.StateRunning || in.PID != pid {
		t.Fatalf("after the daemon's restart: state %s pid %d, want running pid %d", in.State, in.PID, pid)
	}
	if ls := a.mustVM("ls"); !regexp.MustCompile(`c1\s+running\s+` + strconv.Itoa(pid)).MatchString(ls) {
		t.Fatalf("vm ls after restart:\n%s", ls)
	}
	n = a.waitCounterPast("c1", n+5, time.Minute)

	// A migration whose destination dies half-way.
	done := make(chan cliResult, 1)
	go func() { done <- a.vm("migrate", "c1", "--to", b.addr, "--bandwidth", "1M") }()
	deadline := time.Now().Add(time.Minute)
	var dpid int
	for dpid == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the destination never showed the incoming VM")
		}
		var vms []wire.VMInfo
		json.Unmarshal([]byte(b.mustVM("ls", "--json")), &vms)
		for _, v := range vms {
			if v.Name == "c1" && v.State == wire.StateIncoming && v.PID != 0 {
				dpid = v.PID
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Let some RAM cross, then kill the destination's QEMU.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if m := a.info("c1").Migration; m != nil && m.TransferredBytes > 1<<20 {
			break
		}
	}
	syscall.Kill(dpid, syscall.SIGKILL)
	r := <-done
	if r.code == 0 || !strings.Contains(r.stderr, "failed") {
		t.Fatalf("migrate with the destination killed: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	in = a.info("c1")
	if in.State != wire.StateRunning || in.PID != pid || in.Migration == nil || in.Migration.Status != "failed" {
		t.Fatalf("after the failed migration: %+v", in)
	}
	a.waitCounterPast("c1", a.waitCounterPast("c1", n, time.Minute)+3, time.Minute)

	// The real migration.
	out := a.mustVM("migrate", "c1", "--to", b.addr)
	m := regexp.MustCompile(`downtime (\d+) ms, total (\d+) ms`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "transferred") {
		t.Fatalf("vm migrate output lacks progress or downtime:\n%s", out)
	}
	t.Logf("migration: downtime %s ms, total %s ms", m[1], m[2])
	srcLog := a.serial("c1")
	if err := syscall.Kill(pid, 0); err == nil {
		time.Sleep(3 * time.Second)
		if err := syscall.Kill(pid, 0); err == nil {
			t.Fatalf("source QEMU pid %d still runs after the migration", pid)
		}
	}
	in = b.info("c1")
	if in.State != wire.StateRunning || in.Disks[0].Holder != "host-b:c1" {
		t.Fatalf("destination after migration: %+v", in)
	}
	if atts := g.mustCLI("volume", "info", "c-root"); !strings.Contains(atts, "host-b:c1") || strings.Contains(atts, "host-a:c1") {
		t.Fatalf("the attachment did not move to the destination:\n%s", atts)
	}
	last := counters(srcLog)
	b.waitCounterPast("c1", last[len(last)-1]+10, time.Minute)
	// The serial stream is the source's output followed by the
	// destination's.
	checkConsecutive(t, "source then destination console", counters(srcLog+b.serial("c1")))

	// The serial console streams the guest's output; Ctrl-] leaves.
	con := exec.Command(b.bin, "vm", "console", "c1")
	con.Env = append(os.Environ(), "FERRY_KVM_API="+b.addr)
	stdin, err := con.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	conOut := &testutil.SyncBuffer{}
	con.Stdout, con.Stderr = conOut, conOut
	if err := con.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !counterRE.MatchString(conOut.String()); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			con.Process.Kill()
			t.Fatalf("vm console showed no counter in 30 s:\n%s", conOut)
		}
	}
	stdin.Write([]byte{0x1d})
	if err := con.Wait(); err != nil || !strings.Contains(conOut.String(), "left the console") {
		t.Fatalf("vm console after Ctrl-]: %v\n%s", err, tail(conOut.String(), 5))
	}

	b.mustVM("stop", "c1", "--force")
	final := counters(b.serial("c1"))
	lastPrinted := final[len(final)-1]
	checkDiskCounter(t, g, "c-root", lastPrinted)
}

// checkMoved checks that volume vol (id) moved from gateway from to
// gateway to: from no longer lists it, to serves it under the same id and
// holds its writer lease.
func checkMoved(t *testing.T, from, to *gateway, vol, id string) {
	t.Helper()
	if r := from.cli("volume", "info", vol); r.code == 0 {
		t.Fatalf("gateway %s still lists %s after the migration:\n%s", from.apiAddr, vol, r.stdout)
	}
	var in gwire.VolumeInfo
	if err := json.Unmarshal([]byte(to.mustCLI("volume", "info", vol, "--json")), &in); err != nil {
		t.Fatal(err)
	}
	if in.ID != id || in.Tier == nil || in.Tier.Lease == nil || in.Tier.Lease.State != "held" {
		t.Fatalf("gateway %s's volume %s: id %s (want %s), tier %+v", to.apiAddr, vol, in.ID, id, in.Tier)
	}
}

// checkDiskCounter reads the counter guest's last value from its disk
// (copied out of gw) and checks it is the console's last (or the one
// after it, written but not yet printed).
func checkDiskCounter(t *testing.T, gw *gateway, vol string, lastPrinted int) {
	t.Helper()
	f, err := os.Open(volumeImage(t, gw, vol))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64)
	f.ReadAt(buf, 1<<20)
	got, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(string(bytes.TrimRight(buf, " \n\x00")), "counter ")))
	if got != lastPrinted && got != lastPrinted+1 {
		t.Fatalf("disk %s on gateway %s holds counter %d (%q); the console's last was %d", vol, gw.apiAddr, got, buf, lastPrinted)
	}
}

// TestKVMMigrateBetweenGateways: two gateways on one S3 bucket, each with
// its own ferry-kvm. A guest counting on an S3-backed volume (write +
// fsync every 100 ms) migrates from A's host to B's: the count goes on
// without a gap or restart, the source QEMU is gone, gateway A released
// the volume, gateway B holds its writer lease and the destination's
// attachment, and the disk read from B holds the latest count.
func TestKVMMigrateBetweenGateways(t *testing.T) {
	_, image := requireKVM(t)
	_, ga, gb := twoGateways(t, "ferry-kvm-move")
	a := startKVMD(t, ga, "host-a")
	b := startKVMD(t, gb, "host-b")
	ga.mustCLI("volume", "create", "x-root", "--size", "64M", "--store", "cloud")
	id := ga.info("x-root").ID
	a.mustVM(append([]string{"create", "x1", "--disk", "x-root"}, guestArgs(image, "counter")...)...)
	a.mustVM("start", "x1")
	pid := a.info("x1").PID
	a.waitCounterPast("x1", 5, bootTimeout)

	out := a.mustVM("migrate", "x1", "--to", b.addr)
	m := regexp.MustCompile(`downtime (\d+) ms, total (\d+) ms`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "released on the source's gateway and adopted on the destination's") {
		t.Fatalf("vm migrate output lacks the downtime or the hand-over:\n%s", out)
	}
	t.Logf("migration between gateways: downtime %s ms (QEMU's plus the release/adopt hand-over), total %s ms", m[1], m[2])
	if l := regexp.MustCompile(`.*migration between gateways completed.*`).FindString(a.logs.String()); l != "" {
		t.Log(l)
	}
	srcLog := a.serial("x1")
	if err := syscall.Kill(pid, 0); err == nil {
		time.Sleep(3 * time.Second)
		if err := syscall.Kill(pid, 0); err == nil {
			t.Fatalf("source QEMU pid %d still runs after the migration", pid)
		}
	}
	in := b.info("x1")
	if in.State != wire.StateRunning || in.Disks[0].Holder != "host-b:x1" || !strings.Contains(in.Disks[0].Attach, "nbd://"+gb.nbdAddr+"/x-root") || in.LastError != "" {
		t.Fatalf("destination after the migration: %+v", in)
	}
	// Gateway A let the volume go; B serves it, holds the writer lease
	// and the destination's attachment.
	checkMoved(t, ga, gb, "x-root", id)
	if atts := gb.mustCLI("volume", "info", "x-root"); !strings.Contains(atts, "host-b:x1") {
		t.Fatalf("gateway B shows no attachment for the destination:\n%s", atts)
	}
	last := counters(srcLog)
	b.waitCounterPast("x1", last[len(last)-1]+10, time.Minute)
	checkConsecutive(t, "source then destination console", counters(srcLog+b.serial("x1")))

	// Back to A while another client reads the volume on gateway B:
	// B refuses the release, so the volume stays on B; the VM runs on A's
	// host with its disk on gateway B, and says so.
	bLog := migrateKeepingDisk(t, b, a, gb, "x1", "x-root")
	if r := ga.cli("volume", "info", "x-root"); r.code == 0 {
		t.Fatalf("gateway A serves the volume, which should have stayed on B:\n%s", r.stdout)
	}
	last = counters(bLog)
	a.waitCounterPast("x1", last[len(last)-1]+10, time.Minute)
	checkConsecutive(t, "A, then B, then A again", counters(srcLog+bLog+a.serial("x1")))

	a.mustVM("stop", "x1", "--force")
	final := counters(a.serial("x1"))
	lastPrinted := final[len(final)-1]
	checkDiskCounter(t, gb, "x-root", lastPrinted)

	// Brought home as KVM.md says (released on B, adopted on A): the VM
	// starts on A's own export.
	gb.mustCLI("volume", "release", "x-root")
	ga.mustCLI("volume", "adopt", "cloud", id, "--name", "x-root")
	before := a.serial("x1")
	a.mustVM("start", "x1")
	in = a.info("x1")
	if in.State != wire.StateRunning || !strings.Contains(in.Disks[0].Attach, "nbd://"+ga.nbdAddr+"/x-root") || strings.Contains(in.Disks[0].Attach, "not this host's") {
		t.Fatalf("started on A after the volume came home: %+v", in)
	}
	wantHolder(t, ga, "x-root", "host-a:x1", "after the start on A")
	waitCountingSince(t, a, "x1", before)
	a.mustVM("stop", "x1", "--force")
}

// migrateKeepingDisk migrates VM name from one host to another on
// another gateway while a qemu-io reader holds vol open on g, the
// source's gateway: g refuses the release, so the VM runs at the
// destination with its disk left on g, and says so. It returns the
// source's console, and ends the reader.
func migrateKeepingDisk(t *testing.T, from, to *kvmd, g *gateway, name, vol string) string {
	t.Helper()
	qemuIO := testutil.RequireTool(t, "qemu-io")
	reader := exec.Command(qemuIO, "-r", "-f", "raw", "-c", "sleep 600000", g.uri(vol))
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { reader.Process.Kill(); reader.Wait() }()
	for deadline := time.Now().Add(30 * time.Second); len(g.info(vol).Connections) < 2; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the reader did not connect to %s: %+v", g.apiAddr, g.info(vol).Connections)
		}
	}
	out := from.mustVM("migrate", name, "--to", to.addr)
	if !strings.Contains(out, vol+" stays on the source's gateway: release failed") {
		t.Fatalf("migrating with a client on the volume: output does not say the volume stayed on the source's gateway:\n%s", out)
	}
	t.Logf("migration %s → %s, volume left on the source's gateway: %s", from.hostID, to.hostID, strings.Join(regexp.MustCompile(`(?m)^(migrated|volumes:) .*$`).FindAllString(out, -1), " / "))
	console := from.serial(name)
	in := to.info(name)
	if in.State != wire.StateRunning || !strings.Contains(in.Disks[0].Attach, "nbd://"+g.nbdAddr+"/"+vol) || !strings.Contains(in.Disks[0].Attach, "not this host's") || !strings.Contains(in.LastError, "release failed") {
		t.Fatalf("VM on %s with its disk left on %s: %+v", to.hostID, g.apiAddr, in)
	}
	wantHolder(t, g, vol, to.hostID+":"+name, "with the disk left on the source's gateway")
	return console
}

// TestKVMMigrateDiskLeftOnAnotherGateway: a VM whose disk a refused
// release left on the source's gateway migrates on from there, both
// ways: to a host on a third gateway (the disk's gateway releases the
// volume and the destination's adopts it), and to a host on the disk's
// own gateway (a migration within that gateway: nothing is released or
// adopted). The count goes on without a gap throughout.
func TestKVMMigrateDiskLeftOnAnotherGateway(t *testing.T) {
	_, image := requireKVM(t)
	const bucket = "ferry-kvm-left"
	srv, ga, gb := twoGateways(t, bucket)
	gc := startGateway(t, "--checkpoint-interval", "1h", "--lease-ttl", "9s", "--cache-size", "2G")
	gc.mustCLI("store", "add", "cloud", "--endpoint", srv.Endpoint, "--bucket", bucket)
	a, b, c := startKVMD(t, ga, "host-a"), startKVMD(t, gb, "host-b"), startKVMD(t, gc, "host-c")
	ga.mustCLI("volume", "create", "l-root", "--size", "64M", "--store", "cloud")
	id := ga.info("l-root").ID
	startCounterVM(t, a, image, "l1", "l-root")
	console := migrateKeepingDisk(t, a, b, ga, "l1", "l-root")

	// From B (disk on gateway A) to C: A releases, C adopts.
	out := b.mustVM("migrate", "l1", "--to", c.addr)
	if !strings.Contains(out, "released on the source's gateway and adopted on the destination's") {
		t.Fatalf("B to C with the disk on gateway A: the output lacks the hand-over:\n%s", out)
	}
	t.Logf("B to C, the disk moved from gateway A to C: %s", regexp.MustCompile(`(?m)^migrated .*$`).FindString(out))
	console += b.serial("l1")
	in := c.info("l1")
	if in.State != wire.StateRunning || !strings.Contains(in.Disks[0].Attach, "nbd://"+gc.nbdAddr+"/l-root") || strings.Contains(in.Disks[0].Attach, "not this host's") || in.LastError != "" {
		t.Fatalf("on C after B to C: %+v", in)
	}
	checkMoved(t, ga, gc, "l-root", id)
	wantHolder(t, gc, "l-root", "host-c:l1", "after B to C")
	cs := counters(console)
	c.waitCounterPast("l1", cs[len(cs)-1]+5, time.Minute)

	// Stopped on A with its disk left on gateway C, and started again: the
	// disk is still C's.
	console += migrateKeepingDisk(t, c, a, gc, "l1", "l-root")
	cs = counters(console)
	a.waitCounterPast("l1", cs[len(cs)-1]+5, time.Minute)
	a.mustVM("stop", "l1", "--force")
	console += a.serial("l1")
	checkConsecutive(t, "A, B, C, A", counters(console))
	cs = counters(console)
	checkDiskCounter(t, gc, "l-root", cs[len(cs)-1])
	before := a.serial("l1")
	a.mustVM("start", "l1")
	in = a.info("l1")
	if in.State != wire.StateRunning || !strings.Contains(in.Disks[0].Attach, "nbd://"+gc.nbdAddr+"/l-root") || !strings.Contains(in.Disks[0].Attach, "not this host's") {
		t.Fatalf("started again on A, its disk on gateway C: %+v", in)
	}
	wantHolder(t, gc, "l-root", "host-a:l1", "after the start on A")
	waitCountingSince(t, a, "l1", before)

	// From A (disk on gateway C) to C: a migration within gateway C.
	out = a.mustVM("migrate", "l1", "--to", c.addr)
	if !regexp.MustCompile(`downtime \d+ ms`).MatchString(out) || strings.Contains(out, "volumes:") {
		t.Fatalf("A to C with the disk on gateway C: want a migration within gateway C, nothing released or adopted:\n%s", out)
	}
	console = a.serial("l1")
	if !strings.HasPrefix(console, before) {
		t.Fatalf("A's console of l1 after the migration does not begin with the one before the start")
	}
	console = console[len(before):]
	in = c.info("l1")
	if in.State != wire.StateRunning || !strings.Contains(in.Disks[0].Attach, "nbd://"+gc.nbdAddr+"/l-root") || strings.Contains(in.Disks[0].Attach, "not this host's") || in.LastError != "" {
		t.Fatalf("on C after A to C: %+v", in)
	}
	wantHolder(t, gc, "l-root", "host-c:l1", "after A to C")
	for _, g := range []*gateway{ga, gb} {
		if r := g.cli("volume", "info", "l-root"); r.code == 0 {
			t.Fatalf("gateway %s serves the volume, which is on C:\n%s", g.apiAddr, r.stdout)
		}
	}
	cs = counters(console)
	c.waitCounterPast("l1", cs[len(cs)-1]+10, time.Minute)
	checkConsecutive(t, "A after its start, then C", counters(console+c.serial("l1")))

	// Removed with its disks from B, its disk left on C: the volume goes
	// from C.
	migrateKeepingDisk(t, c, b, gc, "l1", "l-root")
	b.mustVM("stop", "l1", "--force")
	b.mustVM("rm", "l1")
	if r := gc.cli("volume", "info", "l-root"); r.code == 0 {
		t.Fatalf("vm rm on B left the VM's volume on gateway C:\n%s", r.stdout)
	}
}

// waitCountingSince waits until VM name, started again on d, has counted
// past 5 in the console after before (its console up to the start).
func waitCountingSince(t *testing.T, d *kvmd, name, before string) {
	t.Helper()
	var since string
	for deadline := time.Now().Add(bootTimeout); ; time.Sleep(300 * time.Millisecond) {
		now := d.serial(name)
		if !strings.HasPrefix(now, before) {
			t.Fatalf("the console of %s before its start is not the beginning of the one after", name)
		}
		if since = now[len(before):]; len(counters(since)) > 5 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s started again on %s does not count:\n%s", name, d.hostID, tail(since, 20))
		}
	}
}

// TestKVMMigrateBetweenGatewaysSourceDies: the source ferry-kvm dies
// (SIGKILL, by a test hook) the moment QEMU reports the migration
// completed, before any hand-over step. The destination, finding the
// source silent, finishes the hand-over itself: the guest resumes there
// on its own, the volume ends on the destination's gateway, and the
// restarted source daemon quits its leftover QEMU and forgets the VM.
func TestKVMMigrateBetweenGatewaysSourceDies(t *testing.T) {
	_, image := requireKVM(t)
	_, ga, gb := twoGateways(t, "ferry-kvm-die")
	a := startKVMD(t, ga, "host-a")
	b := startKVMD(t, gb, "host-b")
	ga.mustCLI("volume", "create", "d-root", "--size", "64M", "--store", "cloud")
	id := ga.info("d-root").ID
	a.mustVM(append([]string{"create", "d1", "--disk", "d-root"}, guestArgs(image, "counter")...)...)
	a.mustVM("start", "d1")
	pid := a.info("d1").PID
	a.waitCounterPast("d1", 5, bootTimeout)

	// Restart the source daemon with the hook: it dies at completed.
	a.restartWith("FERRY_KVM_TEST_DIE_AFTER=completed")
	if in := a.info("d1"); in.State != wire.StateRunning || in.PID != pid {
		t.Fatalf("vm after the source daemon's restart: %+v", in)
	}
	a.migrateUntilDeath("d1", b, "completed")
	if syscall.Kill(pid, 0) != nil {
		t.Fatalf("the source QEMU pid %d is gone: the test hook fired too late", pid)
	}
	start := time.Now()
	deadline := start.Add(3 * time.Minute)
	for b.info("d1").State != wire.StateRunning {
		if time.Now().After(deadline) {
			t.Fatalf("the destination did not resume the guest on its own: %+v", b.info("d1"))
		}
		time.Sleep(time.Second)
	}
	t.Logf("destination resumed the guest %.1f s after the source died (hand-over timeout 20 s)", time.Since(start).Seconds())
	in := b.info("d1")
	if in.Disks[0].Holder != "host-b:d1" || !strings.Contains(in.Disks[0].Attach, "nbd://"+gb.nbdAddr+"/d-root") || !strings.Contains(in.LastError, "this host finished the hand-over") {
		t.Fatalf("destination after the take-over: %+v", in)
	}
	checkMoved(t, ga, gb, "d-root", id)

	// The source daemon comes back: it quits the QEMU left in
	// postmigrate and does not list the VM.
	a.restartWith()
	waitExited(t, pid)
	for _, d := range []*kvmd{b, a} {
		for _, l := range regexp.MustCompile(`.*(source went silent|released on the source's gateway by the destination|migrated away while ferry-kvm was down).*`).FindAllString(d.logs.String(), -1) {
			t.Log(l)
		}
	}
	movedOn(t, a, b, "d1")
	b.mustVM("stop", "d1", "--force")
}

// waitExited waits for the source's QEMU, pid, to be quit by its
// restarted daemon.
func waitExited(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the restarted source daemon left QEMU pid %d running", pid)
		}
	}
}

// movedOn checks VM name after a migration from a to b that completed
// while a's daemon was dead: a no longer lists it and kept its serial log,
// and the count goes on at b from where the source's log ends, without a
// gap.
func movedOn(t *testing.T, a, b *kvmd, name string) {
	t.Helper()
	if ls := a.mustVM("ls"); strings.Contains(ls, name) {
		t.Fatalf("the restarted source daemon lists the VM:\n%s", ls)
	}
	srcLog, err := os.ReadFile(filepath.Join(a.state, "migrated", name, "serial.log"))
	if err != nil {
		t.Fatalf("the source's serial log was not kept: %v", err)
	}
	last := counters(string(srcLog))
	b.waitCounterPast(name, last[len(last)-1]+10, time.Minute)
	checkConsecutive(t, "source then destination console", counters(string(srcLog)+b.serial(name)))
}

// TestKVMMigrateSourceDies: on one gateway, the source daemon dies
// (SIGKILL, by its test hook) right after QEMU reported the migration
// completed, before its done call. The attachment already moved to the
// destination at the switchover and the destination's guest runs, so the
// destination takes the VM over on its own once the guest has run there
// for the hand-over timeout (20 s): running, renewing its attachment, the
// guest's counter going on from the source's. The restarted source daemon
// quits the QEMU it left in postmigrate and forgets the VM.
func TestKVMMigrateSourceDies(t *testing.T) {
	_, image := requireKVM(t)
	g := startGateway(t)
	a := startKVMD(t, g, "host-a")
	b := startKVMD(t, g, "host-b")
	pid, _ := startCounterVM(t, a, image, "s1", "new:s-root:64M")
	a.restartWith("FERRY_KVM_TEST_DIE_AFTER=completed")
	if in := a.info("s1"); in.State != wire.StateRunning || in.PID != pid {
		t.Fatalf("vm after the source daemon's restart: %+v", in)
	}
	a.migrateUntilDeath("s1", b, "completed")
	if syscall.Kill(pid, 0) != nil {
		t.Fatalf("the source QEMU pid %d is gone: the test hook fired too late", pid)
	}
	if in := b.info("s1"); in.State != wire.StateIncoming {
		t.Fatalf("destination right after the source died: %+v, want incoming (no done call came)", in)
	}
	start := time.Now()
	for deadline := start.Add(3 * time.Minute); b.info("s1").State != wire.StateRunning; time.Sleep(time.Second) {
		if time.Now().After(deadline) {
			t.Fatalf("the destination did not take the VM over on its own: %+v", b.info("s1"))
		}
	}
	t.Logf("destination took the VM over %.1f s after the source died (hand-over timeout 20 s)", time.Since(start).Seconds())
	in := b.info("s1")
	if in.Disks[0].Holder != "host-b:s1" || !strings.Contains(in.LastError, "this host took the VM over") {
		t.Fatalf("destination after the take-over: %+v", in)
	}
	wantHolder(t, g, "s-root", "host-b:s1", "after the take-over")

	// The source daemon comes back: it quits the QEMU left in
	// postmigrate and no longer lists the VM.
	a.restartWith()
	waitExited(t, pid)
	movedOn(t, a, b, "s1")
	// The destination renews the attachment it took over: still its own
	// after the source's restart and the wait above.
	wantHolder(t, g, "s-root", "host-b:s1", "at the end")
	b.mustVM("stop", "s1", "--force")
	final := counters(b.serial("s1"))
	checkDiskCounter(t, g, "s-root", final[len(final)-1])
}

// TestKVMMigrateSourceDiesAtSwitchover: the source daemon dies (SIGKILL,
// by its test hook) at the switchover, after it moved the attachment to
// the destination's holder and before it let QEMU switch over: the guest
// is paused at the source, the destination never ran it. The restarted
// source daemon cancels the migration, takes the attachment back and
// resumes the guest at the source. Left to the destination's holder, the
// lease would hold while the source's QEMU keeps its connections open (the
// gateway cannot tell whose they are), and the source could never renew
// its own. The destination's incoming QEMU ends and it forgets the VM. On
// one gateway, and between two sharing a bucket (where the hand-over at
// the switchover is on the source's gateway too, and the destination's
// gateway never adopts the volume).
func TestKVMMigrateSourceDiesAtSwitchover(t *testing.T) {
	_, image := requireKVM(t)
	t.Run("one-gateway", func(t *testing.T) {
		g := startGateway(t)
		g.mustCLI("volume", "create", "w-root", "--size", "64M")
		sourceDiesAtSwitchover(t, image, g, g)
	})
	t.Run("two-gateways", func(t *testing.T) {
		_, ga, gb := twoGateways(t, "ferry-kvm-switchover")
		ga.mustCLI("volume", "create", "w-root", "--size", "64M", "--store", "cloud")
		sourceDiesAtSwitchover(t, image, ga, gb)
		if r := gb.cli("volume", "info", "w-root"); r.code == 0 {
			t.Errorf("the destination's gateway serves w-root, which never moved:\n%s", r.stdout)
		}
	})
}

// sourceDiesAtSwitchover runs TestKVMMigrateSourceDiesAtSwitchover with
// the VM's volume w-root on ga and the destination daemon on gb.
func sourceDiesAtSwitchover(t *testing.T, image string, ga, gb *gateway) {
	a := startKVMD(t, ga, "host-a")
	b := startKVMD(t, gb, "host-b")
	pid, _ := startCounterVM(t, a, image, "w1", "w-root")
	a.restartWith("FERRY_KVM_TEST_DIE_AFTER=handoff")
	a.migrateUntilDeath("w1", b, "the switchover")
	wantHolder(t, ga, "w-root", "host-b:w1", "with the source dead at the switchover")
	var dpid int
	if in := b.info("w1"); in.State != wire.StateIncoming || in.PID == 0 {
		t.Fatalf("destination with the source dead at the switchover: %+v, want incoming", in)
	} else {
		dpid = in.PID
	}

	a.restartWith()
	in := a.info("w1")
	if in.State != wire.StateRunning || in.PID != pid || in.Migration == nil || in.Migration.Status != "failed" {
		t.Fatalf("source after its restart: %+v, want running, pid %d, migration failed", in, pid)
	}
	n := a.waitCounterPast("w1", 0, time.Minute)
	a.waitCounterPast("w1", n+5, time.Minute)
	wantHolder(t, ga, "w-root", "host-a:w1", "after the source's restart")
	for deadline := time.Now().Add(time.Minute); syscall.Kill(dpid, 0) == nil; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the destination's incoming QEMU pid %d still runs after the source cancelled", dpid)
		}
	}
	b.waitForgotten("w1")
	keptAtSource(t, a, ga, "w1", "w-root")
}

// keptAtSource checks VM name after a migration that failed once its
// attachment had moved: the guest's count has no gap, and the attachment
// of vol is the source's and stays so past its lease's 20 s TTL (renewed);
// then it stops the VM and finds the last count on the disk.
func keptAtSource(t *testing.T, a *kvmd, g *gateway, name, vol string) {
	t.Helper()
	checkConsecutive(t, "the source's console across the failed migration", counters(a.serial(name)))
	time.Sleep(25 * time.Second)
	wantHolder(t, g, vol, "host-a:"+name, "25 s later")
	a.mustVM("stop", name, "--force")
	final := counters(a.serial(name))
	checkDiskCounter(t, g, vol, final[len(final)-1])
}

// TestKVMMigrationFailsAfterHandoff: a migration that fails after the
// switchover moved the attachment to the destination (made to fail there
// by the source's test hook) takes the attachment back, resumes the guest
// at the source and has the destination drop its incoming QEMU.
func TestKVMMigrationFailsAfterHandoff(t *testing.T) {
	_, image := requireKVM(t)
	g := startGateway(t)
	a := startKVMD(t, g, "host-a")
	b := startKVMD(t, g, "host-b")
	pid, n := startCounterVM(t, a, image, "f1", "new:f-root:64M")
	a.restartWith("FERRY_KVM_TEST_FAIL_AFTER=handoff")
	r := a.vm("migrate", "f1", "--to", b.addr)
	if r.code == 0 || !strings.Contains(r.stderr, "test hook: the migration fails after handoff") {
		t.Fatalf("vm migrate with the hook: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	in := a.info("f1")
	if in.State != wire.StateRunning || in.PID != pid || in.Migration == nil || in.Migration.Status != "failed" {
		t.Fatalf("source after the failed migration: %+v", in)
	}
	a.waitCounterPast("f1", n+5, time.Minute)
	wantHolder(t, g, "f-root", "host-a:f1", "after the failed migration")
	b.waitForgotten("f1")
	keptAtSource(t, a, g, "f1", "f-root")
}

// TestKVMGatewayKill9UnderGuestWrites: the gateway is killed -9 and
// restarted while the guest rewrites and fsyncs files on ext4; QEMU's NBD
// reconnect-delay turns the outage into a stall: the guest reports no I/O
// error and the file system checks clean afterwards.
func TestKVMGatewayKill9UnderGuestWrites(t *testing.T) {
	_, image := requireKVM(t)
	testutil.RequireTool(t, "e2fsck")
	g := startGateway(t)
	a := startKVMD(t, g, "host-a")
	ext4Volume(t, g, "f-root")
	a.mustVM(append([]string{"create", "f1", "--disk", "f-root"}, guestArgs(image, "files")...)...)
	a.mustVM("start", "f1")
	filesRE := regexp.MustCompile(`FERRY-KVM: files (\d+)`)
	n, _ := strconv.Atoi(a.waitSerial("f1", filesRE, bootTimeout))

	g.kill9()
	time.Sleep(3 * time.Second)
	g.start()
	a.waitSerial("f1", regexp.MustCompile(fmt.Sprintf(`FERRY-KVM: files (%d)\b`, n+20)), 2*time.Minute)
	s := a.serial("f1")
	if strings.Contains(s, "io-error") || strings.Contains(s, "I/O error") || strings.Contains(s, "EXT4-fs error") {
		t.Fatalf("the guest saw I/O errors across the gateway restart:\n%s", tail(s, 40))
	}
	if in := a.info("f1"); in.State != wire.StateRunning {
		t.Fatalf("vm after the gateway restart: %s %s", in.State, in.LastError)
	}
	// A QEMU that dies on its own is seen and reported.
	pid := a.info("f1").PID
	syscall.Kill(pid, syscall.SIGKILL)
	deadline := time.Now().Add(30 * time.Second)
	for a.info("f1").State != wire.StateCrashed {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU killed: vm state %s, want crashed", a.info("f1").State)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if in := a.info("f1"); !strings.Contains(in.LastError, "QEMU exited on its own") {
		t.Fatalf("crashed VM's error: %q", in.LastError)
	}
	if m := httpGet(t, "http://"+a.addr+"/metrics"); !strings.Contains(m, `ferry_kvm_qemu_exits_total{reason="crashed"} 1`) {
		t.Fatalf("metrics do not count the crash:\n%s", m)
	}
	img := volumeImage(t, g, "f-root")
	// The guest did not unmount: replay the journal only, then check.
	if out, err := runErr(2*time.Minute, "e2fsck", "-E", "journal_only", "-y", img); err != nil {
		t.Logf("e2fsck journal replay: %v\n%s", err, out)
	}
	if out, err := runErr(2*time.Minute, "e2fsck", "-fn", img); err != nil {
		t.Fatalf("e2fsck after the gateway restart: %v\n%s", err, out)
	}
}
