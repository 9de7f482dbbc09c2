package iscsi

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/benchutil"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/gateway/volume"
)

// BenchmarkCommandPath measures the iSCSI command path end to end over a
// loopback socket: an initiator in the same process (MaxRecvDataSegmentLength
// 256 KiB, ImmediateData, InitialR2T as QEMU's libiscsi negotiates them)
// keeps QD READ(10)/WRITE(10) commands in flight against the in-memory
// device and the local pool's file device. A 4k write carries its data
// as immediate data; a 1M write takes an R2T for the rest.
//
// Besides ns/op (one op = one command) it reports allocs/op and B/op
// (client included, which allocates nothing per command) and
// rw-syscalls/op: read(2)/write(2)-family system calls of the whole
// process per command (/proc/self/io), client included.
//
//	go test -run - -bench CommandPath -benchmem -count 6 ./gateway/iscsi | tee new.txt
func BenchmarkCommandPath(b *testing.B) {
	benchutil.Protocol(b, benchCommands)
}

// benchInitiator is a minimal initiator that allocates nothing per
// command.
type benchInitiator struct {
	b     testing.TB
	nc    net.Conn
	br    *bufio.Reader
	cmdSN uint32
	itt   uint32
	h     [bhsLen]byte
	out   []byte
	data  []byte // write data, or where read data lands
	mrdsl int    // the target's MaxRecvDataSegmentLength
}

func (bi *benchInitiator) login(addr string) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		bi.b.Fatal(err)
	}
	bi.b.Cleanup(func() { nc.Close() })
	bi.nc, bi.br = nc, bufio.NewReaderSize(nc, 256<<10)
	login := loginPDU("iqn.2026-12.io.ferry:bench", "v", 2, [2]string{"MaxRecvDataSegmentLength", "262144"}, [2]string{"ImmediateData", "Yes"},
		[2]string{"InitialR2T", "Yes"}, [2]string{"MaxBurstLength", "16776192"}, [2]string{"FirstBurstLength", "262144"})
	if _, err := nc.Write(login); err != nil {
		bi.b.Fatal(err)
	}
	rsp, err := readPDU(bi.br, 1<<20, nil)
	if err != nil || rsp.opcode() != opLoginRsp || rsp.h[36] != 0 {
		bi.b.Fatalf("login: %v %+v", err, rsp)
	}
	bi.mrdsl = 8192
	if v, ok := parseKV(rsp.data).get("MaxRecvDataSegmentLength"); ok {
		bi.mrdsl, _ = strconv.Atoi(v)
	}
}

// send sends a READ(10) or WRITE(10) of len(bi.data) bytes at lba.
func (bi *benchInitiator) send(write bool, lba uint32, n int) {
	bi.itt++
	h := &bi.h
	*h = [bhsLen]byte{}
	h[0] = opSCSICmd
	h[1] = 0x80
	imm := 0
	if write {
		h[1] |= 0x20
		imm = min(n, bi.mrdsl, 262144)
	} else {
		h[1] |= 0x40
	}
	h[5], h[6], h[7] = byte(imm>>16), byte(imm>>8), byte(imm)
	binary.BigEndian.PutUint32(h[16:], bi.itt)
	binary.BigEndian.PutUint32(h[20:], uint32(n))
	binary.BigEndian.PutUint32(h[24:], bi.cmdSN)
	bi.cmdSN++
	cdb := h[32:48]
	cdb[0] = 0x28
	if write {
		cdb[0] = 0x2a
	}
	binary.BigEndian.PutUint32(cdb[2:], lba)
	binary.BigEndian.PutUint16(cdb[7:], uint16(n/blockSize))
	bi.out = append(append(bi.out[:0], h[:]...), bi.data[:imm]...)
	if _, err := bi.nc.Write(bi.out); err != nil {
		bi.b.Fatalf("send: %v", err)
	}
}

// recv reads PDUs until one command's status, answering R2Ts on the way.
func (bi *benchInitiator) recv() {
	for {
		if _, err := io.ReadFull(bi.br, bi.h[:]); err != nil {
			bi.b.Fatalf("recv: %v", err)
		}
		h := &bi.h
		n := int(h[5])<<16 | int(h[6])<<8 | int(h[7])
		switch h[0] & 0x3f {
		case opDataIn:
			off := int(binary.BigEndian.Uint32(h[40:]))
			if _, err := io.ReadFull(bi.br, bi.data[off:off+n]); err != nil {
				bi.b.Fatalf("recv: %v", err)
			}
			if pad := (4 - n%4) % 4; pad > 0 {
				bi.br.Discard(pad)
			}
			if h[1]&0x01 != 0 {
				if h[3] != statusGood {
					bi.b.Fatalf("read status %#x", h[3])
				}
				return
			}
		case opR2T:
			itt, ttt := binary.BigEndian.Uint32(h[16:]), binary.BigEndian.Uint32(h[20:])
			off, want := int(binary.BigEndian.Uint32(h[40:])), int(binary.BigEndian.Uint32(h[44:]))
			for sn := uint32(0); want > 0; sn++ {
				m := min(want, bi.mrdsl)
				var d [bhsLen]byte
				d[0] = opDataOut
				if m == want {
					d[1] = 0x80
				}
				d[5], d[6], d[7] = byte(m>>16), byte(m>>8), byte(m)
				binary.BigEndian.PutUint32(d[16:], itt)
				binary.BigEndian.PutUint32(d[20:], ttt)
				binary.BigEndian.PutUint32(d[36:], sn)
				binary.BigEndian.PutUint32(d[40:], uint32(off))
				bi.out = append(append(bi.out[:0], d[:]...), bi.data[off:off+m]...)
				if _, err := bi.nc.Write(bi.out); err != nil {
					bi.b.Fatalf("data-out: %v", err)
				}
				off, want = off+m, want-m
			}
		case opSCSIResp:
			if h[3] != statusGood {
				bi.b.Fatalf("status %#x", h[3])
			}
			bi.br.Discard((n + 3) &^ 3)
			return
		default:
			bi.b.Fatalf("unexpected PDU opcode %#x", h[0])
		}
	}
}

func benchCommands(b *testing.B, dev device.Device, write bool, bs, qd int) {
	s := NewServer(volume.NewStaticExports(map[string]device.Device{"v": dev}), Config{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), l) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			b.Errorf("shutdown: %v", err)
		}
		<-done
	}()

	bi := &benchInitiator{b: b, data: make([]byte, bs), out: make([]byte, 0, bhsLen+bs)}
	bi.login(l.Addr().String())
	blocks := uint32(benchutil.DevSize / bs)
	rng := rand.New(rand.NewPCG(1, 2))
	lba := func() uint32 { return rng.Uint32N(blocks) * uint32(bs/blockSize) }

	// Warm up pools and goroutines.
	for range qd {
		bi.send(write, lba(), bs)
	}
	for range 4 * qd {
		bi.recv()
		bi.send(write, lba(), bs)
	}
	for range qd {
		bi.recv()
	}

	r0, w0 := benchutil.Syscalls(b)
	b.SetBytes(int64(bs))
	b.ReportAllocs()
	b.ResetTimer()
	inflight := 0
	for i := 0; i < b.N; i++ {
		for inflight >= qd {
			bi.recv()
			inflight--
		}
		bi.send(write, lba(), bs)
		inflight++
	}
	for ; inflight > 0; inflight-- {
		bi.recv()
	}
	b.StopTimer()
	r1, w1 := benchutil.Syscalls(b)
	b.ReportMetric(float64(r1-r0+w1-w0)/float64(b.N), "rw-syscalls/op")
}
