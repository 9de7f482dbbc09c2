package tlspsk

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"io"
	"testing"
)

var (
	aliceKey = bytes.Repeat([]byte{0xa1}, 32)
	bobKey   = bytes.Repeat([]byte{0xb0}, 32)
	testKeys = Keys{"alice": aliceKey, "bob": bobKey}
)

// TestHandshake: every suite and group; data both ways, larger than a
// record; the identity is the one the binder proved.
func TestHandshake(t *testing.T) {
	for _, s := range []uint16{suiteAES128GCMSHA256, suiteChaCha20Poly1305SHA256} {
		for _, g := range []uint16{groupX25519, groupSecp256r1} {
			addr, errc, ids := testServer(t, testKeys)
			tc := newTestClient(bobKey, "bob")
			tc.suites, tc.groups, tc.sessionID, tc.ccs = []uint16{s}, []uint16{g}, true, true
			if err := tc.handshake(dial(t, addr)); err != nil {
				t.Fatalf("suite %#x group %#x: %v", s, g, err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if id := <-ids; id != "bob" {
				t.Fatalf("identity %q", id)
			}
			want := make([]byte, 3*maxPlaintext+100)
			rand.Read(want)
			for off := 0; off < len(want); off += 5000 {
				tc.send(recordApplicationData, want[off:min(off+5000, len(want))])
			}
			tc.send(recordApplicationData, nil) // zero-length application data is allowed
			got, err := tc.readApp(len(want))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("echo: %v (%d of %d bytes)", err, len(got), len(want))
			}
			tc.send(recordAlert, []byte{1, alertCloseNotify})
			if typ, data, err := tc.readRecord(); err != nil || typ != recordAlert || data[1] != alertCloseNotify {
				t.Fatalf("close: %d %x %v", typ, data, err)
			}
		}
	}
}

// TestHelloRetryRequest: a client without a usable key share (an empty
// one here, or secp384r1 only) is asked for one and then served; its 0-RTT
// records before the second hello are skipped.
func TestHelloRetryRequest(t *testing.T) {
	for _, c := range []struct {
		name      string
		shares    []uint16
		supported []uint16
		want      uint16
	}{
		{"empty shares", nil, nil, groupX25519},
		{"secp256r1 only supported", nil, []uint16{0x0018, groupSecp256r1}, groupSecp256r1},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr, errc, ids := testServer(t, testKeys)
			tc := newTestClient(aliceKey, "alice")
			tc.groups, tc.supported, tc.sessionID, tc.ccs, tc.earlyData = c.shares, c.supported, true, true, true
			tc.early = [][]byte{append([]byte{recordApplicationData, 3, 3, 0, 20}, make([]byte, 20)...)}
			if err := tc.handshake(dial(t, addr)); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if !tc.hrr || tc.groups[0] != c.want || <-ids != "alice" {
				t.Fatalf("HelloRetryRequest %v for group %#x, want %#x", tc.hrr, tc.groups, c.want)
			}
			tc.send(recordApplicationData, []byte("ping"))
			if got, err := tc.readApp(4); err != nil || string(got) != "ping" {
				t.Fatalf("echo after HelloRetryRequest: %q %v", got, err)
			}
		})
	}
}

// TestSecondIdentity: the first known identity is selected.
func TestSecondIdentity(t *testing.T) {
	addr, errc, ids := testServer(t, testKeys)
	tc := newTestClient(aliceKey, "carol")
	tc.identities = append(tc.identities, "alice")
	if err := tc.handshake(dial(t, addr)); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if id := <-ids; id != "alice" {
		t.Fatalf("identity %q", id)
	}
}

// TestRefused: each wrong client gets the alert RFC 8446 names.
func TestRefused(t *testing.T) {
	cases := []struct {
		name  string
		tweak func(*testClient)
		alert uint8
	}{
		{"wrong key", func(tc *testClient) { tc.key = bobKey }, alertDecryptError},
		{"bad binder", func(tc *testClient) { tc.badBinder = true }, alertDecryptError},
		{"unknown identity", func(tc *testClient) { tc.identities = []string{"mallory"} }, alertUnknownPSKIdentity},
		{"psk_ke only", func(tc *testClient) { tc.modes = []byte{pskModeKE} }, alertHandshakeFailure},
		{"no psk modes", func(tc *testClient) { tc.modes = nil }, alertMissingExtension},
		{"no usable group", func(tc *testClient) { tc.groups, tc.supported = nil, []uint16{0x0018} }, alertHandshakeFailure},
		{"second hello without the share", func(tc *testClient) {
			tc.groups = nil
			tc.hrrTweak = func(tc *testClient) { tc.groups = []uint16{groupSecp256r1 + groupX25519 - tc.groups[0]} }
		}, alertIllegalParameter},
		{"second hello with a wrong key", func(tc *testClient) {
			tc.groups = nil
			tc.hrrTweak = func(tc *testClient) { tc.key = bobKey }
		}, alertDecryptError},
		{"second hello with early data", func(tc *testClient) {
			tc.groups = nil
			tc.hrrTweak = func(tc *testClient) { tc.earlyData = true }
		}, alertIllegalParameter},
		{"TLS 1.2", func(tc *testClient) { tc.versions = []uint16{0x0303} }, alertProtocolVersion},
		{"no common suite", func(tc *testClient) { tc.suites = []uint16{0x1302} }, alertHandshakeFailure},
		{"data after ClientHello", func(tc *testClient) { tc.trailing = []byte{1, 0, 0, 0} }, alertUnexpectedMessage},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr, errc, _ := testServer(t, testKeys)
			tc := newTestClient(aliceKey, "alice")
			c.tweak(tc)
			wantAlert(t, tc.handshake(dial(t, addr)), errc, c.alert)
		})
	}
}

// TestBadClientFinished: a client Finished that does not verify gets
// decrypt_error, under the keys the client reads after our Finished.
func TestBadClientFinished(t *testing.T) {
	addr, errc, _ := testServer(t, testKeys)
	tc := newTestClient(aliceKey, "alice")
	tc.badFinish = true
	if err := tc.handshake(dial(t, addr)); err != nil {
		t.Fatal(err)
	}
	_, err := tc.readApp(1)
	wantAlert(t, err, errc, alertDecryptError)
}

// TestFragmentsAndKeyUpdate: a ClientHello over many records, early data
// skipped, a KeyUpdate fragmented over two records, update_requested
// answered, data flowing on under the new keys.
func TestFragmentsAndKeyUpdate(t *testing.T) {
	addr, errc, _ := testServer(t, testKeys)
	tc := newTestClient(aliceKey, "alice")
	tc.fragment, tc.earlyData = 7, true
	// Two 0-RTT records the server has no keys for, as a client whose
	// early data is rejected sends them.
	tc.early = [][]byte{
		append([]byte{recordApplicationData, 3, 3, 0, 20}, make([]byte, 20)...),
		append([]byte{recordApplicationData, 3, 3, 0, 17}, make([]byte, 17)...),
	}
	if err := tc.handshake(dial(t, addr)); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	ku := handshakeMessage(typeKeyUpdate, []byte{1})
	tc.send(recordHandshake, ku[:2])
	tc.send(recordHandshake, ku[2:])
	tc.out.setSecret(tc.suite, nextTrafficSecret(tc.out.secret))
	tc.send(recordApplicationData, []byte("after update"))
	got, err := tc.readApp(len("after update"))
	if err != nil || string(got) != "after update" {
		t.Fatalf("after KeyUpdate: %q %v", got, err)
	}
}

// TestRecordErrors: oversize, forged and misplaced records are refused
// with their alerts.
func TestRecordErrors(t *testing.T) {
	cases := []struct {
		name  string
		send  func(tc *testClient)
		alert uint8
	}{
		{"oversize record", func(tc *testClient) {
			tc.nc.Write(append([]byte{recordApplicationData, 3, 3, 0x41, 0x01}, make([]byte, maxCiphertext+1)...))
		}, alertRecordOverflow},
		{"oversize plaintext", func(tc *testClient) { tc.send(recordApplicationData, make([]byte, maxPlaintext+1)) }, alertRecordOverflow},
		{"forged record", func(tc *testClient) {
			r := tc.out.seal(nil, recordApplicationData, []byte("hello"))
			r[len(r)-1] ^= 1
			tc.nc.Write(r)
		}, alertBadRecordMAC},
		{"change_cipher_spec after handshake", func(tc *testClient) { tc.nc.Write([]byte{recordChangeCipherSpec, 3, 3, 0, 1, 1}) }, alertUnexpectedMessage},
		{"data inside a handshake message", func(tc *testClient) {
			tc.send(recordHandshake, []byte{typeKeyUpdate, 0})
			tc.send(recordApplicationData, []byte("x"))
		}, alertUnexpectedMessage},
		{"bad KeyUpdate", func(tc *testClient) { tc.send(recordHandshake, handshakeMessage(typeKeyUpdate, []byte{2})) }, alertDecodeError},
		{"client NewSessionTicket", func(tc *testClient) { tc.send(recordHandshake, handshakeMessage(typeNewSessionTicket, nil)) }, alertUnexpectedMessage},
		{"no content type", func(tc *testClient) { tc.send(0, nil) }, alertUnexpectedMessage},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr, errc, _ := testServer(t, testKeys)
			tc := newTestClient(aliceKey, "alice")
			if err := tc.handshake(dial(t, addr)); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			c.send(tc)
			_, err := tc.readApp(1)
			var pa *PeerAlertError
			if !errors.As(err, &pa) || pa.Alert != c.alert {
				t.Fatalf("got %v, want alert %s", err, alertName(c.alert))
			}
		})
	}
}

// TestClientHelloTruncated: every prefix of a valid ClientHello, and
// every single-byte corruption, is an error or a hello, never a panic.
func TestClientHelloTruncated(t *testing.T) {
	tc := newTestClient(aliceKey, "alice")
	raw := tc.hello(map[uint16]*ecdh.PrivateKey{}, nil)
	if _, err := parseClientHello(raw); err != nil {
		t.Fatal(err)
	}
	for n := range len(raw) {
		b := bytes.Clone(raw[:n])
		if len(b) >= 4 {
			b[1], b[2], b[3] = byte((n-4)>>16), byte((n-4)>>8), byte(n-4)
		}
		if _, err := parseClientHello(b); err == nil {
			t.Errorf("prefix of %d bytes parsed", n)
		}
	}
	for i := range raw {
		b := bytes.Clone(raw)
		b[i] ^= 0xff
		parseClientHello(b)
	}
}

// TestClose: Close sends close_notify; the client then reads EOF on the
// server's side of the echo.
func TestCloseNotifyEOF(t *testing.T) {
	addr, errc, _ := testServer(t, testKeys)
	tc := newTestClient(aliceKey, "alice")
	if err := tc.handshake(dial(t, addr)); err != nil {
		t.Fatal(err)
	}
	<-errc
	tc.send(recordAlert, []byte{1, alertCloseNotify})
	_, err := tc.readApp(1)
	if !errors.As(err, new(*PeerAlertError)) && !errors.Is(err, io.EOF) {
		t.Fatalf("after close_notify: %v", err)
	}
}
