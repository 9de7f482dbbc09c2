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
	f.Add(tc.hello(map[uint16]*ecdh.PrivateKey{}))
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
	ch := tc.hello(map[uint16]*ecdh.PrivateKey{})
	f.Add(tc.out.seal(nil, recordHandshake, ch))
	f.Add(append(tc.out.seal(nil, recordHandshake, ch), recordChangeCipherSpec, 3, 3, 0, 1, 1, recordApplicationData, 3, 3, 0, 17, 1))
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
