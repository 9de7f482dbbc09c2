package devicetest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"

	"github.com/ferry-io/ferry/backends/device"
)

// CrashUnderLoad is the unit-speed kin of the kill -9 tests: a writer
// writes random blocks to d in epochs, each ended by a Flush, while the
// power is cut (crash) at a random moment, concurrently with its writes
// and flushes. The device crash returns (reopened as a restart would) must
// hold every byte of every epoch whose Flush returned before the cut;
// bytes written since may hold old or new data. The state it holds is
// then taken as acknowledged (it survived a crash, so it is durable) and
// the next cycle runs on the reopened device. It returns the device left
// at the end, or what went wrong.
//
// crash must cut the power before it closes the old device, so a Flush
// still running cannot make anything durable after the cut.
func CrashUnderLoad(d device.Device, crash func(device.Device) (device.Device, error), cycles int, seed uint64) (device.Device, error) {
	ctx := context.Background()
	size := d.Size()
	r := rand.New(rand.NewPCG(seed, seed+1))
	acked := make([]byte, size) // a fresh device reads as zeroes
	for cycle := range cycles {
		var (
			mu      sync.Mutex
			cut     bool
			maybe   = make([]bool, size)  // written since the last acknowledged Flush
			pending = slices.Clone(acked) // acked plus the writes since
		)
		crashAt := 4 + r.IntN(60)
		trigger := make(chan struct{})
		done := make(chan error, 1)
		wr := rand.New(rand.NewPCG(seed, uint64(cycle)))
		go func() {
			ops := 0
			for {
				for range 1 + wr.IntN(8) {
					n := int64(512 * (1 + wr.IntN(256)))
					off := wr.Int64N(size-n+1) &^ 511
					p := pattern(wr.Uint64(), int(n))
					mu.Lock()
					for i := off; i < off+n; i++ {
						maybe[i] = true
					}
					copy(pending[off:], p)
					mu.Unlock()
					if err := d.WriteAt(ctx, p, off); err != nil {
						done <- err // after the cut: the device went with the power
						return
					}
					if ops++; ops == crashAt {
						close(trigger)
					}
				}
				if err := d.Flush(ctx); err != nil {
					done <- err
					return
				}
				mu.Lock()
				if !cut { // the Flush returned before the power went
					copy(acked, pending)
					clear(maybe)
				}
				mu.Unlock()
			}
		}()
		select {
		case <-trigger:
		case err := <-done: // failed before the power went: a real error
			return nil, fmt.Errorf("cycle %d: before the crash: %w", cycle, err)
		}
		mu.Lock()
		cut = true
		mu.Unlock()
		after, err := crash(d)
		if err != nil {
			return nil, fmt.Errorf("cycle %d: reopen after a crash: %w", cycle, err)
		}
		<-done // the writer saw the old device close (its error is expected)
		d = after
		got := make([]byte, size)
		if err := d.ReadAt(ctx, got, 0); err != nil {
			return nil, fmt.Errorf("cycle %d: read after a crash: %w", cycle, err)
		}
		for i := range got {
			if !maybe[i] && got[i] != acked[i] {
				end := i
				for end < len(got) && !maybe[end] && got[end] != acked[end] {
					end++
				}
				return nil, fmt.Errorf("cycle %d: bytes [%d, %d) acknowledged by a Flush differ after a crash", cycle, i, end)
			}
		}
		if !bytes.Equal(got, acked) {
			copy(acked, got) // unflushed writes that survived: durable now
		}
	}
	return d, nil
}
