package acceptance

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// The README's first command, a gateway on every default port, runs for
// the whole suite (TestMain); every other test gateway has ports of its
// own. The CLI with no --api reaches that gateway.
func TestREADMEGatewayOnDefaultPorts(t *testing.T) {
	if !defaultGatewayStarted {
		t.Skip("the default ports were taken before the suite started; the gateway holding them stands in")
	}
	out, err := runErr(time.Minute, ferryBin, "status")
	if err != nil {
		t.Fatalf("ferry status against the default API: %v\n%s", err, out)
	}
	for _, want := range []string{"127.0.0.1:10809", "127.0.0.1:3260", "127.0.0.1:9809"} {
		if !strings.Contains(out, want) {
			t.Errorf("status of the default gateway lacks %s:\n%s", want, out)
		}
	}
}

func TestVersion(t *testing.T) {
	head, err := testutil.Output(time.Minute, "git", "rev-parse", "HEAD")
	if err != nil {
		t.Skipf("not in a git checkout: %v", err)
	}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		s, err := runErr(time.Minute, ferryBin, args...)
		if err != nil {
			t.Fatalf("ferry %v: %v\n%s", args, err, s)
		}
		if !strings.HasPrefix(s, "ferry ") || !strings.Contains(s, strings.TrimSpace(head)) || !strings.Contains(s, runtime.Version()) {
			t.Errorf("ferry %v = %q: want the version, commit %s and %s", args, s, head, runtime.Version())
		}
	}
	var v struct {
		Version   string `json:"version"`
		Commit    string `json:"commit"`
		GoVersion string `json:"go_version"`
	}
	out, _ := testutil.Output(time.Minute, ferryBin, "version", "--json")
	if err := json.Unmarshal([]byte(out), &v); err != nil || v.Version == "" || len(v.Commit) != 40 || v.GoVersion != runtime.Version() {
		t.Errorf("version --json = %q (%v)", out, err)
	}
}

// Mistakes in how a command is called get the error and a pointer to the
// help, on stderr, with exit status 2; not the whole help text.
func TestUsageErrors(t *testing.T) {
	g := startGateway(t)
	dir := t.TempDir()
	plugin := func(args ...string) []string {
		return append([]string{"docker-plugin", "--gateway", g.apiAddr, "--state-dir", filepath.Join(dir, "state"), "--socket", filepath.Join(dir, "ferry.sock")}, args...)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"volume", "bogus"}, `unknown command "bogus"`},
		{[]string{"store", "bogus"}, `unknown command "bogus"`},
		{[]string{"volume", "create", "v", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"volume", "create", "bad", "1G"}, "did you mean --size 1G?"},
		{[]string{"volume", "create", "v"}, "--size is required"},
		{[]string{"volume", "create", "v", "--size", "ten"}, "not a size"},
		{[]string{"volume", "info"}, "missing volume name"},
		{[]string{"volume", "update", "v"}, "nothing to update"},
		{[]string{"store", "add", "s3", "--bucket", "b"}, "--endpoint is required"},
		// Checked before anything listens (the test's own directory and
		// ports, should it start).
		{[]string{"serve", "--nbd-poll", "1s", "--data", filepath.Join(dir, "data"), "--nbd-listen", "127.0.0.1:0", "--iscsi-listen", "", "--api-listen", "127.0.0.1:0"}, "--nbd-poll 1s: give 0 (never poll) to 10ms"},
		// The plugin refuses CHAP settings no login could succeed with
		// before it starts (with the test's gateway and directory, should
		// it start).
		{plugin("--iscsi-mutual-chap-user", "tgt"), "--iscsi-mutual-chap-user needs --iscsi-mutual-chap-secret"},
		{plugin("--iscsi-chap-user", "alice"), "--iscsi-chap-user needs --iscsi-chap-secret"},
		{plugin("--iscsi-chap-secret", "short"), "12 to 255 characters"},
	}
	for _, c := range cases {
		// A usage error ends the command at once; one that runs instead is
		// ended after a minute.
		r := runCLIWithin(t, g.command(nil, c.args...), time.Minute)
		if r.code == -1 {
			continue // reported, with its output
		}
		if r.code != 2 {
			t.Errorf("ferry %v: exit %d, want 2", c.args, r.code)
		}
		if !strings.Contains(r.stderr, c.want) {
			t.Errorf("ferry %v: stderr %q lacks %q", c.args, r.stderr, c.want)
		}
		if n := strings.Count(strings.TrimSpace(r.stderr), "\n") + 1; n > 2 || r.stdout != "" {
			t.Errorf("ferry %v: %d lines on stderr and %q on stdout, want the error and a hint:\n%s", c.args, n, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stderr, "--help' for usage") {
			t.Errorf("ferry %v: no pointer to the help: %q", c.args, r.stderr)
		}
	}
}

// volume info names the volume's NBD URL and iSCSI target and portal,
// which real clients reach it by, and lists each client with its
// protocol, address, initiator and start.
func TestAttachDetails(t *testing.T) {
	g := startGateway(t)
	g.mustCLI("volume", "create", "vm1", "--size", "64M")
	in := g.info("vm1")
	if in.Attach.NBD == nil || in.Attach.NBD.URL != "nbd://"+g.nbdAddr+"/vm1" {
		t.Fatalf("attach.nbd = %+v, want nbd://%s/vm1", in.Attach.NBD, g.nbdAddr)
	}
	is := in.Attach.ISCSI
	if is == nil || is.Portal != g.iscsiAddr || is.Target != "iqn.2026-11.io.ferry:vm1" || is.URL != "iscsi://"+g.iscsiAddr+"/iqn.2026-11.io.ferry:vm1/0" {
		t.Fatalf("attach.iscsi = %+v", is)
	}
	if u := strings.TrimSpace(g.mustCLI("volume", "url", "vm1")); u != in.Attach.NBD.URL {
		t.Errorf("volume url = %q", u)
	}
	if u := strings.TrimSpace(g.mustCLI("volume", "url", "vm1", "--iscsi")); u != is.URL {
		t.Errorf("volume url --iscsi = %q", u)
	}
	text := g.mustCLI("volume", "info", "vm1")
	if !strings.Contains(text, in.Attach.NBD.URL) || !strings.Contains(text, is.Target) || !strings.Contains(text, is.Portal) {
		t.Errorf("volume info text lacks the attach details:\n%s", text)
	}
	// The printed URLs work with real clients.
	out := run(t, time.Minute, testutil.RequireTool(t, "nbdinfo"), "--size", in.Attach.NBD.URL)
	if strings.TrimSpace(out) != "67108864" {
		t.Errorf("nbdinfo --size %s = %q", in.Attach.NBD.URL, out)
	}
	out = run(t, time.Minute, testutil.RequireTool(t, "iscsi-inq"), "-i", "iqn.2026-12.io.example:probe", is.URL)
	if !strings.Contains(out, "Vendor:FERRY") || !strings.Contains(out, "Product:vm1") {
		t.Errorf("iscsi-inq %s:\n%s", is.URL, out)
	}

	// Two clients at once, one per protocol, show up as structured entries.
	before := time.Now().Add(-time.Second)
	hold := testutil.Nbdsh(t, "-u", in.Attach.NBD.URL, "-c", "import time\nwhile True: time.sleep(0.1); h.pread(512, 0)")
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { hold.Process.Kill(); hold.Wait() }()
	qio := exec.Command(testutil.RequireTool(t, "qemu-io"), "-f", "raw", "-c", "sleep 30000", is.URL)
	if err := qio.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { qio.Process.Kill(); qio.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	var conns []clientInfo
	for {
		conns = g.info("vm1").Connections
		if len(conns) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("connections = %+v, want one NBD and one iSCSI client", conns)
		}
		time.Sleep(100 * time.Millisecond)
	}
	protos := map[string]clientInfo{}
	for _, c := range conns {
		protos[c.Protocol] = c
		if !strings.HasPrefix(c.Remote, "127.0.0.1:") || c.Since.Before(before) || c.Since.After(time.Now().Add(time.Second)) {
			t.Errorf("client entry %+v", c)
		}
	}
	if _, ok := protos["nbd"]; !ok {
		t.Errorf("no NBD client in %+v", conns)
	}
	if c, ok := protos["iscsi"]; !ok || !strings.HasPrefix(c.Initiator, "iqn.") {
		t.Errorf("iSCSI client without its initiator name: %+v", conns)
	}
	if out := g.mustCLI("volume", "info", "vm1"); !strings.Contains(out, "PROTOCOL") || !strings.Contains(out, protos["iscsi"].Initiator) {
		t.Errorf("volume info text lacks the client table:\n%s", out)
	}
}

// A volume's access rules hold over NBD too: a CHAP volume is not open to
// NBD clients, an address allow-list keeps other addresses out on both
// protocols, and the NBD export list shows only what the client may open.
func TestAccessRulesOnEveryProtocol(t *testing.T) {
	g := startGateway(t)
	g.mustCLI("volume", "create", "open", "--size", "16M")
	g.mustCLI("volume", "create", "chap", "--size", "16M", "--chap-user", "alice", "--chap-secret", "0123456789abcdef")
	g.mustCLI("volume", "create", "elsewhere", "--size", "16M", "--allow-address", "127.0.0.2")
	nbdinfo := testutil.RequireTool(t, "nbdinfo")
	for _, vol := range []string{"chap", "elsewhere"} {
		// libnbd reports NBD_REP_ERR_POLICY as ENOTSUP and shows the
		// server's message in its debug output.
		cmd := exec.Command(nbdinfo, g.uri(vol))
		cmd.Env = append(cmd.Environ(), "LIBNBD_DEBUG=1")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "access denied by the volume's access rules") {
			t.Errorf("nbdinfo %s from 127.0.0.1: err=%v\n%s", vol, err, out)
		}
	}
	run(t, time.Minute, nbdinfo, g.uri("open"))
	list := run(t, time.Minute, nbdinfo, "--list", "nbd://"+g.nbdAddr)
	if !strings.Contains(list, "open") || strings.Contains(list, "chap") || strings.Contains(list, "elsewhere") {
		t.Errorf("NBD export list shows volumes this client may not open:\n%s", list)
	}
	// iSCSI: the address list holds there too; CHAP alone still logs in with CHAP.
	inq := testutil.RequireTool(t, "iscsi-inq")
	out, err := runErr(time.Minute, inq, "iscsi://"+g.iscsiAddr+"/iqn.2026-11.io.ferry:elsewhere/0")
	if err == nil {
		t.Errorf("iSCSI login from an address off the allow-list succeeded:\n%s", out)
	}
	run(t, time.Minute, inq, "iscsi://alice%0123456789abcdef@"+g.iscsiAddr+"/iqn.2026-11.io.ferry:chap/0")

	// Admitting the address opens NBD to the CHAP volume, and to the other.
	g.mustCLI("volume", "update", "chap", "--allow-address", "127.0.0.0/8")
	g.mustCLI("volume", "update", "elsewhere", "--allow-address", "127.0.0.1")
	run(t, time.Minute, nbdinfo, g.uri("chap"))
	run(t, time.Minute, nbdinfo, g.uri("elsewhere"))
	info := g.mustCLI("volume", "info", "chap")
	if !strings.Contains(info, "addresses 127.0.0.0/8") || !strings.Contains(info, "CHAP user alice") {
		t.Errorf("volume info does not say what protects the volume:\n%s", info)
	}
	if r := g.cli("volume", "update", "open", "--allow-address", "not-an-ip"); r.code == 0 || !strings.Contains(r.stderr, "not-an-ip") {
		t.Errorf("bad --allow-address: exit %d %q", r.code, r.stderr)
	}
	if !strings.Contains(g.logs.String(), "client refused by the volume's access rules") {
		t.Errorf("refusals are not logged")
	}
}

// --log-format json writes one JSON object a line; NBD connections are
// logged at info level when they attach and detach, with bytes moved.
func TestJSONLogsAndNBDConnectionLog(t *testing.T) {
	g := startGateway(t, "--log-format", "json")
	g.mustCLI("volume", "create", "v", "--size", "16M")
	run(t, time.Minute, testutil.RequireTool(t, "qemu-io"), "-f", "raw", "-c", "write -P 7 0 1M", "-c", "read -P 7 0 512k", g.uri("v"))
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	var attached, detached bool
	var listening int
	sc := bufio.NewScanner(strings.NewReader(g.logs.String()))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", sc.Text(), err)
		}
		if rec["level"] == "DEBUG" {
			t.Errorf("debug line at the default level: %v", rec)
		}
		switch rec["msg"] {
		case "listening":
			listening++
			if rec["protection"] == nil || rec["addr"] == nil {
				t.Errorf("listening line without address or protection: %v", rec)
			}
		case "NBD client attached":
			attached = rec["export"] == "v" && strings.HasPrefix(rec["remote"].(string), "127.0.0.1:")
		case "NBD client detached":
			detached = rec["written_bytes"] == float64(1<<20) && rec["read_bytes"] == float64(512<<10)
		}
	}
	if !attached || !detached || listening != 3 {
		t.Errorf("attached=%v detached=%v listening=%d in:\n%s", attached, detached, listening, g.logs)
	}
}

// ferry status shows the gateway in one screen; /readyz turns 503 when a
// store stops answering while /healthz stays 200.
func TestStatusAndReadiness(t *testing.T) {
	srv := s3Env(t, "ferry-status")
	g := startGateway(t)
	g.mustCLI("store", "add", "cloud", "--endpoint", srv.Endpoint, "--bucket", "ferry-status")
	g.mustCLI("volume", "create", "local1", "--size", "1G")
	g.mustCLI("volume", "create", "s3vol", "--size", "1G", "--store", "cloud")
	out := g.mustCLI("status")
	for _, want := range []string{"gateway:", "ready:     yes", g.nbdAddr, g.iscsiAddr, g.apiAddr, "loopback only",
		"pool:", "cache:", "cloud", "local1", "s3vol", "s3:cloud", "RPO"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n > 40 {
		t.Errorf("status is %d lines, more than a screen", n)
	}
	var st struct {
		Version       string  `json:"version"`
		UptimeSeconds float64 `json:"uptime_seconds"`
		Ready         bool    `json:"ready"`
		Listeners     []struct {
			Protocol, Address, Protection string
		} `json:"listeners"`
		Stores []struct {
			Name      string `json:"name"`
			Reachable bool   `json:"reachable"`
		} `json:"stores"`
		Volumes []volumeInfo `json:"volumes"`
	}
	if err := json.Unmarshal([]byte(g.mustCLI("status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if !st.Ready || len(st.Listeners) != 3 || len(st.Stores) != 1 || !st.Stores[0].Reachable || len(st.Volumes) != 2 || st.Version == "" {
		t.Errorf("status --json = %+v", st)
	}
	get := func(path string) int {
		resp, err := http.Get("http://" + g.apiAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := get("/readyz"); c != 200 {
		t.Errorf("/readyz = %d with the store up", c)
	}
	srv.Stop()
	deadline := time.Now().Add(30 * time.Second)
	for get("/readyz") != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatal("/readyz still not 503 30s after the store went away")
		}
		time.Sleep(500 * time.Millisecond)
	}
	if c := get("/healthz"); c != 200 {
		t.Errorf("/healthz = %d while a store is down; it must stay simple", c)
	}
	if out := g.mustCLI("status"); !regexp.MustCompile(`ready:\s+NO`).MatchString(out) || !strings.Contains(out, "NO: ") {
		t.Errorf("status with the store down:\n%s", out)
	}
	srv.Start()
}

// Limits are stated: a volume larger than the pool's file system allows
// names the largest size that fits.
func TestSizeLimitsStated(t *testing.T) {
	g := startGateway(t)
	r := g.cli("volume", "create", "huge", "--size", "100P")
	if r.code == 0 {
		t.Skip("the pool's file system allows 100 PiB files (XFS); nothing to state")
	}
	if !strings.Contains(r.stderr, "largest file") || !regexp.MustCompile(`up to \d+(\.\d)? [TPE]iB`).MatchString(r.stderr) ||
		strings.Contains(r.stderr, "file too large") {
		t.Errorf("100P volume: %q", r.stderr)
	}
	r = g.cli("volume", "create", "huge", "--size", "8192P")
	if r.code == 0 || !strings.Contains(r.stderr, "8 EiB") {
		t.Errorf("8 EiB volume: exit %d %q", r.code, r.stderr)
	}
}

// pool info prints its cache and store lines in text as JSON has them,
// also with no store.
func TestPoolInfoText(t *testing.T) {
	g := startGateway(t)
	out := g.mustCLI("pool", "info")
	if !strings.Contains(out, "cache:") || !strings.Contains(out, "stores:       none") {
		t.Errorf("pool info without stores:\n%s", out)
	}
}

// The commented sample configuration starts a gateway as it is (here with
// the listeners moved off the default ports).
func TestSampleConfigServes(t *testing.T) {
	g := newGateway(t, t.TempDir(), "--config", "../../docs/ferry.yaml")
	g.start()
	if out := g.mustCLI("status"); !strings.Contains(out, g.nbdAddr) {
		t.Errorf("status:\n%s", out)
	}
}
