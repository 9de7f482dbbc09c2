package tier

import (
	"sync"
)

// Budget is one local cache budget shared by every tiered volume of a
// gateway (`ferry serve --cache-size`). Cached chunks and chunks being
// fetched count against it; when it is full, the least recently used clean
// chunk of any volume is evicted.
//
// It also bounds the memory of stream buffers (stream.go), which hold
// chunks for sequential readers outside the cache.
type Budget struct {
	mu    sync.Mutex
	limit int64
	used  int64
	devs  map[*Device]struct{}

	streamLimit, streamUsed int64 // under mu
}

// DefaultStreamMemory bounds the stream buffers of all volumes.
const DefaultStreamMemory = 64 << 20

// NewBudget returns a budget of limit bytes of cache, with
// DefaultStreamMemory for stream buffers.
func NewBudget(limit int64) *Budget {
	return &Budget{limit: limit, devs: map[*Device]struct{}{}, streamLimit: DefaultStreamMemory}
}

// SetStreamMemory bounds the stream buffers of all volumes to n bytes
// (0 serves sequential readers through the cache).
func (b *Budget) SetStreamMemory(n int64) {
	b.mu.Lock()
	b.streamLimit = n
	b.mu.Unlock()
}

// takeStream takes n bytes of stream memory if they fit.
func (b *Budget) takeStream(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return takeWithin(&b.streamUsed, b.streamLimit, n)
}

func (b *Budget) releaseStream(n int64) {
	b.mu.Lock()
	b.streamUsed -= n
	b.mu.Unlock()
}

// Limit is the budget in bytes.
func (b *Budget) Limit() int64 { return b.limit }

// Used is the bytes cached or being fetched by all volumes.
func (b *Budget) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

func (b *Budget) register(d *Device) {
	b.mu.Lock()
	b.devs[d] = struct{}{}
	b.mu.Unlock()
}

func (b *Budget) unregister(d *Device) {
	b.mu.Lock()
	delete(b.devs, d)
	b.mu.Unlock()
}

// tryTake takes n bytes if they fit.
func (b *Budget) tryTake(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return takeWithin(&b.used, b.limit, n)
}

// takeWithin adds n to *used if the sum stays within limit; b.mu is held.
func takeWithin(used *int64, limit, n int64) bool {
	if *used+n > limit {
		return false
	}
	*used += n
	return true
}

// add takes n bytes even past the limit (chunks found at start-up).
func (b *Budget) add(n int64) {
	b.mu.Lock()
	b.used += n
	b.mu.Unlock()
}

func (b *Budget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

func (b *Budget) devices() []*Device {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]*Device, 0, len(b.devs))
	for d := range b.devs {
		out = append(out, d)
	}
	return out
}

// evictOne evicts the least recently used clean chunk over all volumes.
func (b *Budget) evictOne() bool {
	var best *Device
	var victim *chunk
	var bestUse int64
	for _, d := range b.devices() {
		if c, use := d.oldestClean(); c != nil && (victim == nil || use < bestUse) {
			best, victim, bestUse = d, c, use
		}
	}
	return victim != nil && best.evict(victim)
}

// kickAll wakes every volume's uploaders.
func (b *Budget) kickAll() {
	for _, d := range b.devices() {
		d.kick()
	}
}

// wake tells volumes waiting for room that a chunk became evictable.
func (b *Budget) wake() {
	for _, d := range b.devices() {
		d.mu.Lock()
		if d.pressure > 0 {
			d.space.Broadcast()
		}
		d.mu.Unlock()
	}
}
