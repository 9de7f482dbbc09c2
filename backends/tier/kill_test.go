package tier

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/internal/vfs"
)

// TestKill9UnderLoad is the acceptance test TestS3Kill9UnderFlushingLoad
// at unit speed: writers write epochs of random 4 KiB blocks 16 at once,
// each epoch ended by a Flush, while recovery points come every few
// hundred milliseconds (with their garbage collection and reclamation),
// partial chunks upload as log objects and compact, and a small cache
// evicts. The gateway is killed (kill -9, not a power cut: what it wrote
// to its cache stays) at a random moment and restarted, and every epoch
// flushed before the kill must read back, through random concurrent
// reads that race the restart's uploads.
//
// It found two log uploads of one chunk running at once (a chunk's
// uploading mark cleared twice): the one that took no writes dropped the
// chunk from the cache and the other then left its writes out of the
// map, so flushed blocks read back as zeroes after the restart.
// FERRY_KILL_CYCLES sets the number of kills (default 8).
func TestKill9UnderLoad(t *testing.T) {
	cycles := 8
	if s := os.Getenv("FERRY_KILL_CYCLES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("FERRY_KILL_CYCLES=%q", s)
		}
		cycles = n
	}
	seed := uint64(time.Now().UnixNano())
	r := rand.New(rand.NewPCG(seed, 3))
	mem := vfs.NewCrashableMem()
	if err := mem.MkdirAll(crashPool, 0o700); err != nil {
		t.Fatal(err)
	}
	objs := store.NewMem()
	k := openKillTier(t, mem, objs, int64(cycles)*1024*killEpoch)
	var durable []int
	next := 0
	for c := range cycles {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		cr := rand.New(rand.NewPCG(seed, uint64(c)+1<<32))
		go func() { // recovery points, as --checkpoint-interval makes them
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Duration(50+cr.IntN(200)) * time.Millisecond):
				}
				k.d.Checkpoint(context.Background())
			}
		}()
		done := make(chan []int)
		wr := rand.New(rand.NewPCG(seed, uint64(c)))
		go func() {
			var ok []int
			for next < 1024*cycles {
				e := next
				next++
				if !writeKillEpoch(k.d, e, wr) {
					break
				}
				ok = append(ok, e)
			}
			done <- ok
		}()
		time.Sleep(time.Duration(100+r.IntN(900)) * time.Millisecond)
		k.kill()
		fresh := <-done
		durable = append(durable, fresh...)
		close(stop)
		wg.Wait()
		k = openKillTier(t, mem, objs, 0)
		// This cycle's epochs, while the restart uploads what the kill
		// left dirty; every epoch again at the end.
		for _, e := range fresh {
			if err := checkKillEpoch(k.d, e); err != nil {
				t.Fatalf("cycle %d (seed %d): %v", c, seed, err)
			}
		}
	}
	for _, e := range durable {
		if err := checkKillEpoch(k.d, e); err != nil {
			t.Fatalf("at the end (seed %d): %v", seed, err)
		}
	}
	if len(durable) < cycles {
		t.Fatalf("only %d epochs flushed in %d cycles", len(durable), cycles)
	}
	t.Logf("%d kills, %d flushed epochs verified", cycles, len(durable))
}

var errKilled = errors.New("killed: this process is gone")

// killTier is a tiered volume whose gateway can be killed: from the kill
// on, the old process reaches neither its cache directory nor the store,
// while everything it wrote before stays (the page cache outlives a
// killed process; crashTier is the power cut).
type killTier struct {
	d    *Device
	dead *atomic.Bool
	cs   *cutStore
}

func openKillTier(t *testing.T, mem *vfs.MemFS, objs store.Store, size int64) *killTier {
	t.Helper()
	dead := &atomic.Bool{}
	fsys := vfs.Inject(mem, func(vfs.Op, string, bool) error {
		if dead.Load() {
			return errKilled
		}
		return nil
	})
	cs := &cutStore{Store: objs}
	d, err := Open(context.Background(), Config{Dir: crashDir, FS: fsys, Store: cs, Size: size, ChunkSize: testChunk,
		CacheBytes: 16 * testChunk, Uploaders: 4, DirtyWait: 10 * time.Second})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return &killTier{d: d, dead: dead, cs: cs}
}

func (k *killTier) kill() {
	k.dead.Store(true)
	k.cs.cut.Store(true)
	k.d.Close() // what it still does reaches neither the store nor the cache
}

// killEpoch is the bytes of one epoch: 8 chunks.
const killEpoch = 8 * testChunk

// killBlock is the content of 4 KiB block b of epoch e.
func killBlock(e, b int) []byte {
	p := make([]byte, 4096)
	for i := 0; i < len(p); i += 16 {
		binary.LittleEndian.PutUint64(p[i:], uint64(e))
		binary.LittleEndian.PutUint64(p[i+8:], uint64(b)|uint64(i)<<32)
	}
	return p
}

// writeKillEpoch writes epoch e, its blocks in random order 16 at once
// and a Flush after every 64 (fio's --iodepth=16 --fsync=64), and reports
// whether all of it was acknowledged.
func writeKillEpoch(d *Device, e int, r *rand.Rand) bool {
	ctx := context.Background()
	n := killEpoch / 4096
	order := r.Perm(n)
	var failed atomic.Bool
	for at := 0; at < n; at += 64 {
		var wg sync.WaitGroup
		ch := make(chan int)
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for b := range ch {
					if d.WriteAt(ctx, killBlock(e, b), int64(e)*killEpoch+int64(b)*4096) != nil {
						failed.Store(true)
					}
				}
			}()
		}
		for _, b := range order[at:min(n, at+64)] {
			ch <- b
		}
		close(ch)
		wg.Wait()
		if failed.Load() || d.Flush(ctx) != nil {
			return false
		}
	}
	return true
}

// checkKillEpoch reads epoch e back in 4 KiB reads, 8 at once: in
// random order for even epochs, in order for odd ones (fio's verify
// reads a random write pattern back sorted by offset, so readahead
// streams serve it).
func checkKillEpoch(d *Device, e int) error {
	got := make([]byte, killEpoch)
	var wg sync.WaitGroup
	var first atomic.Pointer[error]
	ch := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range ch {
				if err := d.ReadAt(context.Background(), got[b*4096:(b+1)*4096], int64(e)*killEpoch+int64(b)*4096); err != nil {
					first.CompareAndSwap(nil, &err)
				}
			}
		}()
	}
	order := rand.Perm(killEpoch / 4096)
	if e%2 == 1 {
		slices.Sort(order)
	}
	for _, b := range order {
		ch <- b
	}
	close(ch)
	wg.Wait()
	if err := first.Load(); err != nil {
		return fmt.Errorf("epoch %d: %w", e, *err)
	}
	for b := range killEpoch / 4096 {
		if !bytes.Equal(got[b*4096:(b+1)*4096], killBlock(e, b)) {
			off := int64(e)*killEpoch + int64(b)*4096
			return fmt.Errorf("epoch %d: the block at %d (chunk %d, offset %d) was flushed before the kill and reads back as %x…",
				e, off, off/testChunk, off%testChunk, got[b*4096:b*4096+16])
		}
	}
	return nil
}
