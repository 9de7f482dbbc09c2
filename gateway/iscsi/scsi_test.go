package iscsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"sync"
	"testing"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
	"github.com/ferry-io/ferry/gateway/volume"
)

// testLU is a volume's LU as seen by one I_T nexus.
func testLU(u *unit, nexus string) *lu {
	att := volume.NewAttachment("vol", u.dev, nil, func() {})
	return newLU(att, u, nexus)
}

func newTestUnit(dev device.Device) *unit {
	u := newUnit(dev)
	u.vol = "vol"
	u.log = discardLogger()
	return u
}

func run(l *lu, cdb []byte, data []byte) result {
	c := make([]byte, 16)
	copy(c, cdb)
	return l.exec(context.Background(), 0, c, data, len(data))
}

func wantStatus(t *testing.T, what string, r result, status byte, s sense) {
	t.Helper()
	if r.status != status || (status == statusCheck && r.sense != s) {
		t.Fatalf("%s: status %#x sense %+v, want %#x %+v", what, r.status, r.sense, status, s)
	}
}

func read10(lba uint32, n uint16) []byte {
	c := []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint16(c[7:], n)
	return c
}

func write10(lba uint32, n uint16) []byte {
	c := read10(lba, n)
	c[0] = 0x2a
	return c
}

func prOutCDB(sa, typ byte) []byte {
	c := []byte{0x5f, sa, typ, 0, 0, 0, 0, 0, 24, 0}
	return c
}

func prParams(key, saKey uint64, aptpl bool) []byte {
	b := make([]byte, 24)
	binary.BigEndian.PutUint64(b, key)
	binary.BigEndian.PutUint64(b[8:], saKey)
	if aptpl {
		b[20] = 1
	}
	return b
}

func readKeys(t *testing.T, l *lu) (gen uint32, keys []uint64) {
	t.Helper()
	r := run(l, []byte{0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0}, nil)
	wantStatus(t, "READ KEYS", r, statusGood, sense{})
	n := binary.BigEndian.Uint32(r.data[4:])
	for i := 8; i < 8+int(n); i += 8 {
		keys = append(keys, binary.BigEndian.Uint64(r.data[i:]))
	}
	return binary.BigEndian.Uint32(r.data), keys
}

func TestPersistentReservations(t *testing.T) {
	u := newTestUnit(mem.New(1 << 20))
	a, b, c := testLU(u, "iqn.a,i,0x01"), testLU(u, "iqn.b,i,0x02"), testLU(u, "iqn.c,i,0x03")
	block := make([]byte, 512)

	// Register: a wrong current key conflicts; a zero key registers.
	wantStatus(t, "register with a key never registered", run(a, prOutCDB(0, 0), prParams(7, 0xa, false)), statusResConflict, sense{})
	wantStatus(t, "register a", run(a, prOutCDB(0, 0), prParams(0, 0xa, false)), statusGood, sense{})
	wantStatus(t, "register b (ignore existing)", run(b, prOutCDB(6, 0), prParams(0, 0xb, false)), statusGood, sense{})
	if gen, keys := readKeys(t, a); gen != 2 || len(keys) != 2 {
		t.Fatalf("generation %d keys %x, want 2 and two keys", gen, keys)
	}

	// a reserves Write Exclusive: b and c may read, not write.
	wantStatus(t, "reserve with b's key", run(a, prOutCDB(1, prWriteExclusive), prParams(0xb, 0, false)), statusResConflict, sense{})
	wantStatus(t, "reserve WE", run(a, prOutCDB(1, prWriteExclusive), prParams(0xa, 0, false)), statusGood, sense{})
	wantStatus(t, "reserve again, other type", run(b, prOutCDB(1, prExclusiveAccess), prParams(0xb, 0, false)), statusResConflict, sense{})
	wantStatus(t, "holder writes", run(a, write10(0, 1), block), statusGood, sense{})
	wantStatus(t, "registered non-holder reads", run(b, read10(0, 1), nil), statusGood, sense{})
	wantStatus(t, "registered non-holder writes", run(b, write10(0, 1), block), statusResConflict, sense{})
	wantStatus(t, "unregistered writes", run(c, write10(0, 1), block), statusResConflict, sense{})
	wantStatus(t, "unregistered inquiry", run(c, []byte{0x12, 0, 0, 0, 96, 0}, nil), statusGood, sense{})
	r := run(c, []byte{0x5e, 1, 0, 0, 0, 0, 0, 0, 32, 0}, nil)
	if r.status != statusGood || len(r.data) < 24 || binary.BigEndian.Uint64(r.data[8:]) != 0xa || r.data[21] != prWriteExclusive {
		t.Fatalf("READ RESERVATION: %+v", r)
	}

	// Release with the wrong type fails; b preempts a's reservation.
	wantStatus(t, "release wrong type", run(a, prOutCDB(2, prExclusiveAccess), prParams(0xa, 0, false)), statusCheck, senseInvalidRelease)
	wantStatus(t, "preempt a", run(b, prOutCDB(4, prExclusiveAccess), prParams(0xb, 0xa, false)), statusGood, sense{})
	wantStatus(t, "a is told", run(a, []byte{0x00, 0, 0, 0, 0, 0}, nil), statusCheck, senseRegPreempted)
	wantStatus(t, "a, preempted, reads under EA", run(a, read10(0, 1), nil), statusResConflict, sense{})
	wantStatus(t, "b writes", run(b, write10(0, 1), block), statusGood, sense{})
	if _, keys := readKeys(t, b); len(keys) != 1 || keys[0] != 0xb {
		t.Fatalf("keys after preempt %x, want [b]", keys)
	}

	// All-registrants: every registrant is a holder.
	wantStatus(t, "register c", run(c, prOutCDB(0, 0), prParams(0, 0xc, false)), statusGood, sense{})
	wantStatus(t, "release b", run(b, prOutCDB(2, prExclusiveAccess), prParams(0xb, 0, false)), statusGood, sense{})
	wantStatus(t, "reserve EA all registrants", run(b, prOutCDB(1, prExclusiveAccessAR), prParams(0xb, 0, false)), statusGood, sense{})
	wantStatus(t, "other registrant writes", run(c, write10(0, 1), block), statusGood, sense{})
	wantStatus(t, "unregistered a reads", run(a, read10(0, 1), nil), statusResConflict, sense{})

	// CLEAR drops everything and tells the others.
	wantStatus(t, "clear", run(c, prOutCDB(3, 0), prParams(0xc, 0, false)), statusGood, sense{})
	wantStatus(t, "b is told", run(b, []byte{0x00, 0, 0, 0, 0, 0}, nil), statusCheck, senseResPreempted)
	wantStatus(t, "a writes again", run(a, write10(0, 1), block), statusGood, sense{})
	if _, keys := readKeys(t, a); len(keys) != 0 {
		t.Fatalf("keys after clear %x", keys)
	}

	// Bad input.
	wantStatus(t, "service action 9", run(a, []byte{0x5e, 9, 0, 0, 0, 0, 0, 0, 32, 0}, nil), statusCheck, senseInvalidField)
	short := prOutCDB(0, 0)
	short[8] = 10
	wantStatus(t, "short parameter list", run(a, short, prParams(0, 1, false)[:10]), statusCheck, senseParamLength)
	wantStatus(t, "APTPL without a store", run(a, prOutCDB(0, 0), prParams(0, 1, true)), statusCheck, senseInvalidParam)
	wantStatus(t, "reserve bad type", run(a, prOutCDB(1, 2), prParams(0, 0, false)), statusResConflict, sense{})
}

// memPRStore is a ReservationStore in memory; fail makes SavePR fail.
type memPRStore struct {
	mu    sync.Mutex
	state map[string][]byte
	fail  bool
}

func (s *memPRStore) LoadPR(_ context.Context, vol string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state[vol], nil
}

func (s *memPRStore) SavePR(_ context.Context, vol string, b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return errors.New("disk full")
	}
	s.state[vol] = bytes.Clone(b)
	return nil
}

func TestReservationsPersistWithAPTPL(t *testing.T) {
	store := &memPRStore{state: map[string][]byte{}}
	dev := mem.New(1 << 20)
	boot := func() *unit {
		u := newTestUnit(dev)
		u.store = store
		u.load(context.Background())
		return u
	}
	u := boot()
	a := testLU(u, "iqn.a,i,0x01")
	wantStatus(t, "register APTPL", run(a, prOutCDB(0, 0), prParams(0, 0xa, true)), statusGood, sense{})
	wantStatus(t, "reserve", run(a, prOutCDB(1, prWriteExclusive), prParams(0xa, 0, false)), statusGood, sense{})

	// A gateway restart: registrations and the reservation come back.
	u = boot()
	other := testLU(u, "iqn.b,i,0x02")
	wantStatus(t, "write under restored reservation", run(other, write10(0, 1), make([]byte, 512)), statusResConflict, sense{})
	if _, keys := readKeys(t, other); len(keys) != 1 || keys[0] != 0xa {
		t.Fatalf("restored keys %x", keys)
	}
	caps := run(other, []byte{0x5e, 2, 0, 0, 0, 0, 0, 0, 8, 0}, nil)
	if caps.data[2]&0x01 == 0 || caps.data[3]&0x01 == 0 {
		t.Fatalf("REPORT CAPABILITIES PTPL_C/PTPL_A: % x", caps.data)
	}

	// Re-registering without APTPL: the next restart forgets.
	a = testLU(u, "iqn.a,i,0x01")
	wantStatus(t, "re-register without APTPL", run(a, prOutCDB(0, 0), prParams(0xa, 0xaa, false)), statusGood, sense{})
	u = boot()
	if _, keys := readKeys(t, testLU(u, "iqn.a,i,0x01")); len(keys) != 0 {
		t.Fatalf("keys survived a restart without APTPL: %x", keys)
	}

	// A change that cannot be saved fails and is undone.
	store.fail = true
	a = testLU(u, "iqn.a,i,0x01")
	wantStatus(t, "register while the store fails", run(a, prOutCDB(0, 0), prParams(0, 0xa, true)), statusCheck, senseInternal)
	if _, keys := readKeys(t, a); len(keys) != 0 {
		t.Fatalf("failed registration stayed: %x", keys)
	}
}

func TestReserve6(t *testing.T) {
	u := newTestUnit(mem.New(1 << 20))
	a, b := testLU(u, "iqn.a,i,0x01"), testLU(u, "iqn.b,i,0x02")
	wantStatus(t, "reserve a", run(a, []byte{0x16, 0, 0, 0, 0, 0}, nil), statusGood, sense{})
	wantStatus(t, "reserve b", run(b, []byte{0x16, 0, 0, 0, 0, 0}, nil), statusResConflict, sense{})
	wantStatus(t, "b reads", run(b, read10(0, 1), nil), statusResConflict, sense{})
	wantStatus(t, "b inquiry", run(b, []byte{0x12, 0, 0, 0, 96, 0}, nil), statusGood, sense{})
	wantStatus(t, "b releases (no-op)", run(b, []byte{0x17, 0, 0, 0, 0, 0}, nil), statusGood, sense{})
	wantStatus(t, "b still conflicts", run(b, read10(0, 1), nil), statusResConflict, sense{})
	u.logout(a.nexus) // I_T nexus loss releases
	wantStatus(t, "b reads after a's logout", run(b, read10(0, 1), nil), statusGood, sense{})
	wantStatus(t, "b reserves", run(b, []byte{0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil), statusGood, sense{})
	u.reset()
	wantStatus(t, "a reads after LU reset", run(a, read10(0, 1), nil), statusGood, sense{})
}

func caw(lba uint64, cmp, write []byte) ([]byte, []byte) {
	c := make([]byte, 16)
	c[0] = 0x89
	binary.BigEndian.PutUint64(c[2:], lba)
	c[13] = byte(len(cmp) / 512)
	return c, append(bytes.Clone(cmp), write...)
}

func TestCompareAndWrite(t *testing.T) {
	u := newTestUnit(mem.New(1 << 20))
	l := testLU(u, "iqn.a,i,0x01")
	zero, ones := make([]byte, 512), bytes.Repeat([]byte{1}, 512)
	c, d := caw(3, zero, ones)
	wantStatus(t, "CAW match", run(l, c, d), statusGood, sense{})
	c, d = caw(3, zero, ones)
	r := run(l, c, d)
	wantStatus(t, "CAW mismatch", r, statusCheck, senseMiscompare)
	if !r.hasInfo || r.info != 0 {
		t.Fatalf("miscompare offset %d (valid %v), want 0", r.info, r.hasInfo)
	}
	got := make([]byte, 512)
	u.dev.ReadAt(context.Background(), got, 3*512)
	if !bytes.Equal(got, ones) {
		t.Fatal("CAW did not write")
	}
	c, d = caw(3, ones, zero)
	wantStatus(t, "CAW with a short data-out", run(l, c, d[:600]), statusCheck, senseInvalidField)
	c, d = caw(2047, append(bytes.Clone(zero), zero...), append(bytes.Clone(zero), zero...))
	wantStatus(t, "CAW beyond the end", run(l, c, d), statusCheck, senseLBARange)
}

// TestCompareAndWriteAtomic runs compare-and-write increments of a
// counter from many sessions at once, beside plain writes: no increment
// may be lost, which is what VMware's ATS locking relies on.
func TestCompareAndWriteAtomic(t *testing.T) {
	u := newTestUnit(mem.New(1 << 20))
	const workers, each = 8, 200
	var wg sync.WaitGroup
	stop := make(chan struct{})
	go func() { // a writer hammering the neighbouring block
		l := testLU(u, "iqn.w,i,0x09")
		buf := bytes.Repeat([]byte{7}, 512)
		for {
			select {
			case <-stop:
				return
			default:
				run(l, write10(1, 1), buf)
			}
		}
	}()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := testLU(u, "iqn.x,i,0x0"+string(rune('0'+w)))
			for range each {
				for {
					cur := make([]byte, 512)
					u.dev.ReadAt(context.Background(), cur, 0)
					next := bytes.Clone(cur)
					binary.BigEndian.PutUint64(next, binary.BigEndian.Uint64(cur)+1)
					c, d := caw(0, cur, next)
					if run(l, c, d).status == statusGood {
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	got := make([]byte, 512)
	u.dev.ReadAt(context.Background(), got, 0)
	if n := binary.BigEndian.Uint64(got); n != workers*each {
		t.Fatalf("counter %d, want %d: an increment was lost", n, workers*each)
	}
}

func TestCapacityChangedAttention(t *testing.T) {
	dev := mem.New(1 << 20)
	u := newTestUnit(dev)
	l := testLU(u, "iqn.a,i,0x01")
	u.login(l.nexus)
	tur := []byte{0x00, 0, 0, 0, 0, 0}
	wantStatus(t, "TUR", run(l, tur, nil), statusGood, sense{})
	if err := dev.Resize(context.Background(), 2<<20); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, "INQUIRY after resize (no attention)", run(l, []byte{0x12, 0, 0, 0, 96, 0}, nil), statusGood, sense{})
	wantStatus(t, "TUR after resize", run(l, tur, nil), statusCheck, senseCapacityChanged)
	wantStatus(t, "TUR once told", run(l, tur, nil), statusGood, sense{})
	r := run(l, []byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, nil)
	if last := binary.BigEndian.Uint64(r.data); last != 4095 {
		t.Fatalf("last LBA %d after growing to 2 MiB", last)
	}
}

func TestCDBChecks(t *testing.T) {
	u := newTestUnit(mem.New(1 << 20))
	l := testLU(u, "iqn.a,i,0x01")
	rd := read10(0, 1)
	rd[1] = 0x20 // RDPROTECT: no protection information here
	wantStatus(t, "RDPROTECT", run(l, rd, nil), statusCheck, senseInvalidField)
	wantStatus(t, "ORWRITE", run(l, []byte{0x8b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0}, make([]byte, 512)), statusCheck, senseInvalidOpcode)
	wantStatus(t, "unknown opcode", run(l, []byte{0xc7}, nil), statusCheck, senseInvalidOpcode)
	wantStatus(t, "unknown service action", run(l, []byte{0x9e, 0x1f}, nil), statusCheck, senseInvalidField)
	wantStatus(t, "read beyond the end", run(l, read10(2047, 2), nil), statusCheck, senseLBARange)
	// A READ longer than the Block Limits page's maximum transfer length
	// (within the volume) is refused, not buffered.
	big := testLU(newTestUnit(mem.New(1<<40)), "iqn.a,i,0x01")
	rd16 := []byte{0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(rd16[10:], maxTransfer/blockSize+1)
	wantStatus(t, "read past the maximum transfer length", run(big, rd16, nil), statusCheck, senseInvalidField)
	binary.BigEndian.PutUint32(rd16[10:], 8)
	wantStatus(t, "READ(16) of 8 blocks", run(big, rd16, nil), statusGood, sense{})

	// A write with less data than its blocks: whole blocks written, the
	// rest reported as residual.
	data := bytes.Repeat([]byte{9}, 700)
	r := run(l, write10(4, 2), data)
	wantStatus(t, "short write", r, statusGood, sense{})
	if r.want != 1024 {
		t.Fatalf("want %d", r.want)
	}
	got := make([]byte, 1024)
	u.dev.ReadAt(context.Background(), got, 4*512)
	if !bytes.Equal(got[:512], data[:512]) || !bytes.Equal(got[512:], make([]byte, 512)) {
		t.Fatal("short write wrote a partial block")
	}

	// VERIFY with BYTCHK compares.
	v := []byte{0x2f, 0x02, 0, 0, 0, 4, 0, 0, 1, 0}
	wantStatus(t, "VERIFY match", run(l, v, data[:512]), statusGood, sense{})
	other := bytes.Clone(data[:512])
	other[100] = 0
	r = run(l, v, other)
	wantStatus(t, "VERIFY mismatch", r, statusCheck, senseMiscompare)
	if r.info != 100 {
		t.Fatalf("miscompare at %d, want 100", r.info)
	}

	// REPORT SUPPORTED OPERATION CODES agrees with the table.
	r = run(l, []byte{0xa3, 0x0c, 0x01, 0x28, 0, 0, 0, 0, 1, 0, 0, 0}, nil)
	if r.status != statusGood || r.data[1]&7 != 3 || !bytes.Equal(r.data[4:4+10], lookupOp(0x28, 0).usage) {
		t.Fatalf("RSOC READ(10): %+v", r)
	}
	r = run(l, []byte{0xa3, 0x0c, 0x01, 0x8b, 0, 0, 0, 0, 1, 0, 0, 0}, nil)
	if r.status != statusGood || r.data[1]&7 != 1 {
		t.Fatalf("RSOC ORWRITE should say not supported: %+v", r)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
