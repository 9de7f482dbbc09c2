package acceptance

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// tlsDirs makes a CA, a server certificate for 127.0.0.1, and client
// directories in GnuTLS's layout (ca-cert.pem, client-cert.pem,
// client-key.pem) as libnbd and QEMU's tls-creds-x509 read them: "anon"
// without a client certificate, "client1" with one.
func tlsDirs(t *testing.T) (serverCert, serverKey, ca, anon, client1 string) {
	t.Helper()
	dir := t.TempDir()
	pki := newTestPKI(t)
	ca = filepath.Join(dir, "ca.pem")
	pki.writeCA(ca)
	serverCert, serverKey = filepath.Join(dir, "server-cert.pem"), filepath.Join(dir, "server-key.pem")
	pki.issue(t, "127.0.0.1", true, serverCert, serverKey)
	anon, client1 = filepath.Join(dir, "anon"), filepath.Join(dir, "client1")
	for _, d := range []string{anon, client1} {
		os.Mkdir(d, 0o700)
		pki.writeCA(filepath.Join(d, "ca-cert.pem"))
	}
	pki.issue(t, "client1", false, filepath.Join(client1, "client-cert.pem"), filepath.Join(client1, "client-key.pem"))
	return
}

// qemuIOTLS runs qemu-io commands on an NBD export over TLS with the
// credentials in dir; it returns the output and the error.
func qemuIOTLS(g *gateway, dir, export string, cmds ...string) (string, error) {
	host, port, _ := strings.Cut(g.nbdAddr, ":")
	args := []string{"--object", "tls-creds-x509,id=tls0,endpoint=client,dir=" + dir,
		"--image-opts", fmt.Sprintf("driver=nbd,server.type=inet,server.host=%s,server.port=%s,export=%s,tls-creds=tls0", host, port, export)}
	return runErr(2*time.Minute, "qemu-io", append(args, qio(cmds...)...)...)
}

// TestNBDTLS: --nbd-tls require serves only clients that negotiate TLS
// (libnbd's nbdinfo and QEMU's NBD driver with tls-creds-x509); a plain
// client is refused; data written over TLS reads back.
func TestNBDTLS(t *testing.T) {
	testutil.RequireTool(t, "nbdinfo")
	testutil.RequireTool(t, "qemu-io")
	cert, key, _, anon, _ := tlsDirs(t)
	g := startGateway(t, "--nbd-tls", "require", "--nbd-tls-cert", cert, "--nbd-tls-key", key)
	g.mustCLI("volume", "create", "v1", "--size", "64M")

	out, err := runErr(time.Minute, "nbdinfo", g.uri("v1"))
	if err == nil {
		t.Fatalf("nbdinfo without TLS was served:\n%s", out)
	}
	t.Logf("plain nbdinfo refused as it should be: %s", strings.TrimSpace(out))
	out, err = runErr(time.Minute, "nbdinfo", "--json", "nbds://"+g.nbdAddr+"/v1?tls-certificates="+anon)
	if err != nil {
		t.Fatalf("nbdinfo over TLS: %v\n%s", err, out)
	}
	var info struct {
		Exports []struct {
			Size int64 `json:"export-size"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 || info.Exports[0].Size != 64<<20 {
		t.Fatalf("nbdinfo over TLS: %v\n%s", err, out)
	}
	if out, err := qemuIOTLS(g, anon, "v1", "write -P 0xa5 1M 1M", "flush"); err != nil || strings.Contains(out, "error") {
		t.Fatalf("qemu-io write over TLS: %v\n%s", err, out)
	}
	if out, err := qemuIOTLS(g, anon, "v1", "read -P 0xa5 1M 1M", "read -P 0 0 1M"); err != nil || strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io read over TLS: %v\n%s", err, out)
	}
	// The same data over TLS through nbdcopy.
	img := filepath.Join(t.TempDir(), "v1.img")
	run(t, time.Minute, "nbdcopy", "nbds://"+g.nbdAddr+"/v1?tls-certificates="+anon, img)
	b, _ := os.ReadFile(img)
	if len(b) != 64<<20 || b[1<<20] != 0xa5 || b[2<<20-1] != 0xa5 || b[2<<20] != 0 {
		t.Fatalf("nbdcopy over TLS read the wrong image (%d bytes)", len(b))
	}
}

// TestNBDTLSClientCertificates: with --nbd-tls-ca, a client must present a
// certificate the CA signed; its common name is shown as the connection's
// TLS identity.
func TestNBDTLSClientCertificates(t *testing.T) {
	testutil.RequireTool(t, "qemu-io")
	cert, key, ca, anon, client1 := tlsDirs(t)
	g := startGateway(t, "--nbd-tls", "require", "--nbd-tls-cert", cert, "--nbd-tls-key", key, "--nbd-tls-ca", ca)
	g.mustCLI("volume", "create", "v1", "--size", "64M")
	if out, err := qemuIOTLS(g, anon, "v1", "read 0 4k"); err == nil {
		t.Fatalf("a client without a certificate was served:\n%s", out)
	}
	if out, err := qemuIOTLS(g, client1, "v1", "write -P 0x11 0 4k", "read -P 0x11 0 4k"); err != nil || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io with a client certificate: %v\n%s", err, out)
	}
	// The volume's TLS identity allow-list: client1 is refused until named.
	g.mustCLI("volume", "update", "v1", "--allow-tls-identity", "client2")
	if out, err := qemuIOTLS(g, client1, "v1", "read 0 4k"); err == nil {
		t.Fatalf("client1 served though only client2 is allowed:\n%s", out)
	}
	g.mustCLI("volume", "update", "v1", "--allow-tls-identity", "client1")
	if out, err := qemuIOTLS(g, client1, "v1", "read -P 0x11 0 4k"); err != nil || strings.Contains(out, "failed") {
		t.Fatalf("client1 refused though allowed: %v\n%s", err, out)
	}
	if info := g.mustCLI("volume", "info", "v1"); !strings.Contains(info, "NBD client certificates client2, client1") {
		t.Errorf("volume info does not show the certificate allow-list:\n%s", info)
	}
	// Hold a connection and look at it in volume info.
	sh := testutil.Nbdsh(t, "-c", "h.set_uri_allow_local_file(True)",
		"-c", fmt.Sprintf("h.connect_uri(%q)", "nbds://"+g.nbdAddr+"/v1?tls-certificates="+client1), "-c", "import time; time.sleep(30)")
	shOut := &testutil.SyncBuffer{}
	sh.Stdout, sh.Stderr = shOut, shOut
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sh.Process.Kill(); sh.Wait() })
	conns := g.waitConnections("v1", 1, 20*time.Second, func() string { return "nbdsh: " + shOut.String() })
	if conns[0].TLSIdentity != "client1" {
		t.Fatalf("connection's TLS identity %q, want client1", conns[0].TLSIdentity)
	}
}

// TestNBDOffLoopbackNeedsTLS: NBD off loopback without a certificate is
// refused before anything listens, unless --nbd-tls off says so.
func TestNBDOffLoopbackNeedsTLS(t *testing.T) {
	out, err := runErr(time.Minute, ferryBin, "serve", "--data", t.TempDir(), "--api-listen", "127.0.0.1:0",
		"--nbd-listen", "0.0.0.0:0", "--iscsi-listen", "")
	if err == nil || !strings.Contains(out, "requires TLS by default") || strings.Contains(out, "listening") {
		t.Fatalf("serve with NBD off loopback and no certificate: err %v\n%s", err, out)
	}
}
