package tier

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/store"
)

// TestConcurrentOpsMatchModel runs writers, zeroings, trims and readers
// at once against a small cache while recovery points come every few
// tens of milliseconds: partial chunks upload as log objects and compact,
// clean chunks are evicted and fetched again, sequential reads stream,
// log objects are reclaimed. Each worker owns every eighth chunk and
// checks every read of its chunks against its model at once (what it
// wrote it must read); at the end the volume, reopened with no clean
// copies, and the last recovery point's export equal the model.
//
// The two races fixed on 2026-12-02 are of the kind it looks for: two
// log uploads of one chunk at once (writes vanished when the chunk left
// the cache) and a fetch that cached a chunk zeroed meanwhile.
// FERRY_MODEL_SECONDS sets how long it runs (default 3).
func TestConcurrentOpsMatchModel(t *testing.T) {
	ctx := context.Background()
	secs := 3
	if s := os.Getenv("FERRY_MODEL_SECONDS"); s != "" {
		fmt.Sscan(s, &secs)
	}
	const (
		workers = 8
		chunks  = 128
		size    = chunks * testChunk
	)
	seed := uint64(time.Now().UnixNano())
	s := store.NewMem()
	dir := t.TempDir()
	cfg := Config{Dir: dir, Store: s, Size: size, ChunkSize: testChunk, CacheBytes: 16 * testChunk, Uploaders: 4}
	d, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	model := make([]byte, size)
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(1)
	go func() {
		defer bg.Done()
		r := rand.New(rand.NewPCG(seed, 99))
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(10+r.IntN(60)) * time.Millisecond):
			}
			d.Checkpoint(ctx) // fails now and then with "overlays changed": retried by the next one
		}
	}()
	deadline := time.Now().Add(time.Duration(secs) * time.Second)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- modelWorker(ctx, d, model, w, workers, chunks, rand.New(rand.NewPCG(seed, uint64(w))), deadline)
		}()
	}
	wg.Wait()
	close(stop)
	bg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
	}
	d = checkpointReopen(t, d, cfg)
	got := make([]byte, size)
	if err := d.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, model); i >= 0 {
		t.Fatalf("seed %d: reopened, the volume differs from the model at %d (chunk %d)", seed, i, i/testChunk)
	}
	m, err := LatestManifest(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	img := make(memWriterAt, size)
	if err := Export(ctx, s, m, img); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(img, model); i >= 0 {
		t.Fatalf("seed %d: the last recovery point's export differs from the model at %d (chunk %d)", seed, i, i/testChunk)
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// modelWorker does random operations on chunks w, w+workers, … until
// deadline, keeping model (its chunks' bytes) and checking every read.
func modelWorker(ctx context.Context, d *Device, model []byte, w, workers, chunks int, r *rand.Rand, deadline time.Time) error {
	own := func() int64 { return int64(w+workers*r.IntN(chunks/workers)) * testChunk }
	hist := map[int64][]string{} // the last operations on each chunk, for a failure's message
	note := func(off int64, format string, args ...any) {
		h := append(hist[off/testChunk], fmt.Sprintf(format, args...))
		hist[off/testChunk] = h[max(0, len(h)-12):]
	}
	check := func(what string, off, n int64) error {
		got := make([]byte, n)
		if err := d.ReadAt(ctx, got, off); err != nil {
			return fmt.Errorf("%s read at %d+%d: %w", what, off, n, err)
		}
		if i := firstDiff(got, model[off:off+n]); i >= 0 {
			at := off + int64(i)
			d.mu.Lock()
			idx := at / testChunk
			st := "not cached"
			if c := d.chunks[idx]; c != nil {
				st = fmt.Sprintf("cached dirty=%v full=%v ext=%v", c.dirty, c.full, c.ext)
			}
			_, streaming := d.streams[idx]
			st += fmt.Sprintf(" stream=%v base=%q overlays=%v", streaming, d.objects.baseKey(idx), d.objects.overlays[idx])
			d.mu.Unlock()
			again := make([]byte, 1)
			d.ReadAt(ctx, again, at)
			st += fmt.Sprintf(" again=%#x", again[0])
			return fmt.Errorf("%s read at %d+%d: byte %d (chunk %d, offset %d) is %#x, want %#x; the chunk's last operations: %q; now: %s",
				what, off, n, at, at/testChunk, at%testChunk, got[i], model[at], hist[at/testChunk], st)
		}
		return nil
	}
	for ops := 0; time.Now().Before(deadline); ops++ {
		base := own()
		switch p := r.IntN(100); {
		case p < 40: // a 4 KiB write
			off := base + 4096*r.Int64N(testChunk/4096)
			b := make([]byte, 4096)
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			if err := d.WriteAt(ctx, b, off); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			copy(model[off:], b)
			note(off, "write4k %d %#x", off%testChunk, b[0])
		case p < 50: // a small unaligned write
			n := 1 + r.Int64N(8192)
			off := base + r.Int64N(testChunk-n)
			b := bytes.Repeat([]byte{byte(r.Uint32())}, int(n))
			if err := d.WriteAt(ctx, b, off); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			copy(model[off:], b)
			note(off, "write %d+%d %#x", off%testChunk, n, b[0])
		case p < 54: // the whole chunk
			b := bytes.Repeat([]byte{byte(r.Uint32()) | 1}, testChunk)
			if err := d.WriteAt(ctx, b, base); err != nil {
				return fmt.Errorf("write chunk: %w", err)
			}
			copy(model[base:], b)
			note(base, "write chunk %#x", b[0])
		case p < 58: // zero or trim the whole chunk
			var err error
			if r.IntN(2) == 0 {
				err = d.WriteZeroes(ctx, base, testChunk, true)
			} else {
				err = d.Trim(ctx, base, testChunk)
			}
			if err != nil {
				return fmt.Errorf("zero chunk: %w", err)
			}
			clear(model[base : base+testChunk])
			note(base, "zero chunk")
		case p < 62: // zero part of it
			n := 512 * (1 + r.Int64N(16))
			off := base + 512*r.Int64N((testChunk-n)/512)
			if err := d.WriteZeroes(ctx, off, n, r.IntN(2) == 0); err != nil {
				return fmt.Errorf("zero: %w", err)
			}
			clear(model[off : off+n])
			note(off, "zero %d+%d", off%testChunk, n)
		case p < 64:
			if err := d.Flush(ctx); err != nil {
				return fmt.Errorf("flush: %w", err)
			}
		case p < 90: // a 4 KiB read
			if err := check("4 KiB", base+4096*r.Int64N(testChunk/4096), 4096); err != nil {
				return err
			}
		case p < 95: // the whole chunk, in order, in 16 KiB reads
			for off := base; off < base+testChunk; off += 16384 {
				if err := check("sequential", off, 16384); err != nil {
					return err
				}
			}
		default: // a scan from it over the next chunks (others'): readahead fetches theirs while they change them
			end := min(base+4*testChunk, int64(chunks)*testChunk)
			buf := make([]byte, 16384)
			for off := base; off < end; off += 16384 {
				if off < base+testChunk {
					if err := check("scan", off, 16384); err != nil {
						return err
					}
				} else if err := d.ReadAt(ctx, buf, off); err != nil {
					return fmt.Errorf("scan read at %d: %w", off, err)
				}
			}
		}
	}
	return nil
}
