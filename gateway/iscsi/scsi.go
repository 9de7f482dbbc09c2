package iscsi

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"

	"github.com/gostor/gotgt/pkg/api"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/bufpool"
)

const blockSize = 512

var (
	statusGood  = api.SAM_STAT_GOOD
	statusCheck = api.SAM_STAT_CHECK_CONDITION
)

// sense is fixed-format sense data: key, ASC, ASCQ.
type sense struct{ key, asc, ascq byte }

func (s sense) bytes() []byte { return s.withInfo(0, false) }

// withInfo is the sense data with the INFORMATION field set when valid.
func (s sense) withInfo(info uint32, valid bool) []byte {
	b := make([]byte, 18)
	b[0] = 0x70
	if valid {
		b[0] |= 0x80
		binary.BigEndian.PutUint32(b[3:], info)
	}
	b[2] = s.key
	b[7] = 10
	b[12], b[13] = s.asc, s.ascq
	return b
}

var (
	senseInvalidOpcode = sense{0x05, 0x20, 0x00}
	senseLBARange      = sense{0x05, 0x21, 0x00}
	senseInvalidField  = sense{0x05, 0x24, 0x00}
	senseLUNotSupp     = sense{0x05, 0x25, 0x00}
	senseReadError     = sense{0x03, 0x11, 0x00}
	senseWriteError    = sense{0x03, 0x0c, 0x00}
	senseWriteProtect  = sense{0x07, 0x27, 0x00}
	senseNoSpace       = sense{0x07, 0x27, 0x07} // space allocation failed write protect
	senseNotReady      = sense{0x02, 0x04, 0x00}
	senseInternal      = sense{0x04, 0x44, 0x00} // internal target failure
	senseMiscompare    = sense{0x0e, 0x1d, 0x00}
	senseDataPhase     = sense{0x0b, 0x4b, 0x00} // aborted command: data phase error
	senseCRC           = sense{0x0b, 0x47, 0x05} // aborted command: protocol service CRC error
	senseParamLength   = sense{0x05, 0x1a, 0x00}
	senseInvalidParam  = sense{0x05, 0x26, 0x00}
	// Persistent reservations and unit attentions.
	senseInvalidRelease  = sense{0x05, 0x26, 0x04}
	senseResPreempted    = sense{0x06, 0x2a, 0x03}
	senseResReleased     = sense{0x06, 0x2a, 0x04}
	senseRegPreempted    = sense{0x06, 0x2a, 0x05}
	senseCapacityChanged = sense{0x06, 0x2a, 0x09}
)

// result is a command's outcome: data for the initiator (reads), status
// and sense, and for writes the byte count the CDB asked for.
type result struct {
	data   []byte
	status byte
	sense  sense
	want   int
	// info is the sense INFORMATION field, when hasInfo.
	info    uint32
	hasInfo bool
	// pooled: data is from the buffer pool, and goes back once sent.
	pooled bool
}

func check(s sense) result { return result{status: statusCheck, sense: s} }

// lu is LUN 0 of a volume's target as one I_T nexus (session) sees it.
type lu struct {
	att   *volume.Attachment
	dev   device.Device
	id    [8]byte // NAA-style identifier from the volume's identity
	u     *unit   // state shared with every other session
	nexus string  // this session's initiator port name
}

func newLU(att *volume.Attachment, u *unit, nexus string) *lu {
	l := &lu{att: att, dev: att.Dev, u: u, nexus: nexus}
	h := sha256.Sum256([]byte(l.identity()))
	copy(l.id[:], h[:])
	l.id[0] = 0x60 | l.id[0]&0x0f // NAA 6 (IEEE registered extended)
	return l
}

// ioErr maps a device error to sense data.
func ioErr(err error, write bool) result {
	switch {
	case errors.Is(err, device.ErrOutOfRange):
		return check(senseLBARange)
	case errors.Is(err, device.ErrReadOnly):
		return check(senseWriteProtect)
	case errors.Is(err, device.ErrNoSpace):
		return check(senseNoSpace)
	case errors.Is(err, device.ErrClosed):
		return check(senseNotReady)
	case write:
		return check(senseWriteError)
	}
	return check(senseReadError)
}

func (l *lu) blocks() uint64 { return uint64(l.dev.Size()) / blockSize }

// rw decodes the LBA, block count and FUA bit of a block command by its
// CDB format (the opcode's group): READ/WRITE/VERIFY/WRITE AND VERIFY,
// WRITE SAME, PRE-FETCH and SYNCHRONIZE CACHE all share them.
func rw(cdb []byte) (lba uint64, n uint32, fua bool) {
	switch cdb[0] >> 5 {
	case 0: // 6-byte (READ/WRITE(6): 0 blocks means 256)
		lba = uint64(cdb[1]&0x1f)<<16 | uint64(cdb[2])<<8 | uint64(cdb[3])
		n = uint32(cdb[4])
		if n == 0 {
			n = 256
		}
		return lba, n, false
	case 1, 2: // 10-byte
		lba = uint64(binary.BigEndian.Uint32(cdb[2:]))
		n = uint32(binary.BigEndian.Uint16(cdb[7:]))
	case 5: // 12-byte
		lba = uint64(binary.BigEndian.Uint32(cdb[2:]))
		n = binary.BigEndian.Uint32(cdb[6:])
	default: // 16-byte
		lba = binary.BigEndian.Uint64(cdb[2:])
		n = binary.BigEndian.Uint32(cdb[10:])
	}
	return lba, n, cdb[1]&0x08 != 0
}

func (l *lu) inRange(lba uint64, n uint32) bool {
	end := lba + uint64(n)
	return end >= lba && end <= l.blocks()
}

// opInfo describes one supported command: its access class under
// reservations and its CDB usage data (SPC-4 §6.35.3), the bits a CDB may
// set. A CDB with a bit outside the usage data fails with INVALID FIELD IN
// CDB; REPORT SUPPORTED OPERATION CODES reports the same table.
type opInfo struct {
	op    byte
	sa    byte
	hasSA bool
	cls   int
	usage []byte
}

var ff8 = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func cdb16(op, b1 byte, tail ...byte) []byte {
	b := append([]byte{op, b1}, ff8...)
	return append(b, append([]byte{0xff, 0xff, 0xff, 0xff}, tail...)...)
}

var opTable = []opInfo{
	{op: 0x00, cls: accessAlways, usage: []byte{0x00, 0, 0, 0, 0, 0}},                                          // TEST UNIT READY
	{op: 0x03, cls: accessAlways, usage: []byte{0x03, 0x01, 0, 0, 0xff, 0}},                                    // REQUEST SENSE
	{op: 0x08, cls: accessRead, usage: []byte{0x08, 0x1f, 0xff, 0xff, 0xff, 0}},                                // READ(6)
	{op: 0x0a, cls: accessWrite, usage: []byte{0x0a, 0x1f, 0xff, 0xff, 0xff, 0}},                               // WRITE(6)
	{op: 0x12, cls: accessAlways, usage: []byte{0x12, 0x01, 0xff, 0xff, 0xff, 0}},                              // INQUIRY
	{op: 0x16, cls: accessAlways, usage: []byte{0x16, 0, 0, 0, 0, 0}},                                          // RESERVE(6)
	{op: 0x17, cls: accessAlways, usage: []byte{0x17, 0, 0, 0, 0, 0}},                                          // RELEASE(6)
	{op: 0x1a, cls: accessRead, usage: []byte{0x1a, 0x08, 0xff, 0xff, 0xff, 0}},                                // MODE SENSE(6)
	{op: 0x1b, cls: accessWrite, usage: []byte{0x1b, 0x01, 0, 0x0f, 0xf7, 0}},                                  // START STOP UNIT
	{op: 0x1e, cls: accessRead, usage: []byte{0x1e, 0, 0, 0, 0x03, 0}},                                         // PREVENT ALLOW MEDIUM REMOVAL
	{op: 0x25, cls: accessAlways, usage: []byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}},                              // READ CAPACITY(10)
	{op: 0x28, cls: accessRead, usage: []byte{0x28, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0}},        // READ(10)
	{op: 0x2a, cls: accessWrite, usage: []byte{0x2a, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0}},       // WRITE(10)
	{op: 0x2e, cls: accessWrite, usage: []byte{0x2e, 0x12, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0}},       // WRITE AND VERIFY(10)
	{op: 0x2f, cls: accessRead, usage: []byte{0x2f, 0x16, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0}},        // VERIFY(10)
	{op: 0x34, cls: accessRead, usage: []byte{0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0}},        // PRE-FETCH(10)
	{op: 0x35, cls: accessRead, usage: []byte{0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0}},        // SYNCHRONIZE CACHE(10)
	{op: 0x41, cls: accessWrite, usage: []byte{0x41, 0x08, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0}},       // WRITE SAME(10)
	{op: 0x42, cls: accessWrite, usage: []byte{0x42, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0}},                         // UNMAP
	{op: 0x56, cls: accessAlways, usage: []byte{0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0}},                              // RESERVE(10)
	{op: 0x57, cls: accessAlways, usage: []byte{0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0}},                              // RELEASE(10)
	{op: 0x5a, cls: accessRead, usage: []byte{0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0}},                 // MODE SENSE(10)
	{op: 0x5e, sa: 0, hasSA: true, cls: accessAlways, usage: []byte{0x5e, 0x00, 0, 0, 0, 0, 0, 0xff, 0xff, 0}}, // PR IN: READ KEYS
	{op: 0x5e, sa: 1, hasSA: true, cls: accessAlways, usage: []byte{0x5e, 0x01, 0, 0, 0, 0, 0, 0xff, 0xff, 0}}, // PR IN: READ RESERVATION
	{op: 0x5e, sa: 2, hasSA: true, cls: accessAlways, usage: []byte{0x5e, 0x02, 0, 0, 0, 0, 0, 0xff, 0xff, 0}}, // PR IN: REPORT CAPABILITIES
	{op: 0x5e, sa: 3, hasSA: true, cls: accessAlways, usage: []byte{0x5e, 0x03, 0, 0, 0, 0, 0, 0xff, 0xff, 0}}, // PR IN: READ FULL STATUS
	{op: 0x5f, sa: 0, hasSA: true, cls: accessAlways, usage: []byte{0x5f, 0x00, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},
	{op: 0x5f, sa: 1, hasSA: true, cls: accessAlways, usage: []byte{0x5f, 0x01, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},
	{op: 0x5f, sa: 2, hasSA: true, cls: accessAlways, usage: []byte{0x5f, 0x02, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},
	{op: 0x5f, sa: 3, hasSA: true, cls: accessAlways, usage: []byte{0x5f, 0x03, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},
	{op: 0x5f, sa: 4, hasSA: true, cls: accessAlways, usage: []byte{0x5f, 0x04, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},
	{op: 0x5f, sa: 5, hasSA: true, cls: accessAlways, usage: []byte{0x5f, 0x05, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},
	{op: 0x5f, sa: 6, hasSA: true, cls: accessAlways, usage: []byte{0x5f, 0x06, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}},
	{op: 0x88, cls: accessRead, usage: cdb16(0x88, 0x18, 0x1f, 0)},                                                                        // READ(16)
	{op: 0x89, cls: accessWrite, usage: append([]byte{0x89, 0x18}, append(ff8, 0, 0, 0, 0xff, 0, 0)...)},                                  // COMPARE AND WRITE
	{op: 0x8a, cls: accessWrite, usage: cdb16(0x8a, 0x18, 0x1f, 0)},                                                                       // WRITE(16)
	{op: 0x8e, cls: accessWrite, usage: cdb16(0x8e, 0x12, 0x1f, 0)},                                                                       // WRITE AND VERIFY(16)
	{op: 0x8f, cls: accessRead, usage: cdb16(0x8f, 0x16, 0x1f, 0)},                                                                        // VERIFY(16)
	{op: 0x90, cls: accessRead, usage: cdb16(0x90, 0x02, 0x1f, 0)},                                                                        // PRE-FETCH(16)
	{op: 0x91, cls: accessRead, usage: cdb16(0x91, 0x02, 0x1f, 0)},                                                                        // SYNCHRONIZE CACHE(16)
	{op: 0x93, cls: accessWrite, usage: cdb16(0x93, 0x09, 0x1f, 0)},                                                                       // WRITE SAME(16)
	{op: 0x9e, sa: 0x10, hasSA: true, cls: accessAlways, usage: cdb16(0x9e, 0x10, 0, 0)},                                                  // READ CAPACITY(16)
	{op: 0x9e, sa: 0x12, hasSA: true, cls: accessRead, usage: cdb16(0x9e, 0x12, 0, 0)},                                                    // GET LBA STATUS
	{op: 0xa0, cls: accessAlways, usage: []byte{0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}},                                    // REPORT LUNS
	{op: 0xa3, sa: 0x0c, hasSA: true, cls: accessAlways, usage: []byte{0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}}, // REPORT SUPPORTED OPERATION CODES
	{op: 0xa8, cls: accessRead, usage: []byte{0xa8, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0}},                       // READ(12)
	{op: 0xaa, cls: accessWrite, usage: []byte{0xaa, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0}},                      // WRITE(12)
	{op: 0xae, cls: accessWrite, usage: []byte{0xae, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0}},                      // WRITE AND VERIFY(12)
	{op: 0xaf, cls: accessRead, usage: []byte{0xaf, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0}},                       // VERIFY(12)
}

// hasServiceAction reports whether op's CDB carries a service action in
// byte 1.
func hasServiceAction(op byte) bool { return op == 0x5e || op == 0x5f || op == 0x9e || op == 0xa3 }

// opIndex holds opTable's entries by opcode, so that finding a command
// costs one array index (and, for service actions, a short scan).
var opIndex = func() (idx [256][]*opInfo) {
	for i := range opTable {
		o := &opTable[i]
		idx[o.op] = append(idx[o.op], o)
	}
	return idx
}()

// lookupOp finds the table entry for a CDB, or nil.
func lookupOp(op, sa byte) *opInfo {
	for _, o := range opIndex[op] {
		if !o.hasSA || o.sa == sa {
			return o
		}
	}
	return nil
}

// exec runs one CDB against the LU.
func (l *lu) exec(ctx context.Context, lun uint64, cdb []byte, data []byte, edtl int) result {
	op := api.SCSICommandType(cdb[0])
	if lun != 0 {
		switch op {
		case api.INQUIRY:
			r := l.inquiry(cdb)
			if r.status == statusGood && len(r.data) > 0 {
				r.data[0] = 0x7f // no LU here
			}
			return r
		case api.REPORT_LUNS:
			return l.reportLUNs(cdb)
		case api.REQUEST_SENSE:
			return result{data: sense{}.bytes()[:min(18, int(cdb[4]))]}
		}
		return check(senseLUNotSupp)
	}
	info := lookupOp(cdb[0], cdb[1]&0x1f)
	if info == nil {
		if hasServiceAction(cdb[0]) {
			return check(senseInvalidField)
		}
		return check(senseInvalidOpcode)
	}
	for i := 1; i < len(info.usage)-1; i++ {
		if cdb[i]&^info.usage[i] != 0 {
			return check(senseInvalidField)
		}
	}
	if r, stop := l.u.admit(l.nexus, cdb, info.cls); stop {
		return r
	}
	switch op {
	case api.TEST_UNIT_READY, api.START_STOP, api.ALLOW_MEDIUM_REMOVAL:
		return result{}
	case api.INQUIRY:
		return l.inquiry(cdb)
	case api.REPORT_LUNS:
		return l.reportLUNs(cdb)
	case api.READ_CAPACITY:
		b := make([]byte, 8)
		last := l.blocks() - 1
		binary.BigEndian.PutUint32(b, uint32(min(last, 0xffffffff)))
		binary.BigEndian.PutUint32(b[4:], blockSize)
		return result{data: b}
	case api.SERVICE_ACTION_IN:
		if cdb[1]&0x1f == byte(api.SAI_READ_CAPACITY_16) {
			return l.readCapacity16(cdb)
		}
		return l.getLBAStatus(ctx, cdb)
	case api.MAINT_PROTOCOL_IN:
		return reportOpcodes(cdb)
	case api.MODE_SENSE, api.MODE_SENSE_10:
		return l.modeSense(cdb)
	case api.READ_6, api.READ_10, api.READ_12, api.READ_16:
		lba, n, _ := rw(cdb)
		if !l.inRange(lba, n) {
			return check(senseLBARange)
		}
		size := int(n) * blockSize
		if size > maxTransfer {
			// Past the Block Limits page's maximum transfer length.
			return check(senseInvalidField)
		}
		// Recycled: allocating (and zeroing) a fresh buffer per read
		// costs more than a cached read.
		b := bufpool.Get(size)
		if err := l.dev.ReadAt(ctx, b, int64(lba)*blockSize); err != nil {
			bufpool.Put(b)
			return ioErr(err, false)
		}
		return result{data: b, pooled: true}
	case api.WRITE_6, api.WRITE_10, api.WRITE_12, api.WRITE_16, api.WRITE_VERIFY, api.WRITE_VERIFY_12, api.WRITE_VERIFY_16:
		return l.write(ctx, cdb, data)
	case api.VERIFY_10, api.VERIFY_16, api.VERIFY_12:
		return l.verify(ctx, cdb, data)
	case api.PRE_FETCH_10, api.PRE_FETCH_16, api.SYNCHRONIZE_CACHE, api.SYNCHRONIZE_CACHE_16:
		lba, n, _ := rw(cdb)
		if !l.inRange(lba, n) {
			return check(senseLBARange)
		}
		if op == api.PRE_FETCH_10 || op == api.PRE_FETCH_16 {
			return result{} // the cache decides what to keep
		}
		if err := l.dev.Flush(ctx); err != nil {
			return ioErr(err, true)
		}
		return result{}
	case api.UNMAP:
		l.u.cawMu.RLock()
		defer l.u.cawMu.RUnlock()
		return l.unmap(ctx, cdb, data)
	case api.WRITE_SAME, api.WRITE_SAME_16:
		l.u.cawMu.RLock()
		defer l.u.cawMu.RUnlock()
		return l.writeSame(ctx, cdb, data, edtl)
	case api.COMPARE_AND_WRITE:
		return l.compareAndWrite(ctx, cdb, data, edtl)
	case api.PERSISTENT_RESERVE_IN:
		return l.prIn(cdb)
	case api.PERSISTENT_RESERVE_OUT:
		return l.prOut(ctx, cdb, data)
	case api.RESERVE, api.RESERVE_10:
		return l.reserve6()
	case api.RELEASE, api.RELEASE_10:
		return l.release6()
	}
	return check(senseInvalidOpcode)
}

// write runs WRITE and WRITE AND VERIFY. With less data than the CDB
// names (iSCSI EDTL < SCSI transfer length) it writes the whole blocks it
// has and reports the rest as residual overflow.
func (l *lu) write(ctx context.Context, cdb, data []byte) result {
	lba, n, fua := rw(cdb)
	want := int(n) * blockSize
	if !l.inRange(lba, n) {
		return check(senseLBARange)
	}
	have := min(len(data), want) / blockSize * blockSize
	l.u.cawMu.RLock()
	err := l.dev.WriteAt(ctx, data[:have], int64(lba)*blockSize)
	l.u.cawMu.RUnlock()
	if err != nil {
		return ioErr(err, true)
	}
	switch api.SCSICommandType(cdb[0]) {
	case api.WRITE_VERIFY, api.WRITE_VERIFY_12, api.WRITE_VERIFY_16:
		fua = true
	}
	if fua {
		if err := l.dev.Flush(ctx); err != nil {
			return ioErr(err, true)
		}
	}
	return result{want: want}
}

// verify runs VERIFY: with BYTCHK 01b the data-out buffer is compared
// with the blocks, with 11b one block is compared with each of them.
func (l *lu) verify(ctx context.Context, cdb, data []byte) result {
	lba, n, _ := rw(cdb)
	if !l.inRange(lba, n) {
		return check(senseLBARange)
	}
	bytchk := cdb[1] >> 1 & 3
	if bytchk == 0 || n == 0 {
		return result{}
	}
	if bytchk == 2 {
		return check(senseInvalidField)
	}
	want := int(n) * blockSize
	if bytchk == 3 {
		want = blockSize
	}
	if len(data) < want {
		return check(senseInvalidField)
	}
	b := make([]byte, int(n)*blockSize)
	if err := l.dev.ReadAt(ctx, b, int64(lba)*blockSize); err != nil {
		return ioErr(err, false)
	}
	for i := range b {
		j := i
		if bytchk == 3 {
			j = i % blockSize
		}
		if b[i] != data[j] {
			return miscompare(i)
		}
	}
	return result{want: want}
}

// miscompare is MISCOMPARE DURING VERIFY OPERATION with the offset of the
// first differing byte in the INFORMATION field.
func miscompare(off int) result {
	r := check(senseMiscompare)
	r.info, r.hasInfo = uint32(off), true
	return r
}

// compareAndWrite runs COMPARE AND WRITE (VMware ATS): it compares NLB
// blocks with the first half of the data and, only if they match, writes
// the second half, with no other iSCSI write to the volume in between.
func (l *lu) compareAndWrite(ctx context.Context, cdb, data []byte, edtl int) result {
	lba := binary.BigEndian.Uint64(cdb[2:])
	n := uint32(cdb[13])
	size := int(n) * blockSize
	if n > maxCompareWriteBlock || edtl != 2*size {
		return check(senseInvalidField)
	}
	if !l.inRange(lba, n) {
		return check(senseLBARange)
	}
	if n == 0 {
		return result{}
	}
	l.u.cawMu.Lock()
	defer l.u.cawMu.Unlock()
	b := make([]byte, size)
	off := int64(lba) * blockSize
	if err := l.dev.ReadAt(ctx, b, off); err != nil {
		return ioErr(err, false)
	}
	for i := range b {
		if b[i] != data[i] {
			return miscompare(i)
		}
	}
	if err := l.dev.WriteAt(ctx, data[size:2*size], off); err != nil {
		return ioErr(err, true)
	}
	if cdb[1]&0x08 != 0 {
		if err := l.dev.Flush(ctx); err != nil {
			return ioErr(err, true)
		}
	}
	return result{want: 2 * size}
}

// reportOpcodes answers REPORT SUPPORTED OPERATION CODES from opTable.
func reportOpcodes(cdb []byte) result {
	rctd := cdb[2]&0x80 != 0
	allocLen := int(binary.BigEndian.Uint32(cdb[6:]))
	timeouts := func(b []byte) []byte { return append(b, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0) }
	switch cdb[2] & 0x07 {
	case 0: // all commands
		b := make([]byte, 4)
		for _, o := range opTable {
			d := []byte{o.op, 0, 0, o.sa, 0, 0, 0, byte(len(o.usage))}
			if o.hasSA {
				d[5] |= 0x01
			}
			if rctd {
				d[5] |= 0x02
				d = timeouts(d)
			}
			b = append(b, d...)
		}
		binary.BigEndian.PutUint32(b, uint32(len(b)-4))
		return alloc(b, allocLen)
	case 1, 2: // one command
		op, sa := cdb[3], binary.BigEndian.Uint16(cdb[4:])
		withSA := cdb[2]&0x07 == 2
		if withSA != hasServiceAction(op) || sa > 0x1f {
			return check(senseInvalidField)
		}
		b := make([]byte, 4)
		o := lookupOp(op, byte(sa))
		if o == nil {
			b[1] = 0x01 // not supported
			return alloc(b, allocLen)
		}
		b[1] = 0x03 // supported, standard
		binary.BigEndian.PutUint16(b[2:], uint16(len(o.usage)))
		b = append(b, o.usage...)
		if rctd {
			b[1] |= 0x80
			b = timeouts(b)
		}
		return alloc(b, allocLen)
	}
	return check(senseInvalidField)
}

// alloc returns b cut to the CDB's allocation length n.
func alloc(b []byte, n int) result {
	return result{data: b[:min(len(b), n)]}
}

func (l *lu) inquiry(cdb []byte) result {
	allocLen := int(binary.BigEndian.Uint16(cdb[3:]))
	evpd := cdb[1]&0x01 != 0
	if !evpd {
		if cdb[2] != 0 {
			return check(senseInvalidField)
		}
		b := make([]byte, 96)
		b[0] = 0x00 // direct access block device
		b[2] = 0x06 // SPC-4
		b[3] = 0x02 // response data format 2
		b[4] = byte(len(b) - 5)
		b[5] = 0x08 // 3PC=0, TPGS=0; PROTECT=0
		b[7] = 0x02 // CMDQUE
		copy(b[8:16], "FERRY   ")
		copy(b[16:32], padRight(l.att.Name, 16))
		copy(b[32:36], "0001")
		// Version descriptors: SAM-5, SPC-4, SBC-3, iSCSI.
		for i, v := range []uint16{0x00a0, 0x0460, 0x04c0, 0x0960} {
			binary.BigEndian.PutUint16(b[58+2*i:], v)
		}
		return alloc(b, allocLen)
	}
	var page []byte
	switch cdb[2] {
	case 0x00: // supported pages
		page = []byte{0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2}
	case 0x80: // unit serial number
		page = []byte(l.serial())
	case 0x83: // device identification
		naa := append([]byte{0x01, 0x03, 0x00, 0x08}, l.id[:]...)
		name := []byte(l.identity())
		t10 := append([]byte{0x02, 0x01, 0x00, byte(8 + len(name))}, []byte("FERRY   ")...)
		t10 = append(t10, name...)
		page = append(naa, t10...)
	case 0xb0: // block limits
		page = make([]byte, 60)
		page[1] = maxCompareWriteBlock                              // maximum compare and write length
		binary.BigEndian.PutUint16(page[2:], 8)                     // optimal transfer granularity: 4 KiB
		binary.BigEndian.PutUint32(page[4:], maxTransfer/blockSize) // maximum transfer length
		binary.BigEndian.PutUint32(page[8:], 2048)                  // optimal transfer length: 1 MiB
		binary.BigEndian.PutUint32(page[16:], 0xffffffff)           // maximum unmap LBA count
		binary.BigEndian.PutUint32(page[20:], 256)                  // maximum unmap block descriptors
		binary.BigEndian.PutUint32(page[24:], 8)                    // optimal unmap granularity
		binary.BigEndian.PutUint64(page[32:], 0xffffffff)           // maximum write same length
	case 0xb1: // block device characteristics
		page = make([]byte, 60)
		binary.BigEndian.PutUint16(page[0:], 1) // non-rotating
	case 0xb2: // logical block provisioning
		page = make([]byte, 4)
		page[1] = 0x80 | 0x40 | 0x20 | 0x04 // LBPU, LBPWS, LBPWS10, LBPRZ
		page[2] = 0x02                      // thin provisioned
	default:
		return check(senseInvalidField)
	}
	b := make([]byte, 4+len(page))
	b[1] = cdb[2]
	binary.BigEndian.PutUint16(b[2:], uint16(len(page)))
	copy(b[4:], page)
	return alloc(b, allocLen)
}

func padRight(s string, n int) string {
	for len(s) < n {
		s += " "
	}
	return s[:n]
}

// identity is what the LU's identifiers derive from: the volume's ID, so
// a volume keeps them when it moves between gateways and two volumes of
// one name on two gateways differ; the name for devices without an ID.
func (l *lu) identity() string {
	if l.att.ID != "" {
		return l.att.ID
	}
	return l.att.Name
}

func (l *lu) serial() string {
	const hex = "0123456789abcdef"
	b := make([]byte, 16)
	for i, x := range l.id {
		b[2*i], b[2*i+1] = hex[x>>4], hex[x&15]
	}
	return string(b)
}

func (l *lu) readCapacity16(cdb []byte) result {
	b := make([]byte, 32)
	binary.BigEndian.PutUint64(b, l.blocks()-1)
	binary.BigEndian.PutUint32(b[8:], blockSize)
	b[13] = 3           // 8 logical blocks per physical block (4 KiB)
	b[14] = 0x80 | 0x40 // LBPME, LBPRZ
	return alloc(b, int(binary.BigEndian.Uint32(cdb[10:])))
}

func (l *lu) reportLUNs(cdb []byte) result {
	b := make([]byte, 16)
	binary.BigEndian.PutUint32(b, 8)
	return alloc(b, int(binary.BigEndian.Uint32(cdb[6:])))
}

// modeSense returns the caching (write cache on) and control pages.
func (l *lu) modeSense(cdb []byte) result {
	ten := cdb[0] == byte(api.MODE_SENSE_10)
	page := cdb[2] & 0x3f
	var pages []byte
	caching := make([]byte, 20)
	caching[0], caching[1], caching[2] = 0x08, 18, 0x04 // WCE
	control := make([]byte, 12)
	control[0], control[1] = 0x0a, 10
	switch page {
	case 0x08:
		pages = caching
	case 0x0a:
		pages = control
	case 0x3f:
		pages = append(caching, control...)
	default:
		return check(senseInvalidField)
	}
	var b []byte
	if ten {
		b = make([]byte, 8, 8+len(pages))
		binary.BigEndian.PutUint16(b, uint16(6+len(pages)))
		b[3] = 0x10 // DPOFUA
		b = append(b, pages...)
		return alloc(b, int(binary.BigEndian.Uint16(cdb[7:])))
	}
	b = make([]byte, 4, 4+len(pages))
	b[0] = byte(3 + len(pages))
	b[2] = 0x10 // DPOFUA
	b = append(b, pages...)
	return alloc(b, int(cdb[4]))
}

func (l *lu) unmap(ctx context.Context, cdb []byte, data []byte) result {
	if len(data) < 8 {
		return result{}
	}
	n := int(binary.BigEndian.Uint16(data[2:]))
	descs := data[8:]
	if n > len(descs) {
		return check(senseInvalidField)
	}
	for i := 0; i+16 <= n; i += 16 {
		lba := binary.BigEndian.Uint64(descs[i:])
		cnt := binary.BigEndian.Uint32(descs[i+8:])
		if !l.inRange(lba, cnt) {
			return check(senseLBARange)
		}
		if cnt == 0 {
			continue
		}
		if err := l.dev.Trim(ctx, int64(lba)*blockSize, int64(cnt)*blockSize); err != nil {
			return ioErr(err, true)
		}
	}
	return result{}
}

func (l *lu) writeSame(ctx context.Context, cdb []byte, data []byte, edtl int) result {
	lba, n, _ := rw(cdb)
	if n == 0 {
		n = uint32(l.blocks() - min(lba, l.blocks()))
	}
	if !l.inRange(lba, n) {
		return check(senseLBARange)
	}
	ndob := cdb[0] == byte(api.WRITE_SAME_16) && cdb[1]&0x01 != 0 // no data-out buffer: zeroes
	if ndob != (edtl == 0) || !ndob && edtl != blockSize {
		return check(senseInvalidField)
	}
	if ndob {
		data = make([]byte, blockSize)
	}
	off, length := int64(lba)*blockSize, int64(n)*blockSize
	if cdb[1]&0x08 != 0 {
		// UNMAP: deallocate, whatever the block says; deallocated
		// blocks read as zeroes (LBPRZ).
		if err := l.dev.WriteZeroes(ctx, off, length, true); err != nil {
			return ioErr(err, true)
		}
		return result{}
	}
	if len(data) < blockSize {
		return check(senseInvalidField)
	}
	block := data[:blockSize]
	zero := true
	for _, x := range block {
		if x != 0 {
			zero = false
			break
		}
	}
	if zero {
		if err := l.dev.WriteZeroes(ctx, off, length, false); err != nil {
			return ioErr(err, true)
		}
		return result{}
	}
	const batch = 1 << 20
	buf := make([]byte, min(length, batch))
	for i := 0; i < len(buf); i += blockSize {
		copy(buf[i:], block)
	}
	for length > 0 {
		k := min(length, int64(len(buf)))
		if err := l.dev.WriteAt(ctx, buf[:k], off); err != nil {
			return ioErr(err, true)
		}
		off, length = off+k, length-k
	}
	return result{}
}

// getLBAStatus reports mapped and deallocated runs from the volume's
// allocation map, starting at the CDB's LBA.
func (l *lu) getLBAStatus(ctx context.Context, cdb []byte) result {
	lba := binary.BigEndian.Uint64(cdb[2:])
	allocLen := int(binary.BigEndian.Uint32(cdb[10:]))
	if lba >= l.blocks() {
		return check(senseLBARange)
	}
	maxDesc := max((allocLen-8)/16, 1)
	off := int64(lba) * blockSize
	ext, err := l.dev.Extents(ctx, off, min(l.dev.Size()-off, 1<<30))
	if err != nil {
		return ioErr(err, false)
	}
	b := make([]byte, 8)
	for _, e := range ext {
		if (len(b)-8)/16 == maxDesc {
			break
		}
		d := make([]byte, 16)
		start := uint64(e.Offset) / blockSize
		n := uint64(e.Offset+e.Length) / blockSize
		start = max(start, lba) // the first extent may begin before lba
		n -= min(n, start)
		if n == 0 {
			continue
		}
		binary.BigEndian.PutUint64(d, start)
		binary.BigEndian.PutUint32(d[8:], uint32(min(n, 0xffffffff)))
		if e.Flags&device.ExtentHole != 0 {
			d[12] = 1 // deallocated
		}
		// Merge with the previous descriptor when the state matches.
		if len(b) > 8 {
			prev := b[len(b)-16:]
			if prev[12] == d[12] && binary.BigEndian.Uint64(prev)+uint64(binary.BigEndian.Uint32(prev[8:])) == start &&
				uint64(binary.BigEndian.Uint32(prev[8:]))+n <= 0xffffffff {
				binary.BigEndian.PutUint32(prev[8:], binary.BigEndian.Uint32(prev[8:])+uint32(n))
				continue
			}
		}
		b = append(b, d...)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return alloc(b, allocLen)
}
