package nbd

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"io"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
	"github.com/ferry-io/ferry/internal/tlspsk"
)

// testTLSConfig is a server config with a self-signed certificate.
func testTLSConfig(t *testing.T) *tls.Config {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nbd test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: k}}}
}

// startTLS negotiates NBD_OPT_STARTTLS and continues over TLS.
func (rc *rawClient) startTLS() {
	rc.t.Helper()
	if typ, p := rc.option(optStartTLS, nil); typ[0] != repAck {
		rc.t.Fatalf("STARTTLS: %#x %q", typ[0], p[0])
	}
	tc := tls.Client(rc.c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		rc.t.Fatalf("TLS handshake: %v", err)
	}
	rc.c = tc
}

func TestStartTLSRequired(t *testing.T) {
	dev := mem.New(1 << 20)
	ts := startServerConfig(t, map[string]device.Device{"v": dev}, Config{TLS: testTLSConfig(t), RequireTLS: true})

	rc := dialRaw(t, ts.addr)
	for _, opt := range []uint32{optList, optGo, optInfo, optStructuredReply} {
		data := []byte(nil)
		if opt == optGo || opt == optInfo {
			data = goData("v")
		}
		if typ, _ := rc.option(opt, data); typ[0] != repErrTLSReqd {
			t.Errorf("option %d before TLS: reply %#x, want NBD_REP_ERR_TLS_REQD", opt, typ[0])
		}
	}
	if typ, _ := rc.option(optStartTLS, []byte("x")); typ[0] != repErrInvalid {
		t.Errorf("STARTTLS with data: %#x, want NBD_REP_ERR_INVALID", typ[0])
	}
	rc.startTLS()
	if typ, _ := rc.option(optStartTLS, nil); typ[0] != repErrInvalid {
		t.Errorf("second STARTTLS: %#x, want NBD_REP_ERR_INVALID", typ[0])
	}
	rc.attach("v", true)
	want := bytes.Repeat([]byte{0x5a}, 4096)
	if r := rc.do(cmdWrite, 0, 8192, 4096, want); r.errno != 0 {
		t.Fatalf("write over TLS: %v", r)
	}
	if r := rc.do(cmdRead, 0, 8192, 4096, nil); r.errno != 0 || !bytes.Equal(r.data, want) {
		t.Fatalf("read over TLS: %v", r)
	}

	// NBD_OPT_EXPORT_NAME cannot be refused with a reply: the server hangs up.
	rc2 := dialRaw(t, ts.addr)
	h := binary.BigEndian.AppendUint64(nil, magicOption)
	h = binary.BigEndian.AppendUint32(h, optExportName)
	h = binary.BigEndian.AppendUint32(h, 1)
	rc2.write(append(h, 'v'))
	if n, err := io.ReadFull(rc2.c, make([]byte, 8)); err == nil {
		t.Errorf("EXPORT_NAME before TLS got %d bytes of reply", n)
	}
}

func TestStartTLSWithoutConfig(t *testing.T) {
	ts := startServer(t, map[string]device.Device{"v": mem.New(1 << 20)})
	rc := dialRaw(t, ts.addr)
	if typ, _ := rc.option(optStartTLS, nil); typ[0] != repErrUnsup {
		t.Errorf("STARTTLS without TLS configured: %#x, want NBD_REP_ERR_UNSUP", typ[0])
	}
	rc.attach("v", true) // the connection goes on in the clear
}

func TestStartTLSAllowed(t *testing.T) {
	ts := startServerConfig(t, map[string]device.Device{"v": mem.New(1 << 20)}, Config{TLS: testTLSConfig(t)})
	rc := dialRaw(t, ts.addr)
	rc.attach("v", false) // plain clients still served
	rc2 := dialRaw(t, ts.addr)
	if typ, _ := rc2.option(optStructuredReply, nil); typ[0] != repAck {
		t.Fatal("structured replies refused")
	}
	rc2.startTLS()
	rc2.attach("v", true) // structured state was reset by STARTTLS; attach negotiates it again
}

// TestStartTLSCertificateAndPSK: with a certificate and PSKs both
// configured, a certificate client (no pre_shared_key in its hello) is
// routed to crypto/tls and served; with PSKs only, it is refused with an
// alert and the server goes on serving. (PSK clients are tested with
// GnuTLS through libnbd and QEMU in test/acceptance.)
func TestStartTLSCertificateAndPSK(t *testing.T) {
	psk := &tlspsk.Config{Key: tlspsk.Keys{"alice": bytes.Repeat([]byte{1}, 32)}.Lookup}
	ts := startServerConfig(t, map[string]device.Device{"v": mem.New(1 << 20)}, Config{TLS: testTLSConfig(t), PSK: psk, RequireTLS: true})
	rc := dialRaw(t, ts.addr)
	rc.startTLS()
	rc.attach("v", true)

	ts2 := startServerConfig(t, map[string]device.Device{"v": mem.New(1 << 20)}, Config{PSK: psk, RequireTLS: true})
	rc2 := dialRaw(t, ts2.addr)
	if typ, p := rc2.option(optStartTLS, nil); typ[0] != repAck {
		t.Fatalf("STARTTLS: %#x %q", typ[0], p[0])
	}
	err := tls.Client(rc2.c, &tls.Config{InsecureSkipVerify: true}).Handshake()
	if err == nil || !strings.Contains(err.Error(), "handshake failure") {
		t.Fatalf("certificate client on a PSK-only server: %v", err)
	}
	rc3 := dialRaw(t, ts2.addr)
	if typ, _ := rc3.option(optList, nil); typ[0] != repErrTLSReqd {
		t.Errorf("after a refused handshake: %#x, want NBD_REP_ERR_TLS_REQD", typ[0])
	}
}

// A certificate client that resumes its session (a ticket in the
// ClientHello's pre_shared_key) is served by crypto/tls, not routed to the
// PSK server, when the server has both.
func TestStartTLSCertificateResumesBesidePSK(t *testing.T) {
	psk := &tlspsk.Config{Key: tlspsk.Keys{"alice": bytes.Repeat([]byte{1}, 32)}.Lookup}
	ts := startServerConfig(t, map[string]device.Device{"v": mem.New(1 << 20)}, Config{TLS: testTLSConfig(t), PSK: psk, RequireTLS: true})
	cache := tls.NewLRUClientSessionCache(4)
	for i := range 2 {
		rc := dialRaw(t, ts.addr)
		if typ, p := rc.option(optStartTLS, nil); typ[0] != repAck {
			t.Fatalf("connection %d: STARTTLS: %#x %q", i, typ[0], p[0])
		}
		tc := tls.Client(rc.c, &tls.Config{InsecureSkipVerify: true, ClientSessionCache: cache})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("connection %d: TLS handshake: %v", i, err)
		}
		rc.c = tc
		rc.attach("v", true)
	}
}
