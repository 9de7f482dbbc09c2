package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// ISCSIAccess is a volume's iSCSI access control. Secrets stay in the
// catalog (mode 0600) and reach only the iSCSI frontend; Info shows the
// user names and allow-list, never a secret.
type ISCSIAccess struct {
	CHAPUser        string   `json:"chap_user,omitempty"`
	CHAPSecret      string   `json:"chap_secret,omitempty"`
	MutualUser      string   `json:"mutual_chap_user,omitempty"`
	MutualSecret    string   `json:"mutual_chap_secret,omitempty"`
	AllowInitiators []string `json:"allow_initiators,omitempty"`
}

// AccessView is ISCSIAccess without secrets, for Info.
type AccessView struct {
	CHAPUser        string   `json:"chap_user,omitempty"`
	MutualUser      string   `json:"mutual_chap_user,omitempty"`
	AllowInitiators []string `json:"allow_initiators,omitempty"`
}

func (a *ISCSIAccess) view() *AccessView {
	if a == nil || (a.CHAPUser == "" && len(a.AllowInitiators) == 0) {
		return nil
	}
	return &AccessView{CHAPUser: a.CHAPUser, MutualUser: a.MutualUser, AllowInitiators: slices.Clone(a.AllowInitiators)}
}

// AccessUpdate changes a volume's access control. Nil fields are left as
// they are; ClearCHAP and ClearAllow remove settings.
type AccessUpdate struct {
	CHAPUser        *string  `json:"chap_user,omitempty"`
	CHAPSecret      *string  `json:"chap_secret,omitempty"`
	MutualUser      *string  `json:"mutual_chap_user,omitempty"`
	MutualSecret    *string  `json:"mutual_chap_secret,omitempty"`
	AllowInitiators []string `json:"allow_initiators,omitempty"`
	ClearCHAP       bool     `json:"clear_chap,omitempty"`
	ClearAllow      bool     `json:"clear_allow,omitempty"`
}

func (u *AccessUpdate) empty() bool {
	return u == nil || (u.CHAPUser == nil && u.CHAPSecret == nil && u.MutualUser == nil &&
		u.MutualSecret == nil && len(u.AllowInitiators) == 0 && !u.ClearCHAP && !u.ClearAllow)
}

// apply returns old with u applied, validated.
func (u *AccessUpdate) apply(old *ISCSIAccess) (*ISCSIAccess, error) {
	a := ISCSIAccess{}
	if old != nil {
		a = *old
		a.AllowInitiators = slices.Clone(old.AllowInitiators)
	}
	if u.ClearCHAP {
		a.CHAPUser, a.CHAPSecret, a.MutualUser, a.MutualSecret = "", "", "", ""
	}
	if u.ClearAllow {
		a.AllowInitiators = nil
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
	for _, iqn := range u.AllowInitiators {
		iqn = strings.ToLower(strings.TrimSpace(iqn))
		if !slices.Contains(a.AllowInitiators, iqn) {
			a.AllowInitiators = append(a.AllowInitiators, iqn)
		}
	}
	if err := a.Validate(); err != nil {
		return nil, err
	}
	if a.CHAPUser == "" && len(a.AllowInitiators) == 0 {
		return nil, nil
	}
	return &a, nil
}

var initiatorRE = regexp.MustCompile(`^(iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:.+)?|eui\.[0-9a-f]{16}|naa\.[0-9a-f]{16}([0-9a-f]{16})?)$`)

// Validate checks CHAP settings and initiator names.
func (a *ISCSIAccess) Validate() error {
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
	for _, s := range []string{a.CHAPSecret, a.MutualSecret} {
		if s != "" && (len(s) < 12 || len(s) > 255) {
			return bad("CHAP secrets must be 12 to 255 characters (RFC 7143 asks for at least 96 bits)")
		}
	}
	if a.MutualSecret != "" && a.MutualSecret == a.CHAPSecret {
		return bad("the mutual CHAP secret must differ from the CHAP secret (RFC 7143 §12.1.3)")
	}
	for _, iqn := range a.AllowInitiators {
		if !initiatorRE.MatchString(iqn) {
			return bad("initiator name %q is not an iqn., eui. or naa. name", iqn)
		}
	}
	return nil
}

// UpdateAccess changes a volume's iSCSI access control.
func (m *Manager) UpdateAccess(ctx context.Context, name string, u AccessUpdate) (Info, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.vols[name]
	if !ok || v.removing {
		return Info{}, fmt.Errorf("update volume %q: %w", name, ErrNotFound)
	}
	a, err := u.apply(v.rec.ISCSI)
	if err != nil {
		return Info{}, fmt.Errorf("update volume %q: %w", name, err)
	}
	old := v.rec.ISCSI
	v.rec.ISCSI = a
	if err := m.commit(); err != nil {
		v.rec.ISCSI = old
		return Info{}, fmt.Errorf("update volume %q: %w", name, err)
	}
	m.log.Info("volume access updated", attrVolume, name) // never the values: they hold secrets
	return m.infoLocked(ctx, v), nil
}

// Access returns a volume's iSCSI access control, secrets included, for the
// iSCSI frontend. A volume without settings returns the zero value.
func (m *Manager) Access(ctx context.Context, name string) (ISCSIAccess, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.vols[name]
	if !ok || v.removing {
		return ISCSIAccess{}, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	if v.rec.ISCSI == nil {
		return ISCSIAccess{}, nil
	}
	a := *v.rec.ISCSI
	a.AllowInitiators = slices.Clone(a.AllowInitiators)
	return a, nil
}

// prPath is where a volume's persistent-reservation state lives.
func (m *Manager) prPath(rec *Record) string {
	return filepath.Join(m.cfg.DataDir, "reservations", rec.ID)
}

// LoadPR returns the volume's saved SCSI persistent-reservation state (nil
// when none was saved).
func (m *Manager) LoadPR(ctx context.Context, name string) ([]byte, error) {
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
	if err := writeFileAtomic(path, state); err != nil {
		return fmt.Errorf("save reservations of %q: %w", name, err)
	}
	return nil
}
