package acceptance

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAPIToken: with --api-auth token, every API call but /healthz and
// /readyz needs the gateway's token; the CLI takes it from a file or the
// environment, a wrong one is refused, /metrics is guarded unless
// --metrics-public, the token survives a restart and is never logged.
func TestAPIToken(t *testing.T) {
	g := startGateway(t, "--api-auth", "token")
	tokenFile := filepath.Join(g.data, "api-token")
	st, err := os.Stat(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v, want 0600", st.Mode().Perm())
	}
	b, _ := os.ReadFile(tokenFile)
	token := strings.TrimSpace(string(b))

	r := g.cli("volume", "ls")
	if r.code == 0 || !strings.Contains(r.stderr, "needs its token") {
		t.Fatalf("volume ls without a token: exit %d, stderr %q; want a refusal naming the token", r.code, r.stderr)
	}
	r = g.cliEnv([]string{"FERRY_TOKEN=not-the-token-of-this-gateway"}, "volume", "create", "v1", "--size", "64M")
	if r.code == 0 || !strings.Contains(r.stderr, "not this gateway's") {
		t.Fatalf("volume create with a wrong token: exit %d, stderr %q", r.code, r.stderr)
	}
	r = g.cliEnv([]string{"FERRY_TOKEN=short"}, "volume", "ls")
	if r.code == 0 || !strings.Contains(r.stderr, "at least 20") {
		t.Fatalf("volume ls with a malformed token: exit %d, stderr %q", r.code, r.stderr)
	}
	withFile := []string{"FERRY_TOKEN_FILE=" + tokenFile}
	if r = g.cliEnv(withFile, "volume", "create", "v1", "--size", "64M"); r.code != 0 {
		t.Fatalf("volume create with --token-file: exit %d: %s", r.code, r.stderr)
	}
	if r = g.cliEnv([]string{"FERRY_TOKEN=" + token}, "volume", "ls"); r.code != 0 || !strings.Contains(r.stdout, "v1") {
		t.Fatalf("volume ls with FERRY_TOKEN: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	// The data path is not the API's business: NBD still serves.
	run(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", g.uri("v1"))

	get := func(path, tok string) int {
		req, _ := http.NewRequest("GET", "http://"+g.apiAddr+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		path, tok string
		want      int
	}{
		{"/healthz", "", 200}, {"/readyz", "", 200}, {"/metrics", "", 401}, {"/metrics", token, 200},
		{"/v1/volumes", "", 401}, {"/v1/volumes", token + "x", 401}, {"/v1/volumes", token, 200},
	} {
		if got := get(c.path, c.tok); got != c.want {
			t.Errorf("GET %s (token given: %v) = %d, want %d", c.path, c.tok != "", got, c.want)
		}
	}

	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(g.logs.String(), token) {
		t.Error("the gateway's log holds the API token")
	}
	g.extra = append(g.extra, "--metrics-public")
	g.start()
	b2, _ := os.ReadFile(tokenFile)
	if strings.TrimSpace(string(b2)) != token {
		t.Error("the API token changed across a restart")
	}
	if got := get("/metrics", ""); got != 200 {
		t.Errorf("GET /metrics with --metrics-public = %d, want 200", got)
	}
	if got := get("/v1/volumes", ""); got != 401 {
		t.Errorf("GET /v1/volumes after restart without a token = %d, want 401", got)
	}
}

// TestAPIAuthNoneRefusedOffLoopback: --api-auth none with a listener off
// loopback is refused before anything listens.
func TestAPIAuthNoneRefusedOffLoopback(t *testing.T) {
	out, err := runErr(time.Minute, ferryBin, "serve", "--data", t.TempDir(), "--api-listen", "127.0.0.1:0",
		"--nbd-listen", "0.0.0.0:0", "--nbd-tls", "off", "--iscsi-listen", "", "--api-auth", "none")
	if err == nil || !strings.Contains(out, "--api-auth-insecure") {
		t.Fatalf("serve --api-auth none off loopback: err %v, output:\n%s", err, out)
	}
	if strings.Contains(out, "listening") {
		t.Errorf("it listened before refusing:\n%s", out)
	}
}

// TestAPITLS: the API over HTTPS with --api-tls-cert/--api-tls-key; the
// CLI trusts it with --api-ca and refuses it without.
func TestAPITLS(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	pki := newTestPKI(t)
	pki.writeCA(ca)
	pki.issue(t, "127.0.0.1", true, cert, key)
	g := startGateway(t, "--api-tls-cert", cert, "--api-tls-key", key, "--api-auth", "token")
	env := []string{"FERRY_API=https://" + g.apiAddr, "FERRY_TOKEN_FILE=" + filepath.Join(g.data, "api-token")}
	if r := g.cliEnv(env, "volume", "ls"); r.code == 0 || !strings.Contains(r.stderr, "certificate") {
		t.Fatalf("volume ls over https without --api-ca: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := g.cliEnv(append(env, "FERRY_API_CA="+ca), "volume", "create", "v1", "--size", "1G"); r.code != 0 {
		t.Fatalf("volume create over https with --api-ca: exit %d: %s", r.code, r.stderr)
	}
	if r := g.cliEnv(append(env, "FERRY_API_CA="+key), "volume", "ls"); r.code == 0 || !strings.Contains(r.stderr, "no PEM certificate") {
		t.Fatalf("--api-ca with a key file: exit %d, stderr %q", r.code, r.stderr)
	}
}

// testPKI is a certificate authority for TLS tests.
type testPKI struct {
	t    *testing.T
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	der  []byte
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ferry test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testPKI{t: t, key: k, cert: c, der: der}
}

func (p *testPKI) writeCA(path string) {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.der}), 0o600); err != nil {
		p.t.Fatal(err)
	}
}

// issue writes a certificate and key signed by the CA: a server's for the
// IP address name, or a client's with name as its common name.
func (p *testPKI) issue(t *testing.T, name string, server bool, certPath, keyPath string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.IPAddresses = []net.IP{net.ParseIP(name)}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &k.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		t.Fatal(err)
	}
}
