package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/benchutil"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/gateway/volume"
	ftu "github.com/ferry-io/ferry/internal/testutil"
)

// BenchmarkRequestPath measures the NBD request path end to end over a
// loopback socket: a client in the same process keeps QD requests in
// flight (structured replies, as libnbd and fio negotiate them) against
// the in-memory device and the local pool's file device.
//
// Besides ns/op (one op = one request) it reports:
//
//   - allocs/op and B/op (-benchmem): client included, which allocates
//     nothing per request;
//
//   - rw-syscalls/op: read(2)/write(2)-family system calls of the whole
//     process per request (/proc/self/io syscr+syscw), client included.
//     The client makes one write per request and reads through a 256 KiB
//     buffer, so at QD1 it accounts for two of them.
//
//     go test -run - -bench RequestPath -benchmem -count 6 ./gateway/nbd | tee new.txt
//     benchstat old.txt new.txt
func BenchmarkRequestPath(b *testing.B) {
	benchutil.Protocol(b, benchRequests)
}

func benchRequests(b *testing.B, dev device.Device, write bool, bs, qd int) {
	srv := NewServer(volume.NewStaticExports(map[string]device.Device{"v": dev}), Config{})
	l := ftu.Listen(b)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), l) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			b.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			b.Errorf("Serve: %v", err)
		}
	}()

	rc := dialRaw(b, l.Addr().String())
	rc.attach("v", true)
	rc.c.SetDeadline(time.Time{})
	br := bufio.NewReaderSize(rc.c, 256<<10)

	typ := cmdRead
	if write {
		typ = cmdWrite
	}
	blocks := uint64(benchutil.DevSize / bs)
	rng := rand.New(rand.NewPCG(1, 2))
	msg := make([]byte, requestHeaderSize+bs)
	if !write {
		msg = msg[:requestHeaderSize]
	}
	data := make([]byte, bs)
	var hdr [structuredHeaderSize]byte
	var handle uint64
	send := func() {
		handle++
		binary.BigEndian.PutUint32(msg[0:4], magicRequest)
		binary.BigEndian.PutUint16(msg[4:6], 0)
		binary.BigEndian.PutUint16(msg[6:8], typ)
		binary.BigEndian.PutUint64(msg[8:16], handle)
		binary.BigEndian.PutUint64(msg[16:24], rng.Uint64N(blocks)*uint64(bs))
		binary.BigEndian.PutUint32(msg[24:28], uint32(bs))
		if _, err := rc.c.Write(msg); err != nil {
			b.Fatalf("send: %v", err)
		}
	}
	recv := func() {
		// A write's reply is simple (16 bytes); a read's is one
		// structured OFFSET_DATA chunk: 20-byte header, offset, data.
		n := simpleReplyHeaderSize
		if !write {
			n = structuredHeaderSize
		}
		if _, err := io.ReadFull(br, hdr[:n]); err != nil {
			b.Fatalf("recv: %v", err)
		}
		if write {
			if binary.BigEndian.Uint32(hdr[0:4]) != magicReply || binary.BigEndian.Uint32(hdr[4:8]) != 0 {
				b.Fatalf("bad write reply % x", hdr[:n])
			}
			return
		}
		if binary.BigEndian.Uint32(hdr[0:4]) != magicStructured || binary.BigEndian.Uint16(hdr[6:8]) != replyTypeOffsetData ||
			binary.BigEndian.Uint32(hdr[16:20]) != uint32(8+bs) {
			b.Fatalf("bad read reply % x", hdr[:n])
		}
		if _, err := io.ReadFull(br, data[:8]); err != nil {
			b.Fatalf("recv: %v", err)
		}
		if _, err := io.ReadFull(br, data); err != nil {
			b.Fatalf("recv: %v", err)
		}
	}

	// Warm up pools and the connection's workers.
	for range qd {
		send()
	}
	for range 4 * qd {
		recv()
		send()
	}
	for range qd {
		recv()
	}

	r0, w0 := benchutil.Syscalls(b)
	b.SetBytes(int64(bs))
	b.ReportAllocs()
	b.ResetTimer()
	inflight := 0
	for i := 0; i < b.N; i++ {
		for inflight >= qd {
			recv()
			inflight--
		}
		send()
		inflight++
	}
	for ; inflight > 0; inflight-- {
		recv()
	}
	b.StopTimer()
	r1, w1 := benchutil.Syscalls(b)
	b.ReportMetric(float64(r1-r0+w1-w0)/float64(b.N), "rw-syscalls/op")
	rc.send(cmdDisc, 0, 0, 0, 0, nil)
}
