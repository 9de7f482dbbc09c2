package nbdnl

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
)

// nla builds one netlink attribute by hand from struct nlattr
// (u16 nla_len, u16 nla_type, payload padded to 4 bytes), in host order.
func nla(typ uint16, payload []byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(payload)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

const nested = 0x8000 // NLA_F_NESTED

func u64(v uint64) []byte { return binary.NativeEndian.AppendUint64(nil, v) }
func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// The attribute numbers are the kernel's: include/uapi/linux/nbd-netlink.h
// numbers NBD_ATTR_* from UNSPEC = 0 in this order.
func TestAttributeNumbers(t *testing.T) {
	got := []int{AttrIndex, AttrSizeBytes, AttrBlockSizeBytes, AttrTimeout, AttrServerFlags, AttrClientFlags, AttrSockets, AttrDeadConnTimeout, AttrDeviceList, AttrBackendIdentifier}
	for i, v := range got {
		if v != i+1 {
			t.Errorf("attribute %d has number %d, want %d", i, v, i+1)
		}
	}
	cmds := []int{CmdConnect, CmdDisconnect, CmdReconfigure, CmdLinkDead, CmdStatus}
	for i, v := range cmds {
		if v != i+1 {
			t.Errorf("command %d has number %d, want %d", i, v, i+1)
		}
	}
}

func TestEncodeConnect(t *testing.T) {
	b, err := EncodeConnect(Config{
		Index:           -1,
		Size:            1 << 30,
		BlockSize:       4096,
		ServerFlags:     FlagHasFlags | FlagSendFlush | FlagSendTrim,
		Timeout:         30 * time.Second,
		DeadConnTimeout: 1500 * time.Millisecond, // rounds up to 2 s
		Backend:         "ferry:v1",
		Sockets:         []int{7},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := cat(
		nla(2, u64(1<<30)),
		nla(3, u64(4096)),
		nla(5, u64(0x25)),
		nla(4, u64(30)),
		nla(8, u64(2)),
		nla(10, []byte("ferry:v1\x00")),
		nla(7|nested, nla(1|nested, nla(1, u32(7)))),
	)
	if !bytes.Equal(b, want) {
		t.Fatalf("connect attributes\n got %x\nwant %x", b, want)
	}
	// With an index, it comes first; no backend, timeouts or client
	// flags when unset.
	b, err = EncodeConnect(Config{Index: 3, Size: 512, ServerFlags: FlagHasFlags | FlagReadOnly, Sockets: []int{9, 10}})
	if err != nil {
		t.Fatal(err)
	}
	want = cat(
		nla(1, u32(3)),
		nla(2, u64(512)),
		nla(5, u64(3)),
		nla(7|nested, cat(nla(1|nested, nla(1, u32(9))), nla(1|nested, nla(1, u32(10))))),
	)
	if !bytes.Equal(b, want) {
		t.Fatalf("connect attributes\n got %x\nwant %x", b, want)
	}
	if _, err := EncodeConnect(Config{Index: -1, Size: 512}); err == nil {
		t.Error("a connect without a socket was encoded")
	}
	if _, err := EncodeConnect(Config{Index: -1, Sockets: []int{3}}); err == nil {
		t.Error("a connect without a size was encoded")
	}
}

func TestEncodeReconfigureDisconnectStatus(t *testing.T) {
	b, err := EncodeReconfigure(5, "", 11)
	if err != nil {
		t.Fatal(err)
	}
	if want := cat(nla(1, u32(5)), nla(7|nested, nla(1|nested, nla(1, u32(11))))); !bytes.Equal(b, want) {
		t.Fatalf("reconfigure\n got %x\nwant %x", b, want)
	}
	// A device connected with a backend identifier needs it repeated.
	b, err = EncodeReconfigure(5, "ferry:v", 11)
	if err != nil {
		t.Fatal(err)
	}
	if want := cat(nla(1, u32(5)), nla(10, []byte("ferry:v\x00")), nla(7|nested, nla(1|nested, nla(1, u32(11))))); !bytes.Equal(b, want) {
		t.Fatalf("reconfigure with backend\n got %x\nwant %x", b, want)
	}
	b, _ = EncodeIndex(12)
	if want := nla(1, u32(12)); !bytes.Equal(b, want) {
		t.Fatalf("index\n got %x\nwant %x", b, want)
	}
	b, _ = EncodeIndex(-1)
	if len(b) != 0 {
		t.Fatalf("status of all devices: got %x, want nothing", b)
	}
}

func TestDecodeIndex(t *testing.T) {
	i, err := DecodeIndex(nla(1, u32(14)))
	if err != nil || i != 14 {
		t.Fatalf("DecodeIndex = %d, %v; want 14", i, err)
	}
	// Other attributes are skipped.
	i, err = DecodeIndex(cat(nla(2, u64(1)), nla(1, u32(0))))
	if err != nil || i != 0 {
		t.Fatalf("DecodeIndex = %d, %v; want 0", i, err)
	}
	if _, err := DecodeIndex(nla(2, u64(1))); err == nil {
		t.Error("a message without an index decoded")
	}
	if _, err := DecodeIndex(nla(1, []byte{1, 2})); err == nil {
		t.Error("a 2-byte index decoded")
	}
	if _, err := DecodeIndex([]byte{8, 0, 1}); err == nil {
		t.Error("a truncated attribute decoded")
	}
}

// A STATUS reply as nbd_genl_status builds it: NBD_ATTR_DEVICE_LIST
// holding one NBD_DEVICE_ITEM per device with NBD_DEVICE_INDEX (u32) and
// NBD_DEVICE_CONNECTED (u8, padded).
func TestDecodeStatus(t *testing.T) {
	item := func(index uint32, connected byte) []byte {
		return nla(1|nested, cat(nla(1, u32(index)), nla(2, []byte{connected})))
	}
	ds, err := DecodeStatus(nla(9|nested, cat(item(0, 1), item(1, 0), item(7, 1))))
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{{0, true}, {1, false}, {7, true}}
	if len(ds) != len(want) {
		t.Fatalf("got %v, want %v", ds, want)
	}
	for i := range want {
		if ds[i] != want[i] {
			t.Fatalf("got %v, want %v", ds, want)
		}
	}
	// No such device: an empty list.
	ds, err = DecodeStatus(nla(9|nested, nil))
	if err != nil || len(ds) != 0 {
		t.Fatalf("empty list: %v, %v", ds, err)
	}
	if _, err := DecodeStatus(nla(9|nested, nla(1|nested, nla(2, []byte{1})))); err == nil {
		t.Error("a device item without an index decoded")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(nla(9|nested, nla(1|nested, cat(nla(1, u32(3)), nla(2, []byte{1})))))
	f.Add(nla(1, u32(2)))
	f.Fuzz(func(t *testing.T, b []byte) {
		DecodeStatus(b)
		DecodeIndex(b)
	})
}
