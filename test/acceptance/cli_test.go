package acceptance

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

func TestCLIVolumeLifecycle(t *testing.T) {
	g := startGateway(t)

	out := g.mustCLI("volume", "create", "vm1", "--size", "10GiB")
	if !strings.Contains(out, "vm1") || !strings.Contains(out, "10 GiB") {
		t.Errorf("create output %q", out)
	}
	g.mustCLI("volume", "create", "small", "--size", "512M")

	var list []volumeInfo
	if err := json.Unmarshal([]byte(g.mustCLI("volume", "ls", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "small" || list[1].Name != "vm1" || list[1].Size != 10<<30 {
		t.Fatalf("ls --json = %+v", list)
	}
	if out := g.mustCLI("volume", "ls"); !strings.Contains(out, "NAME") || !strings.Contains(out, "vm1") {
		t.Errorf("ls table %q", out)
	}
	in := g.info("vm1")
	if in.Size != 10<<30 || in.Allocated != 0 {
		t.Errorf("fresh volume info %+v: want 10 GiB provisioned, nothing allocated", in)
	}
	if out := g.mustCLI("volume", "info", "vm1"); !strings.Contains(out, "provisioned:") || !strings.Contains(out, "allocated:") {
		t.Errorf("info output %q", out)
	}
	g.mustCLI("volume", "resize", "vm1", "--size", "1T")
	if in := g.info("vm1"); in.Size != 1<<40 {
		t.Errorf("after resize size = %d", in.Size)
	}
	g.mustCLI("volume", "rm", "small")
	if r := g.cli("volume", "info", "small"); r.code == 0 || !strings.Contains(r.stderr, `volume "small": not found`) {
		t.Errorf("info of removed volume: exit %d, %q", r.code, r.stderr)
	}
}

func TestCLIErrors(t *testing.T) {
	g := startGateway(t)
	g.mustCLI("volume", "create", "dup", "--size", "1M")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"volume", "create", "Bad_Name", "--size", "1G"}, "a-z, 0-9"},
		{[]string{"volume", "create", "dup", "--size", "1G"}, "already exists"},
		{[]string{"volume", "create", "zero", "--size", "0"}, "greater than zero"},
		{[]string{"volume", "create", "odd", "--size", "1000"}, "multiple of 512"},
		{[]string{"volume", "create", "nosize"}, "size"},
		{[]string{"volume", "create", "badsize", "--size", "10X"}, "not a size"},
		{[]string{"volume", "create", "--size", "1G"}, "missing volume name"},
		{[]string{"volume", "info", "ghost"}, `volume "ghost": not found`},
		{[]string{"volume", "resize", "ghost", "--size", "1G"}, `volume "ghost": not found`},
		{[]string{"volume", "resize", "dup", "--size", "512K"}, "shrinking"},
		{[]string{"volume", "rm", "ghost"}, `remove volume "ghost": not found`},
	}
	for _, c := range cases {
		r := g.cli(c.args...)
		if r.code == 0 {
			t.Errorf("ferry %v succeeded, want failure", c.args)
			continue
		}
		if !strings.Contains(r.stderr, c.want) {
			t.Errorf("ferry %v: stderr %q does not say %q", c.args, r.stderr, c.want)
		}
	}
	// Talking to no gateway says what to do.
	out, err := runErr(time.Minute, ferryBin, "volume", "ls", "--api", "127.0.0.1:1")
	if err == nil || !strings.Contains(out, "ferry serve") {
		t.Errorf("unreachable API: %v %q", err, out)
	}
}

// rm is refused while a client is connected, and --force disconnects it.
func TestRemoveRefusedWhileConnected(t *testing.T) {
	g := startGateway(t)
	g.mustCLI("volume", "create", "busy", "--size", "16M")
	hold := testutil.Nbdsh(t, "-u", g.uri("busy"), "-c", "import time\nwhile True: time.sleep(0.1); h.pread(512, 0)")
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- hold.Wait() }()
	exited := false
	defer func() {
		if !exited {
			hold.Process.Kill()
			<-done
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for len(g.info("busy").Connections) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("client never showed up in volume info")
		}
		time.Sleep(50 * time.Millisecond)
	}
	r := g.cli("volume", "rm", "busy")
	if r.code == 0 || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("rm while connected: exit %d %q", r.code, r.stderr)
	}
	g.mustCLI("volume", "rm", "busy", "--force")
	select {
	case <-done: // the client was disconnected and its loop failed
		exited = true
	case <-time.After(15 * time.Second):
		t.Fatal("forced rm did not disconnect the client")
	}
}

// ephemeral gives every listener of a gateway a port of its own; a later
// flag of the same name overrides it.
var ephemeral = []string{"--nbd-listen", "127.0.0.1:0", "--iscsi-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"}

// Flags come from flags, FERRY_* env and a YAML config file.
func TestServeConfigFileAndEnv(t *testing.T) {
	dir := t.TempDir()
	g := newGateway(t, filepath.Join(dir, "data"))
	cfg := filepath.Join(dir, "ferry.yaml")
	yaml := "nbd-listen: " + g.nbdAddr + "\niscsi-listen: " + g.iscsiAddr + "\napi-listen: " + g.apiAddr + "\nlog-level: debug\n"
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ferryBin, "serve", "--config", cfg)
	cmd.Env = append(os.Environ(), "FERRY_DATA="+g.data)
	logs := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if r := g.cli("volume", "ls"); r.code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway from config file never answered\n%s", logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(g.data, "catalog.json")); err != nil {
		g.mustCLI("volume", "create", "x", "--size", "1M")
		if _, err := os.Stat(filepath.Join(g.data, "catalog.json")); err != nil {
			t.Fatalf("FERRY_DATA not honoured: %v", err)
		}
	}
	if !strings.Contains(logs.String(), "level=DEBUG") {
		t.Errorf("log-level from the config file not honoured")
	}
	if !strings.Contains(logs.String(), g.iscsiAddr) {
		t.Errorf("iscsi-listen from the config file not honoured:\n%s", logs)
	}
}

// Bad configuration fails fast with a clear message, and before anything
// is bound or created.
func TestServeBadConfig(t *testing.T) {
	dir := t.TempDir()
	writeConfig := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	typo := writeConfig("typo.yaml", "nbd_listen: 127.0.0.1:0\nlog-level: info\n")
	notMap := writeConfig("list.yaml", "- data\n- pool\n")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--nbd-listen", "not-an-address"}, "--nbd-listen \"not-an-address\": not a listen address"},
		{[]string{"--iscsi-listen", "127.0.0.1:99999"}, "--iscsi-listen \"127.0.0.1:99999\": port \"99999\""},
		{[]string{"--api-listen", "no-such-host.invalid:9809"}, "does not resolve"},
		{[]string{"--nbd-listen", "127.0.0.1:7777", "--iscsi-listen", "127.0.0.1:7777"}, "give each listener its own port"},
		{[]string{"--log-level", "loud"}, "log-level"},
		{[]string{"--log-format", "xml"}, "--log-format \"xml\": use text or json"},
		{[]string{"--config", "/nonexistent/ferry.yaml"}, "config file /nonexistent/ferry.yaml does not exist"},
		{[]string{"--config", typo}, `unknown key "nbd_listen" (did you mean "nbd-listen"?)`},
		{[]string{"--config", notMap}, "not a YAML mapping"},
		{[]string{"--readahead", "-2"}, "--readahead -2"},
		{[]string{"--stream-memory", "lots"}, "--stream-memory"},
		{[]string{"--iscsi-chap-user", "u", "--iscsi-chap-secret", "short"}, "default iSCSI CHAP (--iscsi-chap-*): CHAP secrets must be 12 to 255 characters"},
	}
	for _, c := range cases {
		data := filepath.Join(t.TempDir(), "data")
		args := append(append([]string{"serve", "--data", data}, ephemeral...), c.args...)
		out, err := runErr(time.Minute, ferryBin, args...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("ferry %v: err=%v, output %q should mention %q", args, err, out, c.want)
		}
		if lines := strings.Count(strings.TrimSpace(out), "\n") + 1; lines > 2 {
			t.Errorf("ferry %v: %d lines of output, want the error alone:\n%s", args, lines, out)
		}
		if strings.Contains(c.want, "listen") || strings.Contains(c.want, "config") || strings.Contains(c.want, "resolve") || strings.Contains(c.want, "port") || strings.Contains(c.want, "CHAP") {
			if _, err := os.Stat(data); err == nil {
				t.Errorf("ferry %v created its data directory before checking its listeners and config", args)
			}
		}
	}
	// Two gateways never share a data directory.
	g := startGateway(t)
	out, err := runErr(time.Minute, ferryBin, append([]string{"serve", "--data", g.data}, ephemeral...)...)
	if err == nil || !strings.Contains(out, "in use by another ferry serve") {
		t.Errorf("second gateway on the same data dir: %v %q", err, out)
	}
}
