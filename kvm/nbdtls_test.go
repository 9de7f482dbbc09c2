package kvm

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/kvm/wire"
)

// TestQEMUArgsNBDTLS: with TLS credentials QEMU gets the object and every
// NBD node (also one added at run time) uses it.
func TestQEMUArgsNBDTLS(t *testing.T) {
	d, _ := parseNBDURL("vol1", "nbd://127.0.0.1:10809/vol1")
	spec := wire.VMSpec{Name: "vm1", CPUs: 1, MemoryMiB: 64}
	for _, c := range []struct {
		tls      NBDTLS
		object   map[string]any
		hostname any
	}{
		{NBDTLS{X509Dir: "/etc/x,y"}, map[string]any{"qom-type": "tls-creds-x509", "id": "ferrytls", "endpoint": "client", "dir": "/etc/x,y"}, nil},
		{NBDTLS{X509Dir: "/x", Hostname: "gw.example"}, map[string]any{"qom-type": "tls-creds-x509", "id": "ferrytls", "endpoint": "client", "dir": "/x"}, "gw.example"},
		{NBDTLS{PSKDir: "/p", PSKUser: "alice"}, map[string]any{"qom-type": "tls-creds-psk", "id": "ferrytls", "endpoint": "client", "dir": "/p", "username": "alice"}, nil},
	} {
		args, err := qemuArgs(spec, "/s", []nbdDisk{d, d}, time.Second, wire.AccelTCG, "", false, &c.tls)
		if err != nil {
			t.Fatal(err)
		}
		var objects, nbd []map[string]any
		for i, a := range args {
			var m map[string]any
			switch a {
			case "-object":
				json.Unmarshal([]byte(args[i+1]), &m)
				objects = append(objects, m)
			case "-blockdev":
				json.Unmarshal([]byte(args[i+1]), &m)
				if m["driver"] == "nbd" {
					nbd = append(nbd, m)
				}
			}
		}
		if len(objects) != 1 || len(objects[0]) != len(c.object) {
			t.Fatalf("%+v: objects %v, want %v", c.tls, objects, c.object)
		}
		for k, v := range c.object {
			if objects[0][k] != v {
				t.Errorf("%+v: object %s = %v, want %v", c.tls, k, objects[0][k], v)
			}
		}
		added := nbdNode(3, d, time.Second, &c.tls)
		for _, n := range append(nbd, added) {
			if n["tls-creds"] != "ferrytls" || n["tls-hostname"] != c.hostname {
				t.Errorf("%+v: NBD node %v: want tls-creds ferrytls, tls-hostname %v", c.tls, n, c.hostname)
			}
		}
		if len(nbd) != 2 {
			t.Errorf("%d NBD nodes", len(nbd))
		}
	}
	args, _ := qemuArgs(spec, "/s", []nbdDisk{d}, time.Second, wire.AccelTCG, "", false, nil)
	if line := strings.Join(args, " "); strings.Contains(line, "tls") {
		t.Errorf("TLS without credentials: %s", line)
	}
}

func TestNBDTLSCheck(t *testing.T) {
	x509, psk := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(x509, "ca-cert.pem"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(psk, "keys.psk"), []byte("alice:00"), 0o600)
	for _, c := range []struct {
		tls  NBDTLS
		want string // "" ok
	}{
		{NBDTLS{X509Dir: x509}, ""},
		{NBDTLS{X509Dir: x509, Hostname: "gw"}, ""},
		{NBDTLS{PSKDir: psk, PSKUser: "alice"}, ""},
		{NBDTLS{X509Dir: x509, PSKDir: psk, PSKUser: "alice"}, "give one"},
		{NBDTLS{X509Dir: psk}, "ca-cert.pem"},
		{NBDTLS{PSKDir: psk}, "--nbd-tls-psk-user"},
		{NBDTLS{PSKDir: x509, PSKUser: "alice"}, "keys.psk"},
		{NBDTLS{PSKDir: psk, PSKUser: "alice", Hostname: "gw"}, "PSK has none"},
		{NBDTLS{PSKUser: "alice"}, "go with"},
		{NBDTLS{X509Dir: x509, PSKUser: "alice"}, "--nbd-tls-psk-user"},
	} {
		err := c.tls.Check()
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: %v, want %q", c.tls, err, c.want)
		}
	}
	os.WriteFile(filepath.Join(x509, "client-cert.pem"), []byte("x"), 0o600)
	if err := (&NBDTLS{X509Dir: x509}).Check(); err == nil || !strings.Contains(err.Error(), "go together") {
		t.Errorf("client cert without key: %v", err)
	}
}
