package iscsi

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferry-io/ferry/backends/device"
)

// The CRC32C examples of RFC 3720 §B.4, as the bytes on the wire.
func TestDigestVectors(t *testing.T) {
	inc, dec := make([]byte, 32), make([]byte, 32)
	for i := range 32 {
		inc[i], dec[i] = byte(i), byte(31-i)
	}
	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"zeros", make([]byte, 32), "aa36918a"},
		{"ones", bytes.Repeat([]byte{0xff}, 32), "43aba862"},
		{"incrementing", inc, "4e79dd46"},
		{"decrementing", dec, "5cdb3f11"},
	} {
		var d [4]byte
		putDigest(d[:], c.data[:7], c.data[7:]) // in pieces, as a header and its AHS
		if got := hex.EncodeToString(d[:]); got != c.want {
			t.Errorf("%s: digest %s, want %s", c.name, got, c.want)
		}
	}
}

// digestInitiator speaks PDUs with the digests it negotiated; it can
// corrupt the digests it sends.
type digestInitiator struct {
	t     *testing.T
	nc    net.Conn
	br    *bufio.Reader
	dig   digests
	cmdSN uint32
	itt   uint32
}

// login logs in to volume v offering hd and dd as HeaderDigest and
// DataDigest, and returns the target's answers.
func digestLogin(t *testing.T, addr, hd, dd string) (*digestInitiator, string, string) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	di := &digestInitiator{t: t, nc: nc, br: bufio.NewReader(nc)}
	login := loginPDU("iqn.2026-12.io.ferry:digests", "v", 3, [2]string{"HeaderDigest", hd}, [2]string{"DataDigest", dd},
		[2]string{"MaxRecvDataSegmentLength", "8192"}, [2]string{"ImmediateData", "Yes"}, [2]string{"InitialR2T", "Yes"}, [2]string{"FirstBurstLength", "4096"})
	if _, err := nc.Write(login); err != nil {
		t.Fatal(err)
	}
	rsp, err := readPDU(di.br, 1<<20, nil)
	if err != nil || rsp.opcode() != opLoginRsp {
		t.Fatalf("login: %v %+v", err, rsp)
	}
	got := parseKV(rsp.data)
	h, _ := got.get("HeaderDigest")
	d, _ := got.get("DataDigest")
	di.dig = digests{header: h == "CRC32C", data: d == "CRC32C"}
	if rsp.h[36] != 0 {
		return nil, h, d
	}
	return di, h, d
}

// send writes one PDU (header h, data) with the digests in force,
// corrupting the header's or the data's digest when asked.
func (di *digestInitiator) send(h [bhsLen]byte, data []byte, badHeader, badData bool) {
	di.t.Helper()
	h[5], h[6], h[7] = byte(len(data)>>16), byte(len(data)>>8), byte(len(data))
	b := append([]byte(nil), h[:]...)
	if di.dig.header {
		var d [4]byte
		putDigest(d[:], h[:])
		if badHeader {
			d[0] ^= 1
		}
		b = append(b, d[:]...)
	}
	if len(data) > 0 {
		padded := append(append([]byte(nil), data...), zeroPad[:(4-len(data)%4)%4]...)
		b = append(b, padded...)
		if di.dig.data {
			var d [4]byte
			putDigest(d[:], padded)
			if badData {
				d[3] ^= 0x80
			}
			b = append(b, d[:]...)
		}
	}
	if _, err := di.nc.Write(b); err != nil {
		di.t.Fatal(err)
	}
}

// recv reads one PDU, checking the target's digests.
func (di *digestInitiator) recv() (*pdu, error) {
	di.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	p := &pdu{}
	err := p.readFrom(di.br, 1<<20, di.dig, func(n int) []byte { return make([]byte, n) })
	return p, err
}

// cmd sends a READ(10) or WRITE(10) of len(data) bytes (or n for a read)
// at lba with imm bytes of immediate data; it returns the ITT.
func (di *digestInitiator) cmd(write bool, lba uint32, n int, data []byte, imm int, badData bool) uint32 {
	di.itt++
	var h [bhsLen]byte
	h[0] = opSCSICmd
	h[1] = 0x80
	cdb := h[32:48]
	cdb[0] = 0x28
	if write {
		h[1] |= 0x20
		cdb[0] = 0x2a
	} else {
		h[1] |= 0x40
	}
	binary.BigEndian.PutUint32(h[16:], di.itt)
	binary.BigEndian.PutUint32(h[20:], uint32(n))
	binary.BigEndian.PutUint32(h[24:], di.cmdSN)
	di.cmdSN++
	binary.BigEndian.PutUint32(cdb[2:], lba)
	binary.BigEndian.PutUint16(cdb[7:], uint16(n/blockSize))
	di.send(h, data[:imm], false, badData)
	return di.itt
}

// dataOut answers an R2T with the data it asks for, in one Data-Out.
func (di *digestInitiator) dataOut(r2t *pdu, data []byte, badData bool) {
	var h [bhsLen]byte
	h[0] = opDataOut
	h[1] = 0x80
	copy(h[16:24], r2t.h[16:24]) // ITT, TTT
	off, n := r2t.u32(40), r2t.u32(44)
	binary.BigEndian.PutUint32(h[40:], off)
	di.send(h, data[off:off+n], false, badData)
}

func senseOf(p *pdu) string {
	if p.opcode() != opSCSIResp || p.h[3] != statusCheck || len(p.data) < 2+14 {
		return ""
	}
	s := p.data[2:]
	return hex.EncodeToString([]byte{s[2] & 0x0f, s[12], s[13]})
}

// TestDigests: with CRC32C header and data digests negotiated, commands
// work both ways (the target's digests checked on every PDU it sends); a
// Data-Out whose data fails its digest is rejected and fails its command
// with PROTOCOL SERVICE CRC ERROR, writing nothing; a command whose
// immediate data fails is rejected and not run; a header that fails its
// digest ends the connection. What the initiator does not offer is not
// used.
func TestDigests(t *testing.T) {
	dev := newMem(t, 1<<20)
	reg := prometheus.NewRegistry()
	ts := startServer(t, Config{Registerer: reg}, map[string]device.Device{"v": dev})

	for _, c := range []struct{ hd, dd, wantH, wantD string }{
		{"CRC32C,None", "CRC32C,None", "CRC32C", "CRC32C"},
		{"None,CRC32C", "CRC32C", "None", "CRC32C"},
		{"None", "None", "None", "None"},
		{"MD5", "None", "Reject", "None"},
	} {
		_, h, d := digestLogin(t, ts.addr, c.hd, c.dd)
		if h != c.wantH || d != c.wantD {
			t.Errorf("offered HeaderDigest=%s DataDigest=%s: answered %s and %s, want %s and %s", c.hd, c.dd, h, d, c.wantH, c.wantD)
		}
	}

	di, _, _ := digestLogin(t, ts.addr, "CRC32C", "CRC32C")
	if di == nil || !di.dig.header || !di.dig.data {
		t.Fatalf("login with digests: %+v", di)
	}
	pattern := func(seed byte, n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = seed + byte(i*7)
		}
		return b
	}
	// 16 KiB at LBA 0: 4 KiB immediate, the rest through an R2T.
	a := pattern(1, 16<<10)
	itt := di.cmd(true, 0, len(a), a, 4096, false)
	r2t, err := di.recv()
	if err != nil || r2t.opcode() != opR2T || r2t.itt() != itt {
		t.Fatalf("R2T: %v %+v", err, r2t)
	}
	di.dataOut(r2t, a, false)
	if rsp, err := di.recv(); err != nil || rsp.opcode() != opSCSIResp || rsp.h[3] != statusGood {
		t.Fatalf("write with digests: %v %+v", err, rsp)
	}
	readBack := func(lba uint32, n int) []byte {
		t.Helper()
		itt := di.cmd(false, lba, n, nil, 0, false)
		var got []byte
		for {
			p, err := di.recv()
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if p.opcode() != opDataIn || p.itt() != itt {
				t.Fatalf("read: PDU %#x", p.opcode())
			}
			got = append(got, p.data...)
			if p.h[1]&0x01 != 0 { // status in the last Data-In
				return got
			}
		}
	}
	if got := readBack(0, len(a)); !bytes.Equal(got, a) {
		t.Fatal("read back with digests: data differs")
	}

	// A Data-Out whose data digest is wrong: Reject (data digest error),
	// then the command fails; the device keeps what it had.
	b := pattern(9, 16<<10)
	itt = di.cmd(true, 0, len(b), b, 4096, false)
	r2t, err = di.recv()
	if err != nil || r2t.opcode() != opR2T {
		t.Fatalf("R2T: %v %+v", err, r2t)
	}
	di.dataOut(r2t, b, true)
	rej, err := di.recv()
	if err != nil || rej.opcode() != opReject || rej.h[2] != 0x02 {
		t.Fatalf("a Data-Out with a bad data digest: want Reject reason 0x02, got %v %+v", err, rej)
	}
	rsp, err := di.recv()
	if err != nil || rsp.itt() != itt || senseOf(rsp) != "0b4705" {
		t.Fatalf("its command: want CHECK CONDITION 0b/47/05, got %v %#x sense %q", err, rsp.opcode(), senseOf(rsp))
	}
	if got := readBack(0, len(a)); !bytes.Equal(got, a) {
		t.Fatal("the write whose data failed its digest changed the device")
	}

	// A command whose immediate data fails its digest: Reject, not run.
	di.cmd(true, 0, 4096, b, 4096, true)
	rej, err = di.recv()
	if err != nil || rej.opcode() != opReject || rej.h[2] != 0x02 {
		t.Fatalf("immediate data with a bad digest: want Reject reason 0x02, got %v %+v", err, rej)
	}
	if got := readBack(0, len(a)); !bytes.Equal(got, a) {
		t.Fatal("the command whose immediate data failed its digest ran")
	}

	// A header that fails its digest: the connection ends.
	var nop [bhsLen]byte
	nop[0] = 0x40 | opNopOut
	nop[1] = 0x80
	binary.BigEndian.PutUint32(nop[16:], 77)
	binary.BigEndian.PutUint32(nop[20:], reservedTag)
	di.send(nop, nil, true, false)
	if p, err := di.recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after a bad header digest: want the connection closed, got %v %+v", err, p)
	}
	if got := readBack2(t, ts.addr, len(a)); !bytes.Equal(got, a) {
		t.Fatal("device changed")
	}
	for seg, c := range map[string]struct {
		c    prometheus.Counter
		want float64
	}{"header": {ts.s.m.headerDigest, 1}, "data": {ts.s.m.dataDigest, 2}} {
		if n := testutil.ToFloat64(c.c); n != c.want {
			t.Errorf("ferry_iscsi_digest_errors_total{segment=%q} = %v, want %v", seg, n, c.want)
		}
	}
	if n, err := testutil.GatherAndCount(reg, "ferry_iscsi_digest_errors_total"); err != nil || n != 2 {
		t.Errorf("registered digest error series: %d, %v", n, err)
	}
}

// readBack2 reads n bytes at LBA 0 over a new session without digests.
func readBack2(t *testing.T, addr string, n int) []byte {
	t.Helper()
	di, _, _ := digestLogin(t, addr, "None", "None")
	itt := di.cmd(false, 0, n, nil, 0, false)
	var got []byte
	for {
		p, err := di.recv()
		if err != nil || p.itt() != itt {
			t.Fatalf("read: %v", err)
		}
		got = append(got, p.data...)
		if p.h[1]&0x01 != 0 {
			return got
		}
	}
}
