// Package iscsi is Ferry's iSCSI frontend (RFC 7143): every volume is a
// target with the volume at LUN 0.
//
// The PDU codec, login, session and SCSI command layers are Ferry's own;
// SCSI operation codes and status values come from gotgt's pkg/api. See
// docs/ISCSI.md for why.
package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Opcodes (RFC 7143 §11.1.1).
const (
	opNopOut   = 0x00
	opSCSICmd  = 0x01
	opTaskReq  = 0x02
	opLogin    = 0x03
	opText     = 0x04
	opDataOut  = 0x05
	opLogout   = 0x06
	opSNACK    = 0x10
	opNopIn    = 0x20
	opSCSIResp = 0x21
	opTaskResp = 0x22
	opLoginRsp = 0x23
	opTextResp = 0x24
	opDataIn   = 0x25
	opLogoutRp = 0x26
	opR2T      = 0x31
	opAsync    = 0x32
	opReject   = 0x3f
)

const (
	bhsLen      = 48
	maxAHS      = 255 * 4
	reservedTag = 0xffffffff
)

// pdu is one iSCSI PDU: the basic header segment and its data segment.
// Additional header segments are read and ignored (Ferry negotiates none).
type pdu struct {
	h    [bhsLen]byte
	data []byte
	dig  [4]byte // a digest read
}

func (p *pdu) opcode() byte    { return p.h[0] & 0x3f }
func (p *pdu) immediate() bool { return p.h[0]&0x40 != 0 }
func (p *pdu) final() bool     { return p.h[1]&0x80 != 0 }
func (p *pdu) dataLen() int    { return int(p.h[5])<<16 | int(p.h[6])<<8 | int(p.h[7]) }
func (p *pdu) itt() uint32     { return p.u32(16) }
func (p *pdu) u32(off int) uint32 {
	return binary.BigEndian.Uint32(p.h[off:])
}
func (p *pdu) put32(off int, v uint32) { binary.BigEndian.PutUint32(p.h[off:], v) }
func (p *pdu) setDataLen(n int) {
	p.h[5], p.h[6], p.h[7] = byte(n>>16), byte(n>>8), byte(n)
}

// errPDU is a malformed PDU: the connection is not recoverable (Ferry
// runs at ErrorRecoveryLevel 0) and is closed.
var errPDU = errors.New("malformed PDU")

// digests says which CRC32C digests a connection's PDUs carry (RFC 7143
// §12.1), as negotiated at login; login PDUs themselves carry none. A
// header digest covers the basic and additional header segments, a data
// digest the data segment with its padding; each follows what it covers,
// as the CRC's four bytes least significant first.
type digests struct{ header, data bool }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// putDigest writes the digest of b into d.
func putDigest(d []byte, b ...[]byte) {
	var crc uint32
	for _, x := range b {
		crc = crc32.Update(crc, castagnoli, x)
	}
	binary.LittleEndian.PutUint32(d, crc)
}

// Digest errors (ErrorRecoveryLevel 0): a header that fails its digest
// cannot be trusted to delimit the next PDU, so the connection ends; a
// data segment that fails its digest is discarded and rejected, and the
// PDU read is returned with errDataDigest.
var (
	errHeaderDigest = errors.New("header digest mismatch")
	errDataDigest   = errors.New("data digest mismatch")
)

// readPDU reads one login-phase PDU (no digests) whose data segment may
// be at most maxData bytes. buf, if large enough, is reused for the data
// segment. On a malformed PDU it returns the PDU read so far with the
// error.
func readPDU(r io.Reader, maxData int, buf []byte) (*pdu, error) {
	p := &pdu{}
	err := p.readFrom(r, maxData, digests{}, func(n int) []byte {
		if cap(buf) >= n {
			return buf[:n]
		}
		return make([]byte, n)
	})
	if err != nil && !errors.Is(err, errPDU) {
		return nil, err
	}
	return p, err
}

// readFrom reads one PDU into p, its data segment (of at most maxData
// bytes) into a buffer of the padded length get returns, checking the
// digests dig names.
func (p *pdu) readFrom(r io.Reader, maxData int, dig digests, get func(int) []byte) error {
	if _, err := io.ReadFull(r, p.h[:]); err != nil {
		return err
	}
	var crc uint32
	if dig.header {
		crc = crc32.Update(0, castagnoli, p.h[:])
	}
	if ahs := int(p.h[4]) * 4; ahs > 0 {
		if dig.header {
			a := make([]byte, ahs) // rare: Ferry negotiates nothing that needs one
			if _, err := io.ReadFull(r, a); err != nil {
				return fmt.Errorf("additional header: %w", err)
			}
			crc = crc32.Update(crc, castagnoli, a)
		} else if _, err := io.CopyN(io.Discard, r, int64(ahs)); err != nil {
			return fmt.Errorf("additional header: %w", err)
		}
	}
	if dig.header {
		if _, err := io.ReadFull(r, p.dig[:]); err != nil {
			return fmt.Errorf("header digest: %w", err)
		}
		if binary.LittleEndian.Uint32(p.dig[:]) != crc {
			return errHeaderDigest
		}
	}
	n := p.dataLen()
	if n > maxData {
		return fmt.Errorf("%w: data segment of %d bytes, limit %d", errPDU, n, maxData)
	}
	if n > 0 {
		buf := get((n + 3) &^ 3)
		if _, err := io.ReadFull(r, buf); err != nil {
			return fmt.Errorf("data segment: %w", err)
		}
		p.data = buf[:n]
		if dig.data {
			if _, err := io.ReadFull(r, p.dig[:]); err != nil {
				return fmt.Errorf("data digest: %w", err)
			}
			if binary.LittleEndian.Uint32(p.dig[:]) != crc32.Checksum(buf, castagnoli) {
				return errDataDigest
			}
		}
	}
	return nil
}

var zeroPad [4]byte

// encode appends the PDU's wire form (header, data, padding) to b.
func (p *pdu) encode(b []byte) []byte {
	p.setDataLen(len(p.data))
	b = append(b, p.h[:]...)
	b = append(b, p.data...)
	if pad := (4 - len(p.data)%4) % 4; pad > 0 {
		b = append(b, zeroPad[:pad]...)
	}
	return b
}
