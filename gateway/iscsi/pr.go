package iscsi

import (
	"context"
	"encoding/binary"
	"maps"
	"reflect"
	"slices"
	"strings"
)

// Persistent reservations (SPC-4 §5.13, PERSISTENT RESERVE IN/OUT) and
// the older RESERVE/RELEASE(6/10). State is per volume, in the unit.

var resultReservationClash = result{status: statusResConflict}

// prIn answers PERSISTENT RESERVE IN.
func (l *lu) prIn(cdb []byte) result {
	allocLen := int(binary.BigEndian.Uint16(cdb[7:]))
	u := l.u
	u.mu.Lock()
	defer u.mu.Unlock()
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, u.gen)
	switch cdb[1] & 0x1f {
	case 0: // READ KEYS
		for _, n := range slices.Sorted(maps.Keys(u.regs)) {
			b = binary.BigEndian.AppendUint64(b, u.regs[n])
		}
	case 1: // READ RESERVATION
		if u.res != nil {
			d := make([]byte, 16)
			if !allRegistrants(u.res.typ) {
				binary.BigEndian.PutUint64(d, u.regs[u.res.holder])
			}
			d[13] = u.res.typ // scope LU (0)
			b = append(b, d...)
		}
	case 2: // REPORT CAPABILITIES
		b = make([]byte, 8)
		binary.BigEndian.PutUint16(b, 8)
		if u.store != nil {
			b[2] |= 0x01 // PTPL_C
			if u.aptpl {
				b[3] |= 0x01 // PTPL_A
			}
		}
		b[3] |= 0x80 // TMV: the type mask is valid
		b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02
		b[5] = 0x01
		return alloc(b, allocLen)
	case 3: // READ FULL STATUS
		for _, n := range slices.Sorted(maps.Keys(u.regs)) {
			tid := transportID(n)
			d := make([]byte, 24, 24+len(tid))
			binary.BigEndian.PutUint64(d, u.regs[n])
			if u.res != nil && (u.res.holder == n || allRegistrants(u.res.typ)) {
				d[12] = 0x01 // R_HOLDER
				d[13] = u.res.typ
			}
			binary.BigEndian.PutUint16(d[18:], 1) // relative target port
			binary.BigEndian.PutUint32(d[20:], uint32(len(tid)))
			b = append(append(b, d...), tid...)
		}
	default:
		return check(senseInvalidField)
	}
	binary.BigEndian.PutUint32(b[4:], uint32(len(b)-8))
	return alloc(b, allocLen)
}

// transportID is an iSCSI TransportID (SPC-4 §7.6.4.6, format 01b:
// "name,i,0xISID") for a nexus string, padded to a multiple of four.
func transportID(nexus string) []byte {
	n := len(nexus) + 1
	n += (4 - n%4) % 4
	b := make([]byte, 4+n)
	b[0] = 0x40 | 0x05 // format 01b, protocol iSCSI
	binary.BigEndian.PutUint16(b[2:], uint16(n))
	copy(b[4:], nexus)
	return b
}

// prOut runs PERSISTENT RESERVE OUT. A change is saved before it is
// acknowledged; when saving fails it is undone and the command fails.
func (l *lu) prOut(ctx context.Context, cdb, data []byte) result {
	u := l.u
	u.mu.Lock()
	defer u.mu.Unlock()
	before := u.state()
	r := l.prOutLocked(cdb, data)
	if r.status == statusGood && !reflect.DeepEqual(before, u.state()) {
		if err := u.save(ctx); err != nil {
			u.log.Error("persistent reservation not saved; command failed", "volume", u.vol, "err", err)
			u.setState(before)
			return check(senseInternal)
		}
	}
	return r
}

// prOutLocked runs PERSISTENT RESERVE OUT. Callers hold u.mu.
func (l *lu) prOutLocked(cdb, data []byte) result {
	sa := cdb[1] & 0x1f
	scope, typ := cdb[2]>>4, cdb[2]&0x0f
	plen := int(binary.BigEndian.Uint32(cdb[5:]))
	if sa > 7 {
		return check(senseInvalidField)
	}
	if sa == 7 { // REGISTER AND MOVE
		return check(senseInvalidField)
	}
	if plen != 24 {
		return check(senseParamLength)
	}
	if len(data) < 24 {
		return check(senseParamLength)
	}
	key := binary.BigEndian.Uint64(data)
	saKey := binary.BigEndian.Uint64(data[8:])
	flags := data[20]
	if flags&(0x08|0x04) != 0 { // SPEC_I_PT, ALL_TG_PT: not supported
		return check(senseInvalidParam)
	}
	aptpl := flags&0x01 != 0
	u, me := l.u, l.nexus
	if aptpl && u.store == nil && (sa == 0 || sa == 6) {
		return check(senseInvalidParam) // cannot persist through power loss
	}
	if u.spc2 != "" && u.spc2 != me {
		return resultReservationClash
	}
	mine, registered := u.regs[me]
	switch sa {
	case 0, 6: // REGISTER, REGISTER AND IGNORE EXISTING KEY
		if sa == 0 && (registered && key != mine || !registered && key != 0) {
			return resultReservationClash
		}
		switch {
		case saKey != 0:
			u.regs[me] = saKey
		case registered:
			u.unregister(me)
		default:
			return result{} // unregistering an unregistered nexus does nothing
		}
		u.aptpl = aptpl
		u.gen++
		return result{}
	}
	if !registered || key != mine {
		return resultReservationClash
	}
	if sa == 1 || sa == 2 || sa == 4 || sa == 5 {
		if scope != 0 {
			return check(senseInvalidField)
		}
		if sa != 2 && !validType(typ) {
			return check(senseInvalidField)
		}
	}
	switch sa {
	case 1: // RESERVE
		switch {
		case u.res == nil:
			u.res = &prRes{holder: me, typ: typ}
		case u.holds(me) && u.res.typ == typ:
		default:
			return resultReservationClash
		}
	case 2: // RELEASE
		if u.res == nil || !u.holds(me) {
			return result{}
		}
		if u.res.typ != typ {
			return check(senseInvalidRelease)
		}
		old := u.res.typ
		u.res = nil
		if old != prWriteExclusive && old != prExclusiveAccess {
			u.tellOthers(me, slices.Collect(maps.Keys(u.regs)), senseResReleased)
		}
	case 3: // CLEAR
		u.tellOthers(me, slices.Collect(maps.Keys(u.regs)), senseResPreempted)
		clear(u.regs)
		u.res = nil
		u.gen++
	case 4, 5: // PREEMPT, PREEMPT AND ABORT
		return l.preempt(saKey, typ)
	}
	return result{}
}

// preempt runs PREEMPT: it removes the registrations holding saKey and,
// when they hold the reservation, takes it over. Callers hold u.mu.
func (l *lu) preempt(saKey uint64, typ byte) result {
	u, me := l.u, l.nexus
	var victims []string
	takeover := false
	switch {
	case u.res != nil && allRegistrants(u.res.typ) && saKey == 0:
		// Preempting an all-registrants reservation with key 0: every
		// other registration goes and the preempter holds it.
		for n := range u.regs {
			if n != me {
				victims = append(victims, n)
			}
		}
		takeover = true
	case saKey == 0:
		return check(senseInvalidParam)
	default:
		for n, k := range u.regs {
			if k == saKey {
				victims = append(victims, n)
			}
		}
		if len(victims) == 0 {
			return resultReservationClash
		}
		takeover = u.res != nil && !allRegistrants(u.res.typ) && u.regs[u.res.holder] == saKey
	}
	for _, n := range victims {
		if n != me {
			delete(u.regs, n)
			u.ua[n] = append(u.ua[n], senseRegPreempted)
		}
	}
	if takeover {
		u.res = &prRes{holder: me, typ: typ}
	}
	u.gen++
	return result{}
}

// unregister removes nexus's registration, and the reservation it alone
// held. Callers hold u.mu.
func (u *unit) unregister(nexus string) {
	delete(u.regs, nexus)
	if u.res == nil {
		return
	}
	if allRegistrants(u.res.typ) {
		if len(u.regs) == 0 {
			u.res = nil
		}
		return
	}
	if u.res.holder == nexus {
		typ := u.res.typ
		u.res = nil
		if typ == prWriteExclusiveRO || typ == prExclusiveAccessRO {
			u.tellOthers(nexus, slices.Collect(maps.Keys(u.regs)), senseResReleased)
		}
	}
}

func validType(t byte) bool {
	switch t {
	case prWriteExclusive, prExclusiveAccess, prWriteExclusiveRO, prExclusiveAccessRO, prWriteExclusiveAR, prExclusiveAccessAR:
		return true
	}
	return false
}

// reserve6 runs RESERVE(6/10): the whole LU for this nexus.
func (l *lu) reserve6() result {
	u := l.u
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.res != nil || (u.spc2 != "" && u.spc2 != l.nexus) {
		return resultReservationClash
	}
	u.spc2 = l.nexus
	return result{}
}

// release6 runs RELEASE(6/10); releasing what another nexus holds, or
// nothing, succeeds and changes nothing.
func (l *lu) release6() result {
	u := l.u
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.spc2 == l.nexus {
		u.spc2 = ""
	}
	return result{}
}

// nexusName is an I_T nexus's initiator port name, as a TransportID
// carries it: "IQN,i,0xISID".
func nexusName(initiator string, isid [6]byte) string {
	const hex = "0123456789abcdef"
	var b strings.Builder
	b.WriteString(initiator)
	b.WriteString(",i,0x")
	for _, x := range isid {
		b.WriteByte(hex[x>>4])
		b.WriteByte(hex[x&15])
	}
	return b.String()
}
