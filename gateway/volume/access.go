package volume

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/ferry-io/ferry/internal/atomicfile"
	"github.com/ferry-io/ferry/internal/chap"
)

// Access is a volume's access control, the same whichever protocol serves
// the volume:
//
//   - AllowAddresses, when not empty, admits only clients whose address is
//     in one of its prefixes, over NBD and iSCSI alike.
//   - CHAP and AllowInitiators are checked by the iSCSI frontend at login.
//     NBD can check neither, so a volume that has either is served over
//     NBD only to clients its AllowAddresses admits: with CHAP or an
//     initiator allow-list and no address allow-list, NBD refuses it.
//
// Secrets stay in the catalog (mode 0600) and reach only the iSCSI
// frontend; Info shows the user names and allow-lists, never a secret.
type Access struct {
	CHAPUser        string   `json:"chap_user,omitempty"`
	CHAPSecret      string   `json:"chap_secret,omitempty"`
	MutualUser      string   `json:"mutual_chap_user,omitempty"`
	MutualSecret    string   `json:"mutual_chap_secret,omitempty"`
	AllowInitiators []string `json:"allow_initiators,omitempty"`
	// AllowAddresses are client address prefixes ("192.0.2.0/24",
	// "2001:db8::/32"; a lone address is stored as a /32 or /128).
	AllowAddresses []string `json:"allow_addresses,omitempty"`
	// AllowTLSIdentities are the NBD TLS identities admitted: client
	// certificate common names (ferry serve --nbd-tls-ca verifies the
	// certificates) or PSK identities (ferry serve --nbd-tls-psk).
	AllowTLSIdentities []string `json:"allow_tls_identities,omitempty"`
	// ISCSIWithoutCHAP opts the volume out of the CHAP an iSCSI listener
	// off loopback requires.
	ISCSIWithoutCHAP bool `json:"iscsi_without_chap,omitempty"`
}

func (a *Access) view() *AccessView {
	if a.empty() && (a == nil || !a.ISCSIWithoutCHAP) {
		return nil
	}
	return &AccessView{CHAPUser: a.CHAPUser, MutualUser: a.MutualUser,
		AllowInitiators: slices.Clone(a.AllowInitiators), AllowAddresses: slices.Clone(a.AllowAddresses),
		AllowTLSIdentities: slices.Clone(a.AllowTLSIdentities), ISCSIWithoutCHAP: a.ISCSIWithoutCHAP}
}

func (a *Access) empty() bool {
	return a == nil || (a.CHAPUser == "" && len(a.AllowInitiators) == 0 && len(a.AllowAddresses) == 0 && len(a.AllowTLSIdentities) == 0)
}

// admit checks the rules every protocol shares; the iSCSI frontend checks
// CHAP and the initiator allow-list itself. A nil Access admits anyone.
func (a *Access) admit(c Client) error {
	if a.empty() {
		return nil
	}
	if len(a.AllowAddresses) > 0 && !addressAllowed(a.AllowAddresses, c.Remote) {
		return fmt.Errorf("client address %s is not on the volume's address allow-list: %w", c.Remote, ErrDenied)
	}
	iscsiRules := a.CHAPUser != "" || len(a.AllowInitiators) > 0
	if c.Protocol == ProtoISCSI {
		if len(a.AllowTLSIdentities) > 0 && !iscsiRules && len(a.AllowAddresses) == 0 {
			return fmt.Errorf("the volume admits NBD clients by TLS identity, which iSCSI cannot check; "+
				"give it CHAP (--chap-user/--chap-secret) or an initiator allow-list for iSCSI: %w", ErrDenied)
		}
		return nil // the iSCSI frontend checks CHAP and the initiator list
	}
	if len(a.AllowTLSIdentities) > 0 {
		if c.TLSIdentity == "" || !slices.Contains(a.AllowTLSIdentities, c.TLSIdentity) {
			who := "no TLS identity (no client certificate or PSK)"
			if c.TLSIdentity != "" {
				who = fmt.Sprintf("TLS identity %q", c.TLSIdentity)
			}
			return fmt.Errorf("%s is not on the volume's TLS identity allow-list (ferry serve --nbd-tls-ca makes clients present certificates, --nbd-tls-psk authenticates them by pre-shared key): %w", who, ErrDenied)
		}
		return nil
	}
	if iscsiRules && len(a.AllowAddresses) == 0 {
		return fmt.Errorf("the volume is protected by iSCSI CHAP or an initiator allow-list, which %s cannot check; "+
			"admit %s clients by address (--allow-address CIDR) or by client certificate (--allow-tls-identity NAME) with `ferry volume update`: %w",
			strings.ToUpper(c.Protocol), strings.ToUpper(c.Protocol), ErrDenied)
	}
	return nil
}

// addressAllowed reports whether remote (host:port or host) is in one of
// the prefixes. IPv4-mapped IPv6 addresses count as IPv4.
func addressAllowed(prefixes []string, remote string) bool {
	host := remote
	if h, _, err := net.SplitHostPort(remote); err == nil {
		host = h
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	ip = ip.Unmap().WithZone("")
	for _, s := range prefixes {
		if p, err := netip.ParsePrefix(s); err == nil && p.Contains(ip) {
			return true
		}
	}
	return false
}

// parseAddressPrefix accepts an address or a prefix and returns it as a
// canonical prefix.
func parseAddressPrefix(s string) (string, error) {
	s = strings.TrimSpace(s)
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked().String(), nil
	}
	if ip, err := netip.ParseAddr(s); err == nil && ip.Zone() == "" {
		ip = ip.Unmap()
		return netip.PrefixFrom(ip, ip.BitLen()).String(), nil
	}
	return "", fmt.Errorf("address %q is neither an IP address nor a prefix such as 192.0.2.0/24: %w", s, ErrInvalid)
}

// applyAccess returns old with u applied, validated.
func applyAccess(u *AccessUpdate, old *Access) (*Access, error) {
	a := Access{}
	if old != nil {
		a = *old
		a.AllowInitiators = slices.Clone(old.AllowInitiators)
		a.AllowAddresses = slices.Clone(old.AllowAddresses)
	}
	if u.ClearCHAP {
		a.CHAPUser, a.CHAPSecret, a.MutualUser, a.MutualSecret = "", "", "", ""
	}
	if u.ClearAllow {
		a.AllowInitiators, a.AllowAddresses, a.AllowTLSIdentities = nil, nil, nil
	}
	for _, id := range u.AllowTLSIdentities {
		if !slices.Contains(a.AllowTLSIdentities, id) {
			a.AllowTLSIdentities = append(a.AllowTLSIdentities, id)
		}
	}
	set := func(dst *string, src *string) {
		if src != nil {
			*dst = *src
		}
	}
	set(&a.CHAPUser, u.CHAPUser)
	set(&a.CHAPSecret, u.CHAPSecret)
	set(&a.MutualUser, u.MutualUser)
	set(&a.MutualSecret, u.MutualSecret)
	if u.ISCSIWithoutCHAP != nil {
		a.ISCSIWithoutCHAP = *u.ISCSIWithoutCHAP
	}
	for _, iqn := range u.AllowInitiators {
		iqn = strings.ToLower(strings.TrimSpace(iqn))
		if !slices.Contains(a.AllowInitiators, iqn) {
			a.AllowInitiators = append(a.AllowInitiators, iqn)
		}
	}
	for _, s := range u.AllowAddresses {
		p, err := parseAddressPrefix(s)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(a.AllowAddresses, p) {
			a.AllowAddresses = append(a.AllowAddresses, p)
		}
	}
	if err := a.Validate(); err != nil {
		return nil, err
	}
	if a.empty() {
		return nil, nil
	}
	return &a, nil
}

var initiatorRE = regexp.MustCompile(`^(iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:.+)?|eui\.[0-9a-f]{16}|naa\.[0-9a-f]{16}([0-9a-f]{16})?)$`)

// Validate checks CHAP settings, initiator names and address prefixes.
func (a *Access) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf(format+": %w", append(args, ErrInvalid)...)
	}
	if (a.CHAPUser == "") != (a.CHAPSecret == "") {
		return bad("CHAP needs both a user name and a secret")
	}
	if (a.MutualUser == "") != (a.MutualSecret == "") {
		return bad("mutual CHAP needs both a user name and a secret")
	}
	if a.MutualUser != "" && a.CHAPUser == "" {
		return bad("mutual CHAP needs one-way CHAP (--chap-user/--chap-secret) too")
	}
	if err := chap.CheckSecrets(a.CHAPSecret, a.MutualSecret); err != nil {
		return bad("%v", err)
	}
	for _, id := range a.AllowTLSIdentities {
		if id == "" || len(id) > 64 || strings.ContainsFunc(id, func(r rune) bool { return r < ' ' || r == 0x7f }) {
			return bad("TLS identity %q is not a certificate common name (1 to 64 printable characters)", id)
		}
	}
	for _, iqn := range a.AllowInitiators {
		if !initiatorRE.MatchString(iqn) {
			return bad("initiator name %q is not an iqn., eui. or naa. name", iqn)
		}
	}
	for _, p := range a.AllowAddresses {
		if _, err := netip.ParsePrefix(p); err != nil {
			return bad("address prefix %q is not valid", p)
		}
	}
	return nil
}

// UpdateAccess changes a volume's access control. It applies to new
// connections; clients already attached stay.
func (m *Manager) UpdateAccess(ctx context.Context, name string, u AccessUpdate) (Info, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.vols[name]
	if !ok || v.removing {
		return Info{}, fmt.Errorf("update volume %q: %w", name, ErrNotFound)
	}
	a, err := applyAccess(&u, v.rec.Access)
	if err != nil {
		return Info{}, fmt.Errorf("update volume %q: %w", name, err)
	}
	old := v.rec.Access
	v.rec.Access = a
	if err := m.commit(); err != nil {
		v.rec.Access = old
		return Info{}, fmt.Errorf("update volume %q: %w", name, err)
	}
	m.log.Info("volume access updated", attrVolume, name) // never the values: they hold secrets
	return m.infoLocked(ctx, v), nil
}

// Access returns a volume's access control, secrets included, for the
// iSCSI frontend. A volume without settings returns the zero value.
func (m *Manager) Access(ctx context.Context, name string) (Access, error) {
	name, _, _ = splitExport(name) // a snapshot's rules are its volume's
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.vols[name]
	if !ok || v.removing {
		return Access{}, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	if v.rec.Access == nil {
		return Access{}, nil
	}
	a := *v.rec.Access
	a.AllowInitiators = slices.Clone(a.AllowInitiators)
	a.AllowAddresses = slices.Clone(a.AllowAddresses)
	return a, nil
}

// prPath is where a volume's persistent-reservation state lives.
func (m *Manager) prPath(rec *Record) string {
	return filepath.Join(m.cfg.DataDir, "reservations", rec.ID)
}

// LoadPR returns the volume's saved SCSI persistent-reservation state (nil
// when none was saved).
func (m *Manager) LoadPR(ctx context.Context, name string) ([]byte, error) {
	if _, _, isSnap := splitExport(name); isSnap {
		return nil, nil // a snapshot export keeps no reservations
	}
	m.mu.Lock()
	v, ok := m.vols[name]
	m.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("load reservations of %q: %w", name, ErrNotFound)
	}
	b, err := os.ReadFile(m.prPath(v.rec))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load reservations of %q: %w", name, err)
	}
	return b, nil
}

// SavePR durably replaces the volume's persistent-reservation state.
func (m *Manager) SavePR(ctx context.Context, name string, state []byte) error {
	if _, _, isSnap := splitExport(name); isSnap {
		return fmt.Errorf("save reservations of %q: a snapshot export is read-only: %w", name, ErrInvalid)
	}
	m.mu.Lock()
	v, ok := m.vols[name]
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("save reservations of %q: %w", name, ErrNotFound)
	}
	path := m.prPath(v.rec)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("save reservations of %q: %w", name, err)
	}
	if err := atomicfile.WriteFile(path, state); err != nil {
		return fmt.Errorf("save reservations of %q: %w", name, err)
	}
	return nil
}
