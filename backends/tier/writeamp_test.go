package tier

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferry-io/ferry/backends/store"
)

// uploadedBy returns the bytes uploaded for each reason.
func uploadedBy(met *Metrics) map[string]float64 {
	out := map[string]float64{}
	for _, r := range []string{UploadChunk, UploadLog, UploadCompaction, UploadReclaim, UploadManifest} {
		out[r] = testutil.ToFloat64(met.reasonBytes.WithLabelValues(r))
	}
	return out
}

// Random 4 KiB writes over four times the cache, with 4 MiB chunks as in
// production (1,024 blocks a chunk) and data already in the store, as
// scripts/bench-s3 does: bytes uploaded per byte written, by reason,
// including the recovery point after them and its reclamation.
func TestRandomWritesFourTimesCacheAmplification(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 128 MiB")
	}
	ctx := context.Background()
	const cs = 4 << 20
	const chunks = 32 // 128 MiB volume, 32 MiB cache
	met := NewMetrics(nil)
	cfg := Config{Dir: t.TempDir(), Store: store.NewMem(), Size: chunks * cs, ChunkSize: cs, CacheBytes: chunks * cs / 4, Metrics: met}
	d, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	m := make(model, chunks*cs)
	for i := range chunks {
		copy(m[i*cs:], pattern(cs, byte(i)))
		m.write(t, d, m[i*cs:(i+1)*cs], int64(i)*cs)
	}
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if d, err = Open(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	defer func() { d.Close() }()
	before := uploadedBy(met)
	r := rand.New(rand.NewPCG(11, 12))
	const writes = 13000 // 40 % of the volume
	for i := range writes {
		m.write(t, d, pattern(4096, byte(i)), r.Int64N(int64(len(m))/4096)*4096)
	}
	m.check(t, d, cfg.Store) // a recovery point, its collection and reclamation
	after := uploadedBy(met)
	var total float64
	for r, n := range after {
		n -= before[r]
		total += n
		t.Logf("%-12s %6.2f bytes per byte written", r, n/(writes*4096))
	}
	amp := total / (writes * 4096)
	t.Logf("total        %6.2f bytes per byte written; %d overlays live", amp, d.objects.n)
	if amp > 1.5 {
		t.Errorf("%.2f bytes uploaded per byte written, want at most 1.5", amp)
	}
}

// hookStore runs onPut before each put of a key with the prefix, and
// counts the bytes put under it.
type hookStore struct {
	store.Store
	prefix string
	onPut  func()
	bytes  atomic.Int64
}

func (s *hookStore) Put(ctx context.Context, key string, b []byte, o store.PutOptions) error {
	if strings.HasPrefix(key, s.prefix) {
		s.bytes.Add(int64(len(b)))
		if f := s.onPut; f != nil {
			f()
		}
	}
	return s.Store.Put(ctx, key, b, o)
}

// A partial chunk written while its writes upload keeps them all cached,
// but its next upload sends only what was written since: the store has
// the rest.
func TestWrittenDuringLogUploadResendsNothing(t *testing.T) {
	ctx := context.Background()
	hs := &hookStore{Store: store.NewMem(), prefix: "logs/"}
	d := fillAndReopen(t, 2, Config{Store: hs, CacheBytes: 1 << 20, Uploaders: 1})
	m := make(model, 2*testChunk)
	for i := range 2 {
		copy(m[i*testChunk:], pattern(testChunk, byte(i)))
	}
	d.mu.Lock()
	d.pressure++ // upload at once: a partial chunk this small otherwise waits partialDelay
	d.mu.Unlock()
	var once sync.Once
	hs.onPut = func() {
		once.Do(func() { m.write(t, d, pattern(4096, 9), 16384) }) // during the first log upload
	}
	m.write(t, d, pattern(4096, 7), 0)
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	waitClean(t, d)
	if _, err := d.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if n := hs.bytes.Load(); n != 8192 {
		t.Fatalf("two 4 KiB writes uploaded %d bytes of log objects, want 8192", n)
	}
	m.check(t, d, hs)
}
