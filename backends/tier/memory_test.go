package tier

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/ferry-io/ferry/backends/store"
)

// A fully written 1 TiB volume with 4 MiB chunks (262,144 objects) and
// the most overlays compaction allows costs under 64 MiB of memory once
// open.
func TestMemoryPerTiB(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	const tib, cs = 1 << 40, DefaultChunkSize
	dir := t.TempDir()
	m := meta{Version: 1, Size: tib, ChunkSize: cs, NextSeq: tib/cs + 1}
	if err := m.save(dir); err != nil {
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
	before := heap()
	d, err := Open(context.Background(), Config{Dir: dir, Store: store.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	used := heap() - before
	t.Logf("1 TiB fully written, 4 MiB chunks, %d overlays: %.1f MiB of heap", d.objects.n, float64(used)/(1<<20))
	if st := d.TierStats(); st.StoredChunks != tib/cs {
		t.Fatalf("opened with %d objects", st.StoredChunks)
	}
	if used > 64<<20 {
		t.Fatalf("%d MiB of heap per TiB, want ≤ 64", used>>20)
	}
}
