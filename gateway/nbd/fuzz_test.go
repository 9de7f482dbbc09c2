package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	ferrytest "github.com/ferry-io/ferry/internal/testutil"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
	"github.com/ferry-io/ferry/gateway/volume"
)

func FuzzDecodeRequest(f *testing.F) {
	f.Add(encodeRequest(request{typ: cmdRead, handle: 1, offset: 4096, length: 512}))
	f.Add(encodeRequest(request{typ: cmdWrite, flags: cmdFlagFUA, length: 1 << 20}))
	f.Add([]byte{0x25, 0x60, 0x95, 0x13})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRequest(b)
		if err != nil {
			return
		}
		if got := encodeRequest(r); !bytes.Equal(got, b[:requestHeaderSize]) {
			t.Fatalf("round trip: % x != % x", got, b[:requestHeaderSize])
		}
	})
}

// clientStream builds a byte stream a client could send: the handshake,
// options, then transmission requests.
func clientStream(opts [][]byte, reqs ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, clientFixed|clientNoZeroes)
	for _, o := range opts {
		b = append(b, o...)
	}
	for _, r := range reqs {
		b = append(b, r...)
	}
	return b
}

func opt(o uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, o)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// FuzzServer feeds arbitrary client bytes to a connection: it must never
// panic, and must end once the input ends.
func FuzzServer(f *testing.F) {
	f.Add(clientStream([][]byte{opt(optGo, goData("v"))},
		encodeRequest(request{typ: cmdRead, length: 512}),
		append(encodeRequest(request{typ: cmdWrite, offset: 512, length: 4}), "abcd"...),
		encodeRequest(request{typ: cmdFlush}),
		encodeRequest(request{typ: cmdDisc})))
	f.Add(clientStream([][]byte{opt(optStructuredReply, nil), opt(optSetMetaContext, metaData("v", metaContextAllocation)), opt(optGo, goData("v"))},
		encodeRequest(request{typ: cmdBlockStatus, length: 65536}),
		encodeRequest(request{typ: cmdWriteZeroes, flags: cmdFlagNoHole, length: 65536}),
		encodeRequest(request{typ: cmdTrim, offset: 1 << 30, length: 1})))
	f.Add(clientStream([][]byte{opt(optList, nil), opt(optInfo, goData("x")), opt(optListMetaContext, metaData("v", "base:")), opt(optExportName, []byte("v"))},
		encodeRequest(request{typ: 77, flags: 0xffff})))
	f.Add(clientStream([][]byte{opt(optAbort, nil)}))
	f.Fuzz(func(t *testing.T, in []byte) {
		s := NewServer(volume.NewStaticExports(map[string]device.Device{"v": mem.New(1 << 20)}),
			Config{HandshakeTimeout: time.Second, MaxInflightBytes: maxPayload})
		ferrytest.ServeStream(t, func(ctx context.Context, nc net.Conn) { newConn(s, nc).Serve(ctx) }, in)
		if p := testutil.ToFloat64(s.m.panics); p != 0 {
			t.Fatalf("%v panics", p)
		}
	})
}
