package iscsi

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"

	"github.com/gostor/gotgt/pkg/api"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/gateway/volume"
)

const blockSize = 512

var (
	statusGood  = api.SAM_STAT_GOOD
	statusCheck = api.SAM_STAT_CHECK_CONDITION
)

// sense is fixed-format sense data: key, ASC, ASCQ.
type sense struct{ key, asc, ascq byte }

func (s sense) bytes() []byte {
	b := make([]byte, 18)
	b[0] = 0x70
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
)

// result is a command's outcome: data for the initiator (reads), status
// and sense, and for writes the byte count the CDB asked for.
type result struct {
	data   []byte
	status byte
	sense  sense
	want   int
}

func check(s sense) result { return result{status: statusCheck, sense: s} }

// lu is LUN 0 of a volume's target.
type lu struct {
	att *volume.Attachment
	dev device.Device
	id  [8]byte // NAA-style identifier from the volume name
}

func newLU(att *volume.Attachment) *lu {
	l := &lu{att: att, dev: att.Dev}
	h := sha256.Sum256([]byte(att.Name))
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

// rw decodes the LBA, block count and FUA bit of READ/WRITE 6/10/12/16.
func rw(cdb []byte) (lba uint64, n uint32, fua bool) {
	switch cdb[0] {
	case 0x08, 0x0a: // 6-byte
		lba = uint64(cdb[1]&0x1f)<<16 | uint64(cdb[2])<<8 | uint64(cdb[3])
		n = uint32(cdb[4])
		if n == 0 {
			n = 256
		}
	case 0x28, 0x2a, 0x2e, 0x2f: // 10-byte
		lba = uint64(binary.BigEndian.Uint32(cdb[2:]))
		n = uint32(binary.BigEndian.Uint16(cdb[7:]))
		fua = cdb[1]&0x08 != 0
	case 0xa8, 0xaa, 0xae, 0xaf: // 12-byte
		lba = uint64(binary.BigEndian.Uint32(cdb[2:]))
		n = binary.BigEndian.Uint32(cdb[6:])
		fua = cdb[1]&0x08 != 0
	default: // 16-byte
		lba = binary.BigEndian.Uint64(cdb[2:])
		n = binary.BigEndian.Uint32(cdb[10:])
		fua = cdb[1]&0x08 != 0
	}
	return lba, n, fua
}

func (l *lu) inRange(lba uint64, n uint32) bool {
	end := lba + uint64(n)
	return end >= lba && end <= l.blocks()
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
	switch op {
	case api.TEST_UNIT_READY, api.START_STOP, api.ALLOW_MEDIUM_REMOVAL:
		return result{}
	case api.INQUIRY:
		return l.inquiry(cdb)
	case api.REPORT_LUNS:
		return l.reportLUNs(cdb)
	case api.REQUEST_SENSE:
		return result{data: sense{}.bytes()[:min(18, int(cdb[4]))]}
	case api.READ_CAPACITY:
		b := make([]byte, 8)
		last := l.blocks() - 1
		binary.BigEndian.PutUint32(b, uint32(min(last, 0xffffffff)))
		binary.BigEndian.PutUint32(b[4:], blockSize)
		return result{data: b}
	case api.SERVICE_ACTION_IN:
		switch cdb[1] & 0x1f {
		case byte(api.SAI_READ_CAPACITY_16):
			return l.readCapacity16(cdb)
		case byte(api.SAI_GET_LBA_STATUS):
			return l.getLBAStatus(ctx, cdb)
		}
		return check(senseInvalidField)
	case api.MODE_SENSE, api.MODE_SENSE_10:
		return l.modeSense(cdb)
	case api.READ_6, api.READ_10, api.READ_12, api.READ_16:
		lba, n, _ := rw(cdb)
		if !l.inRange(lba, n) {
			return check(senseLBARange)
		}
		b := make([]byte, int(n)*blockSize)
		if err := l.dev.ReadAt(ctx, b, int64(lba)*blockSize); err != nil {
			return ioErr(err, false)
		}
		return result{data: b}
	case api.WRITE_6, api.WRITE_10, api.WRITE_12, api.WRITE_16, api.WRITE_VERIFY, api.WRITE_VERIFY_12, api.WRITE_VERIFY_16:
		lba, n, fua := rw(cdb)
		want := int(n) * blockSize
		if !l.inRange(lba, n) {
			return check(senseLBARange)
		}
		if len(data) < want {
			// Less data than the CDB names: write none of it.
			return result{status: statusCheck, sense: senseInvalidField, want: want}
		}
		if err := l.dev.WriteAt(ctx, data[:want], int64(lba)*blockSize); err != nil {
			return ioErr(err, true)
		}
		if fua || op == api.WRITE_VERIFY || op == api.WRITE_VERIFY_12 || op == api.WRITE_VERIFY_16 {
			if err := l.dev.Flush(ctx); err != nil {
				return ioErr(err, true)
			}
		}
		return result{want: want}
	case api.VERIFY_10, api.VERIFY_16, api.VERIFY_12:
		lba, n, _ := rw(cdb)
		if !l.inRange(lba, n) {
			return check(senseLBARange)
		}
		return result{}
	case api.SYNCHRONIZE_CACHE, api.SYNCHRONIZE_CACHE_16:
		if err := l.dev.Flush(ctx); err != nil {
			return ioErr(err, true)
		}
		return result{}
	case api.UNMAP:
		return l.unmap(ctx, cdb, data)
	case api.WRITE_SAME, api.WRITE_SAME_16:
		return l.writeSame(ctx, cdb, data)
	}
	return check(senseInvalidOpcode)
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
		name := []byte(l.att.Name)
		t10 := append([]byte{0x02, 0x01, 0x00, byte(8 + len(name))}, []byte("FERRY   ")...)
		t10 = append(t10, name...)
		page = append(naa, t10...)
	case 0xb0: // block limits
		page = make([]byte, 60)
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
		b = append(b, pages...)
		return alloc(b, int(binary.BigEndian.Uint16(cdb[7:])))
	}
	b = make([]byte, 4, 4+len(pages))
	b[0] = byte(3 + len(pages))
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

func (l *lu) writeSame(ctx context.Context, cdb []byte, data []byte) result {
	var lba uint64
	var n uint32
	if cdb[0] == byte(api.WRITE_SAME) {
		lba = uint64(binary.BigEndian.Uint32(cdb[2:]))
		n = uint32(binary.BigEndian.Uint16(cdb[7:]))
	} else {
		lba = binary.BigEndian.Uint64(cdb[2:])
		n = binary.BigEndian.Uint32(cdb[10:])
	}
	if n == 0 {
		n = uint32(l.blocks() - min(lba, l.blocks()))
	}
	if !l.inRange(lba, n) {
		return check(senseLBARange)
	}
	unmap := cdb[1]&0x08 != 0
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
	off, length := int64(lba)*blockSize, int64(n)*blockSize
	if zero {
		if err := l.dev.WriteZeroes(ctx, off, length, unmap); err != nil {
			return ioErr(err, true)
		}
		return result{}
	}
	if unmap {
		return check(senseInvalidField)
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
		n := uint64(e.Length) / blockSize
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
