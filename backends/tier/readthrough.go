package tier

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/store"
)

// A random read of a chunk that is not cached reads just its range from
// the store (the base object's range and the overlays that meet it)
// instead of fetching the whole chunk into the cache: a reader scattered
// over more data than the cache holds would otherwise fetch a chunk per
// read and evict what it fetched before reading it again. A chunk read
// through twice within a while, or read by a sequential reader, is
// fetched and cached as before, subject to the admission credit below.
//
// Admission credit. A chunk read through twice lately is admitted (fetched
// whole into the cache) at once while the cache has room for it. When it
// has not, admitting it evicts another chunk, and under random reads over
// more than the cache holds every chunk is read twice lately: admitting
// each would fetch 4 MiB per few KiB read and evict it before it is read
// again (issue #16: 355 bytes downloaded per byte read). So an admission
// that evicts spends a chunk's worth of credit, and only bytes read
// through earn credit, one for one (capped at admitCreditMax chunks).
// Bytes fetched to admit chunks therefore never exceed the bytes read
// through, plus the cap: downloads stay within about twice the bytes read
// however large the working set, while a working set that fits the cache
// still fills it (the cache evicts, then admits, at the pace its misses
// pay for).

// ghosts remembers recently read-through chunks, oldest out first.
type ghosts struct {
	set  map[int64]struct{}
	ring []int64
	next int
}

// has reports whether idx is remembered.
func (g *ghosts) has(idx int64) bool {
	_, ok := g.set[idx]
	return ok
}

// seen records idx and reports whether it was already there.
func (g *ghosts) seen(idx int64, size int) bool {
	if _, ok := g.set[idx]; ok {
		return true
	}
	if g.set == nil || cap(g.ring) != size {
		g.set, g.ring, g.next = map[int64]struct{}{}, make([]int64, 0, size), 0
	}
	if len(g.ring) < size {
		g.ring = append(g.ring, idx)
	} else {
		delete(g.set, g.ring[g.next])
		g.ring[g.next] = idx
		g.next = (g.next + 1) % size
	}
	g.set[idx] = struct{}{}
	return false
}

// readThrough serves a read of bytes [coff, coff+len(buf)) of chunk idx
// straight from the store when the chunk is not cached, is stored, and
// is read neither sequentially (seq) nor for the second time lately.
// done says whether it did.
func (d *Device) readThrough(ctx context.Context, idx, coff int64, buf []byte, seq bool) (done bool, err error) {
	if d.cfg.Readahead < 0 || seq {
		return false, nil // no read-pattern tracking (keep whole-chunk fetches), or a stream
	}
	for attempt := 0; ; attempt++ {
		d.mu.Lock()
		_, cached := d.chunks[idx]
		if cached || !d.objects.stored(idx) || d.missed.seen(idx, d.ghostCount()) && d.admitLocked() {
			// A cache hit (the common case) copies nothing here.
			d.mu.Unlock()
			return false, nil
		}
		key, ovs := d.objects.baseKey(idx), slices.Clone(d.objects.overlays[idx])
		d.mu.Unlock()
		err := d.readRange(ctx, key, ovs, coff, buf)
		if errors.Is(err, store.ErrNotFound) && attempt < 3 {
			continue // replaced and collected since the map was read
		}
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, store.ErrUnavailable) {
				return true, fmt.Errorf("chunk %d: %w (%v)", idx, device.ErrUnavailable, err)
			}
			return true, fmt.Errorf("chunk %d: %w", idx, err)
		}
		d.cfg.Metrics.miss()
		d.mu.Lock()
		d.credit = min(d.credit+int64(len(buf)), admitCreditMax*d.chunkSize())
		d.mu.Unlock()
		return true, nil
	}
}

// admitCreditMax caps the admission credit, in chunks: what a burst of
// admissions may fetch beyond the bytes read through.
const admitCreditMax = 4

// admitLocked reports whether a chunk read through twice lately may now
// be fetched into the cache: at once while the cache has room for it,
// else for a chunk's worth of admission credit; d.mu is held.
func (d *Device) admitLocked() bool {
	cs := d.chunkSize()
	if b := d.cfg.Budget; b.Used()+cs <= b.Limit() {
		return true
	}
	if d.credit >= cs {
		d.credit -= cs
		return true
	}
	return false
}

// ghostCount is how many read-through chunks are remembered: twice what
// the cache holds.
func (d *Device) ghostCount() int {
	return int(max(64, 2*d.cfg.Budget.Limit()/d.chunkSize()))
}

// readRange reads bytes [coff, coff+len(buf)) of a chunk whose base
// object is key ("" for zeroes) under overlays ovs, within FetchTimeout.
func (d *Device) readRange(ctx context.Context, key string, ovs []overlay, coff int64, buf []byte) error {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.FetchTimeout)
	defer cancel()
	return readChunkRange(ctx, d.cfg.Store, key, ovs, coff, buf)
}
