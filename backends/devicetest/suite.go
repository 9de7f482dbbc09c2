// Package devicetest is the conformance suite for device.Device. Every
// implementation and every decorator runs it from its own _test.go:
//
//	devicetest.Run(t, func(t *testing.T, size int64) device.Device { ... })
//
// The suite checks the contract written in package device: unaligned and
// boundary I/O, out-of-range and zero-length requests, trim and zeroes,
// extents, resize, concurrent disjoint writes, cancelled contexts, writes
// from a pipe (for a device.PipeWriter), views (for a device.Viewer) and, for devices that can simulate
// a crash (Crasher), flush durability.
// CheckFlushDurability and CrashUnderLoad are also callable on their own:
// they return what was lost instead of failing, so a test can prove they
// fail on a device that skips an fsync.
package devicetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"testing"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/internal/splicepipe"
)

// Factory returns a new, empty device of the given size. It registers its
// own cleanup with t.
type Factory func(t *testing.T, size int64) device.Device

// Crasher is implemented by devices that can simulate a power cut: Crash
// returns a device with only the data covered by completed Flush calls
// (unflushed data may or may not survive), itself a Crasher. A device on
// files reopens from a crashed file system (internal/vfs.MemFS) exactly
// as a restart would.
type Crasher interface {
	Crash(t *testing.T) device.Device
}

const mib = 1 << 20

// Run runs the whole suite.
func Run(t *testing.T, newDev Factory) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(*testing.T, Factory)
	}{
		{"FreshReadsZero", testFreshReadsZero},
		{"UnalignedRoundTrip", testUnalignedRoundTrip},
		{"Boundaries", testBoundaries},
		{"OutOfRange", testOutOfRange},
		{"ZeroLength", testZeroLength},
		{"Trim", testTrim},
		{"WriteZeroes", testWriteZeroes},
		{"Extents", testExtents},
		{"Resize", testResize},
		{"ConcurrentDisjointWrites", testConcurrentDisjoint},
		{"CancelledContext", testCancelled},
		{"FlushDurability", testFlushDurability},
		{"Close", testClose},
		{"PipeWriter", testPipeWriter},
		{"Viewer", testViewer},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newDev) })
	}
}

// pattern returns n bytes derived from seed, never all zero.
func pattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32()) | 1
	}
	return b
}

func mustRead(t *testing.T, d device.Device, off int64, n int) []byte {
	t.Helper()
	p := make([]byte, n)
	for i := range p {
		p[i] = 0xAA // prove the device overwrites the buffer
	}
	if err := d.ReadAt(context.Background(), p, off); err != nil {
		t.Fatalf("ReadAt(off=%d, len=%d): %v", off, n, err)
	}
	return p
}

func mustWrite(t *testing.T, d device.Device, p []byte, off int64) {
	t.Helper()
	if err := d.WriteAt(context.Background(), p, off); err != nil {
		t.Fatalf("WriteAt(off=%d, len=%d): %v", off, len(p), err)
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func testFreshReadsZero(t *testing.T, newDev Factory) {
	d := newDev(t, 8*mib)
	if got := d.Size(); got != 8*mib {
		t.Fatalf("Size() = %d, want %d", got, 8*mib)
	}
	if !isZero(mustRead(t, d, 0, 8*mib)) {
		t.Fatal("fresh device does not read as zeroes")
	}
}

func testUnalignedRoundTrip(t *testing.T, newDev Factory) {
	d := newDev(t, 4*mib)
	model := make([]byte, 4*mib)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200; i++ {
		n := 1 + r.IntN(70000)
		off := r.Int64N(int64(len(model) - n))
		p := pattern(uint64(i), n)
		mustWrite(t, d, p, off)
		copy(model[off:], p)
	}
	if got := mustRead(t, d, 0, len(model)); !bytes.Equal(got, model) {
		t.Fatal("content differs from model after unaligned writes")
	}
	for i := 0; i < 100; i++ {
		n := 1 + r.IntN(9000)
		off := r.Int64N(int64(len(model) - n))
		if got := mustRead(t, d, off, n); !bytes.Equal(got, model[off:off+int64(n)]) {
			t.Fatalf("unaligned read off=%d len=%d differs", off, n)
		}
	}
}

func testBoundaries(t *testing.T, newDev Factory) {
	const size = 2 * mib
	d := newDev(t, size)
	first, last := pattern(10, 512), pattern(11, 512)
	mustWrite(t, d, first, 0)
	mustWrite(t, d, last, size-512)
	one := pattern(12, 1)
	mustWrite(t, d, one, size-1)
	copy(last[511:], one)
	if !bytes.Equal(mustRead(t, d, 0, 512), first) {
		t.Fatal("first sector differs")
	}
	if !bytes.Equal(mustRead(t, d, size-512, 512), last) {
		t.Fatal("last sector differs")
	}
	// A write straddling a 4 KiB and 64 KiB boundary.
	span := pattern(13, 8192)
	mustWrite(t, d, span, 65536-4096-100)
	if !bytes.Equal(mustRead(t, d, 65536-4096-100, 8192), span) {
		t.Fatal("straddling write differs")
	}
}

func testOutOfRange(t *testing.T, newDev Factory) {
	const size = mib
	d := newDev(t, size)
	ctx := context.Background()
	mustWrite(t, d, pattern(20, 512), size-512)
	cases := []struct {
		name string
		err  error
	}{
		{"read past end", d.ReadAt(ctx, make([]byte, 1024), size-512)},
		{"read at end", d.ReadAt(ctx, make([]byte, 1), size)},
		{"read negative", d.ReadAt(ctx, make([]byte, 1), -1)},
		{"write past end", d.WriteAt(ctx, make([]byte, 1024), size-512)},
		{"write far", d.WriteAt(ctx, make([]byte, 1), 1<<62)},
		{"trim past end", d.Trim(ctx, size-512, 1024)},
		{"zeroes past end", d.WriteZeroes(ctx, size-512, 1024, false)},
		{"extents past end", func() error { _, err := d.Extents(ctx, 0, size+1); return err }()},
		{"overflowing length", d.Trim(ctx, 512, 1<<63-1)},
	}
	for _, c := range cases {
		if !errors.Is(c.err, device.ErrOutOfRange) {
			t.Errorf("%s: err = %v, want ErrOutOfRange", c.name, c.err)
		}
	}
	// Failed requests have no effect.
	if got := mustRead(t, d, size-512, 512); !bytes.Equal(got, pattern(20, 512)) {
		t.Error("out-of-range requests changed data inside the device")
	}
	if d.Size() != size {
		t.Errorf("size changed to %d", d.Size())
	}
}

func testZeroLength(t *testing.T, newDev Factory) {
	const size = mib
	d := newDev(t, size)
	ctx := context.Background()
	for _, off := range []int64{0, 4096, size} {
		if err := d.ReadAt(ctx, nil, off); err != nil {
			t.Errorf("zero-length read at %d: %v", off, err)
		}
		if err := d.WriteAt(ctx, nil, off); err != nil {
			t.Errorf("zero-length write at %d: %v", off, err)
		}
		if err := d.Trim(ctx, off, 0); err != nil {
			t.Errorf("zero-length trim at %d: %v", off, err)
		}
		if err := d.WriteZeroes(ctx, off, 0, true); err != nil {
			t.Errorf("zero-length zeroes at %d: %v", off, err)
		}
	}
}

func testTrim(t *testing.T, newDev Factory) {
	const size = 4 * mib
	d := newDev(t, size)
	ctx := context.Background()
	data := pattern(30, size)
	mustWrite(t, d, data, 0)
	// Aligned and unaligned trims.
	trims := [][2]int64{{mib, mib}, {100, 1000}, {3*mib - 7, 70000}}
	for _, tr := range trims {
		if err := d.Trim(ctx, tr[0], tr[1]); err != nil {
			t.Fatalf("Trim(%d,%d): %v", tr[0], tr[1], err)
		}
		clear(data[tr[0] : tr[0]+tr[1]])
	}
	if !bytes.Equal(mustRead(t, d, 0, size), data) {
		t.Fatal("content after trim differs (trimmed ranges must read as zero, others unchanged)")
	}
	if st, ok := d.(device.Statter); ok {
		s, err := st.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.Allocated >= size {
			t.Errorf("allocated %d after trimming 1 MiB of %d: space not returned", s.Allocated, size)
		}
	}
}

func testWriteZeroes(t *testing.T, newDev Factory) {
	const size = 4 * mib
	for _, mayTrim := range []bool{false, true} {
		t.Run(fmt.Sprintf("mayTrim=%v", mayTrim), func(t *testing.T) {
			d := newDev(t, size)
			ctx := context.Background()
			data := pattern(40, size)
			mustWrite(t, d, data, 0)
			for _, z := range [][2]int64{{0, mib}, {mib + 3, 5000}, {size - 4096, 4096}} {
				if err := d.WriteZeroes(ctx, z[0], z[1], mayTrim); err != nil {
					t.Fatalf("WriteZeroes(%d,%d): %v", z[0], z[1], err)
				}
				clear(data[z[0] : z[0]+z[1]])
			}
			if !bytes.Equal(mustRead(t, d, 0, size), data) {
				t.Fatal("content after WriteZeroes differs")
			}
			// Zeroing a never-written region of a fresh device also works.
			if err := d.WriteZeroes(ctx, 2*mib, mib, mayTrim); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func checkCover(t *testing.T, ext []device.Extent, off, length int64) {
	t.Helper()
	pos := off
	for i, e := range ext {
		if e.Offset != pos || e.Length <= 0 {
			t.Fatalf("extent %d = %+v, want offset %d and positive length (list %+v)", i, e, pos, ext)
		}
		pos += e.Length
	}
	if pos != off+length {
		t.Fatalf("extents cover [%d,%d), want [%d,%d)", off, pos, off, off+length)
	}
}

func testExtents(t *testing.T, newDev Factory) {
	const size = 8 * mib
	d := newDev(t, size)
	ctx := context.Background()
	mustWrite(t, d, pattern(50, mib), 2*mib)
	mustWrite(t, d, pattern(51, 512), 6*mib+512)
	for _, r := range [][2]int64{{0, size}, {2*mib - 100, 300}, {6 * mib, mib}, {size - 1, 1}} {
		ext, err := d.Extents(ctx, r[0], r[1])
		if err != nil {
			t.Fatalf("Extents(%d,%d): %v", r[0], r[1], err)
		}
		checkCover(t, ext, r[0], r[1])
		// Anything flagged zero or hole must read as zeroes.
		for _, e := range ext {
			if e.Flags&(device.ExtentZero|device.ExtentHole) != 0 {
				if !isZero(mustRead(t, d, e.Offset, int(e.Length))) {
					t.Fatalf("extent %+v flagged zero/hole but holds data", e)
				}
			}
		}
	}
	// The written megabyte must not be reported as a hole.
	ext, err := d.Extents(ctx, 2*mib, mib)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ext {
		if e.Flags&device.ExtentHole != 0 {
			t.Fatalf("written range reported as hole: %+v", ext)
		}
	}
}

func testResize(t *testing.T, newDev Factory) {
	d := newDev(t, 2*mib)
	ctx := context.Background()
	data := pattern(60, 2*mib)
	mustWrite(t, d, data, 0)
	if err := d.Resize(ctx, 4*mib); err != nil {
		t.Fatalf("grow: %v", err)
	}
	if d.Size() != 4*mib {
		t.Fatalf("size after grow = %d", d.Size())
	}
	if !bytes.Equal(mustRead(t, d, 0, 2*mib), data) {
		t.Fatal("data changed by grow")
	}
	if !isZero(mustRead(t, d, 2*mib, 2*mib)) {
		t.Fatal("grown range not zero")
	}
	mustWrite(t, d, pattern(61, 4096), 4*mib-4096)
	if err := d.Resize(ctx, mib+512); err != nil {
		t.Fatalf("shrink: %v", err)
	}
	if err := d.ReadAt(ctx, make([]byte, 1024), mib); !errors.Is(err, device.ErrOutOfRange) {
		t.Fatalf("read past shrunk end: %v", err)
	}
	if err := d.Resize(ctx, 3*mib); err != nil {
		t.Fatalf("regrow: %v", err)
	}
	got := mustRead(t, d, 0, 3*mib)
	if !bytes.Equal(got[:mib+512], data[:mib+512]) {
		t.Fatal("data below shrink point changed")
	}
	if !isZero(got[mib+512:]) {
		t.Fatal("data beyond shrink point survived shrink and regrow")
	}
}

func testConcurrentDisjoint(t *testing.T, newDev Factory) {
	const workers, per, blk = 8, 64, 4096 + 512
	d := newDev(t, workers*per*blk)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				off := int64((i*workers + w) * blk)
				if err := d.WriteAt(ctx, pattern(uint64(w*1000+i), blk), off); err != nil {
					errs <- err
					return
				}
				if i%8 == 0 {
					if err := d.Flush(ctx); err != nil {
						errs <- err
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for w := 0; w < workers; w++ {
		for i := 0; i < per; i++ {
			off := int64((i*workers + w) * blk)
			if !bytes.Equal(mustRead(t, d, off, blk), pattern(uint64(w*1000+i), blk)) {
				t.Fatalf("worker %d block %d differs", w, i)
			}
		}
	}
}

func testCancelled(t *testing.T, newDev Factory) {
	d := newDev(t, mib)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.WriteAt(ctx, pattern(70, 512), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("WriteAt with cancelled ctx: %v, want context.Canceled", err)
	}
	if err := d.ReadAt(ctx, make([]byte, 512), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("ReadAt with cancelled ctx: %v, want context.Canceled", err)
	}
	if !isZero(mustRead(t, d, 0, 512)) {
		t.Error("write with cancelled context took effect")
	}
}

func testFlushDurability(t *testing.T, newDev Factory) {
	d := newDev(t, 4*mib)
	if _, ok := d.(Crasher); !ok {
		t.Skip("device cannot simulate a crash; durability is covered by its kill -9 tests")
	}
	crash := func(d device.Device) (device.Device, error) {
		c, ok := d.(Crasher)
		if !ok {
			return nil, fmt.Errorf("the device Crash returned (%T) cannot crash again", d)
		}
		return c.Crash(t), nil
	}
	if err := CheckFlushDurability(d, crash); err != nil {
		t.Fatal(err)
	}
}

// CheckFlushDurability is the suite's FlushDurability case as a function:
// it writes and trims d, flushes, writes more without flushing, cuts the
// power with crash (which returns the device reopened as a restart
// would, or why it could not be), checks that everything the flush covered
// survived, and does it once more on the reopened device. It returns
// what was lost instead of failing a test, so a test can also prove the
// check has teeth: on a file system that skips an fsync it must fail.
func CheckFlushDurability(d device.Device, crash func(device.Device) (device.Device, error)) error {
	ctx := context.Background()
	flushed := pattern(80, 64*1024)
	if err := d.WriteAt(ctx, flushed, 4096); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err := d.Trim(ctx, mib, mib); err != nil {
		return fmt.Errorf("trim: %w", err)
	}
	if err := d.Flush(ctx); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	if err := d.WriteAt(ctx, pattern(81, 4096), 3*mib); err != nil { // never flushed
		return fmt.Errorf("write: %w", err)
	}
	after, err := crash(d)
	if err != nil {
		return fmt.Errorf("reopen after a crash: %w", err)
	}
	check := func(when string, off int64, want []byte) error {
		got := make([]byte, len(want))
		if err := after.ReadAt(ctx, got, off); err != nil {
			return fmt.Errorf("%s: read at %d: %w", when, off, err)
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("%s: flushed write at %d lost by crash", when, off)
		}
		return nil
	}
	if got := after.Size(); got != 4*mib {
		return fmt.Errorf("size %d after a crash, want %d", got, 4*mib)
	}
	if err := check("first crash", 4096, flushed); err != nil {
		return err
	}
	if err := check("first crash", mib, make([]byte, mib)); err != nil {
		return fmt.Errorf("flushed trim undone: %w", err)
	}
	// The reopened device is as durable as the first.
	second := pattern(82, 8192)
	if err := after.WriteAt(ctx, second, 2*mib+512); err != nil {
		return fmt.Errorf("write after a crash: %w", err)
	}
	if err := after.Flush(ctx); err != nil {
		return fmt.Errorf("flush after a crash: %w", err)
	}
	if after, err = crash(after); err != nil {
		return fmt.Errorf("reopen after a second crash: %w", err)
	}
	if err := check("second crash", 4096, flushed); err != nil {
		return err
	}
	return check("second crash", 2*mib+512, second)
}

func testClose(t *testing.T, newDev Factory) {
	d := newDev(t, mib)
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := d.ReadAt(context.Background(), make([]byte, 512), 0); err == nil {
		t.Error("ReadAt after Close succeeded")
	}
}

// newWith returns a new device with the capability T, or skips the test
// if the device does not have it.
func newWith[T any](t *testing.T, newDev Factory, size int64) (device.Device, T) {
	t.Helper()
	d := newDev(t, size)
	c, ok := d.(T)
	if !ok {
		t.Skipf("not a %v", reflect.TypeFor[T]())
	}
	return d, c
}

// testPipeWriter checks device.PipeWriter where the device has it: writes
// taken from a pipe land as WriteAt's do, and an out-of-range one changes
// nothing.
func testPipeWriter(t *testing.T, newDev Factory) {
	const size = 4 * mib
	d, pw := newWith[device.PipeWriter](t, newDev, size)
	ctx := context.Background()
	model := make([]byte, size)
	r := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 40; i++ {
		n := 1 + r.IntN(300000)
		if i%10 == 0 {
			n = splicepipe.Capacity
		}
		off := r.Int64N(int64(len(model) - n))
		p := pattern(uint64(100+i), n)
		if err := pipeWrite(ctx, pw, p, off); err != nil {
			t.Fatalf("write %d bytes at %d from a pipe: %v", n, off, err)
		}
		copy(model[off:], p)
	}
	if got := mustRead(t, d, 0, size); !bytes.Equal(got, model) {
		t.Fatal("content differs from model after writes from a pipe")
	}
	if err := pipeWrite(ctx, pw, pattern(7, 1024), size-512); !errors.Is(err, device.ErrOutOfRange) {
		t.Errorf("write past the end from a pipe: err = %v, want ErrOutOfRange", err)
	}
	if err := pipeWrite(ctx, pw, nil, size); err != nil {
		t.Errorf("zero-length write at the end from a pipe: %v", err)
	}
	if got := mustRead(t, d, 0, size); !bytes.Equal(got, model) {
		t.Fatal("a refused write from a pipe changed the device")
	}
}

// pipeWrite writes p at off through a pipe.
func pipeWrite(ctx context.Context, pw device.PipeWriter, p []byte, off int64) error {
	pp, err := splicepipe.Get()
	if err != nil {
		return err
	}
	defer pp.Put()
	if _, err := pp.Write(p); err != nil {
		return err
	}
	return pw.WriteFromPipe(ctx, pp, off, len(p))
}

// testViewer checks device.Viewer where the device has it: a view holds
// what ReadAt reads, ranges outside the device are refused, and a view
// stays valid until done, across Resize and Close. A view may be refused
// (ok false) whenever the device chooses; if it refuses every one, there
// is nothing more to check here (the implementation's own tests say when
// it must lend).
func testViewer(t *testing.T, newDev Factory) {
	const size = 4 * mib
	d, v := newWith[device.Viewer](t, newDev, size)
	model := pattern(70, size)
	mustWrite(t, d, model, 0)
	mustRead(t, d, 0, size)
	for _, r := range []struct{ off, n int64 }{{-1, 10}, {0, 0}, {size - 512, 1024}, {size, 1}, {1 << 62, 1}} {
		if b, done, ok := v.View(r.off, int(r.n)); ok {
			done()
			t.Errorf("View(%d, %d) lent %d bytes of a %d-byte device", r.off, r.n, len(b), size)
		}
	}
	lent := 0
	for _, r := range []struct{ off, n int64 }{{0, size}, {4096, mib}, {777, 12345}, {size - 1, 1}} {
		b, done, ok := v.View(r.off, int(r.n))
		if !ok {
			continue
		}
		lent++
		if !bytes.Equal(b, model[r.off:r.off+r.n]) {
			t.Errorf("View(%d, %d) differs from what was written", r.off, r.n)
		}
		done()
	}
	if lent == 0 {
		t.Skip("the device lent no view")
	}
	// A view outlives a resize and a close until done.
	b, done, ok := v.View(mib, mib)
	if !ok {
		t.Fatal("View of data just read refused, after others were lent")
	}
	if err := d.Resize(context.Background(), 2*size); err != nil {
		t.Fatalf("grow: %v", err)
	}
	grown := pattern(71, mib)
	mustWrite(t, d, grown, size+mib)
	mustRead(t, d, size+mib, mib)
	if b2, done2, ok := v.View(size+mib, mib); ok {
		if !bytes.Equal(b2, grown) {
			t.Error("a view past the old end differs from what was written there")
		}
		done2()
	}
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !bytes.Equal(b, model[mib:2*mib]) {
		t.Error("a view taken before Resize and Close changed")
	}
	done()
	if _, _, ok := v.View(0, 4096); ok {
		t.Error("View after Close lent bytes")
	}
}
