package acceptance

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// ferryBin is the ferry binary built once for the package.
var ferryBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ferry-acceptance-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ferryBin = filepath.Join(dir, "ferry")
	// -buildvcs=true: the commit reaches `ferry version` even where GOFLAGS
	// turns stamping off.
	build := exec.Command("go", "build", "-buildvcs=true", "-o", ferryBin, "github.com/ferry-io/ferry/cmd/ferry")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build ferry:", err)
		os.Exit(1)
	}
	start := time.Now()
	stopDefault := startDefaultGateway(dir)
	code := m.Run()
	if err := stopDefault(); err != nil {
		fmt.Fprintln(os.Stderr, "the gateway on the default ports:", err)
		code = 1
	}
	if err := raceReports(os.Getenv("GORACE"), start); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// raceReports fails the run when a race-built gateway (GOFLAGS=-race,
// docs/TESTING.md) met a data race: with GORACE's log_path=PREFIX, the
// race detector writes each process's reports to PREFIX.PID, and the
// gateways run outside the test binary, so nothing else would fail.
// Files older than the run are not this run's.
func raceReports(gorace string, since time.Time) error {
	var prefix string
	for _, opt := range strings.Fields(gorace) {
		if v, ok := strings.CutPrefix(opt, "log_path="); ok {
			prefix = v
		}
	}
	if prefix == "" || prefix == "stdout" || prefix == "stderr" {
		return nil
	}
	files, err := filepath.Glob(prefix + ".*")
	if err != nil {
		return fmt.Errorf("race reports %s.*: %w", prefix, err)
	}
	var found []string
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && !fi.ModTime().Before(since) {
			found = append(found, f)
		}
	}
	if len(found) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "the race detector reported data races (%s):\n", strings.Join(found, ", "))
	for _, f := range found {
		data, _ := os.ReadFile(f)
		b.Write(data)
	}
	return errors.New(b.String())
}

// defaultPorts are the addresses `ferry serve` listens on by default.
var defaultPorts = []string{"127.0.0.1:10809", "127.0.0.1:3260", "127.0.0.1:9809"}

// defaultGatewayStarted is set when startDefaultGateway started one.
var defaultGatewayStarted bool

// startDefaultGateway runs the README's first command, `ferry serve` with
// every default, for the whole run: every test gateway must then live on
// ports of its own, and one that binds a default port fails. When the
// default ports are taken already (by a gateway the user left running, as
// the README says), that gateway plays the part. The returned function
// stops the gateway and reports whether it ran throughout.
func startDefaultGateway(dir string) func() error {
	for _, addr := range defaultPorts {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "acceptance: %s is taken; the gateway holding it stands in for the README's\n", addr)
			return func() error { return nil }
		}
		l.Close()
	}
	cmd := exec.Command(ferryBin, "serve")
	cmd.Dir = dir // its ./ferry-data goes there
	logs := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		return func() error { return err }
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if resp, err := http.Get("http://127.0.0.1:9809/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		select {
		case err := <-exited:
			return func() error { return fmt.Errorf("exited at start: %v\n%s", err, logs) }
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-exited
			return func() error { return fmt.Errorf("not healthy within 20s\n%s", logs) }
		}
		time.Sleep(50 * time.Millisecond)
	}
	defaultGatewayStarted = true
	return func() error {
		select {
		case err := <-exited:
			return fmt.Errorf("exited during the tests: %v\n%s", err, logs)
		default:
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				return fmt.Errorf("stopped with %v\n%s", err, logs)
			}
			return nil
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			<-exited
			return fmt.Errorf("did not stop within 60s of SIGTERM\n%s", logs)
		}
	}
}

// gateway is one `ferry serve` process.
type gateway struct {
	t         *testing.T
	data      string
	nbdAddr   string
	iscsiAddr string
	apiAddr   string
	extra     []string
	env       []string // added to the gateway's environment
	prefix    []string // a program that runs the gateway (chrt ...), when set
	token     string   // sent by cli and get when set (useToken)
	cmd       *exec.Cmd
	logs      *testutil.SyncBuffer
	exited    chan struct{}
	waitErr   error
}

// newGateway prepares a gateway on fresh loopback ports over data.
func newGateway(t *testing.T, data string, extra ...string) *gateway {
	t.Helper()
	return &gateway{
		t: t, data: data, extra: extra,
		nbdAddr:   fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
		iscsiAddr: fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
		apiAddr:   fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
	}
}

// startGateway starts a gateway over a new data directory.
func startGateway(t *testing.T, extra ...string) *gateway {
	t.Helper()
	g := newGateway(t, t.TempDir(), extra...)
	g.start()
	return g
}

func (g *gateway) start() {
	g.t.Helper()
	args := append([]string{"serve", "--data", g.data, "--nbd-listen", g.nbdAddr, "--api-listen", g.apiAddr, "--iscsi-listen", g.iscsiAddr}, g.extra...)
	if len(g.prefix) > 0 {
		g.cmd = exec.Command(g.prefix[0], append(append(g.prefix[1:len(g.prefix):len(g.prefix)], ferryBin), args...)...)
	} else {
		g.cmd = exec.Command(ferryBin, args...)
	}
	g.cmd.Env = append(os.Environ(), g.env...)
	g.logs = &testutil.SyncBuffer{}
	g.cmd.Stdout, g.cmd.Stderr = g.logs, g.logs
	if err := g.cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	g.exited = make(chan struct{})
	go func() { g.waitErr = g.cmd.Wait(); close(g.exited) }()
	g.t.Cleanup(g.stopQuietly)
	health, hc := "http://"+g.apiAddr+"/healthz", http.DefaultClient
	if slices.Contains(g.extra, "--api-tls-cert") {
		// Only a liveness probe: the TLS test checks the certificate.
		health = "https://" + g.apiAddr + "/healthz"
		hc = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	}
	waitHealthy(g.t, "ferry serve", hc, health, 20*time.Second, g.exited, g.logs)
}

// waitHealthy waits until url answers 200, failing the test when the
// process (exited closes when it ends) dies first or within does not do.
func waitHealthy(t *testing.T, what string, hc *http.Client, url string, within time.Duration, exited <-chan struct{}, logs *testutil.SyncBuffer) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if resp, err := hc.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-exited:
			t.Fatalf("%s exited during start-up:\n%s", what, logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy after %v:\n%s", what, within, logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill9 ends the gateway with SIGKILL and waits for it.
func (g *gateway) kill9() {
	g.cmd.Process.Signal(syscall.SIGKILL)
	<-g.exited
}

// stop sends SIGTERM and returns the exit error.
func (g *gateway) stop() error {
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.exited:
		return g.waitErr
	case <-time.After(60 * time.Second):
		g.cmd.Process.Signal(syscall.SIGKILL)
		<-g.exited
		return fmt.Errorf("ferry serve did not stop within 60s of SIGTERM")
	}
}

func (g *gateway) stopQuietly() {
	if g.cmd == nil || g.cmd.Process == nil {
		return
	}
	select {
	case <-g.exited:
	default:
		g.stop()
	}
	if g.t.Failed() {
		g.t.Logf("gateway log:\n%s", tail(g.logs.String(), 60))
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// useToken makes cli and get send the gateway's API token (a gateway
// started with --api-auth token).
func (g *gateway) useToken() {
	g.t.Helper()
	b, err := os.ReadFile(g.tokenFile())
	if err != nil {
		g.t.Fatal(err)
	}
	g.token = strings.TrimSpace(string(b))
}

func (g *gateway) tokenFile() string { return filepath.Join(g.data, "api-token") }

// get GETs an API path, with the token when useToken was called.
func (g *gateway) get(path string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+g.apiAddr+path, nil)
	if err != nil {
		return nil, err
	}
	if g.token != "" {
		req.Header.Set("Authorization", "Bearer "+g.token)
	}
	return http.DefaultClient.Do(req)
}

// metric is the value of one series on /metrics (its exact text, such as
// `ferry_nbd_requests_total{command="flush"}`), 0 if it is not there. t is
// the calling (sub)test's.
func (g *gateway) metric(t *testing.T, series string) float64 {
	t.Helper()
	v, err := g.metricNow(series)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// metricNow is metric for any goroutine: it returns the error.
func (g *gateway) metricNow(series string) (float64, error) {
	resp, err := g.get("/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		return 0, nil
	}
	f, _ := strconv.ParseFloat(string(m[1]), 64)
	return f, nil
}

// uri is the NBD URI of a volume.
func (g *gateway) uri(vol string) string { return "nbd://" + g.nbdAddr + "/" + vol }

// cliResult is one CLI run.
type cliResult struct {
	stdout, stderr string
	code           int
}

// cli runs `ferry ARGS --api ADDR` against this gateway.
func (g *gateway) cli(args ...string) cliResult {
	g.t.Helper()
	return g.cliEnv(nil, args...)
}

// cliEnv is cli with extra environment variables (FERRY_TOKEN=...).
func (g *gateway) cliEnv(env []string, args ...string) cliResult {
	g.t.Helper()
	return runCLI(g.t, g.command(env, args...))
}

// command is `ferry ARGS` set up to reach this gateway: FERRY_API, its
// token once useToken was called, then env.
func (g *gateway) command(env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(ferryBin, args...)
	cmd.Env = append(os.Environ(), "FERRY_API="+g.apiAddr)
	if g.token != "" {
		cmd.Env = append(cmd.Env, "FERRY_TOKEN="+g.token)
	}
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// cliBound is how long runCLI lets one command run: far beyond the
// slowest (a live migration under TCG takes a few minutes), so that a
// command that hangs fails its test with its output, and the suite goes
// on, instead of holding everything until go test's own timeout.
const cliBound = 10 * time.Minute

// runCLI runs a CLI command and returns its output and exit code; only a
// failure to run it at all fails the test, or its running past cliBound.
func runCLI(t *testing.T, cmd *exec.Cmd) cliResult {
	t.Helper()
	return runCLIWithin(t, cmd, cliBound)
}

// runCLIWithin is runCLI with its own bound. A command still running at
// the bound is killed, reported as a test error with what it printed, and
// returned with code -1; so is one that could not run or that a signal
// ended: code -1 has always been reported. Safe to call from any
// goroutine.
func runCLIWithin(t *testing.T, cmd *exec.Cmd, bound time.Duration) cliResult {
	t.Helper()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	// A child that inherited the output (none should) cannot hold Wait
	// once the command has exited.
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Errorf("run %v: %v", cmd.Args, err)
		return cliResult{code: -1}
	}
	var killed atomic.Bool
	timer := time.AfterFunc(bound, func() {
		killed.Store(true)
		cmd.Process.Kill()
	})
	err := cmd.Wait()
	timer.Stop()
	if killed.Load() {
		t.Errorf("%v: still running after %v; killed\nstdout: %s\nstderr: %s", cmd.Args, bound, o.String(), e.String())
		return cliResult{o.String(), e.String(), -1}
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		if code = ee.ExitCode(); code == -1 {
			t.Errorf("%v: %v\nstdout: %s\nstderr: %s", cmd.Args, err, o.String(), e.String())
		}
	} else if err != nil {
		t.Errorf("run %v: %v", cmd.Args, err)
		code = -1
	}
	return cliResult{o.String(), e.String(), code}
}

// mustCLI runs the CLI and fails the test on a non-zero exit.
func (g *gateway) mustCLI(args ...string) string {
	g.t.Helper()
	r := g.cli(args...)
	if r.code != 0 {
		g.t.Fatalf("ferry %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// volumeInfo is the subset of `volume info --json` the tests read.
type volumeInfo struct {
	Name        string       `json:"name"`
	ID          string       `json:"id"`
	Size        int64        `json:"size"`
	Allocated   int64        `json:"allocated"`
	Connections []clientInfo `json:"connections"`
	Attachments []struct {
		Host      string `json:"host"`
		Connected bool   `json:"connected"`
	} `json:"attachments"`
	Attach struct {
		NBD *struct {
			URL string `json:"url"`
		} `json:"nbd"`
		ISCSI *struct {
			Target string `json:"target"`
			Portal string `json:"portal"`
			URL    string `json:"url"`
		} `json:"iscsi"`
	} `json:"attach"`
}

// clientInfo is one connected client in `volume info --json`.
type clientInfo struct {
	Protocol    string    `json:"protocol"`
	Remote      string    `json:"remote"`
	Initiator   string    `json:"initiator"`
	TLSIdentity string    `json:"tls_identity"`
	Since       time.Time `json:"since"`
}

// waitConnections waits up to within for vol to have n client connections
// and returns them; on timeout the test fails, with detail() (a client's
// output, say) when given.
func (g *gateway) waitConnections(vol string, n int, within time.Duration, detail func() string) []clientInfo {
	g.t.Helper()
	deadline := time.Now().Add(within)
	for {
		conns := g.info(vol).Connections
		if len(conns) == n {
			return conns
		}
		if time.Now().After(deadline) {
			more := ""
			if detail != nil {
				more = "; " + detail()
			}
			g.t.Fatalf("volume %s has connections %+v, want %d%s", vol, conns, n, more)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (g *gateway) info(vol string) volumeInfo {
	g.t.Helper()
	var in volumeInfo
	if err := json.Unmarshal([]byte(g.mustCLI("volume", "info", vol, "--json")), &in); err != nil {
		g.t.Fatal(err)
	}
	return in
}

// waitLog waits up to within for the gateway's log to hold want, and
// fails t if it does not: for lines the gateway may write after its
// client has gone.
func (g *gateway) waitLog(t *testing.T, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(g.logs.String(), want) {
		if time.Now().After(deadline) {
			t.Errorf("the gateway's log lacks %q after %v", want, within)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// qio turns qemu-io commands into its arguments.
func qio(cmds ...string) []string {
	var args []string
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	return args
}

// qemuIOCheck runs qemu-io's cmds on the raw image at uri, within a
// minute, and fails t if qemu-io fails, a command fails or a pattern does
// not verify. It returns qemu-io's output.
func qemuIOCheck(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	args := append(append([]string{"-f", "raw"}, qio(cmds...)...), uri)
	out := run(t, time.Minute, testutil.RequireTool(t, "qemu-io"), args...)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed:") {
		t.Fatalf("qemu-io %v:\n%s", cmds, out)
	}
	return out
}

// run runs a program with a timeout and returns combined output; it fails
// the test on a non-zero exit.
func run(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := runErr(timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(timeout time.Duration, name string, args ...string) (string, error) {
	return testutil.CombinedOutput(timeout, name, args...)
}
