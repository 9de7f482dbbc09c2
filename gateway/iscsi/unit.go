package iscsi

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"sync"

	"github.com/ferry-io/ferry/backends/device"
)

// unit is the state of one volume's logical unit that every session
// shares: persistent reservations (SPC-4), a RESERVE(6/10) reservation
// (SPC-2), unit attentions waiting for each I_T nexus, and the lock that
// makes COMPARE AND WRITE atomic. It lives in the Server, so it outlasts
// the sessions that use it: registrations survive reconnects. It does not
// survive a gateway restart unless an initiator registered with APTPL
// and the server has a ReservationStore.
type unit struct {
	dev   device.Device
	vol   string
	store ReservationStore // nil: no persistence
	log   *slog.Logger

	// cawMu makes COMPARE AND WRITE atomic against every other iSCSI
	// write to the volume: writes share it, COMPARE AND WRITE holds it
	// alone.
	cawMu sync.RWMutex

	mu    sync.Mutex
	gen   uint32            // PRgeneration
	regs  map[string]uint64 // I_T nexus → reservation key
	res   *prRes            // the persistent reservation, if any
	aptpl bool              // persist through power loss (last REGISTER's APTPL)
	spc2  string            // I_T nexus holding RESERVE(6/10), or ""
	ua    map[string][]sense
	sizes map[string]int64 // capacity each nexus was last told about
}

// prRes is a persistent reservation.
type prRes struct {
	holder string // I_T nexus; for all-registrants types, the one that reserved
	typ    byte
}

// Persistent reservation types (SPC-4 table 171).
const (
	prWriteExclusive     = 1
	prExclusiveAccess    = 3
	prWriteExclusiveRO   = 5
	prExclusiveAccessRO  = 6
	prWriteExclusiveAR   = 7
	prExclusiveAccessAR  = 8
	statusResConflict    = 0x18
	statusCondMet        = 0x04
	maxCompareWriteBlock = 255
)

func newUnit(dev device.Device) *unit {
	return &unit{dev: dev, regs: map[string]uint64{}, ua: map[string][]sense{}, sizes: map[string]int64{}}
}

// prState is the persisted form of a unit's persistent reservations.
type prState struct {
	Gen   uint32            `json:"generation"`
	APTPL bool              `json:"aptpl"`
	Regs  map[string]uint64 `json:"registrations,omitempty"`
	// Holder and Type describe the reservation; Type 0 means none.
	Holder string `json:"holder,omitempty"`
	Type   byte   `json:"type,omitempty"`
}

func (u *unit) state() prState {
	st := prState{Gen: u.gen, APTPL: u.aptpl, Regs: maps.Clone(u.regs)}
	if u.res != nil {
		st.Holder, st.Type = u.res.holder, u.res.typ
	}
	return st
}

func (u *unit) setState(st prState) {
	u.gen, u.aptpl, u.regs, u.res = st.Gen, st.APTPL, st.Regs, nil
	if u.regs == nil {
		u.regs = map[string]uint64{}
	}
	if st.Type != 0 {
		u.res = &prRes{holder: st.Holder, typ: st.Type}
	}
}

// load restores the reservations saved with APTPL; state saved without
// it does not survive a restart (SPC-4 §5.13.5).
func (u *unit) load(ctx context.Context) {
	if u.store == nil {
		return
	}
	b, err := u.store.LoadPR(ctx, u.vol)
	if err != nil || b == nil {
		if err != nil {
			u.log.Warn("persistent reservations not loaded", "volume", u.vol, "err", err)
		}
		return
	}
	var st prState
	if err := json.Unmarshal(b, &st); err != nil {
		u.log.Warn("persistent reservations not loaded", "volume", u.vol, "err", err)
		return
	}
	if st.APTPL {
		u.setState(st)
	}
}

// save persists the reservations. Callers hold u.mu.
func (u *unit) save(ctx context.Context) error {
	if u.store == nil {
		return nil
	}
	b, err := json.Marshal(u.state())
	if err != nil {
		return err
	}
	return u.store.SavePR(ctx, u.vol, b)
}

// unit returns the shared state of the volume behind dev, creating it on
// first use. A volume removed and created again gets a fresh unit.
func (s *Server) unit(vol string, dev device.Device) *unit {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.units[vol]
	if u == nil || u.dev != dev {
		u = newUnit(dev)
		u.vol, u.store, u.log = vol, s.cfg.Reservations, s.log
		u.load(context.Background())
		s.units[vol] = u
	}
	return u
}

// login records a new I_T nexus: it starts at the current capacity.
func (u *unit) login(nexus string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.sizes[nexus] = u.dev.Size()
}

// logout forgets an I_T nexus that ended: its RESERVE(6/10) reservation
// is released (I_T nexus loss); persistent registrations stay.
func (u *unit) logout(nexus string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.spc2 == nexus {
		u.spc2 = ""
	}
	delete(u.sizes, nexus)
	delete(u.ua, nexus)
}

// reset is a LOGICAL UNIT RESET: the RESERVE(6/10) reservation goes,
// persistent reservations stay (SPC-4 §5.12.1).
func (u *unit) reset() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.spc2 = ""
}

// admit decides, under one lock, whether nexus may run cdb now: a
// pending unit attention (a capacity change since the nexus last looked is
// reported once as CAPACITY DATA HAS CHANGED) answers any command but
// INQUIRY, REPORT LUNS and REQUEST SENSE, which returns it as its data;
// then the reservations decide. stop is true when r is the answer.
func (u *unit) admit(nexus string, cdb []byte, cls int) (r result, stop bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	switch cdb[0] {
	case 0x12, 0xa0: // INQUIRY, REPORT LUNS: never held up
		return result{}, false
	}
	size := u.dev.Size()
	if seen, ok := u.sizes[nexus]; ok && seen != size {
		u.ua[nexus] = append(u.ua[nexus], senseCapacityChanged)
	}
	u.sizes[nexus] = size
	var s sense
	pending := len(u.ua[nexus]) > 0
	if pending {
		s, u.ua[nexus] = u.ua[nexus][0], u.ua[nexus][1:]
	}
	if cdb[0] == 0x03 { // REQUEST SENSE
		return result{data: s.bytes()[:min(18, int(cdb[4]))]}, true
	}
	if pending {
		return check(s), true
	}
	if u.conflictLocked(nexus, cdb[0], cls) {
		return resultReservationClash, true
	}
	return result{}, false
}

// tellOthers queues a unit attention for every nexus in nexuses except
// self. Callers hold u.mu.
func (u *unit) tellOthers(self string, nexuses []string, s sense) {
	for _, n := range nexuses {
		if n != self {
			u.ua[n] = append(u.ua[n], s)
		}
	}
}

// access classes for reservation checks.
const (
	accessAlways = iota // allowed whatever the reservation
	accessRead          // allowed to non-holders of write-exclusive reservations
	accessWrite         // allowed only to holders
)

// conflictLocked reports whether nexus may not run a command of class cls
// (and opcode op) under the reservations held now. Callers hold u.mu.
func (u *unit) conflictLocked(nexus string, op byte, cls int) bool {
	if u.spc2 != "" && u.spc2 != nexus {
		switch op {
		case 0x12, 0xa0, 0x03, 0x17, 0x57: // INQUIRY, REPORT LUNS, REQUEST SENSE, RELEASE(6/10)
			return false
		}
		return true
	}
	if cls == accessAlways || u.res == nil || u.holds(nexus) {
		return false
	}
	switch u.res.typ {
	case prWriteExclusive, prWriteExclusiveRO, prWriteExclusiveAR:
		return cls == accessWrite
	}
	return true
}

// holds reports whether nexus holds the persistent reservation or, for
// registrants-only and all-registrants types, is registered. Callers hold
// u.mu.
func (u *unit) holds(nexus string) bool {
	if u.res == nil {
		return false
	}
	switch u.res.typ {
	case prWriteExclusiveRO, prExclusiveAccessRO, prWriteExclusiveAR, prExclusiveAccessAR:
		_, ok := u.regs[nexus]
		return ok
	}
	return u.res.holder == nexus
}

// allRegistrants reports whether typ is an all-registrants type.
func allRegistrants(typ byte) bool { return typ == prWriteExclusiveAR || typ == prExclusiveAccessAR }
