package acceptance

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
	"github.com/ferry-io/ferry/internal/tlspsk"
)

// pskDirs writes, with GnuTLS's psktool, the gateway's key file (alice
// and bob) and one client directory per user holding keys.psk, as QEMU's
// tls-creds-psk (dir=) and libnbd's tls-psk-file read them: "alice",
// "bob", "wrongkey" (alice with another key) and "mallory" (unknown).
func pskDirs(t *testing.T) (server string, clients map[string]string) {
	t.Helper()
	testutil.RequireTool(t, "psktool")
	dir := t.TempDir()
	server = filepath.Join(dir, "server.psk")
	clients = map[string]string{}
	for _, u := range []string{"alice", "bob"} {
		run(t, time.Minute, "psktool", "-u", u, "-p", server)
	}
	keys, err := tlspsk.ReadKeyFile(server)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"alice", "bob", "wrongkey", "mallory"} {
		d := filepath.Join(dir, name)
		os.Mkdir(d, 0o700)
		clients[name] = d
		var line string
		switch name {
		case "wrongkey":
			line = fmt.Sprintf("alice:%x\n", bytes.Repeat([]byte{0x5a}, 32))
		case "mallory":
			line = fmt.Sprintf("mallory:%x\n", bytes.Repeat([]byte{0x5a}, 32))
		default:
			line = fmt.Sprintf("%s:%x\n", name, keys[name])
		}
		if err := os.WriteFile(filepath.Join(d, "keys.psk"), []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return server, clients
}

// pskUser is the PSK identity a client directory holds.
func pskUser(dir string) string {
	b, _ := os.ReadFile(filepath.Join(dir, "keys.psk"))
	u, _, _ := strings.Cut(string(b), ":")
	return u
}

// pskURI is a libnbd URI with the PSK of the client directory dir.
func pskURI(g *gateway, dir, export string) string {
	return fmt.Sprintf("nbds://%s@%s/%s?tls-psk-file=%s", pskUser(dir), g.nbdAddr, export, filepath.Join(dir, "keys.psk"))
}

// qemuPSKArgs are QEMU's tls-creds-psk object and NBD image options for
// the client directory dir.
func qemuPSKArgs(g *gateway, dir, export string) []string {
	host, port, _ := strings.Cut(g.nbdAddr, ":")
	return []string{"--object", fmt.Sprintf("tls-creds-psk,id=tls0,endpoint=client,dir=%s,username=%s", dir, pskUser(dir)),
		"--image-opts", fmt.Sprintf("driver=nbd,server.type=inet,server.host=%s,server.port=%s,export=%s,tls-creds=tls0", host, port, export)}
}

func qemuIOPSK(g *gateway, dir, export string, cmds ...string) (string, error) {
	return runErr(2*time.Minute, "qemu-io", append(qemuPSKArgs(g, dir, export), qio(cmds...)...)...)
}

// TestNBDTLSPSK: --nbd-tls require with --nbd-tls-psk serves libnbd
// (nbdinfo, nbdcopy) and QEMU (qemu-img, qemu-io with tls-creds-psk)
// clients holding a key from the file, over TLS 1.3 with a pre-shared key
// (internal/tlspsk); data round-trips; a wrong key, an unknown user and a
// client without TLS are refused; the PSK identity is the connection's TLS
// identity, which a volume's --allow-tls-identity admits or refuses.
func TestNBDTLSPSK(t *testing.T) {
	for _, tool := range []string{"nbdinfo", "nbdcopy", "qemu-io", "qemu-img"} {
		testutil.RequireTool(t, tool)
	}
	server, clients := pskDirs(t)
	g := startGateway(t, "--nbd-tls", "require", "--nbd-tls-psk", server)
	if logs := g.logs.String(); !strings.Contains(logs, "TLS required: PSK (2 identities)") {
		t.Errorf("the listening line does not say NBD is protected by PSKs:\n%s", logs)
	}
	if strings.Contains(g.logs.String(), fmt.Sprintf("%x", bytes.Repeat([]byte{0x5a}, 4))) {
		t.Error("the log shows key material")
	}
	g.mustCLI("volume", "create", "v1", "--size", "64M")

	// No TLS: refused.
	if out, err := runErr(time.Minute, "nbdinfo", g.uri("v1")); err == nil {
		t.Fatalf("nbdinfo without TLS was served:\n%s", out)
	}
	// nbdinfo with alice's key.
	out := run(t, time.Minute, "nbdinfo", "--json", pskURI(g, clients["alice"], "v1"))
	var info struct {
		Exports []struct {
			Size int64 `json:"export-size"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 || info.Exports[0].Size != 64<<20 {
		t.Fatalf("nbdinfo over TLS-PSK: %v\n%s", err, out)
	}
	// qemu-img info, qemu-io writes and reads.
	out = run(t, time.Minute, "qemu-img", append([]string{"info"}, qemuPSKArgs(g, clients["alice"], "v1")...)...)
	if !strings.Contains(out, "67108864 bytes") {
		t.Fatalf("qemu-img info over TLS-PSK:\n%s", out)
	}
	if out, err := qemuIOPSK(g, clients["alice"], "v1", "write -P 0xa5 1M 1M", "flush"); err != nil || strings.Contains(out, "error") {
		t.Fatalf("qemu-io write over TLS-PSK: %v\n%s", err, out)
	}
	if out, err := qemuIOPSK(g, clients["bob"], "v1", "read -P 0xa5 1M 1M", "read -P 0 0 1M"); err != nil || strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io read over TLS-PSK: %v\n%s", err, out)
	}
	// nbdcopy from the volume, and to it.
	dir := t.TempDir()
	img := filepath.Join(dir, "v1.img")
	run(t, time.Minute, "nbdcopy", pskURI(g, clients["alice"], "v1"), img)
	b, _ := os.ReadFile(img)
	if len(b) != 64<<20 || b[1<<20] != 0xa5 || b[2<<20-1] != 0xa5 || b[2<<20] != 0 {
		t.Fatalf("nbdcopy over TLS-PSK read the wrong image (%d bytes)", len(b))
	}
	for i := 4 << 20; i < 6<<20; i++ {
		b[i] = byte(i / 4096)
	}
	if err := os.WriteFile(img, b, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, time.Minute, "nbdcopy", img, pskURI(g, clients["bob"], "v1"))
	back := filepath.Join(dir, "back.img")
	run(t, 2*time.Minute, "qemu-img", append([]string{"convert", "-O", "raw"}, append(qemuPSKArgs(g, clients["alice"], "v1"), back)...)...)
	if got, _ := os.ReadFile(back); !bytes.Equal(got, b) {
		t.Fatal("qemu-img convert over TLS-PSK read back other bytes than nbdcopy wrote")
	}

	// A wrong key and an unknown user are refused, and the log says why.
	if out, err := runErr(time.Minute, "nbdinfo", pskURI(g, clients["wrongkey"], "v1")); err == nil {
		t.Fatalf("nbdinfo with a wrong key was served:\n%s", out)
	}
	if out, err := qemuIOPSK(g, clients["wrongkey"], "v1", "read 0 4k"); err == nil {
		t.Fatalf("qemu-io with a wrong key was served:\n%s", out)
	}
	if out, err := runErr(time.Minute, "nbdinfo", pskURI(g, clients["mallory"], "v1")); err == nil {
		t.Fatalf("nbdinfo as an unknown user was served:\n%s", out)
	}
	// The gateway logs a failed handshake after sending its alert, so
	// possibly after the client has exited.
	for _, want := range []string{"wrong key (alert decrypt_error)", "(alert unknown_psk_identity)", "tls=psk tls_identity=alice"} {
		g.waitLog(t, want, 10*time.Second)
	}

	// The PSK identity in volume info, and the volume's allow-list.
	sh := testutil.Nbdsh(t, "-c", "h.set_uri_allow_local_file(True)",
		"-c", fmt.Sprintf("h.connect_uri(%q)", pskURI(g, clients["alice"], "v1")), "-c", "import time; time.sleep(30)")
	shOut := &testutil.SyncBuffer{}
	sh.Stdout, sh.Stderr = shOut, shOut
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sh.Process.Kill(); sh.Wait() })
	conns := g.waitConnections("v1", 1, 30*time.Second, func() string { return "nbdsh: " + shOut.String() })
	if conns[0].TLSIdentity != "alice" {
		t.Fatalf("connection's TLS identity %q, want alice", conns[0].TLSIdentity)
	}
	if out := g.mustCLI("volume", "info", "v1"); !strings.Contains(out, "tls:alice") {
		t.Errorf("volume info's client table lacks the TLS identity:\n%s", out)
	}
	sh.Process.Kill()
	g.mustCLI("volume", "update", "v1", "--allow-tls-identity", "bob")
	if out, err := qemuIOPSK(g, clients["alice"], "v1", "read 0 4k"); err == nil {
		t.Fatalf("alice served though only bob is allowed:\n%s", out)
	}
	if out, err := qemuIOPSK(g, clients["bob"], "v1", "read -P 0xa5 1M 4k"); err != nil || strings.Contains(out, "failed") {
		t.Fatalf("bob refused though allowed: %v\n%s", err, out)
	}
}

// TestNBDTLSCertificateAndPSK: a gateway with a certificate and a PSK
// file serves both kinds of client on one port: the ClientHello decides.
func TestNBDTLSCertificateAndPSK(t *testing.T) {
	testutil.RequireTool(t, "qemu-io")
	cert, key, _, anon, _ := tlsDirs(t)
	server, clients := pskDirs(t)
	g := startGateway(t, "--nbd-tls", "require", "--nbd-tls-cert", cert, "--nbd-tls-key", key, "--nbd-tls-psk", server)
	if logs := g.logs.String(); !strings.Contains(logs, "TLS required: X.509 certificate and PSK (2 identities)") {
		t.Errorf("the listening line does not name both:\n%s", logs)
	}
	g.mustCLI("volume", "create", "v1", "--size", "16M")
	if out, err := qemuIOTLS(g, anon, "v1", "write -P 0x3c 0 64k"); err != nil || strings.Contains(out, "error") {
		t.Fatalf("X.509 client: %v\n%s", err, out)
	}
	if out, err := qemuIOPSK(g, clients["alice"], "v1", "read -P 0x3c 0 64k"); err != nil || strings.Contains(out, "failed") {
		t.Fatalf("PSK client: %v\n%s", err, out)
	}
	if out, err := qemuIOPSK(g, clients["wrongkey"], "v1", "read 0 4k"); err == nil {
		t.Fatalf("PSK client with a wrong key served:\n%s", out)
	}
}

// TestNBDTLSPSKFileChecks: a PSK file others can read, or a malformed
// one, stops `ferry serve` before it listens, with a message that says
// what to do and shows no key.
func TestNBDTLSPSKFileChecks(t *testing.T) {
	dir := t.TempDir()
	key := strings.Repeat("5a", 32)
	for _, c := range []struct {
		name, body string
		mode       os.FileMode
		want       string
	}{
		{"open.psk", "alice:" + key + "\n", 0o644, "chmod o-rwx"},
		{"short.psk", "alice:" + key[:16] + "\n", 0o600, "psktool -s 32"},
		{"garbled.psk", "alice " + key + "\n", 0o600, "want identity:hexkey"},
	} {
		p := filepath.Join(dir, c.name)
		os.WriteFile(p, []byte(c.body), c.mode)
		os.Chmod(p, c.mode)
		// Bounded: a gateway that started after all would otherwise serve
		// until go test's own timeout.
		out, err := runErr(time.Minute, ferryBin, "serve", "--data", t.TempDir(), "--api-listen", "127.0.0.1:0",
			"--nbd-listen", "127.0.0.1:0", "--iscsi-listen", "", "--nbd-tls", "require", "--nbd-tls-psk", p)
		if err == nil || !strings.Contains(out, c.want) || strings.Contains(out, "listening") || strings.Contains(out, key[:16]) {
			t.Errorf("%s: err %v\n%s", c.name, err, out)
		}
	}
	// Client certificates are an X.509 matter: --nbd-tls-ca with only a PSK file is refused.
	good := filepath.Join(dir, "good.psk")
	os.WriteFile(good, []byte("alice:"+key+"\n"), 0o600)
	out, err := runErr(time.Minute, ferryBin, "serve", "--data", t.TempDir(), "--api-listen", "127.0.0.1:0",
		"--nbd-listen", "127.0.0.1:0", "--iscsi-listen", "", "--nbd-tls-psk", good, "--nbd-tls-ca", good)
	if err == nil || !strings.Contains(out, "--nbd-tls-ca needs --nbd-tls-cert") {
		t.Errorf("--nbd-tls-ca without a certificate: err %v\n%s", err, out)
	}
}

// TestTLSPSKGnuTLSCli: internal/tlspsk against GnuTLS's own client,
// gnutls-cli, with the priority strings PSK users write: both suites,
// both groups, a HelloRetryRequest, a KeyUpdate each way; psk_ke-only,
// no group in common, a wrong key and an unknown user refused with the
// alert GnuTLS reports.
func TestTLSPSKGnuTLSCli(t *testing.T) {
	testutil.RequireTool(t, "gnutls-cli")
	key := bytes.Repeat([]byte{0xa1}, 32)
	keys := tlspsk.Keys{"alice": key}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				nc.SetDeadline(time.Now().Add(time.Minute))
				c := tlspsk.Server(nc, &tlspsk.Config{Key: keys.Lookup})
				if c.Handshake(context.Background()) == nil {
					io.Copy(c, c)
					c.Close()
				}
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	cli := func(user, hexkey, prio, stdin string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "gnutls-cli", "-p", port, "--pskusername", user, "--pskkey", hexkey,
			"--priority", prio, "--inline-commands", "127.0.0.1")
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	hexkey := fmt.Sprintf("%x", key)
	for _, prio := range []string{
		"NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK",
		"NORMAL:-KX-ALL:+ECDHE-PSK:-GROUP-ALL:+GROUP-SECP256R1",
		"NORMAL:-CIPHER-ALL:+CHACHA20-POLY1305:-KX-ALL:+ECDHE-PSK",
		// A secp384r1 share first: the server asks for secp256r1 with a HelloRetryRequest.
		"NORMAL:-GROUP-ALL:+GROUP-SECP384R1:+GROUP-SECP256R1:-KX-ALL:+ECDHE-PSK",
	} {
		out, err := cli("alice", hexkey, prio, "hello\n^rekey1^\nworld\n^rekey^\nagain\n")
		if err != nil || !strings.Contains(out, "PSK authentication. Connected as 'alice'") || !strings.Contains(out, "hello\nworld\nagain") {
			t.Errorf("%s: %v\n%s", prio, err, out)
		}
	}
	for _, c := range []struct{ user, key, prio, want string }{
		{"alice", hexkey, "NORMAL:-KX-ALL:+PSK", "Received alert [40]"},
		// Only secp384r1: no group in common, a clean refusal.
		{"alice", hexkey, "NORMAL:-KX-ALL:+ECDHE-PSK:-GROUP-ALL:+GROUP-SECP384R1", "Received alert [40]"},
		{"alice", strings.Repeat("5a", 32), "NORMAL:+ECDHE-PSK", "Received alert [51]"},
		{"mallory", hexkey, "NORMAL:+ECDHE-PSK", "Received alert [115]"},
	} {
		if out, err := cli(c.user, c.key, c.prio, "x\n"); err == nil || !strings.Contains(out, c.want) {
			t.Errorf("%s/%s: %v, want %q\n%s", c.user, c.prio, err, c.want, out)
		}
	}
}
