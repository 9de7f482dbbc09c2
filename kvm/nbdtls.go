package kvm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// NBDTLS is how QEMU's NBD client negotiates TLS with the gateway (the
// gateway's --nbd-tls require|allow): X.509 (QEMU's tls-creds-x509, a
// directory holding ca-cert.pem and, when the gateway asks for client
// certificates, client-cert.pem and client-key.pem) or a pre-shared key
// (tls-creds-psk, a directory holding keys.psk with USER's
// "USER:hexkey" line). Every QEMU ferry-kvm starts gets the credentials
// object, and every NBD block node, on its command line or added at run
// time by a migration between gateways, uses it.
type NBDTLS struct {
	X509Dir string
	PSKDir  string
	PSKUser string
	// Hostname, with X.509, is the name the gateway's certificate must
	// carry; "" checks it against the NBD address's host.
	Hostname string
}

// nbdTLSID is the QEMU object id of the credentials.
const nbdTLSID = "ferrytls"

// Check says what is wrong with the settings, naming the serve flags.
func (t *NBDTLS) Check() error {
	switch {
	case t.X509Dir != "" && t.PSKDir != "":
		return errors.New("--nbd-tls-x509-dir and --nbd-tls-psk-dir: give one")
	case t.X509Dir != "":
		if t.PSKUser != "" {
			return errors.New("--nbd-tls-psk-user goes with --nbd-tls-psk-dir, not --nbd-tls-x509-dir")
		}
		if _, err := os.Stat(filepath.Join(t.X509Dir, "ca-cert.pem")); err != nil {
			return fmt.Errorf("--nbd-tls-x509-dir %s: QEMU needs ca-cert.pem there (the CA that signed the gateway's certificate): %w", t.X509Dir, err)
		}
		_, certErr := os.Stat(filepath.Join(t.X509Dir, "client-cert.pem"))
		_, keyErr := os.Stat(filepath.Join(t.X509Dir, "client-key.pem"))
		if (certErr == nil) != (keyErr == nil) {
			return fmt.Errorf("--nbd-tls-x509-dir %s: client-cert.pem and client-key.pem go together", t.X509Dir)
		}
	case t.PSKDir != "":
		if t.PSKUser == "" {
			return errors.New("--nbd-tls-psk-dir needs --nbd-tls-psk-user (the identity whose line keys.psk holds)")
		}
		if _, err := os.Stat(filepath.Join(t.PSKDir, "keys.psk")); err != nil {
			return fmt.Errorf("--nbd-tls-psk-dir %s: QEMU needs keys.psk there (psktool -u %s -p keys.psk): %w", t.PSKDir, t.PSKUser, err)
		}
		if t.Hostname != "" {
			return errors.New("--nbd-tls-hostname checks an X.509 certificate; a PSK has none")
		}
	case t.PSKUser != "" || t.Hostname != "":
		return errors.New("--nbd-tls-psk-user and --nbd-tls-hostname go with --nbd-tls-psk-dir or --nbd-tls-x509-dir")
	}
	return nil
}

// enabled reports whether t asks for TLS (a nil *NBDTLS does not).
func (t *NBDTLS) enabled() bool { return t != nil && (t.X509Dir != "" || t.PSKDir != "") }

// object is the -object argument (QEMU's JSON form: no comma escaping)
// defining the credentials.
func (t *NBDTLS) object() string {
	o := map[string]any{"id": nbdTLSID, "endpoint": "client"}
	if t.X509Dir != "" {
		o["qom-type"], o["dir"] = "tls-creds-x509", t.X509Dir
	} else {
		o["qom-type"], o["dir"], o["username"] = "tls-creds-psk", t.PSKDir, t.PSKUser
	}
	b, _ := json.Marshal(o)
	return string(b)
}

// describe says how disks are protected, for vm info.
func (t *NBDTLS) describe() string {
	switch {
	case !t.enabled():
		return ""
	case t.X509Dir != "":
		return "TLS x509"
	}
	return "TLS psk as " + t.PSKUser
}
