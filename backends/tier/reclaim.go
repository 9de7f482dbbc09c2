package tier

import (
	"cmp"
	"context"
	"fmt"
	"slices"
)

// A log object holds the small writes of many chunks and stays in the
// store while any of its ranges is still referenced. As those chunks are
// rewritten, most of its bytes go dead, yet one surviving overlay keeps
// all of them. After each recovery point, the chunks that still reference
// a mostly dead log object are rewritten whole, as new base versions
// assembled from the store, so the log object leaves the map; once no
// kept recovery point references it either, garbage collection deletes
// it. Only chunks that are not cached are rewritten, and a rewrite whose
// chunk changed meanwhile is abandoned, so it never races a write.

// reclaimLive is the fraction of a log object's bytes still referenced
// below which the chunks referencing it are rewritten, if rewriting them
// uploads no more than the log object holds: reclaiming space must not
// cost more upload than the space it frees.
const reclaimLive = 0.5

// reclaimBatch bounds the chunks rewritten after one recovery point.
const reclaimBatch = 16

// reclaimLogs rewrites the chunks that keep mostly dead log objects
// alive; sizes are the log objects in the store, by version.
func (d *Device) reclaimLogs(ctx context.Context, sizes map[uint64]int64) error {
	for _, idx := range d.reclaimCandidates(sizes) {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := d.rewriteStored(ctx, idx); err != nil {
			return fmt.Errorf("chunk %d: %w", idx, err)
		}
	}
	return nil
}

// reclaimCandidates returns up to reclaimBatch uncached chunks that
// reference a log object whose live bytes are under reclaimLive of its
// size and that few enough chunks use, most wasteful log object first.
func (d *Device) reclaimCandidates(sizes map[uint64]int64) []int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	live := map[uint64]int64{}
	users := map[uint64][]int64{}
	for idx, ovs := range d.objects.overlays {
		for _, o := range ovs {
			live[o.log] += int64(o.length)
			if u := users[o.log]; len(u) == 0 || u[len(u)-1] != idx {
				users[o.log] = append(u, idx)
			}
		}
	}
	type waste struct {
		log  uint64
		dead int64
	}
	var logs []waste
	for seq, n := range live {
		size := sizes[seq]
		if size > 0 && float64(n) < reclaimLive*float64(size) && int64(len(users[seq]))*d.chunkSize() <= size {
			logs = append(logs, waste{seq, size - n})
		}
	}
	slices.SortFunc(logs, func(a, b waste) int { return cmp.Compare(b.dead, a.dead) })
	var out []int64
	seen := map[int64]bool{}
	for _, w := range logs {
		for _, idx := range users[w.log] {
			if _, cached := d.chunks[idx]; cached || seen[idx] {
				continue
			}
			if len(out) == reclaimBatch {
				return out
			}
			seen[idx] = true
			out = append(out, idx)
		}
	}
	return out
}

// rewriteStored uploads chunk idx, which is not cached, as a new base
// version assembled from its base object and overlays, replacing them.
// Nothing is journaled if the chunk changed or was cached meanwhile.
func (d *Device) rewriteStored(ctx context.Context, idx int64) error {
	cs := d.chunkSize()
	d.mu.Lock()
	key, ovs := d.objects.baseKey(idx), slices.Clone(d.objects.overlays[idx])
	d.mu.Unlock()
	if len(ovs) == 0 {
		return nil
	}
	data, err := d.fetch(ctx, idx, key, ovs, getBuf(cs))
	if err != nil {
		return err
	}
	defer putBuf(data, cs)
	seq, newKey, err := d.putVersion(ctx, idx, data, UploadReclaim)
	if err != nil {
		return err
	}
	defer d.settle(seq)
	if afterPut != nil {
		afterPut(d, idx)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	_, cached := d.chunks[idx]
	if cached || key != d.objects.baseKey(idx) || !slices.Equal(ovs, d.objects.overlays[idx]) {
		// Written, cached or trimmed since: the new version is garbage.
		d.mu.Unlock()
		d.cfg.Store.Delete(context.WithoutCancel(ctx), newKey)
		d.mu.Lock()
		return nil
	}
	// Not a change of the volume's content: an idle volume must not
	// publish a recovery point (and reclaim again after it, interval
	// after interval, each rewrite freeing more log objects) only for
	// this. The next recovery point, after the next write, names it.
	return d.journalPutLocked(idx, seq)
}
