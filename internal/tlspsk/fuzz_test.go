package tlspsk

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"net"
	"testing"
	"time"
)

// The seed corpora in testdata/fuzz hold ClientHellos of GnuTLS's
// gnutls-cli (x25519 and secp256r1, with and without DHE-PSK) and of
// the test client.

// FuzzClientHello: the ClientHello decoder and the router never panic.
func FuzzClientHello(f *testing.F) {
	tc := newTestClient(aliceKey, "alice")
	f.Add(tc.hello(map[uint16]*ecdh.PrivateKey{}, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		if ch, err := parseClientHello(b); err == nil && ch.psks != nil {
			if ch.bindersAt > len(b) || ch.bindersAt < 0 {
				t.Fatalf("bindersAt %d outside a %d-byte hello", ch.bindersAt, len(b))
			}
		}
		rec := append([]byte{recordHandshake, 3, 1, byte(len(b) >> 8), byte(len(b))}, b...)
		HasPreSharedKey(rec)
	})
}

// FuzzServer: whatever a client sends, the server's handshake ends with
// an error (it has no valid Finished to see), never a panic or a hang.
func FuzzServer(f *testing.F) {
	tc := newTestClient(aliceKey, "alice")
	ch := tc.hello(map[uint16]*ecdh.PrivateKey{}, nil)
	f.Add(tc.out.seal(nil, recordHandshake, ch))
	f.Add(append(tc.out.seal(nil, recordHandshake, ch), recordChangeCipherSpec, 3, 3, 0, 1, 1, recordApplicationData, 3, 3, 0, 17, 1))
	// No key share: a HelloRetryRequest, then whatever follows.
	tc.groups = nil
	ch = tc.hello(map[uint16]*ecdh.PrivateKey{}, nil)
	f.Add(append(tc.out.seal(nil, recordHandshake, ch), tc.out.seal(nil, recordHandshake, ch)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := Server(&fuzzConn{r: bytes.NewReader(b)}, &Config{Key: testKeys.Lookup})
		if err := c.Handshake(context.Background()); err == nil {
			t.Fatal("handshake succeeded on canned input")
		}
		c.Close()
	})
}

// fuzzConn reads canned bytes and discards writes.
type fuzzConn struct{ r *bytes.Reader }

func (c *fuzzConn) Read(b []byte) (int, error)         { return c.r.Read(b) }
func (c *fuzzConn) Write(b []byte) (int, error)        { return len(b), nil }
func (c *fuzzConn) Close() error                       { return nil }
func (c *fuzzConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (c *fuzzConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (c *fuzzConn) SetDeadline(t time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(t time.Time) error { return nil }

// FuzzRecords: after the handshake, whatever records a client sends
// (sealed with the session's keys, so the fuzzer reaches the content:
// handshake fragments, KeyUpdates, alerts, padding-only records; or raw,
// unsealed bytes), Read ends with an error or data, never a panic.
// Input: chunks of [type][length hi][length lo][content]; a type with the
// high bit set sends the content unsealed.
func FuzzRecords(f *testing.F) {
	f.Add([]byte{recordApplicationData, 0, 5, 'h', 'e', 'l', 'l', 'o'})
	f.Add([]byte{recordHandshake, 0, 2, typeKeyUpdate, 0, recordHandshake, 0, 3, 0, 1, 1, recordApplicationData, 0, 1, 'x'})
	f.Add([]byte{recordAlert, 0, 2, 1, 0})
	f.Add([]byte{0x80 | recordChangeCipherSpec, 0, 6, recordChangeCipherSpec, 3, 3, 0, 1, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		secret := bytes.Repeat([]byte{7}, hashLen)
		var client halfConn
		client.setSecret(&suites[0], secret)
		var stream []byte
		for len(b) >= 3 {
			typ, n := b[0], int(b[1])<<8|int(b[2])
			b = b[3:]
			n = min(n, len(b))
			content := b[:n]
			b = b[n:]
			if typ&0x80 != 0 {
				stream = append(stream, content...)
			} else if n <= maxPlaintext+1 {
				stream = client.seal(stream, typ, content)
				if typ == recordHandshake && len(content) >= 5 && content[0] == typeKeyUpdate {
					client.setSecret(client.suite, nextTrafficSecret(client.secret))
				}
			}
		}
		c := Server(&fuzzConn{r: bytes.NewReader(stream)}, &Config{Key: testKeys.Lookup})
		c.hsDone = true
		c.in.setSecret(&suites[0], secret)
		c.out.setSecret(&suites[0], secret)
		buf := make([]byte, 4096)
		for range 1000 {
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		c.Write([]byte("reply"))
		c.Close()
	})
}
