package acceptance

import (
	"context"
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

// vmEnv runs `ferry-kvm vm ARGS` against this daemon with extra
// environment variables (FERRY_KVM_TOKEN_FILE=...).
func (d *kvmd) vmEnv(env []string, args ...string) cliResult {
	d.t.Helper()
	cmd := exec.Command(d.bin, append([]string{"vm"}, args...)...)
	base := append(os.Environ(), "FERRY_KVM_API="+d.api())
	if d.ca != "" {
		base = append(base, "FERRY_KVM_API_CA="+d.ca)
	}
	cmd.Env = append(base, env...)
	return runCLI(d.t, cmd)
}

// TestKVMAPIToken: a ferry-kvm daemon with --api-auth token creates its
// token file on first start and keeps it across restarts; the CLI without
// the token, or with a wrong one, is refused with a clear message; with it
// (--token-file, FERRY_KVM_TOKEN_FILE or FERRY_KVM_TOKEN) it is served.
// /healthz stays open, /metrics is behind the token. --api-auth none off
// loopback is refused without --api-auth-insecure. No VM boots here.
func TestKVMAPIToken(t *testing.T) {
	g := startGateway(t)
	d := startKVMD(t, g, "host-t", "--api-auth", "token")
	tokFile := filepath.Join(d.state, "api-token")
	st, err := os.Stat(tokFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file %s: %v (mode %v), want mode 0600", tokFile, err, st)
	}
	b, _ := os.ReadFile(tokFile)
	tok := strings.TrimSpace(string(b))
	if len(tok) < 40 {
		t.Fatalf("token %d characters", len(tok))
	}

	r := d.vm("ls")
	if r.code == 0 || !strings.Contains(r.stderr, "needs its token") || !strings.Contains(r.stderr, "FERRY_KVM_TOKEN_FILE") {
		t.Fatalf("vm ls without the token: exit %d, stderr %q; want refused, saying how to give it", r.code, r.stderr)
	}
	r = d.vmEnv([]string{"FERRY_KVM_TOKEN=wrong-token-0123456789abcdef"}, "ls")
	if r.code == 0 || !strings.Contains(r.stderr, "not this ferry-kvm's") {
		t.Fatalf("vm ls with a wrong token: exit %d, stderr %q", r.code, r.stderr)
	}
	r = d.vmEnv([]string{"FERRY_KVM_TOKEN=short"}, "ls")
	if r.code == 0 || !strings.Contains(r.stderr, "--token") {
		t.Fatalf("vm ls with a malformed token: exit %d, stderr %q", r.code, r.stderr)
	}
	d.mustVM("--token-file", tokFile, "ls")
	if r := d.vmEnv([]string{"FERRY_KVM_TOKEN_FILE=" + tokFile}, "ls", "--json"); r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("vm ls --json with FERRY_KVM_TOKEN_FILE: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if r := d.vmEnv([]string{"FERRY_KVM_TOKEN=" + tok}, "info", "nope"); r.code == 0 || !strings.Contains(r.stderr, "nope") {
		t.Fatalf("vm info nope with FERRY_KVM_TOKEN: exit %d, stderr %q; want past the token to 'no such VM'", r.code, r.stderr)
	}

	for path, want := range map[string]int{"/healthz": 200, "/metrics": 401} {
		resp, err := http.Get("http://" + d.addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s without the token: %d, want %d", path, resp.StatusCode, want)
		}
	}
	if strings.Contains(d.logs.String(), tok) {
		t.Fatal("the daemon logged its API token")
	}

	// Restarted, the daemon keeps its token.
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.exited
	d.start()
	if b2, _ := os.ReadFile(tokFile); strings.TrimSpace(string(b2)) != tok {
		t.Fatal("the token changed across a restart")
	}
	d.mustVM("--token-file", tokFile, "ls")

	// Over HTTPS (--api-tls-cert): served with the CA and the token; plain
	// HTTP and a client without the CA are refused.
	pki := newTestPKI(t)
	dir := t.TempDir()
	ca, cert, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	pki.writeCA(ca)
	pki.issue(t, "127.0.0.1", true, cert, key)
	s := newKVMD(t, g, "host-s", "--api-auth", "token", "--api-tls-cert", cert, "--api-tls-key", key)
	s.ca = ca
	s.start()
	sTok := "FERRY_KVM_TOKEN_FILE=" + filepath.Join(s.state, "api-token")
	if r := s.vmEnv([]string{sTok}, "ls", "--json"); r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("vm ls over HTTPS: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if r := s.vmEnv([]string{sTok, "FERRY_KVM_API_CA="}, "ls"); r.code == 0 || !strings.Contains(r.stderr, "certificate") {
		t.Fatalf("vm ls over HTTPS without the CA: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := s.vmEnv([]string{sTok, "FERRY_KVM_API=" + s.addr}, "ls"); r.code == 0 {
		t.Fatalf("vm ls over plain HTTP to an HTTPS daemon: exit 0, stdout %q", r.stdout)
	}

	// none off loopback: refused before anything listens (192.0.2.1 is a
	// documentation address; nothing binds it).
	bin, _ := requireKVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve", "--listen", "127.0.0.1:"+strconv.Itoa(testutil.FreePort(t)), "--state", t.TempDir(),
		"--host-id", "host-x", "--migration-address", "192.0.2.1", "--api-auth", "none")
	cmd.Env = append(os.Environ(), "FERRY_KVM_GATEWAY="+g.apiAddr)
	if r := runCLI(t, cmd); r.code <= 0 || !strings.Contains(r.stderr, "--api-auth-insecure") {
		t.Fatalf("--api-auth none off loopback: exit %d, stderr %q; want refused naming --api-auth-insecure", r.code, r.stderr)
	}
}
