package console

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testPaths(t *testing.T) Paths {
	d := t.TempDir()
	return Paths{Data: d, State: filepath.Join(d, "appliance"), TokenFile: filepath.Join(d, "api-token"),
		API: "127.0.0.1:1", RunNetwork: filepath.Join(d, "run-network")}
}

// fakeSystem records what the console asked the system to do.
type fakeSystem struct{ calls []string }

func (f *fakeSystem) RestartGateway(context.Context) error {
	f.calls = append(f.calls, "restart")
	return nil
}
func (f *fakeSystem) ReloadNetwork(context.Context) error {
	f.calls = append(f.calls, "reload-network")
	return nil
}
func (f *fakeSystem) PowerOff(context.Context) error {
	f.calls = append(f.calls, "poweroff")
	return nil
}
func (f *fakeSystem) GatewayState(context.Context) string { return "active" }

func TestEnsureCertOnceAndVerifiable(t *testing.T) {
	p := testPaths(t)
	created, err := EnsureCert(p, "ferry-appliance")
	if err != nil || !created {
		t.Fatalf("EnsureCert = %v, %v; want created", created, err)
	}
	fp1, err := CertFingerprint(p)
	if err != nil {
		t.Fatal(err)
	}
	created, err = EnsureCert(p, "other")
	if err != nil || created {
		t.Fatalf("second EnsureCert = %v, %v; want kept", created, err)
	}
	if fp2, _ := CertFingerprint(p); fp2 != fp1 {
		t.Fatalf("fingerprint changed: %s then %s", fp1, fp2)
	}
	b, _ := os.ReadFile(filepath.Join(p.State, CertFile))
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	for _, name := range []string{"ferry-appliance", "localhost", "127.0.0.1"} {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("verify as %s with itself as CA: %v", name, err)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "evil.example", Roots: pool}); err == nil {
		t.Error("verified for a name it does not carry")
	}
	st, _ := os.Stat(filepath.Join(p.State, KeyFile))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", st.Mode().Perm())
	}
}

func TestCHAPRoundTripAndChecks(t *testing.T) {
	p := testPaths(t)
	created, err := EnsureCHAP(p)
	if err != nil || !created {
		t.Fatalf("EnsureCHAP = %v, %v", created, err)
	}
	c, err := ReadCHAP(p)
	if err != nil || c.User != DefaultCHAPUser || len(c.Secret) < 12 {
		t.Fatalf("ReadCHAP = %+v, %v", c, err)
	}
	if err := WriteCHAP(p, CHAP{User: "u", Secret: "short"}); err == nil {
		t.Error("a 5-character secret was accepted")
	}
	if err := WriteCHAP(p, CHAP{User: "u", Secret: "has space 0123"}); err == nil {
		t.Error("a secret with a space was accepted")
	}
	if err := WriteCHAP(p, CHAP{User: "admin", Secret: "0123456789abcdef"}); err != nil {
		t.Fatal(err)
	}
	if c, _ := ReadCHAP(p); c != (CHAP{User: "admin", Secret: "0123456789abcdef"}) {
		t.Fatalf("after WriteCHAP: %+v", c)
	}
	if created, _ := EnsureCHAP(p); created {
		t.Error("EnsureCHAP replaced existing credentials")
	}
}

func TestRotateTokenRestartsGateway(t *testing.T) {
	p := testPaths(t)
	if err := WriteToken(p, "old-token-0123456789abcdef"); err != nil {
		t.Fatal(err)
	}
	sys := &fakeSystem{}
	if err := RotateToken(context.Background(), p, sys); err != nil {
		t.Fatal(err)
	}
	tok, err := ReadToken(p)
	if err != nil || tok == "old-token-0123456789abcdef" || len(tok) < 40 {
		t.Fatalf("token after rotation = %q, %v", tok, err)
	}
	if strings.Join(sys.calls, ",") != "restart" {
		t.Fatalf("system calls %v, want restart", sys.calls)
	}
}

func TestMenuStaticNetworkThenDHCP(t *testing.T) {
	p := testPaths(t)
	sys := &fakeSystem{}
	var out strings.Builder
	in := "1\neth0\n10.0.0.5/24\n10.0.0.1\n10.0.0.1 9.9.9.9\n"
	c := &Console{Paths: p, Sys: sys, In: bufio.NewReader(strings.NewReader(in)), Out: &out}
	if err := c.do(context.Background(), readChoice(t, c)); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(p.RunNetwork, StaticNetwork))
	if err != nil {
		t.Fatal(err)
	}
	want := "[Match]\nName=eth0\n\n[Network]\nAddress=10.0.0.5/24\nGateway=10.0.0.1\nDNS=10.0.0.1\nDNS=9.9.9.9\n"
	if !strings.Contains(string(b), want) {
		t.Fatalf("network file:\n%s\nwant it to hold:\n%s", b, want)
	}
	// Kept on the data disk: RestoreNetwork brings it back after the
	// system disk (and /run) is new.
	os.RemoveAll(p.RunNetwork)
	if n, err := RestoreNetwork(p); err != nil || n != 1 {
		t.Fatalf("RestoreNetwork = %d, %v", n, err)
	}
	c.In = bufio.NewReader(strings.NewReader("y\n"))
	if err := c.do(context.Background(), "2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(p.RunNetwork, StaticNetwork)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("static file still installed after DHCP again: %v", err)
	}
	if strings.Join(sys.calls, ",") != "reload-network,reload-network" {
		t.Fatalf("system calls %v", sys.calls)
	}
}

func readChoice(t *testing.T, c *Console) string {
	t.Helper()
	l, err := c.In.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(l)
}

func TestMenuRefusesBadInput(t *testing.T) {
	p := testPaths(t)
	sys := &fakeSystem{}
	c := &Console{Paths: p, Sys: sys, In: bufio.NewReader(strings.NewReader("eth0\n300.1.1.1/24\n")), Out: &strings.Builder{}}
	if err := c.do(context.Background(), "1"); err == nil {
		t.Error("a bad address was accepted")
	}
	if err := c.do(context.Background(), "9"); err == nil {
		t.Error("choice 9 was accepted")
	}
	c.In = bufio.NewReader(strings.NewReader("n\n"))
	if err := c.do(context.Background(), "6"); err != nil || len(sys.calls) != 0 {
		t.Errorf("shut down without confirmation: %v, %v", err, sys.calls)
	}
}

func TestSeedAppliedOncePerInstance(t *testing.T) {
	p := testPaths(t)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	user := `#cloud-config
hostname: gw1
ssh_authorized_keys: ["ssh-ed25519 AAAA test"]
ferry:
  api_token: seeded-token-0123456789
  iscsi_chap_user: initiator
  iscsi_chap_secret: seeded-secret-0123
  network: {interface: eth0, address: 192.0.2.10/24, gateway: 192.0.2.1, dns: [192.0.2.1]}
`
	s, err := ParseSeed([]byte("instance-id: i-1\nlocal-hostname: ignored\n"), []byte(user))
	if err != nil {
		t.Fatal(err)
	}
	done, err := ApplySeed(p, s, root)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 5 {
		t.Errorf("applied %q, want 5 steps", done)
	}
	if tok, _ := ReadToken(p); tok != "seeded-token-0123456789" {
		t.Errorf("token %q", tok)
	}
	if c, _ := ReadCHAP(p); c.User != "initiator" || c.Secret != "seeded-secret-0123" {
		t.Errorf("CHAP %+v", c)
	}
	if h, _ := os.ReadFile(filepath.Join(root, "etc/hostname")); string(h) != "gw1\n" {
		t.Errorf("hostname %q", h)
	}
	// The operator changes the token on the console; the same seed at the
	// next boot must not put the old one back.
	if err := WriteToken(p, "console-token-0123456789"); err != nil {
		t.Fatal(err)
	}
	if done, err := ApplySeed(p, s, root); err != nil || len(done) != 0 {
		t.Fatalf("second ApplySeed = %q, %v; want nothing", done, err)
	}
	if tok, _ := ReadToken(p); tok != "console-token-0123456789" {
		t.Errorf("the seed was applied twice: token %q", tok)
	}
	if _, err := ParseSeed([]byte("local-hostname: x\n"), nil); err == nil {
		t.Error("meta-data without instance-id accepted")
	}
	if _, err := ParseSeed([]byte("instance-id: i\n"), []byte("#!/bin/sh\necho hi\n")); err == nil {
		t.Error("a shell-script user-data accepted")
	}
	s3, _ := ParseSeed([]byte("instance-id: i-3\n"), []byte("#cloud-config\nferry: {nbd_tls: allow}\n"))
	if _, err := ApplySeed(p, s3, root); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(p.State, ServeEnvFile)); !strings.Contains(string(b), "\nFERRY_NBD_TLS=allow\n") {
		t.Errorf("serve.env after nbd_tls: allow: %q", b)
	}
	s4, _ := ParseSeed([]byte("instance-id: i-4\n"), []byte("#cloud-config\nferry: {nbd_tls: off}\n"))
	if _, err := ApplySeed(p, s4, root); err == nil {
		t.Error("nbd_tls: off accepted")
	}
	bad, _ := ParseSeed([]byte("instance-id: i-2\n"), []byte("#cloud-config\nferry: {api_token: short}\n"))
	if _, err := ApplySeed(p, bad, root); err == nil {
		t.Error("a 5-character seeded token accepted")
	}
}

func TestRenderHasTheLinesTestsRead(t *testing.T) {
	var b strings.Builder
	Render(&b, Status{Hostname: "h", Addresses: []string{"eth0 10.0.2.15/24"}, GatewayState: "active",
		Token: "tok-0123456789abcdefghij", Fingerprint: "AA:BB", CHAP: CHAP{User: "ferry", Secret: "s3cret-0123456"}, DataDisk: "/dev/vdb (xfs)"})
	out := b.String()
	for _, want := range []string{"API token: tok-0123456789abcdefghij\n", "NBD certificate SHA-256: AA:BB\n",
		"iSCSI CHAP: user ferry secret s3cret-0123456\n", "nbd://10.0.2.15:10809/VOLUME", ReadyLine + "\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("status screen lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	Render(&b, Status{Healthy: errors.New("connection refused")})
	if !strings.Contains(b.String(), NotReadyLine) || strings.Contains(b.String(), ReadyLine+"\n") {
		t.Errorf("unhealthy screen:\n%s", b.String())
	}
}
