package tier

import (
	"context"
	"slices"
	"sync/atomic"
	"time"
)

// A sequential reader of chunks that are not cached is served from
// memory: each chunk is fetched whole (ahead of the reader, see
// readahead) into a stream buffer, read from there, and let go once read,
// without being written to the cache. A scan of more data than the cache
// holds would otherwise cost a file write per chunk and evict the working
// set for data read once. The chunks it let go are remembered as ghosts
// (like chunks read through, readthrough.go): a chunk read again while
// remembered is fetched into the cache. So every read of a chunk not
// cached follows one admission rule, sequential or random: the first
// read is served from the store, the second caches it.
//
// A stream buffer holds the chunk as the object map described it when
// its fetch began. Any change of that chunk in the map (a new base, an
// overlay, a drop) forgets the buffer (objectMap.changed), and a chunk
// that is cached is always read from the cache, so a buffer never serves
// data older than a write that completed before the read began.
//
// Buffers are bounded per volume (the readahead window) and over all
// volumes (Budget's stream memory); a reader that finds no memory free
// reads through the cache as before.

// stream is one chunk held in memory for a sequential reader.
type stream struct {
	idx   int64
	born  uint64        // order of creation, for letting the oldest go
	ready chan struct{} // closed once data or err is set
	data  []byte        // the chunk; bytes past len(data) read as zeroes
	err   error
	read  atomic.Int64 // bytes served from it
	// refs counts the fetch and the readers copying from data; once the
	// buffer is forgotten (gone) and refs is 0, its memory is returned.
	// Both under d.mu.
	refs int
	gone bool
}

// sequential reports whether a read of chunk idx continues the volume's
// sequential reader; it takes raMu, so d.mu must not be held.
func (d *Device) sequential(idx int64) bool {
	d.raMu.Lock()
	defer d.raMu.Unlock()
	return d.inStreamLocked(idx) && (d.raRun > 0 || d.raRead >= d.chunkSize()/2)
}

// inStreamLocked reports whether chunk idx belongs to the sequential
// stream: reads in flight together arrive a little out of order, so a
// read up to two chunks behind it still does. raMu is held.
func (d *Device) inStreamLocked(idx int64) bool {
	return idx >= d.raNext-2 && idx <= d.raNext
}

// readStream serves a read of bytes [coff, coff+len(buf)) of chunk idx
// from a stream buffer: one that exists already (read ahead), or one made
// now when the read is sequential, the chunk is stored and neither cached
// nor remembered as read lately; seq says whether the read is
// sequential. done says whether it did. A read whose stream's fetch
// failed is left to the caller (perhaps the store came back since that
// fetch started), which fetches for itself by retryBy: FetchTimeout from
// when this read joined the stream, so the read as a whole keeps
// FetchTimeout's bound.
func (d *Device) readStream(ctx context.Context, idx, coff int64, buf []byte, seq bool) (done bool, retryBy time.Time, err error) {
	if d.cfg.Readahead < 0 {
		return false, time.Time{}, nil
	}
	d.mu.Lock()
	if _, cached := d.chunks[idx]; cached {
		d.mu.Unlock()
		return false, time.Time{}, nil
	}
	s := d.streams[idx]
	if s == nil {
		if !seq || !d.objects.stored(idx) || d.missed.has(idx) {
			d.mu.Unlock()
			return false, time.Time{}, nil
		}
		if s = d.startStreamLocked(idx); s == nil {
			d.mu.Unlock()
			return false, time.Time{}, nil // no memory free: read through the cache
		}
		d.cfg.Metrics.miss()
	} else {
		d.cfg.Metrics.hit()
	}
	s.refs++
	d.mu.Unlock()
	joined := time.Now()
	select {
	case <-s.ready:
		if err = s.err; err == nil {
			n := copy(buf, s.data[min(coff, int64(len(s.data))):])
			clear(buf[n:])
		}
	case <-ctx.Done():
		err = ctx.Err()
	}
	d.mu.Lock()
	if err == nil && s.read.Add(int64(len(buf))) >= d.chunkSize() {
		d.letGoLocked(s)
	}
	d.unrefLocked(s)
	d.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		return false, joined.Add(d.cfg.FetchTimeout), nil
	}
	return true, time.Time{}, err
}

// startStreamLocked makes a stream buffer for chunk idx and starts its
// fetch, letting the volume's oldest buffer go when the window is full;
// nil when no memory is free. d.mu is held.
func (d *Device) startStreamLocked(idx int64) *stream {
	if d.closed {
		return nil
	}
	if len(d.streams) >= d.streamWindow() {
		var oldest *stream
		for _, s := range d.streams {
			if oldest == nil || s.born < oldest.born {
				oldest = s
			}
		}
		d.letGoLocked(oldest)
	}
	cs := d.chunkSize()
	if !d.cfg.Budget.takeStream(cs) {
		return nil
	}
	d.streamBorn++
	s := &stream{idx: idx, born: d.streamBorn, ready: make(chan struct{}), refs: 1}
	d.streams[idx] = s
	key, ovs := d.objects.baseKey(idx), slices.Clone(d.objects.overlays[idx])
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		buf := getBuf(cs)
		s.data, s.err = d.fetch(d.bg, idx, key, ovs, buf)
		if s.err == nil {
			d.cfg.Metrics.prefetch()
		} else {
			putBuf(buf, cs)
		}
		if s.err != nil {
			// Forgotten before its readers see it fail, so that a read
			// that starts from now on fetches again rather than joining
			// a failed fetch (a read just after an outage ended failed).
			d.mu.Lock()
			d.forgetStreamLocked(idx, s)
			d.mu.Unlock()
		}
		close(s.ready)
		d.mu.Lock()
		d.unrefLocked(s)
		d.mu.Unlock()
	}()
	return s
}

// streamWindow is how many stream buffers a volume keeps: its readahead
// and the chunks being read.
func (d *Device) streamWindow() int {
	return int(d.readaheadChunks()) + 2
}

// letGoLocked drops stream buffer s after it was read and remembers its
// chunk as read lately; d.mu is held.
func (d *Device) letGoLocked(s *stream) {
	if d.forgetStreamLocked(s.idx, s) {
		d.missed.seen(s.idx, d.ghostCount())
	}
}

// forgetStreamLocked drops stream buffer s of chunk idx (any buffer of
// idx when s is nil); its memory returns once no reader copies from it.
// d.mu is held.
func (d *Device) forgetStreamLocked(idx int64, s *stream) bool {
	cur := d.streams[idx]
	if cur == nil || (s != nil && cur != s) {
		return false
	}
	delete(d.streams, idx)
	cur.gone = true
	if cur.refs == 0 {
		d.freeStreamLocked(cur)
	}
	return true
}

// unrefLocked drops a reference to s; d.mu is held.
func (d *Device) unrefLocked(s *stream) {
	if s.refs--; s.refs == 0 && s.gone {
		d.freeStreamLocked(s)
	}
}

func (d *Device) freeStreamLocked(s *stream) {
	putBuf(s.data, d.chunkSize())
	s.data = nil
	d.cfg.Budget.releaseStream(d.chunkSize())
}

// streamsHeld reports the stream buffers the volume holds (for tests).
func (d *Device) streamsHeld() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.streams)
}
