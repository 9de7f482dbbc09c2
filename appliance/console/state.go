package console

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/atomicfile"
)

// DefaultCHAPUser is the default iSCSI CHAP user first boot creates.
const DefaultCHAPUser = "ferry"

// randomSecret is n random bytes, base64url: a token or CHAP secret.
func randomSecret(n int) (string, error) {
	raw := make([]byte, n)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(raw), nil
}

// EnsureCert creates a self-signed NBD TLS certificate and key in the
// state directory unless both exist. The certificate names host,
// localhost, 127.0.0.1 and ::1 (clients that reach the appliance by
// another address pass the name, e.g. QEMU's tls-hostname=HOST); it is
// its own CA, so clients trust exactly this certificate.
func EnsureCert(p Paths, host string) (created bool, err error) {
	if fileExists(p.cert()) && fileExists(p.key()) {
		return false, nil
	}
	if err := os.MkdirAll(p.State, 0o700); err != nil {
		return false, fmt.Errorf("state directory: %w", err)
	}
	certPEM, keyPEM, err := selfSigned(host, time.Now())
	if err != nil {
		return false, err
	}
	if err := atomicfile.WriteFile(p.key(), keyPEM); err != nil {
		return false, fmt.Errorf("NBD key: %w", err)
	}
	if err := atomicfile.WriteFile(p.cert(), certPEM); err != nil {
		return false, fmt.Errorf("NBD certificate: %w", err)
	}
	return true, os.Chmod(p.cert(), 0o644)
}

func selfSigned(host string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: host, Organization: []string{"Ferry appliance"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{host, "localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

// Fingerprint is the SHA-256 of a DER certificate as colon-separated hex,
// as `openssl x509 -fingerprint -sha256` prints it.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	var b strings.Builder
	for i, c := range sum {
		if i > 0 {
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%02X", c)
	}
	return b.String()
}

// CertFingerprint is the fingerprint of the NBD certificate in the state
// directory.
func CertFingerprint(p Paths) (string, error) {
	b, err := os.ReadFile(p.cert())
	if err != nil {
		return "", err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return "", fmt.Errorf("%s holds no PEM certificate", p.cert())
	}
	return Fingerprint(blk.Bytes), nil
}

// CHAP is the gateway's default iSCSI CHAP user and secret.
type CHAP struct{ User, Secret string }

// ReadCHAP reads the default CHAP credentials from the environment file.
func ReadCHAP(p Paths) (CHAP, error) {
	b, err := os.ReadFile(p.iscsiEnv())
	if err != nil {
		return CHAP{}, err
	}
	var c CHAP
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		switch k {
		case "FERRY_ISCSI_CHAP_USER":
			c.User = v
		case "FERRY_ISCSI_CHAP_SECRET":
			c.Secret = v
		}
	}
	return c, nil
}

// CheckCHAP refuses credentials the gateway would refuse: a user name
// with spaces, a secret outside 12-255 printable characters.
func CheckCHAP(c CHAP) error {
	if c.User == "" || strings.ContainsAny(c.User, " \t\n=\"'") {
		return errors.New("the CHAP user must be one word")
	}
	if len(c.Secret) < 12 || len(c.Secret) > 255 {
		return fmt.Errorf("the CHAP secret is %d characters; use 12 to 255", len(c.Secret))
	}
	for _, r := range c.Secret {
		if r <= ' ' || r > '~' || strings.ContainsRune("\"'\\$`", r) {
			return errors.New("the CHAP secret must be printable ASCII without spaces, quotes, \\, $ or `")
		}
	}
	return nil
}

// WriteCHAP stores the default CHAP credentials (mode 0600); the gateway
// reads them when it (re)starts.
func WriteCHAP(p Paths, c CHAP) error {
	if err := CheckCHAP(c); err != nil {
		return err
	}
	if err := os.MkdirAll(p.State, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	body := fmt.Sprintf("# Default iSCSI CHAP of the Ferry gateway (ferry console).\nFERRY_ISCSI_CHAP_USER=%s\nFERRY_ISCSI_CHAP_SECRET=%s\n", c.User, c.Secret)
	return atomicfile.WriteFile(p.iscsiEnv(), []byte(body))
}

// EnsureCHAP creates random default CHAP credentials unless some exist.
func EnsureCHAP(p Paths) (created bool, err error) {
	if fileExists(p.iscsiEnv()) {
		return false, nil
	}
	s, err := randomSecret(18)
	if err != nil {
		return false, err
	}
	return true, WriteCHAP(p, CHAP{User: DefaultCHAPUser, Secret: s})
}

// ReadToken reads the gateway's API token ("" when it has none yet).
func ReadToken(p Paths) (string, error) {
	b, err := os.ReadFile(p.TokenFile)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return wire.ParseToken(b)
}

// WriteToken replaces the API token (mode 0600). The gateway reads it
// when it starts: restart it afterwards.
func WriteToken(p Paths, token string) error {
	t, err := wire.ParseToken([]byte(token))
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(p.TokenFile, []byte(t+"\n"))
}

// NewToken is a fresh random API token (256 bits), as the gateway makes.
func NewToken() (string, error) { return randomSecret(32) }

// StaticNet is a static address for one interface.
type StaticNet struct {
	Interface string
	Address   netip.Prefix
	Gateway   netip.Addr // optional
	DNS       []netip.Addr
}

// NetworkFile renders s as a systemd-networkd .network file.
func (s StaticNet) NetworkFile() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Static settings made on the Ferry console.\n[Match]\nName=%s\n\n[Network]\nAddress=%s\n", s.Interface, s.Address)
	if s.Gateway.IsValid() {
		fmt.Fprintf(&b, "Gateway=%s\n", s.Gateway)
	}
	for _, d := range s.DNS {
		fmt.Fprintf(&b, "DNS=%s\n", d)
	}
	return b.String()
}

// WriteStatic stores a static network setting on the data disk and
// installs it for networkd (RunNetwork); the caller reloads the network.
func WriteStatic(p Paths, s StaticNet) error {
	if s.Interface == "" || !s.Address.IsValid() {
		return errors.New("a static setting needs an interface and an address/prefix")
	}
	if err := os.MkdirAll(p.network(), 0o755); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(p.network(), StaticNetwork), []byte(s.NetworkFile())); err != nil {
		return err
	}
	_, err := RestoreNetwork(p)
	return err
}

// ClearStatic removes the static setting: every NIC uses DHCP again.
func ClearStatic(p Paths) error {
	for _, f := range []string{filepath.Join(p.network(), StaticNetwork), filepath.Join(p.RunNetwork, StaticNetwork)} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// RestoreNetwork copies the .network files kept on the data disk to
// networkd's runtime directory; it returns how many there were.
func RestoreNetwork(p Paths) (int, error) {
	ents, err := os.ReadDir(p.network())
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".network") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(p.network(), e.Name()))
		if err != nil {
			return n, err
		}
		if err := os.MkdirAll(p.RunNetwork, 0o755); err != nil {
			return n, err
		}
		if err := os.WriteFile(filepath.Join(p.RunNetwork, e.Name()), b, 0o644); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
