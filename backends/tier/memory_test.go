package tier

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/internal/vfs"
)

// A fully written 1 TiB volume with 4 MiB chunks (262,144 objects) and
// the most overlays compaction allows costs under 64 MiB of memory once
// open, heap and resident, and opening it makes little garbage.
func TestMemoryPerTiB(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	const tib, cs = 1 << 40, DefaultChunkSize
	dir := t.TempDir()
	m := meta{Version: 1, Size: tib, ChunkSize: cs, NextSeq: tib/cs + 1}
	if err := m.save(vfs.OS, dir); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "objects.log"))
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for i := range int64(tib / cs) {
		fmt.Fprintf(w, "put %d %s\n", i, chunkKey(i, uint64(i+1)))
	}
	// And as many overlays as compaction lets the volume keep.
	probe := &Device{meta: m}
	probe.cfg.ChunkSize = cs
	for i := range probe.overlayCap() {
		o := overlay{log: tib/cs + 1 + uint64(i/2048), logOff: uint32(i%2048) * 4096, off: uint32(i%1024) * 4096, length: 4096}
		w.WriteString(ovlRecord(int64(i)%(tib/cs), o))
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before, rss0 := heap(), vmRSS(t)
	d, err := Open(context.Background(), Config{Dir: dir, Store: store.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	used := heap() - before
	rss := vmRSS(t) - rss0
	debug.FreeOSMemory() // what the runtime's scavenger does over time
	settled := vmRSS(t) - rss0
	t.Logf("1 TiB fully written, 4 MiB chunks, %d overlays: %.1f MiB of heap; process RSS grew %.1f MiB, %.1f MiB once freed memory is returned",
		d.objects.n, float64(used)/(1<<20), float64(rss)/(1<<20), float64(settled)/(1<<20))
	if st := d.TierStats(); st.StoredChunks != tib/cs {
		t.Fatalf("opened with %d objects", st.StoredChunks)
	}
	if used > 64<<20 {
		t.Fatalf("%d MiB of heap per TiB, want ≤ 64", used>>20)
	}
	if raceEnabled {
		return // the race detector's shadow memory counts in RSS
	}
	if settled > 64<<20 {
		t.Fatalf("%d MiB of RSS per TiB, want ≤ 64", settled>>20)
	}
	// Loading the journal once cost 413 MiB of garbage for this volume.
	if rss > 96<<20 {
		t.Fatalf("opening the volume grew RSS by %d MiB", rss>>20)
	}
}

// vmRSS is the test process's resident set size.
func vmRSS(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kib int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kib)
			return kib << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}
