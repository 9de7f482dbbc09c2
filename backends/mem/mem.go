// Package mem is an in-memory, sparse device.Device for unit tests and for
// crash simulation: Crash returns the device as it would be found after a
// power cut, holding exactly what was covered by a completed Flush.
package mem

import (
	"context"
	"fmt"
	"sync"

	"github.com/ferry-io/ferry/backends/device"
)

const pageSize = 4096

// Device is a sparse in-memory device. Absent pages read as zeroes.
type Device struct {
	mu      sync.RWMutex
	size    int64
	live    map[int64][]byte // page index -> page (nil page never stored)
	durable map[int64][]byte // state as of the last Flush
	dirty   map[int64]bool   // pages changed since the last Flush
	closed  bool
}

var _ device.Device = (*Device)(nil)
var _ device.Statter = (*Device)(nil)

// New returns an empty device of size bytes.
func New(size int64) *Device {
	return &Device{
		size:    size,
		live:    map[int64][]byte{},
		durable: map[int64][]byte{},
		dirty:   map[int64]bool{},
	}
}

func (d *Device) check(ctx context.Context, off, length int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.closed {
		return device.ErrClosed
	}
	return device.CheckRange(d.size, off, length)
}

// Size implements device.Device.
func (d *Device) Size() int64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.size
}

// ReadAt implements device.Device.
func (d *Device) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.check(ctx, off, int64(len(p))); err != nil {
		return fmt.Errorf("mem read: %w", err)
	}
	for len(p) > 0 {
		idx, in := off/pageSize, off%pageSize
		n := min(int64(len(p)), pageSize-in)
		if pg := d.live[idx]; pg != nil {
			copy(p[:n], pg[in:])
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+n
	}
	return nil
}

// WriteAt implements device.Device.
func (d *Device) WriteAt(ctx context.Context, p []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(ctx, off, int64(len(p))); err != nil {
		return fmt.Errorf("mem write: %w", err)
	}
	for len(p) > 0 {
		idx, in := off/pageSize, off%pageSize
		n := min(int64(len(p)), pageSize-in)
		pg := d.live[idx]
		if pg == nil || d.sharedWithDurable(idx) {
			np := make([]byte, pageSize)
			copy(np, pg)
			pg = np
			d.live[idx] = pg
		}
		copy(pg[in:], p[:n])
		d.dirty[idx] = true
		p, off = p[n:], off+n
	}
	return nil
}

// sharedWithDurable reports whether the live page is the same slice as the
// durable one (pages are shared after Flush and copied on write).
func (d *Device) sharedWithDurable(idx int64) bool {
	a, b := d.live[idx], d.durable[idx]
	return a != nil && b != nil && &a[0] == &b[0]
}

// Flush implements device.Device.
func (d *Device) Flush(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(ctx, 0, 0); err != nil {
		return fmt.Errorf("mem flush: %w", err)
	}
	for idx := range d.dirty {
		if pg, ok := d.live[idx]; ok {
			d.durable[idx] = pg
		} else {
			delete(d.durable, idx)
		}
	}
	clear(d.dirty)
	return nil
}

// Trim implements device.Device by dropping whole pages and zeroing the
// partial ones at either end.
func (d *Device) Trim(ctx context.Context, off, length int64) error {
	return d.zero(ctx, off, length, true)
}

// WriteZeroes implements device.Device.
func (d *Device) WriteZeroes(ctx context.Context, off, length int64, mayTrim bool) error {
	return d.zero(ctx, off, length, mayTrim)
}

func (d *Device) zero(ctx context.Context, off, length int64, drop bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(ctx, off, length); err != nil {
		return fmt.Errorf("mem zero: %w", err)
	}
	for length > 0 {
		idx, in := off/pageSize, off%pageSize
		n := min(length, pageSize-in)
		if pg := d.live[idx]; pg != nil {
			switch {
			case n == pageSize && drop:
				delete(d.live, idx)
			default:
				np := make([]byte, pageSize)
				copy(np, pg)
				clear(np[in : in+n])
				d.live[idx] = np
			}
		} else if !drop {
			d.live[idx] = make([]byte, pageSize)
		}
		d.dirty[idx] = true
		off, length = off+n, length-n
	}
	return nil
}

// Extents implements device.Device at page granularity.
func (d *Device) Extents(ctx context.Context, off, length int64) ([]device.Extent, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.check(ctx, off, length); err != nil {
		return nil, fmt.Errorf("mem extents: %w", err)
	}
	var out []device.Extent
	for length > 0 {
		idx, in := off/pageSize, off%pageSize
		n := min(length, pageSize-in)
		var fl device.ExtentFlags
		if d.live[idx] == nil {
			fl = device.ExtentHole | device.ExtentZero
		}
		if k := len(out); k > 0 && out[k-1].Flags == fl {
			out[k-1].Length += n
		} else {
			out = append(out, device.Extent{Offset: off, Length: n, Flags: fl})
		}
		off, length = off+n, length-n
	}
	return out, nil
}

// Resize implements device.Device.
func (d *Device) Resize(ctx context.Context, size int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(ctx, 0, 0); err != nil {
		return fmt.Errorf("mem resize: %w", err)
	}
	if size < 0 {
		return fmt.Errorf("mem resize to %d: %w", size, device.ErrOutOfRange)
	}
	if size < d.size {
		// Zero the tail of the last page and drop the pages beyond it.
		last := size / pageSize
		if in := size % pageSize; in != 0 {
			if pg := d.live[last]; pg != nil {
				np := make([]byte, pageSize)
				copy(np, pg[:in])
				d.live[last] = np
				d.dirty[last] = true
			}
			last++
		}
		for idx := range d.live {
			if idx >= last {
				delete(d.live, idx)
				d.dirty[idx] = true
			}
		}
	}
	d.size = size
	return nil
}

// Close implements device.Device.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}

// Stats implements device.Statter.
func (d *Device) Stats(ctx context.Context) (device.Stats, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return device.Stats{Provisioned: d.size, Allocated: int64(len(d.live)) * pageSize}, nil
}

// Crash returns a new device holding only the state covered by completed
// Flush calls, as a power cut would leave it. The receiver is unchanged.
func (d *Device) Crash() *Device {
	d.mu.RLock()
	defer d.mu.RUnlock()
	n := New(d.size)
	for idx, pg := range d.durable {
		n.live[idx] = pg
		n.durable[idx] = pg
	}
	return n
}
