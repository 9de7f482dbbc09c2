package tier

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"time"
)

// Hydration fills the cache of a volume that starts with an empty one
// (after an adoption) with the volume's data in the background, so that
// reads stop going to the store: the most recently written chunks first
// (the highest versions: what the previous writer was working on), then
// the rest in index order. It fetches the way readahead does (into the
// cache as clean chunks, never waiting for space dirty chunks hold) and
// stops when the cache budget is full rather than evict what it cached.

// HydrationState is where a hydration stands.
type HydrationState string

const (
	HydrationOff       HydrationState = ""           // never started
	HydrationRunning   HydrationState = "running"    // fetching
	HydrationDone      HydrationState = "done"       // every stored chunk is cached
	HydrationCacheFull HydrationState = "cache-full" // stopped: the cache budget is full
	HydrationStopped   HydrationState = "stopped"    // the device closed, or a fetch kept failing
)

// HydrationStats reports a hydration's progress.
type HydrationStats struct {
	State HydrationState
	// Total is the bytes of the chunks the store held at the start; Done
	// is how many of them are cached.
	Total, Done int64
	Started     time.Time
	// Rate is the bytes per second fetched so far.
	Rate float64
	Err  string
}

// recentShare is the share of chunks fetched first, by newest version.
const recentShare = 8

type hydration struct {
	mu    sync.Mutex
	stats HydrationStats
}

// Hydrate starts filling the cache in the background, at most rate bytes
// a second (0: as fast as fetches go). It does nothing when a hydration
// runs already.
func (d *Device) Hydrate(rate int64) {
	d.hyd.mu.Lock()
	if d.hyd.stats.State == HydrationRunning {
		d.hyd.mu.Unlock()
		return
	}
	d.hyd.stats = HydrationStats{State: HydrationRunning, Started: time.Now()}
	d.hyd.mu.Unlock()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		// The order needs the whole map, which a cache started from a
		// paged recovery point is still reading.
		if err := d.mapAll(d.bg); err != nil {
			d.hyd.mu.Lock()
			d.hyd.stats.State, d.hyd.stats.Err = HydrationStopped, err.Error()
			d.hyd.mu.Unlock()
			return
		}
		d.hydrate(d.bg, d.hydrationOrder(), rate)
	}()
}

// hydrationOrder is the order hydration fetches chunks in; it sets the
// hydration's total.
func (d *Device) hydrationOrder() []int64 {
	d.mu.Lock()
	idxs := d.objects.indexes()
	order := make([]int64, 0, len(idxs))
	recent := slices.Clone(idxs)
	slices.SortFunc(recent, func(a, b int64) int { return cmp.Compare(d.objects.base[b], d.objects.base[a]) })
	recent = recent[:len(recent)/recentShare]
	seen := map[int64]bool{}
	for _, idx := range recent {
		order, seen[idx] = append(order, idx), true
	}
	slices.Sort(idxs)
	for _, idx := range idxs {
		if !seen[idx] {
			order = append(order, idx)
		}
	}
	var total int64
	for _, idx := range order {
		total += min(d.chunkSize(), d.meta.Size-idx*d.chunkSize())
	}
	d.mu.Unlock()
	d.hyd.mu.Lock()
	d.hyd.stats.Total = total
	d.hyd.mu.Unlock()
	return order
}

// hydrateFetchers is how many chunks hydration reads from the store at
// once (as many as the uploaders send, which a store serves well); twice
// as many fetches run, so that writing a chunk into the cache overlaps
// the next reads instead of leaving a read slot idle.
const hydrateFetchers = 4

func (d *Device) hydrate(ctx context.Context, order []int64, rate int64) {
	set := func(f func(*HydrationStats)) {
		d.hyd.mu.Lock()
		f(&d.hyd.stats)
		if el := time.Since(d.hyd.stats.Started).Seconds(); el > 0 {
			d.hyd.stats.Rate = float64(d.hyd.stats.Done) / el
		}
		d.hyd.mu.Unlock()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		ended    HydrationState // why it stopped early, if it did
		failures int
		fetched  int64
	)
	stop := func(st HydrationState, err error) {
		mu.Lock()
		if ended == "" {
			ended = st
			if err != nil {
				set(func(s *HydrationStats) { s.Err = err.Error() })
			}
		}
		mu.Unlock()
		cancel()
	}
	start := time.Now()
	next := make(chan int64)
	var wg sync.WaitGroup
	mode := lookupAhead
	mode.direct = true
	mode.gets = make(chan struct{}, hydrateFetchers)
	for range 2 * hydrateFetchers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for idx := range next {
				n := min(d.chunkSize(), d.Size()-idx*d.chunkSize())
				if n <= 0 {
					continue
				}
				if b := d.cfg.Budget; b.Used()+d.chunkSize() > b.Limit() {
					d.mu.Lock()
					_, cached := d.chunks[idx]
					d.mu.Unlock()
					if !cached {
						stop(HydrationCacheFull, nil)
						return
					}
				}
				for {
					_, _, err := d.lookupMode(ctx, idx, mode)
					if err == nil || ctx.Err() != nil {
						break
					}
					if errors.Is(err, errNoRoomAhead) {
						stop(HydrationCacheFull, nil)
						return
					}
					mu.Lock()
					failures++
					many := failures > 20
					mu.Unlock()
					if many {
						stop(HydrationStopped, err)
						return
					}
					select {
					case <-ctx.Done():
					case <-time.After(time.Second):
					}
				}
				if ctx.Err() != nil {
					return
				}
				set(func(s *HydrationStats) { s.Done += n })
				if rate > 0 {
					mu.Lock()
					fetched += n
					wait := time.Duration(float64(fetched)/float64(rate)*float64(time.Second)) - time.Since(start)
					mu.Unlock()
					if wait > 0 {
						select {
						case <-ctx.Done():
						case <-time.After(wait):
						}
					}
				}
			}
		}()
	}
feed:
	for _, idx := range order {
		select {
		case next <- idx:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	mu.Lock()
	st := ended
	mu.Unlock()
	switch {
	case st == "" && d.bg.Err() != nil:
		st = HydrationStopped // the device closed
	case st == "":
		st = HydrationDone
	}
	set(func(s *HydrationStats) { s.State = st })
	switch st {
	case HydrationDone:
		d.log.Info("hydration done: the volume's data is cached", "bytes", d.hydTotal(), "seconds", time.Since(start).Round(time.Millisecond).Seconds())
	case HydrationCacheFull:
		d.log.Info("hydration stopped: the cache is full", "cached", d.hydDone(), "of", d.hydTotal())
	case HydrationStopped:
		d.log.Warn("hydration stopped; reads still fetch what they need", "err", d.Hydration().Err)
	}
}

func (d *Device) hydDone() int64  { return d.Hydration().Done }
func (d *Device) hydTotal() int64 { return d.Hydration().Total }

// Hydration reports the hydration's progress.
func (d *Device) Hydration() HydrationStats {
	d.hyd.mu.Lock()
	defer d.hyd.mu.Unlock()
	return d.hyd.stats
}
