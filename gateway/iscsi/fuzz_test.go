package iscsi

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
	"github.com/ferry-io/ferry/gateway/volume"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferry-io/ferry/internal/testutil"
)

// FuzzCDB runs arbitrary CDBs and data against a small LU: every command
// must end in a SCSI status, never a panic, and reads must not return
// more than the volume holds.
func FuzzCDB(f *testing.F) {
	for _, c := range [][]byte{
		read10(0, 1), write10(1, 2), {0x12, 1, 0xb0, 0, 0xff, 0}, {0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0, 0},
		{0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0}, prOutCDB(0, 0), prOutCDB(4, 1), {0x5e, 3, 0, 0, 0, 0, 0, 0xff, 0xff, 0},
		{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, {0x93, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0}, {0xa3, 0x0c, 0x80},
	} {
		f.Add(c, prParams(0, 1, false), uint8(1))
	}
	f.Fuzz(func(t *testing.T, cdb, data []byte, who uint8) {
		if len(cdb) == 0 {
			return
		}
		dev := mem.New(64 << 10)
		u := newTestUnit(dev)
		l := testLU(u, "iqn.f,i,0x0"+string(rune('0'+who%4)))
		c := make([]byte, 16)
		copy(c, cdb)
		r := l.exec(context.Background(), uint64(who%2)*0, c, data, len(data))
		switch r.status {
		case statusGood, statusCheck, statusResConflict:
		default:
			t.Fatalf("status %#x", r.status)
		}
		if len(r.data) > maxTransfer {
			t.Fatalf("%d bytes of data", len(r.data))
		}
	})
}

// loginPDU is a login request going straight to the full feature phase
// (no security stage) for target vol, from initiator, with the ISID's
// last byte isid and the extra operational keys.
func loginPDU(initiator, vol string, isid byte, extra ...[2]string) []byte {
	var p pdu
	p.h[0] = 0x40 | opLogin
	p.h[1] = 0x80 | 1<<2 | 3 // transit, operational → full feature
	copy(p.h[8:14], []byte{0x80, 0, 0, 0, 0, isid})
	keys := append(kv{{"InitiatorName", initiator}, {"TargetName", DefaultBaseIQN + ":" + vol}, {"SessionType", "Normal"}}, extra...)
	p.data = keys.encode()
	return p.encode(nil)
}

// loginStream is a full-feature login to target vol followed by pdus.
func loginStream(vol string, pdus ...[]byte) []byte {
	b := loginPDU("iqn.2026-11.io.ferry:fuzz", vol, 1)
	for _, x := range pdus {
		b = append(b, x...)
	}
	return b
}

func scsiCmdPDU(itt, cmdsn uint32, cdb []byte, edtl int, write bool, data []byte) []byte {
	var p pdu
	p.h[0] = opSCSICmd
	p.h[1] = 0x80
	if write {
		p.h[1] |= 0x20
	} else if edtl > 0 {
		p.h[1] |= 0x40
	}
	p.put32(16, itt)
	p.put32(20, uint32(edtl))
	p.put32(24, cmdsn)
	copy(p.h[32:48], cdb)
	p.data = data
	return p.encode(nil)
}

// FuzzConn feeds arbitrary bytes after (or instead of) a login: the
// connection must never panic and must end when the input ends.
func FuzzConn(f *testing.F) {
	f.Add(loginStream("v",
		scsiCmdPDU(1, 0, read10(0, 1), 512, false, nil),
		scsiCmdPDU(2, 1, write10(0, 1), 512, true, make([]byte, 512)),
		scsiCmdPDU(3, 2, write10(0, 8), 4096, true, nil),
	))
	f.Add(loginStream("v", scsiCmdPDU(1, 0, []byte{0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0}, 1024, true, make([]byte, 1024))))
	f.Add(loginStream("nope"))
	f.Add([]byte("GET / HTTP/1.0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		s := NewServer(volume.NewStaticExports(map[string]device.Device{"v": mem.New(1 << 20)}), Config{LoginTimeout: time.Second})
		testutil.ServeStream(t, func(ctx context.Context, nc net.Conn) { newConn(s, nc).Serve(ctx) }, in)
		if p := promtest.ToFloat64(s.m.panics); p != 0 {
			t.Fatalf("%v panics", p)
		}
	})
}

// digestStream is a login negotiating CRC32C header and data digests
// followed by the PDUs in, each as a flags byte (bit 0: corrupt the header
// digest, bit 1: the data digest), a 48-byte header, a 2-byte data length
// and the data; the harness adds the padding and correct digests (unless
// told to corrupt them), so the fuzzer reaches past the digest checks.
func digestStream(in []byte) []byte {
	b := loginPDU("iqn.2026-11.io.ferry:fuzz", "v", 1, [2]string{"HeaderDigest", "CRC32C"}, [2]string{"DataDigest", "CRC32C"})
	for len(in) >= 1+bhsLen+2 {
		flags, h := in[0], append([]byte(nil), in[1:1+bhsLen]...)
		n := min(int(binary.BigEndian.Uint16(in[1+bhsLen:])), len(in)-(1+bhsLen+2))
		data := in[1+bhsLen+2 : 1+bhsLen+2+n]
		in = in[1+bhsLen+2+n:]
		h[4] = 0 // no AHS
		h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n)
		var d [4]byte
		putDigest(d[:], h)
		d[0] ^= flags & 1
		b = append(append(b, h...), d[:]...)
		if n > 0 {
			padded := append(append([]byte(nil), data...), zeroPad[:(4-n%4)%4]...)
			putDigest(d[:], padded)
			d[1] ^= flags & 2
			b = append(append(b, padded...), d[:]...)
		}
	}
	return b
}

// digestPDU is one PDU in digestStream's input form.
func digestPDU(flags byte, wire []byte) []byte {
	var p pdu
	copy(p.h[:], wire)
	data := wire[bhsLen:min(len(wire), bhsLen+p.dataLen())]
	out := append([]byte{flags}, wire[:bhsLen]...)
	out = binary.BigEndian.AppendUint16(out, uint16(len(data)))
	return append(out, data...)
}

// FuzzConnDigests is FuzzConn for a session with CRC32C digests: PDUs
// with right digests, and wrong ones where the fuzzer says, must never
// make the connection panic.
func FuzzConnDigests(f *testing.F) {
	var dataOut pdu
	dataOut.h[0] = opDataOut
	dataOut.h[1] = 0x80
	dataOut.put32(16, 3)
	dataOut.put32(20, 1)
	dataOut.data = make([]byte, 512)
	f.Add(slices.Concat(
		digestPDU(0, scsiCmdPDU(1, 0, read10(0, 1), 512, false, nil)),
		digestPDU(0, scsiCmdPDU(2, 1, write10(0, 1), 512, true, make([]byte, 512))),
		digestPDU(2, scsiCmdPDU(3, 2, write10(0, 2), 1024, true, make([]byte, 512))),
		digestPDU(2, dataOut.encode(nil)),
		digestPDU(1, scsiCmdPDU(4, 3, read10(0, 1), 512, false, nil)),
	))
	f.Fuzz(func(t *testing.T, in []byte) {
		s := NewServer(volume.NewStaticExports(map[string]device.Device{"v": mem.New(1 << 20)}), Config{LoginTimeout: time.Second})
		testutil.ServeStream(t, func(ctx context.Context, nc net.Conn) { newConn(s, nc).Serve(ctx) }, digestStream(in))
		if p := promtest.ToFloat64(s.m.panics); p != 0 {
			t.Fatalf("%v panics", p)
		}
	})
}

// TestMalformedPDUs sends a real session bad PDUs: an oversize data
// segment, a Data-Out for no command, a command far outside the CmdSN
// window, and an abrupt disconnect mid-transfer; the server answers or
// closes and stays up for the next initiator.
func TestMalformedPDUs(t *testing.T) {
	ts := startServer(t, Config{}, map[string]device.Device{"v": mem.New(1 << 20)})
	before := runtime.NumGoroutine()
	dial := func() net.Conn {
		nc, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		return nc
	}
	readUntil := func(nc net.Conn, op byte) *pdu {
		t.Helper()
		for {
			p, err := readPDU(nc, 1<<20, nil)
			if err != nil {
				t.Fatalf("reading for opcode %#x: %v", op, err)
			}
			if p.opcode() == op {
				return p
			}
		}
	}

	// Oversize data segment: the connection ends.
	nc := dial()
	nc.Write(loginStream("v"))
	readUntil(nc, opLoginRsp)
	var big pdu
	big.h[0] = opSCSICmd
	big.h[1] = 0xa0
	binary.BigEndian.PutUint32(big.h[20:], 1<<20)
	big.h[5], big.h[6], big.h[7] = 0xff, 0xff, 0xff
	nc.Write(big.h[:])
	if _, err := io.ReadAll(nc); err != nil {
		t.Fatalf("oversize segment: connection not closed cleanly: %v", err)
	}
	nc.Close()

	// Stray Data-Out and a command outside the window are dropped; a
	// good command afterwards is answered.
	nc = dial()
	nc.Write(loginStream("v"))
	readUntil(nc, opLoginRsp)
	var stray pdu
	stray.h[0] = opDataOut
	stray.h[1] = 0x80
	stray.put32(16, 99)
	stray.data = make([]byte, 512)
	nc.Write(stray.encode(nil))
	nc.Write(scsiCmdPDU(5, 1000, read10(0, 1), 512, false, nil))
	nc.Write(scsiCmdPDU(6, 0, read10(0, 1), 512, false, nil))
	if p := readUntil(nc, opDataIn); p.itt() != 6 {
		t.Fatalf("answered ITT %d, want 6 (5 was outside the CmdSN window)", p.itt())
	}

	// Disconnect while the target waits for write data.
	nc.Write(scsiCmdPDU(7, 1, write10(0, 64), 64*512, true, nil))
	readUntil(nc, opR2T)
	nc.Close()

	// Many sessions at once, then the server still serves.
	conns := make([]net.Conn, 32)
	for i := range conns {
		conns[i] = dial()
		conns[i].Write(loginStream("v", scsiCmdPDU(1, 0, read10(uint32(i), 1), 512, false, nil)))
	}
	for _, c := range conns {
		readUntil(c, opDataIn)
		c.Close()
	}
	out, err := runTool(t, "iscsi-inq", ts.url("v"))
	if err != nil {
		t.Fatalf("server down after bad input: %v\n%s", err, out)
	}
	if p := promtest.ToFloat64(ts.s.m.panics); p != 0 {
		t.Fatalf("%v panics", p)
	}
	// Every session's goroutines end with it.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines before the sessions, %d after they all ended", before, runtime.NumGoroutine())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
