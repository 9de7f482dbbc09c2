package nbd

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// rawClient speaks NBD byte by byte so tests can send what real clients
// refuse to: bad magics, unknown commands, out-of-range requests.
type rawClient struct {
	t          testing.TB
	c          net.Conn
	structured bool
	size       uint64
	flags      uint16
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { c.Close() })
	rc := &rawClient{t: t, c: c}
	var hello [18]byte
	rc.read(hello[:])
	if binary.BigEndian.Uint64(hello[0:8]) != magicNBD || binary.BigEndian.Uint64(hello[8:16]) != magicOption {
		t.Fatalf("bad server greeting % x", hello)
	}
	rc.write(binary.BigEndian.AppendUint32(nil, clientFixed|clientNoZeroes))
	return rc
}

func (rc *rawClient) read(p []byte) {
	rc.t.Helper()
	if _, err := io.ReadFull(rc.c, p); err != nil {
		rc.t.Fatalf("read: %v", err)
	}
}

func (rc *rawClient) write(p []byte) {
	rc.t.Helper()
	if _, err := rc.c.Write(p); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

// option sends an option and returns the replies up to a final one (ACK or
// error): their types and payloads.
func (rc *rawClient) option(opt uint32, data []byte) (types []uint32, payloads [][]byte) {
	rc.t.Helper()
	h := binary.BigEndian.AppendUint64(nil, magicOption)
	h = binary.BigEndian.AppendUint32(h, opt)
	h = binary.BigEndian.AppendUint32(h, uint32(len(data)))
	rc.write(append(h, data...))
	for {
		var rh [20]byte
		rc.read(rh[:])
		if binary.BigEndian.Uint64(rh[0:8]) != magicOptReply || binary.BigEndian.Uint32(rh[8:12]) != opt {
			rc.t.Fatalf("bad option reply header % x", rh)
		}
		typ := binary.BigEndian.Uint32(rh[12:16])
		p := make([]byte, binary.BigEndian.Uint32(rh[16:20]))
		rc.read(p)
		types, payloads = append(types, typ), append(payloads, p)
		if typ == repAck || typ&(1<<31) != 0 {
			return types, payloads
		}
	}
}

func goData(name string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	return binary.BigEndian.AppendUint16(b, 0)
}

func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// attach negotiates structured replies and base:allocation when asked, then
// NBD_OPT_GO for name.
func (rc *rawClient) attach(name string, structured bool) {
	rc.t.Helper()
	if structured {
		if typ, _ := rc.option(optStructuredReply, nil); typ[len(typ)-1] != repAck {
			rc.t.Fatalf("structured reply refused: %v", typ)
		}
		rc.structured = true
		if typ, _ := rc.option(optSetMetaContext, metaData(name, metaContextAllocation)); typ[len(typ)-1] != repAck || len(typ) != 2 {
			rc.t.Fatalf("set meta context: %v", typ)
		}
	}
	typ, p := rc.option(optGo, goData(name))
	if typ[len(typ)-1] != repAck {
		rc.t.Fatalf("NBD_OPT_GO %q: reply %#x %q", name, typ[len(typ)-1], p[len(p)-1])
	}
	for i, ty := range typ {
		if ty == repInfo && binary.BigEndian.Uint16(p[i][0:2]) == infoExport {
			rc.size = binary.BigEndian.Uint64(p[i][2:10])
			rc.flags = binary.BigEndian.Uint16(p[i][10:12])
		}
	}
}

func (rc *rawClient) send(typ, flags uint16, handle, off uint64, length uint32, payload []byte) {
	rc.t.Helper()
	rc.write(append(encodeRequest(request{flags: flags, typ: typ, handle: handle, offset: off, length: length}), payload...))
}

// reply is one reply (for structured replies, the final chunk; data chunks
// are gathered into data).
type reply struct {
	handle uint64
	errno  uint32
	data   []byte
	status []uint32 // block status descriptors (length, flags)...
}

// recv reads one reply. dataLen is the payload length a simple read reply
// carries (0 for everything else).
func (rc *rawClient) recv(dataLen int) reply {
	rc.t.Helper()
	var m [4]byte
	rc.read(m[:])
	switch binary.BigEndian.Uint32(m[:]) {
	case magicReply:
		var h [12]byte
		rc.read(h[:])
		r := reply{errno: binary.BigEndian.Uint32(h[0:4]), handle: binary.BigEndian.Uint64(h[4:12])}
		if r.errno == 0 && dataLen > 0 {
			r.data = make([]byte, dataLen)
			rc.read(r.data)
		}
		return r
	case magicStructured:
		var r reply
		for {
			var h [16]byte
			rc.read(h[:])
			flags := binary.BigEndian.Uint16(h[0:2])
			typ := binary.BigEndian.Uint16(h[2:4])
			r.handle = binary.BigEndian.Uint64(h[4:12])
			p := make([]byte, binary.BigEndian.Uint32(h[12:16]))
			rc.read(p)
			switch typ {
			case replyTypeOffsetData:
				r.data = append(r.data, p[8:]...)
			case replyTypeError:
				r.errno = binary.BigEndian.Uint32(p[0:4])
			case replyTypeBlockStatus:
				for i := 4; i+8 <= len(p); i += 8 {
					r.status = append(r.status, binary.BigEndian.Uint32(p[i:]), binary.BigEndian.Uint32(p[i+4:]))
				}
			case replyTypeNone:
			default:
				rc.t.Fatalf("unexpected structured reply type %d", typ)
			}
			if flags&replyFlagDone != 0 {
				return r
			}
			rc.read(m[:])
		}
	default:
		rc.t.Fatalf("bad reply magic % x", m)
		return reply{}
	}
}

// do sends one request and waits for its reply.
func (rc *rawClient) do(typ, flags uint16, off uint64, length uint32, payload []byte) reply {
	rc.t.Helper()
	rc.send(typ, flags, 42, off, length, payload)
	dl := 0
	if typ == cmdRead {
		dl = int(length)
	}
	r := rc.recv(dl)
	if r.handle != 42 {
		rc.t.Fatalf("reply for handle %d, want 42", r.handle)
	}
	return r
}

// closed reports whether the server closed the connection (within 5s).
func (rc *rawClient) closed() bool {
	rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	_, err := rc.c.Read(b[:])
	return err == io.EOF || (err != nil && !isTimeout(err))
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func (r reply) String() string { return fmt.Sprintf("handle %d errno %d", r.handle, r.errno) }
