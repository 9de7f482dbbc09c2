package tlspsk

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadKeyFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	good := "# made by psktool\nalice:" + strings.Repeat("a1", 32) + "\n\nbob:" + strings.Repeat("B0", 16) + "\r\n"
	keys, err := ReadKeyFile(write("keys.psk", good, 0o600))
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := keys.Lookup("bob"); !ok || len(k) != 16 || k[0] != 0xb0 {
		t.Fatalf("bob: %x %v", k, ok)
	}
	if _, ok := keys.Lookup("carol"); ok {
		t.Fatal("carol found")
	}
	if _, err := ReadKeyFile(write("open.psk", good, 0o604)); err == nil || !strings.Contains(err.Error(), "chmod o-rwx") {
		t.Errorf("world-readable file: %v", err)
	}
	secret := strings.Repeat("c3", 32)
	for name, body := range map[string]string{
		"no colon":  "alice" + secret + "\n",
		"not hex":   "alice:" + secret[:62] + "zz\n",
		"short key": "alice:" + secret[:30] + "\n",
		"duplicate": "alice:" + secret + "\nalice:" + secret + "\n",
		"empty":     "# nothing\n",
		"no name":   ":" + secret + "\n",
	} {
		_, err := ReadKeyFile(write("bad.psk", body, 0o600))
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), secret[:16]) {
			t.Errorf("%s: error shows key material: %v", name, err)
		}
	}
}

// TestPeekClientHello: a PSK ClientHello routes to this package, crypto/tls's
// (certificates) does not, and the replayed bytes are intact.
func TestPeekClientHello(t *testing.T) {
	for _, psk := range []bool{true, false} {
		a, b := net.Pipe()
		go func() {
			if psk {
				tc := newTestClient(aliceKey, "alice")
				tc.handshake(a)
			} else {
				tls.Client(a, &tls.Config{InsecureSkipVerify: true}).Handshake()
			}
			a.Close()
		}()
		nc, got, err := PeekClientHello(b)
		if err != nil || got != psk {
			t.Fatalf("psk client %v: routed psk=%v, %v", psk, got, err)
		}
		if psk {
			c := Server(nc, &Config{Key: testKeys.Lookup})
			if err := c.Handshake(t.Context()); err != nil {
				t.Fatalf("handshake over the replayed hello: %v", err)
			}
		}
		b.Close()
	}
}
