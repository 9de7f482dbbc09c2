package acceptance

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// dockerEnv is a Docker engine of the test's own (started and stopped by
// PID, on a socket in a temporary directory, no networking), a gateway and
// `ferry docker-plugin` under a driver name unique to this run.
type dockerEnv struct {
	t       *testing.T
	dir     string
	sock    string
	dockerd *exec.Cmd
	dexited chan struct{}
	dlogs   *testutil.SyncBuffer
	image   string
	g       *gateway
}

// pluginProc is one `ferry docker-plugin` process.
type pluginProc struct {
	t        *testing.T
	driver   string
	socket   string
	stateDir string
	hostID   string
	apiAddr  string
	extra    []string
	cmd      *exec.Cmd
	logs     *testutil.SyncBuffer
	exited   chan struct{}
}

func requireDockerTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"dockerd", "docker", "busybox", "losetup", "blkid", "mkfs.ext4", "mkfs.xfs", "nbdcopy", "containerd", "runc"} {
		testutil.RequireTool(t, tool)
	}
	why := ""
	switch {
	case os.Geteuid() != 0:
		why = "the Docker tests need root"
	case !exists("/dev/fuse"):
		why = "no /dev/fuse"
	case !exists("/dev/loop-control"):
		why = "no /dev/loop-control"
	}
	if why != "" {
		testutil.Missing(t, why)
	}
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// startDocker starts dockerd on a private socket and imports a busybox
// image.
func startDocker(t *testing.T, dir string) *dockerEnv {
	t.Helper()
	e := &dockerEnv{t: t, dir: dir, sock: filepath.Join(dir, "docker.sock"), dlogs: &testutil.SyncBuffer{}, dexited: make(chan struct{})}
	e.dockerd = exec.Command("dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false",
		"--data-root", filepath.Join(dir, "docker"), "--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"), "--host", "unix://"+e.sock)
	e.dockerd.Stdout, e.dockerd.Stderr = e.dlogs, e.dlogs
	if err := e.dockerd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { e.dockerd.Wait(); close(e.dexited) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := e.dockerErr("version"); err == nil {
			break
		}
		select {
		case <-e.dexited:
			t.Fatalf("dockerd exited at start:\n%s", tail(e.dlogs.String(), 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dockerd not answering after 60s:\n%s", tail(e.dlogs.String(), 40))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// An image without a registry: busybox-static in an otherwise empty
	// root file system.
	root := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "tmp", "proc", "sys", "dev", "etc"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	bb, _ := exec.LookPath("busybox")
	b, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	list, err := testutil.Output(time.Minute, bb, "--list")
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	for _, applet := range strings.Fields(list) {
		if applet != "busybox" {
			os.Symlink("busybox", filepath.Join(root, "bin", applet))
		}
	}
	tarball := filepath.Join(dir, "rootfs.tar")
	run(t, time.Minute, "tar", "-C", root, "-cf", tarball, ".")
	e.image = fmt.Sprintf("ferry-test-busybox:%d", os.Getpid())
	e.docker("import", tarball, e.image)
	if out := e.docker("run", "--rm", "--network", "none", e.image, "sh", "-c", "echo ok"); strings.TrimSpace(out) != "ok" {
		t.Fatalf("the busybox image does not run (is busybox static? install busybox-static): %q", out)
	}
	return e
}

// stop ends dockerd by PID: SIGTERM, then SIGKILL after 60 s.
func (e *dockerEnv) stop() {
	if e.dockerd == nil || e.dockerd.Process == nil {
		return
	}
	e.dockerd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.dexited:
	case <-time.After(60 * time.Second):
		e.dockerd.Process.Kill()
		<-e.dexited
	}
}

// dockerErr runs the docker CLI against this engine.
func (e *dockerEnv) dockerErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+e.sock)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out")
	}
	return out.String(), err
}

func (e *dockerEnv) docker(args ...string) string {
	e.t.Helper()
	out, err := e.dockerErr(args...)
	if err != nil {
		e.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// startPlugin starts `ferry docker-plugin` for the gateway.
func startPlugin(t *testing.T, driver, stateDir, hostID, apiAddr string, extra ...string) *pluginProc {
	t.Helper()
	p := &pluginProc{t: t, driver: driver, socket: "/run/docker/plugins/" + driver + ".sock", stateDir: stateDir, hostID: hostID, apiAddr: apiAddr, extra: extra}
	p.start()
	return p
}

func (p *pluginProc) start() {
	p.t.Helper()
	args := []string{"docker-plugin", "--gateway", p.apiAddr, "--socket", p.socket, "--state-dir", p.stateDir, "--host-id", p.hostID, "--attach", "auto"}
	p.cmd = exec.Command(ferryBin, append(args, p.extra...)...)
	if p.logs == nil {
		p.logs = &testutil.SyncBuffer{}
	}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.exited = make(chan struct{})
	go func() { p.cmd.Wait(); close(p.exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if code, _ := p.call("/Plugin.Activate", nil); code == 200 {
			return
		}
		select {
		case <-p.exited:
			p.t.Fatalf("plugin exited at start:\n%s", p.logs)
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("plugin not answering after 30s:\n%s", p.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *pluginProc) kill9() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

func (p *pluginProc) stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// call posts body to the plugin's socket, as Docker does.
func (p *pluginProc) call(path string, body []byte) (int, map[string]any) {
	hc := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", p.socket)
		},
	}}
	resp, err := hc.Post("http://plugin"+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	json.Unmarshal(b, &out)
	return resp.StatusCode, out
}

// leftovers lists loop devices backed by files under dir and mounts
// under dir: what must be gone once nothing uses a volume.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, dev := range testutil.LoopsOn(dir) {
		out = append(out, "loop: "+dev)
	}
	mounts, _ := os.ReadFile("/proc/mounts")
	for _, l := range strings.Split(string(mounts), "\n") {
		if strings.Contains(l, dir) && !strings.Contains(l, filepath.Join(dir, "docker")) && !strings.Contains(l, filepath.Join(dir, "exec")) {
			out = append(out, "mount: "+l)
		}
	}
	return out
}

// helperPIDs returns the FUSE helper pids recorded in a plugin's state.
func helperPIDs(stateDir string) []int {
	var st struct {
		Volumes map[string]struct {
			Attachment *struct {
				HelperPID int `json:"helper_pid"`
			} `json:"attachment"`
		} `json:"volumes"`
	}
	b, _ := os.ReadFile(filepath.Join(stateDir, "state.json"))
	json.Unmarshal(b, &st)
	var pids []int
	for _, v := range st.Volumes {
		if v.Attachment != nil && v.Attachment.HelperPID > 0 {
			pids = append(pids, v.Attachment.HelperPID)
		}
	}
	return pids
}

// volStatus is `docker volume inspect`'s Status.
func (e *dockerEnv) volStatus(name string) map[string]any {
	e.t.Helper()
	var vs []struct {
		Driver string
		Status map[string]any
	}
	if err := json.Unmarshal([]byte(e.docker("volume", "inspect", name)), &vs); err != nil || len(vs) != 1 {
		e.t.Fatalf("inspect %s: %v", name, err)
	}
	return vs[0].Status
}

// attachments lists the hosts the gateway says hold a volume.
func attachments(t *testing.T, g *gateway, vol string) []string {
	t.Helper()
	resp, err := g.get("/v1/volumes/" + vol + "/attachments")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var l []struct{ Host string }
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
		t.Fatalf("attachments of %s: %v", vol, err)
	}
	var hosts []string
	for _, a := range l {
		hosts = append(hosts, a.Host)
	}
	return hosts
}

// wireAttachTTL is wire.DefaultAttachTTL (the plugin asks for no other).
const wireAttachTTL = 20 * time.Second

func flushCount(t *testing.T, g *gateway) float64 {
	t.Helper()
	return g.metric(t, `ferry_nbd_requests_total{command="flush"}`)
}

// TestDockerPlugin drives `ferry docker-plugin` through a real Docker
// engine: volumes created, written and read by containers, shared by two
// at once, inspected and removed; the plugin killed -9 under running
// containers; the gateway killed -9 under an fsync'ing writer; an existing
// file system kept; a second host refused; garbage on the socket.
func TestDockerPlugin(t *testing.T) {
	requireDockerTools(t)
	dir, err := os.MkdirTemp("", "ferry-docker-")
	if err != nil {
		t.Fatal(err)
	}
	// The API needs its token, as on a gateway off loopback: the plugin
	// and the helpers it starts must carry it.
	g := startGateway(t, "--api-auth", "token")
	g.useToken()
	e := startDocker(t, dir)
	e.g = g
	driver := fmt.Sprintf("ferry-test-%d", os.Getpid())
	stateA := filepath.Join(dir, "state-a")
	// A short stale-check period: every step below also proves the sweep
	// never pulls a volume from a running container.
	pa := startPlugin(t, driver, stateA, "host-a", g.apiAddr, "--stale-check", "3s", "--token-file", g.tokenFile())
	var pb *pluginProc
	defer func() {
		// Containers first (their unmounts reach the plugin), then
		// volumes, the plugins, dockerd; then nothing may be left.
		e.t = t
		ps, _ := e.dockerErr("ps", "-aq")
		if ids := strings.Fields(ps); len(ids) > 0 {
			e.dockerErr(append([]string{"rm", "-f"}, ids...)...)
		}
		vols, _ := e.dockerErr("volume", "ls", "-q")
		for _, v := range strings.Fields(vols) {
			e.dockerErr("volume", "rm", v)
		}
		pa.stop()
		if pb != nil {
			pb.stop()
		}
		if t.Failed() {
			t.Logf("plugin log:\n%s", tail(pa.logs.String(), 80))
			if logs, _ := filepath.Glob(filepath.Join(stateA, "logs", "*.log")); len(logs) > 0 {
				for _, l := range logs {
					b, _ := os.ReadFile(l)
					t.Logf("%s:\n%s", l, tail(string(b), 30))
				}
			}
		}
		e.stop()
		os.Remove(pa.socket)
		if pb != nil {
			os.Remove(pb.socket)
		}
		left := leftovers(t, dir)
		if len(left) > 0 {
			t.Errorf("left attached or mounted at the end:\n%s", strings.Join(left, "\n"))
			// Do not leave helpers serving a deleted directory.
			for _, sd := range []string{stateA, filepath.Join(dir, "state-b")} {
				for _, pid := range helperPIDs(sd) {
					syscall.Kill(pid, syscall.SIGTERM)
				}
			}
			return // keep dir: removing files under live mounts would be worse
		}
		os.RemoveAll(dir)
	}()

	if !strings.Contains(pa.logs.String(), "method=fuse") {
		t.Errorf("--attach auto did not say it picked fuse:\n%s", pa.logs)
	}

	// The subtests share one gateway, plugin and dockerd, and each passing
	// one leaves them as it found them. One that fails halfway may leave
	// the gateway or the plugin killed, containers running or volumes
	// mounted; its cleanup puts that right, so the subtests after it test
	// what they name, not the wreck of the one before.
	sub := func(name string, f func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			e.t = t
			t.Cleanup(func() {
				if !t.Failed() {
					return
				}
				select {
				case <-g.exited:
					t.Logf("restarting the gateway %s left killed", name)
					g.start()
				default:
				}
				select {
				case <-pa.exited:
					t.Logf("restarting the plugin %s left killed", name)
					pa.start()
				default:
				}
				if ps, _ := e.dockerErr("ps", "-aq"); len(strings.Fields(ps)) > 0 {
					e.dockerErr(append([]string{"rm", "-f"}, strings.Fields(ps)...)...)
				}
				vols, _ := e.dockerErr("volume", "ls", "-q")
				for _, v := range strings.Fields(vols) {
					if out, err := e.dockerErr("volume", "rm", "-f", v); err != nil {
						t.Logf("removing volume %s that %s left: %v %s", v, name, err, out)
					}
				}
				if left := leftovers(t, dir); len(left) > 0 {
					t.Logf("%s left attached or mounted, after its containers and volumes were removed:\n%s", name, strings.Join(left, "\n"))
				}
			})
			f(t)
		})
	}

	sub("write-then-read", func(t *testing.T) {
		e.docker("volume", "create", "-d", driver, "-o", "size=1G", "v1")
		before := flushCount(t, g)
		out := e.docker("run", "--rm", "--network", "none", "-v", "v1:/data", e.image, "sh", "-c",
			`set -e; for i in 1 2 3 4 5 6 7 8; do dd if=/dev/urandom of=/data/f$i bs=64k count=$i 2>/dev/null; done
			 dd if=/dev/urandom of=/data/synced bs=4k count=1 conv=fsync 2>/dev/null
			 cd /data && sha256sum f* synced > SUMS && cat SUMS`)
		if strings.Count(out, "/data") != 0 || strings.Count(out, "  f") != 8 {
			t.Fatalf("writer output: %q", out)
		}
		if after := flushCount(t, g); after <= before {
			t.Errorf("an fsync in the container sent no NBD FLUSH to the gateway (%v -> %v)", before, after)
		}
		check := e.docker("run", "--rm", "--network", "none", "-v", "v1:/data", e.image, "sh", "-c", "cd /data && sha256sum -c SUMS && cat SUMS")
		if !strings.Contains(check, out) || strings.Count(check, ": OK") != 9 {
			t.Fatalf("second container:\n%s\nwant the sums\n%s", check, out)
		}
		if left := leftovers(t, dir); len(left) > 0 {
			t.Fatalf("after the containers ended:\n%s", strings.Join(left, "\n"))
		}
		e.docker("volume", "rm", "v1")
	})

	sub("two-containers-at-once", func(t *testing.T) {
		e.docker("volume", "create", "-d", driver, "-o", "size=256M", "vc")
		a := strings.TrimSpace(e.docker("run", "-d", "--network", "none", "-v", "vc:/data", e.image, "sh", "-c", "echo from-a > /data/a; sync; sleep 600"))
		b := strings.TrimSpace(e.docker("run", "-d", "--network", "none", "-v", "vc:/data", e.image, "sh", "-c", "echo from-b > /data/b; sync; sleep 600"))
		// Each sees the other's file: one file system, mounted once.
		out := e.docker("exec", a, "sh", "-c", "for i in $(seq 100); do [ -f /data/b ] && break; sleep 0.1; done; cat /data/b")
		out += e.docker("exec", b, "sh", "-c", "for i in $(seq 100); do [ -f /data/a ] && break; sleep 0.1; done; cat /data/a")
		if out != "from-b\nfrom-a\n" {
			t.Fatalf("containers see %q", out)
		}
		st := e.volStatus("vc")
		if st["mounts"] != float64(2) {
			t.Errorf("mounts %v, want 2", st["mounts"])
		}
		// docker volume rm is refused while mounted (Docker refuses first;
		// the plugin refuses too, asked directly).
		if out, err := e.dockerErr("volume", "rm", "vc"); err == nil || !strings.Contains(out, "in use") {
			t.Errorf("docker volume rm of a mounted volume: %v %s", err, out)
		}
		if _, r := pa.call("/VolumeDriver.Remove", []byte(`{"Name":"vc"}`)); !strings.Contains(fmt.Sprint(r["Err"]), "in use") {
			t.Errorf("plugin Remove of a mounted volume: %v", r)
		}
		e.docker("rm", "-f", a)
		if st := e.volStatus("vc"); st["mounts"] != float64(1) || len(leftovers(t, dir)) == 0 {
			t.Errorf("after one container left: mounts %v, leftovers %v", st["mounts"], leftovers(t, dir))
		}
		e.docker("rm", "-f", b)
		if left := leftovers(t, dir); len(left) > 0 {
			t.Fatalf("after both containers left:\n%s", strings.Join(left, "\n"))
		}
		e.docker("volume", "rm", "vc")
	})

	sub("ls-inspect-rm", func(t *testing.T) {
		e.docker("volume", "create", "-d", driver, "-o", "size=1G", "vi")
		if out := e.docker("volume", "ls", "--format", "{{.Driver}} {{.Name}}"); !strings.Contains(out, driver+" vi") {
			t.Errorf("volume ls: %q", out)
		}
		st := e.volStatus("vi")
		in := g.info("vi")
		for k, want := range map[string]any{"size": "1 GiB", "store": "local", "attach_method": "fuse", "gateway_volume": "vi", "id": in.ID, "fstype": "ext4"} {
			if st[k] != want {
				t.Errorf("inspect Status[%s] = %v, want %v", k, st[k], want)
			}
		}
		// A Docker name the gateway cannot take maps to one it can.
		e.docker("volume", "create", "-d", driver, "-o", "size=64M", "Data_Set.1")
		if out := e.docker("volume", "ls", "-q"); !strings.Contains(out, "Data_Set.1") {
			t.Errorf("volume ls lacks Data_Set.1: %q", out)
		}
		gw := e.volStatus("Data_Set.1")["gateway_volume"].(string)
		if !strings.HasPrefix(gw, "d-data-set.1-") {
			t.Errorf("gateway name %q", gw)
		}
		g.info(gw)
		if out, err := e.dockerErr("volume", "create", "-d", driver, "-o", "sise=1G", "bad1"); err == nil || !strings.Contains(out, `unknown option "sise"`) {
			t.Errorf("unknown option: %v %s", err, out)
		}
		if out, err := e.dockerErr("volume", "create", "-d", driver, "-o", "size=lots", "bad2"); err == nil || !strings.Contains(out, "option size") {
			t.Errorf("bad size: %v %s", err, out)
		}
		e.docker("volume", "rm", "vi", "Data_Set.1")
		for _, name := range []string{"vi", gw} {
			if r := g.cli("volume", "info", name); r.code == 0 {
				t.Errorf("gateway volume %s still there after docker volume rm", name)
			}
		}
	})

	sub("plugin-kill9", func(t *testing.T) {
		e.docker("volume", "create", "-d", driver, "-o", "size=256M", "v2")
		writer := strings.TrimSpace(e.docker("run", "-d", "--network", "none", "-v", "v2:/data", e.image, "sh", "-c",
			"i=0; while true; do i=$((i+1)); echo $i >> /data/log; sleep 0.02; done"))
		reader := strings.TrimSpace(e.docker("run", "-d", "--network", "none", "-v", "v2:/data", e.image, "sh", "-c", "sleep 600"))
		lines := func(c string) int {
			out, err := e.dockerErr("exec", c, "sh", "-c", "wc -l < /data/log")
			if err != nil {
				t.Fatalf("exec in %s: %v %s", c, err, out)
			}
			n, _ := strconv.Atoi(strings.TrimSpace(out))
			return n
		}
		growing := func(what string) {
			t.Helper()
			n0 := lines(reader)
			deadline := time.Now().Add(30 * time.Second)
			for lines(reader) <= n0 {
				if time.Now().After(deadline) {
					t.Fatalf("%s: the writer stopped (log stuck at %d lines)", what, n0)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		growing("before the kill")
		pa.kill9()
		growing("plugin dead") // the data path is not in the plugin
		pa.start()
		growing("plugin restarted")
		if !strings.Contains(pa.logs.String(), "volume still in use; kept") {
			t.Errorf("restarted plugin did not keep the volume:\n%s", tail(pa.logs.String(), 20))
		}
		if st := e.volStatus("v2"); st["mounts"] != float64(2) {
			t.Errorf("after restart: mounts %v, want 2", st["mounts"])
		}
		// A new container mounts it through the restarted plugin.
		if out := e.docker("run", "--rm", "--network", "none", "-v", "v2:/data", e.image, "sh", "-c", "head -1 /data/log"); strings.TrimSpace(out) != "1" {
			t.Errorf("third container reads %q", out)
		}
		e.docker("rm", "-f", writer, reader)
		if left := leftovers(t, dir); len(left) > 0 {
			t.Fatalf("after the containers left:\n%s", strings.Join(left, "\n"))
		}
		if in := g.info("v2"); len(in.Connections) != 0 {
			t.Errorf("gateway still has clients: %+v", in.Connections)
		}
		if l := attachments(t, g, "v2"); len(l) != 0 {
			t.Errorf("gateway still lists attachments: %v", l)
		}
		for _, pid := range helperPIDs(stateA) {
			t.Errorf("state still records helper %d", pid)
		}
		e.docker("volume", "rm", "v2")
	})

	sub("gateway-kill9-fsynced-records", func(t *testing.T) {
		e.docker("volume", "create", "-d", driver, "-o", "size=256M", "vr")
		writer := strings.TrimSpace(e.docker("run", "-d", "--network", "none", "-v", "vr:/data", e.image, "sh", "-c",
			`mkdir -p /data/rec; i=0; while [ $i -lt 100000 ]; do i=$((i+1));
			 if echo "record $i" | dd of=/data/rec/$i conv=fsync 2>/dev/null; then echo "synced $i"; else echo "FAILED $i"; exit 1; fi; done`))
		synced := func() int {
			out := e.docker("logs", writer)
			if strings.Contains(out, "FAILED") {
				t.Fatalf("a write failed in the container:\n%s", tail(out, 5))
			}
			n := strings.Count(out, "synced ")
			return n
		}
		waitFor := func(n int, what string) {
			deadline := time.Now().Add(60 * time.Second)
			for synced() < n {
				if time.Now().After(deadline) {
					t.Fatalf("%s: only %d records synced", what, synced())
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		waitFor(20, "before the kill")
		// Writes acknowledged but never flushed: on a second volume that
		// nothing else writes (a container only holds it mounted), 4 MiB
		// of random data written with O_DIRECT straight to its loop
		// device's last MiBs, where the fresh file system keeps nothing:
		// no file system, journal or fsync sends a flush. The gateway holds
		// this volume's writes in this host's kernel, so the FUSE helper
		// keeps no replay copy of them; the kill must not lose them.
		e.docker("volume", "create", "-d", driver, "-o", "size=256M", "vu")
		holder := strings.TrimSpace(e.docker("run", "-d", "--network", "none", "-v", "vu:/data", e.image, "sleep", "3600"))
		loopDev, _ := e.volStatus("vu")["device"].(string)
		if !strings.HasPrefix(loopDev, "/dev/loop") {
			t.Fatalf("vu's device: %q", loopDev)
		}
		random := filepath.Join(t.TempDir(), "random")
		rnd := make([]byte, 4<<20)
		cryptorand.Read(rnd)
		if err := os.WriteFile(random, rnd, 0o600); err != nil {
			t.Fatal(err)
		}
		run(t, time.Minute, "dd", "if="+random, "of="+loopDev, "bs=1M", "seek=252", "count=4", "oflag=direct", "status=none")
		g.kill9()
		atKill := synced()
		time.Sleep(time.Second)
		g.start()
		waitFor(atKill+20, "after the gateway restart")
		back := filepath.Join(t.TempDir(), "back")
		run(t, time.Minute, "dd", "if="+loopDev, "of="+back, "bs=1M", "skip=252", "count=4", "iflag=direct", "status=none")
		if got, err := os.ReadFile(back); err != nil || !bytes.Equal(got, rnd) {
			t.Errorf("4 MiB written with O_DIRECT, acknowledged and not flushed before the gateway's kill -9, did not read back (%v)", err)
		}
		if b, _ := os.ReadFile(filepath.Join(stateA, "logs", "vu.log")); !strings.Contains(string(b), "no replay copy") {
			t.Errorf("the FUSE helper kept a replay copy though the gateway shares its kernel:\n%s", tail(string(b), 10))
		}
		e.docker("rm", "-f", holder)
		e.docker("volume", "rm", "vu")
		e.docker("kill", writer)
		out := e.docker("logs", writer)
		if strings.Contains(out, "FAILED") {
			t.Fatalf("a write failed across the gateway restart:\n%s", tail(out, 5))
		}
		var want []string
		for _, l := range strings.Split(out, "\n") {
			if n, ok := strings.CutPrefix(l, "synced "); ok {
				want = append(want, n)
			}
		}
		e.docker("rm", writer)
		// A new container (a fresh mount) finds every fsynced record.
		check := e.docker("run", "--rm", "--network", "none", "-v", "vr:/data", e.image, "sh", "-c",
			`bad=0; for i in `+strings.Join(want, " ")+`; do [ "$(cat /data/rec/$i)" = "record $i" ] || { echo "missing $i"; bad=1; }; done; echo checked; exit $bad`)
		if !strings.Contains(check, "checked") || strings.Contains(check, "missing") {
			t.Fatalf("after the gateway kill -9, %d fsynced records checked:\n%s", len(want), tail(check, 10))
		}
		if b, _ := os.ReadFile(filepath.Join(stateA, "logs", "vr.log")); !strings.Contains(string(b), "nbd connection restored") {
			t.Errorf("the FUSE helper never reconnected: the test did not exercise a restart")
		}
		t.Logf("%d fsynced records, %d before the kill, all present", len(want), atKill)
		e.docker("volume", "rm", "vr")
	})

	sub("existing-filesystem-kept", func(t *testing.T) {
		// A gateway volume made outside Docker, with ext4 and data on it.
		g.mustCLI("volume", "create", "pre", "--size", "64M")
		src := filepath.Join(dir, "pre-src")
		os.MkdirAll(src, 0o755)
		os.WriteFile(filepath.Join(src, "hello"), []byte("precious\n"), 0o644)
		img := filepath.Join(dir, "pre.img")
		run(t, time.Minute, "truncate", "-s", "64M", img)
		run(t, time.Minute, "mkfs.ext4", "-q", "-d", src, img)
		run(t, 2*time.Minute, "nbdcopy", img, g.uri("pre"))
		e.docker("volume", "create", "-d", driver, "-o", "fstype=xfs", "pre")
		out, err := e.dockerErr("run", "--rm", "--network", "none", "-v", "pre:/data", e.image, "true")
		if err == nil || !strings.Contains(out, "ext4 file system, not xfs") || !strings.Contains(out, "never reformats") {
			t.Fatalf("mounting ext4 as xfs: %v %s", err, out)
		}
		e.docker("volume", "rm", "pre") // adopted: forgotten, not deleted
		g.info("pre")
		e.docker("volume", "create", "-d", driver, "pre")
		if out := e.docker("run", "--rm", "--network", "none", "-v", "pre:/data", e.image, "cat", "/data/hello"); out != "precious\n" {
			t.Fatalf("existing data: %q", out)
		}
		// Read-only: the data is there, writes are refused.
		e.docker("volume", "rm", "pre")
		e.docker("volume", "create", "-d", driver, "-o", "readonly=true", "pre")
		out, err = e.dockerErr("run", "--rm", "--network", "none", "-v", "pre:/data", e.image, "sh", "-c", "cat /data/hello; touch /data/new")
		if err == nil || !strings.Contains(out, "precious") || !strings.Contains(out, "Read-only file system") {
			t.Errorf("readonly=true: %v %q", err, out)
		}
		// And xfs where asked, on an empty volume.
		e.docker("volume", "create", "-d", driver, "-o", "fstype=xfs", "-o", "size=320M", "vx")
		if out := e.docker("run", "--rm", "--network", "none", "-v", "vx:/data", e.image, "sh", "-c", "echo x > /data/x; grep ' /data ' /proc/mounts"); !strings.Contains(out, " xfs ") {
			t.Errorf("vx not xfs: %q", out)
		}
		e.docker("volume", "rm", "pre", "vx")
	})

	sub("second-host-refused", func(t *testing.T) {
		e.docker("volume", "create", "-d", driver, "-o", "size=64M", "v3")
		holder := strings.TrimSpace(e.docker("run", "-d", "--network", "none", "-v", "v3:/data", e.image, "sleep", "600"))
		// Host B: another plugin (state, host id, socket) on the same
		// gateway. One dockerd cannot hold two volumes named v3, so this
		// speaks the plugin protocol to it directly, as B's dockerd would.
		pb = startPlugin(t, driver+"-b", filepath.Join(dir, "state-b"), "host-b", g.apiAddr, "--token-file", g.tokenFile())
		if _, r := pb.call("/VolumeDriver.Create", []byte(`{"Name":"v3"}`)); r["Err"] != "" {
			t.Fatalf("host B create: %v", r)
		}
		_, r := pb.call("/VolumeDriver.Mount", []byte(`{"Name":"v3","ID":"b1"}`))
		if e, _ := r["Err"].(string); !strings.Contains(e, `"host-a"`) {
			t.Fatalf("host B mount while host A holds v3: %v", r)
		}
		if left := leftovers(t, filepath.Join(dir, "state-b")); len(left) > 0 {
			t.Errorf("the refused mount left: %v", left)
		}
		// The holder's plugin dead for longer than a lease: the data path
		// (the FUSE helper) still renews it, so B is still refused.
		pa.kill9()
		time.Sleep(wireAttachTTL + 3*time.Second)
		_, r = pb.call("/VolumeDriver.Mount", []byte(`{"Name":"v3","ID":"b1"}`))
		if e, _ := r["Err"].(string); !strings.Contains(e, `"host-a"`) {
			t.Fatalf("host B mount while host A's plugin is dead and its container runs: %v", r)
		}
		pa.start()
		e.docker("rm", "-f", holder)
		// Once A let go, B may.
		_, r = pb.call("/VolumeDriver.Mount", []byte(`{"Name":"v3","ID":"b1"}`))
		if r["Err"] != nil && r["Err"] != "" {
			t.Fatalf("host B mount after A let go: %v", r)
		}
		// Should the step fail from here, B's mount must not outlive it.
		t.Cleanup(func() {
			if t.Failed() {
				pb.call("/VolumeDriver.Unmount", []byte(`{"Name":"v3","ID":"b1"}`))
			}
		})
		if _, r = pb.call("/VolumeDriver.Unmount", []byte(`{"Name":"v3","ID":"b1"}`)); r["Err"] != "" {
			t.Fatalf("host B unmount: %v", r)
		}
		pb.call("/VolumeDriver.Remove", []byte(`{"Name":"v3"}`)) // adopted by B: forgotten
		e.docker("volume", "rm", "v3")
	})

	sub("helper-kill9", func(t *testing.T) {
		// The data path itself dies (its process killed): the containers
		// holding the volume get I/O errors; new mounts are refused until
		// they stop; then it is cleaned up and attaches afresh.
		e.docker("volume", "create", "-d", driver, "-o", "size=64M", "v4")
		holder := strings.TrimSpace(e.docker("run", "-d", "--network", "none", "-v", "v4:/data", e.image, "sh", "-c", "echo kept > /data/k; sync; sleep 600"))
		e.docker("exec", holder, "sh", "-c", "for i in $(seq 100); do [ -f /data/k ] && break; sleep 0.1; done; sync")
		pids := helperPIDs(stateA)
		if len(pids) != 1 {
			t.Fatalf("helpers recorded: %v", pids)
		}
		syscall.Kill(pids[0], syscall.SIGKILL)
		out, err := e.dockerErr("exec", holder, "sh", "-c", "dd if=/dev/zero of=/data/z bs=4k count=16 conv=fsync")
		if err == nil {
			t.Errorf("an fsync after the data path died succeeded:\n%s", out)
		}
		out, err = e.dockerErr("run", "--rm", "--network", "none", "-v", "v4:/data", e.image, "true")
		if err == nil || !strings.Contains(out, "broken") {
			t.Errorf("mounting a volume whose data path died: %v %s", err, out)
		}
		e.docker("rm", "-f", holder)
		if left := leftovers(t, dir); len(left) > 0 {
			t.Fatalf("after the container left:\n%s", strings.Join(left, "\n"))
		}
		if out := e.docker("run", "--rm", "--network", "none", "-v", "v4:/data", e.image, "cat", "/data/k"); out != "kept\n" {
			t.Errorf("after re-attaching: %q", out)
		}
		e.docker("volume", "rm", "v4")
	})

	sub("unmount-missed-while-plugin-down", func(t *testing.T) {
		// A container stops while the plugin is dead: Docker's Unmount
		// fails and is never repeated. The restarted plugin sees that no
		// container uses the volume and detaches it after the period.
		e.docker("volume", "create", "-d", driver, "-o", "size=64M", "v5")
		c := strings.TrimSpace(e.docker("run", "-d", "--network", "none", "-v", "v5:/data", e.image, "sleep", "600"))
		pa.kill9()
		out, err := e.dockerErr("rm", "-f", c)
		t.Logf("docker rm -f with the plugin down: %v %s", err, strings.TrimSpace(out))
		pa.start()
		// The plugin releases the gateway's attachment after the loop
		// device and the mount, on its own: wait for all three.
		deadline := time.Now().Add(60 * time.Second)
		for len(leftovers(t, dir)) > 0 || len(attachments(t, g, "v5")) > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("still attached 60s after the restart (gateway attachments %v):\n%s",
					attachments(t, g, "v5"), strings.Join(leftovers(t, dir), "\n"))
			}
			time.Sleep(200 * time.Millisecond)
		}
		if !strings.Contains(pa.logs.String(), "dropping its leftover mount counts") {
			t.Errorf("detached without saying why:\n%s", tail(pa.logs.String(), 10))
		}
		if out, err := e.dockerErr("rm", "-f", c); err != nil && !strings.Contains(out, "No such container") {
			t.Logf("second rm: %v %s", err, out)
		}
		e.docker("volume", "rm", "v5")
	})

	sub("s3-store", func(t *testing.T) {
		srv := s3Env(t, "ferry-docker")
		g.mustCLI("store", "add", "dockercloud", "--endpoint", srv.Endpoint, "--bucket", "ferry-docker")
		if out, err := e.dockerErr("volume", "create", "-d", driver, "-o", "store=nope", "vbad"); err == nil || !strings.Contains(out, "nope") {
			t.Errorf("unknown store: %v %s", err, out)
		}
		e.docker("volume", "create", "-d", driver, "-o", "store=dockercloud", "-o", "size=256M", "vs3")
		if st := e.volStatus("vs3"); st["store"] != "dockercloud" || st["size"] != "256 MiB" {
			t.Errorf("inspect: %v", st)
		}
		e.docker("run", "--rm", "--network", "none", "-v", "vs3:/data", e.image, "sh", "-c", "echo in-s3 > /data/f")
		if out := e.docker("run", "--rm", "--network", "none", "-v", "vs3:/data", e.image, "cat", "/data/f"); out != "in-s3\n" {
			t.Errorf("read back: %q", out)
		}
		// Its unflushed writes live in the gateway's process until a flush:
		// the FUSE helper keeps its replay copy.
		if b, _ := os.ReadFile(filepath.Join(stateA, "logs", "vs3.log")); !strings.Contains(string(b), "keeping acknowledged writes for replay") {
			t.Errorf("the FUSE helper of an S3-backed volume kept no replay copy:\n%s", tail(string(b), 10))
		}
		g.mustCLI("volume", "checkpoint", "vs3")
		// -o from= makes a clone of a gateway snapshot: the file is there.
		g.mustCLI("volume", "snapshot", "create", "vs3", "s1")
		e.docker("volume", "create", "-d", driver, "-o", "from=vs3@s1", "vclone")
		e.docker("run", "--rm", "--network", "none", "-v", "vs3:/data", e.image, "sh", "-c", "echo changed > /data/f")
		if out := e.docker("run", "--rm", "--network", "none", "-v", "vclone:/data", e.image, "cat", "/data/f"); out != "in-s3\n" {
			t.Errorf("clone reads %q, want the snapshot's in-s3", out)
		}
		if out, err := e.dockerErr("volume", "create", "-d", driver, "-o", "from=vs3@nope", "vbad2"); err == nil || !strings.Contains(out, "no snapshot") {
			t.Errorf("clone of a missing snapshot: %v %s", err, out)
		}
		e.docker("volume", "rm", "vclone")
		e.docker("volume", "rm", "vs3")
	})

	sub("bad-input", func(t *testing.T) {
		for _, tc := range []struct {
			path string
			body []byte
			want string
		}{
			{"/VolumeDriver.Create", []byte(`{"Name": `), "malformed"},
			{"/VolumeDriver.Mount", []byte(`"just a string"`), "malformed"},
			{"/VolumeDriver.Nope", []byte(`{}`), "unknown endpoint"},
			{"/VolumeDriver.Create", append(append([]byte(`{"Name": "`), bytes.Repeat([]byte("x"), 4<<20)...), `"}`...), "larger than"},
		} {
			code, r := pa.call(tc.path, tc.body)
			if e, _ := r["Err"].(string); code == 200 || !strings.Contains(e, tc.want) {
				t.Errorf("%s: %d %v, want Err with %q", tc.path, code, r, tc.want)
			}
		}
		if code, r := pa.call("/Plugin.Activate", nil); code != 200 || r["Implements"] == nil {
			t.Fatalf("plugin stopped serving: %d %v", code, r)
		}
		e.docker("volume", "ls")
	})
}

// An attach method that cannot work on this host is refused with its
// reason, an unknown one as a usage error naming those there are.
func TestDockerPluginAttachRefused(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{"floppy": "use auto, nbd, iscsi, fuse"}
	// Only where the method surely cannot work: otherwise the plugin
	// would start (the QEMU guest runs these methods for real).
	if _, err := os.Stat("/sys/module/nbd"); err != nil {
		if _, err := exec.LookPath("modprobe"); err != nil {
			cases["nbd"] = "--attach nbd: "
		}
	}
	if _, err := exec.LookPath("iscsiadm"); err != nil {
		cases["iscsi"] = "--attach iscsi: "
	}
	for m, want := range cases {
		cmd := exec.Command(ferryBin, "docker-plugin", "--attach", m, "--state-dir", dir, "--socket", filepath.Join(dir, "p.sock"))
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		wantCode := 1
		if m == "floppy" {
			wantCode = 2
		}
		if !ok || ee.ExitCode() != wantCode {
			t.Errorf("--attach %s: %v, want exit %d\n%s", m, err, wantCode, out)
		}
		if !strings.Contains(string(out), want) {
			t.Errorf("--attach %s: %s", m, out)
		}
	}
	if exists(filepath.Join(dir, "p.sock")) {
		t.Error("a refused start left a socket")
	}
}

// `ferry volume detach` lists a volume's holders, and breaks their leases
// only with --force.
func TestVolumeDetachCLI(t *testing.T) {
	g := startGateway(t)
	g.mustCLI("volume", "create", "held", "--size", "16M")
	req, _ := http.NewRequest(http.MethodPut, "http://"+g.apiAddr+"/v1/volumes/held/attachments/docker-3", strings.NewReader(`{"protocol":"fuse","reclaim":true}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("attach: %v %v", err, resp)
	}
	resp.Body.Close()
	if info := g.mustCLI("volume", "info", "held"); !strings.Contains(info, "held by:      host docker-3 (fuse, read-write)") {
		t.Errorf("volume info does not show the attachment:\n%s", info)
	}
	r := g.cli("volume", "detach", "held")
	if r.code == 0 || !strings.Contains(r.stdout, "host docker-3") || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("without --force: %+v", r)
	}
	if l := attachments(t, g, "held"); len(l) != 1 {
		t.Fatalf("listing broke the lease: %v", l)
	}
	if r := g.cli("volume", "detach", "held", "--host", "other", "--force"); r.code == 0 {
		t.Fatalf("--host of a non-holder: %+v", r)
	}
	if out := g.mustCLI("volume", "detach", "held", "--force"); !strings.Contains(out, "broke host docker-3") {
		t.Fatalf("--force: %q", out)
	}
	if l := attachments(t, g, "held"); len(l) != 0 {
		t.Fatalf("after --force: %v", l)
	}
	if out := g.mustCLI("volume", "detach", "held"); !strings.Contains(out, "not attached") {
		t.Fatalf("after: %q", out)
	}
}
