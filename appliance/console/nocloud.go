package console

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/ferry-io/ferry/internal/atomicfile"
)

// Seed is what the appliance takes from a NoCloud seed (a disk labelled
// cidata or CIDATA holding meta-data and user-data, as cloud-init's
// NoCloud data source reads it). Only these keys are supported; others
// are ignored:
//
//	meta-data:  instance-id, local-hostname
//	user-data:  #cloud-config with
//	  hostname: NAME
//	  ssh_authorized_keys: [KEY, ...]          (for root)
//	  ferry:
//	    api_token: TOKEN                       (at least 20 characters)
//	    iscsi_chap_user: USER
//	    iscsi_chap_secret: SECRET              (12-255 characters)
//	    nbd_tls_cert: PEM                      (with nbd_tls_key)
//	    nbd_tls_key: PEM
//	    network: {interface: eth0, address: 10.0.0.5/24, gateway: 10.0.0.1, dns: [10.0.0.1]}
//	    nbd_tls: allow                         (require, the default, or allow:
//	                                            plain NBD too, e.g. to benchmark)
//
// A seed is applied once per instance-id; what it sets replaces what
// first boot would create.
type Seed struct {
	InstanceID string
	Hostname   string
	SSHKeys    []string
	Ferry      SeedFerry
}

// SeedFerry is the user-data's ferry: section.
type SeedFerry struct {
	APIToken        string      `yaml:"api_token"`
	ISCSICHAPUser   string      `yaml:"iscsi_chap_user"`
	ISCSICHAPSecret string      `yaml:"iscsi_chap_secret"`
	NBDTLSCert      string      `yaml:"nbd_tls_cert"`
	NBDTLSKey       string      `yaml:"nbd_tls_key"`
	Network         *SeedStatic `yaml:"network"`
	NBDTLS          string      `yaml:"nbd_tls"`
}

// SeedStatic is a static network setting in a seed.
type SeedStatic struct {
	Interface string   `yaml:"interface"`
	Address   string   `yaml:"address"`
	Gateway   string   `yaml:"gateway"`
	DNS       []string `yaml:"dns"`
}

// ParseSeed reads a NoCloud seed's meta-data and user-data.
func ParseSeed(metaData, userData []byte) (Seed, error) {
	var meta struct {
		InstanceID    string `yaml:"instance-id"`
		LocalHostname string `yaml:"local-hostname"`
	}
	if err := yaml.Unmarshal(metaData, &meta); err != nil {
		return Seed{}, fmt.Errorf("meta-data: %w", err)
	}
	var user struct {
		Hostname          string    `yaml:"hostname"`
		SSHAuthorizedKeys []string  `yaml:"ssh_authorized_keys"`
		Ferry             SeedFerry `yaml:"ferry"`
	}
	if len(userData) > 0 {
		if !strings.HasPrefix(string(userData), "#cloud-config") {
			return Seed{}, errors.New("user-data: only #cloud-config is supported")
		}
		if err := yaml.Unmarshal(userData, &user); err != nil {
			return Seed{}, fmt.Errorf("user-data: %w", err)
		}
	}
	s := Seed{InstanceID: meta.InstanceID, Hostname: meta.LocalHostname, SSHKeys: user.SSHAuthorizedKeys, Ferry: user.Ferry}
	if user.Hostname != "" {
		s.Hostname = user.Hostname
	}
	if s.InstanceID == "" {
		return Seed{}, errors.New("meta-data has no instance-id")
	}
	return s, nil
}

// ReadSeedDir reads a mounted NoCloud seed.
func ReadSeedDir(dir string) (Seed, error) {
	meta, err := os.ReadFile(filepath.Join(dir, "meta-data"))
	if err != nil {
		return Seed{}, fmt.Errorf("NoCloud seed: %w", err)
	}
	user, err := os.ReadFile(filepath.Join(dir, "user-data"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return Seed{}, fmt.Errorf("NoCloud seed: %w", err)
	}
	return ParseSeed(meta, user)
}

// FindSeed mounts the disk labelled cidata (or CIDATA) read-only and reads
// it; ok is false when there is none.
func FindSeed(ctx context.Context) (s Seed, ok bool, err error) {
	var dev string
	for _, l := range []string{"cidata", "CIDATA"} {
		out, err := exec.CommandContext(ctx, "blkid", "-L", l).Output()
		if err == nil && len(strings.TrimSpace(string(out))) > 0 {
			dev = strings.TrimSpace(string(out))
			break
		}
	}
	if dev == "" {
		return Seed{}, false, nil
	}
	dir, err := os.MkdirTemp("", "ferry-cidata-")
	if err != nil {
		return Seed{}, false, err
	}
	defer os.Remove(dir)
	if err := run(ctx, "mount", "-o", "ro", dev, dir); err != nil {
		return Seed{}, false, err
	}
	defer func() { _ = run(context.WithoutCancel(ctx), "umount", dir) }()
	s, err = ReadSeedDir(dir)
	return s, err == nil, err
}

// ApplySeed applies s unless its instance-id was applied already; it
// returns what it did, one line each.
func ApplySeed(p Paths, s Seed, root string) (done []string, err error) {
	idFile := filepath.Join(p.State, SeedIDFile)
	if b, err := os.ReadFile(idFile); err == nil && strings.TrimSpace(string(b)) == s.InstanceID {
		return nil, nil
	}
	if err := os.MkdirAll(p.State, 0o700); err != nil {
		return nil, err
	}
	f := s.Ferry
	if s.Hostname != "" {
		if err := os.WriteFile(filepath.Join(root, "etc/hostname"), []byte(s.Hostname+"\n"), 0o644); err != nil {
			return done, err
		}
		done = append(done, "hostname "+s.Hostname)
	}
	if len(s.SSHKeys) > 0 {
		dir := filepath.Join(root, "root/.ssh")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return done, err
		}
		if err := atomicfile.WriteFile(filepath.Join(dir, "authorized_keys"), []byte(strings.Join(s.SSHKeys, "\n")+"\n")); err != nil {
			return done, err
		}
		done = append(done, fmt.Sprintf("%d ssh key(s) for root", len(s.SSHKeys)))
	}
	if f.APIToken != "" {
		if err := WriteToken(p, f.APIToken); err != nil {
			return done, fmt.Errorf("ferry.api_token: %w", err)
		}
		done = append(done, "API token")
	}
	if f.ISCSICHAPSecret != "" {
		c := CHAP{User: f.ISCSICHAPUser, Secret: f.ISCSICHAPSecret}
		if c.User == "" {
			c.User = DefaultCHAPUser
		}
		if err := WriteCHAP(p, c); err != nil {
			return done, fmt.Errorf("ferry.iscsi_chap_secret: %w", err)
		}
		done = append(done, "iSCSI CHAP user "+c.User)
	}
	if (f.NBDTLSCert == "") != (f.NBDTLSKey == "") {
		return done, errors.New("ferry.nbd_tls_cert and ferry.nbd_tls_key go together")
	}
	if f.NBDTLSCert != "" {
		if err := atomicfile.WriteFile(p.key(), []byte(f.NBDTLSKey)); err != nil {
			return done, err
		}
		if err := atomicfile.WriteFile(p.cert(), []byte(f.NBDTLSCert)); err != nil {
			return done, err
		}
		done = append(done, "NBD TLS certificate")
	}
	switch f.NBDTLS {
	case "":
	case "require", "allow":
		body := "# Set by a NoCloud seed (ferry.nbd_tls).\nFERRY_NBD_TLS=" + f.NBDTLS + "\n"
		if err := atomicfile.WriteFile(filepath.Join(p.State, ServeEnvFile), []byte(body)); err != nil {
			return done, err
		}
		done = append(done, "NBD TLS "+f.NBDTLS)
	default:
		return done, fmt.Errorf("ferry.nbd_tls %q: use require or allow", f.NBDTLS)
	}
	if n := f.Network; n != nil {
		st := StaticNet{Interface: n.Interface}
		if st.Address, err = netip.ParsePrefix(n.Address); err != nil {
			return done, fmt.Errorf("ferry.network.address: %w", err)
		}
		if n.Gateway != "" {
			if st.Gateway, err = netip.ParseAddr(n.Gateway); err != nil {
				return done, fmt.Errorf("ferry.network.gateway: %w", err)
			}
		}
		for _, d := range n.DNS {
			a, err := netip.ParseAddr(d)
			if err != nil {
				return done, fmt.Errorf("ferry.network.dns: %w", err)
			}
			st.DNS = append(st.DNS, a)
		}
		if err := WriteStatic(p, st); err != nil {
			return done, err
		}
		done = append(done, "static network on "+st.Interface)
	}
	return done, atomicfile.WriteFile(idFile, []byte(s.InstanceID+"\n"))
}
