package tier

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts cache and upload events over all tiered volumes of a
// gateway. The zero value and nil are valid and count nothing.
type Metrics struct {
	hits, misses, prefetches prometheus.Counter
	uploads, uploadBytes     prometheus.Counter
	// reasonBytes splits uploadBytes (and counts manifests, which it
	// does not) by why they were uploaded: see the Upload* reasons.
	reasonBytes *prometheus.CounterVec
}

// Why bytes were uploaded (the reason label of
// ferry_upload_reason_bytes_total).
const (
	UploadChunk      = "chunk"       // a dirty chunk, whole
	UploadLog        = "log"         // small writes of partial chunks, as a log object
	UploadCompaction = "compaction"  // a partial chunk merged with the store's copy, whole
	UploadReclaim    = "reclamation" // a stored chunk rewritten to free a mostly dead log object
	UploadManifest   = "manifest"    // a recovery point (and snapshot) manifest
)

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
		reasonBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_upload_reason_bytes_total",
			Help: "Bytes uploaded to stores by S3-backed volumes, by reason: chunk, log, compaction, reclamation, manifest.",
		}, []string{"reason"}),
	}
	for _, r := range []string{UploadChunk, UploadLog, UploadCompaction, UploadReclaim, UploadManifest} {
		m.reasonBytes.WithLabelValues(r) // exported at 0 before the first upload
	}
	if reg != nil {
		reg.MustRegister(m.hits, m.misses, m.prefetches, m.uploads, m.uploadBytes, m.reasonBytes)
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

// upload counts an object of n bytes uploaded for reason; manifests
// count only under their reason.
func (m *Metrics) upload(reason string, n int) {
	if m == nil {
		return
	}
	if reason != UploadManifest {
		inc(m.uploads, 1)
		inc(m.uploadBytes, float64(n))
	}
	if m.reasonBytes != nil {
		m.reasonBytes.WithLabelValues(reason).Add(float64(n))
	}
}
