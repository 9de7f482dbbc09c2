package tier

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts cache and upload events over all tiered volumes of a
// gateway. The zero value and nil are valid and count nothing.
type Metrics struct {
	hits, misses, prefetches prometheus.Counter
	uploads, uploadBytes     prometheus.Counter
}

// NewMetrics makes the tier's counters and registers them with reg (which
// may be nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := &Metrics{
		hits:        c("ferry_cache_hits_total", "Chunk reads of S3-backed volumes served from the local cache."),
		misses:      c("ferry_cache_misses_total", "Chunk reads of S3-backed volumes that waited for a fetch from the store."),
		prefetches:  c("ferry_cache_readahead_total", "Chunks fetched ahead of a sequential reader."),
		uploads:     c("ferry_upload_chunks_total", "Chunk versions uploaded to stores."),
		uploadBytes: c("ferry_upload_bytes_total", "Bytes of chunk versions uploaded to stores."),
	}
	if reg != nil {
		reg.MustRegister(m.hits, m.misses, m.prefetches, m.uploads, m.uploadBytes)
	}
	return m
}

func inc(c prometheus.Counter, n float64) {
	if c != nil {
		c.Add(n)
	}
}

func (m *Metrics) hit() {
	if m != nil {
		inc(m.hits, 1)
	}
}

func (m *Metrics) miss() {
	if m != nil {
		inc(m.misses, 1)
	}
}

func (m *Metrics) prefetch() {
	if m != nil {
		inc(m.prefetches, 1)
	}
}

func (m *Metrics) upload(n int) {
	if m != nil {
		inc(m.uploads, 1)
		inc(m.uploadBytes, float64(n))
	}
}
