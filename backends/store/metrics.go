package store

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Metered wraps a store with Prometheus counters, labelled with the store's
// name: ferry_s3_requests_total{store,op}, ferry_s3_errors_total{store,op,kind}
// and ferry_s3_bytes_total{store,direction}.
type Metered struct {
	Store
	requests *prometheus.CounterVec
	errs     *prometheus.CounterVec
	in, out  prometheus.Counter
	name     string
}

// StoreMetrics are the collectors shared by every metered store; register
// them once with NewStoreMetrics.
type StoreMetrics struct {
	requests, errs, bytes *prometheus.CounterVec
}

// NewStoreMetrics creates the collectors and registers them with reg (nil
// registers nothing).
func NewStoreMetrics(reg prometheus.Registerer) *StoreMetrics {
	m := &StoreMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_s3_requests_total", Help: "Object store requests by store and operation."}, []string{"store", "op"}),
		errs:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_s3_errors_total", Help: "Failed object store requests by store, operation and kind."}, []string{"store", "op", "kind"}),
		bytes:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_s3_bytes_total", Help: "Object payload bytes by store and direction."}, []string{"store", "direction"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.errs, m.bytes)
	}
	return m
}

// WithMetrics decorates s, counting under the store name.
func (m *StoreMetrics) WithMetrics(s Store, name string) *Metered {
	return &Metered{Store: s, requests: m.requests, errs: m.errs, in: m.bytes.WithLabelValues(name, "download"), out: m.bytes.WithLabelValues(name, "upload"), name: name}
}

// Unwrap returns the decorated store.
func (m *Metered) Unwrap() Store { return m.Store }

func (m *Metered) count(op string, err error) {
	m.requests.WithLabelValues(m.name, op).Inc()
	if err == nil {
		return
	}
	kind := "other"
	for _, k := range []struct {
		err  error
		name string
	}{{ErrNotFound, "not_found"}, {ErrExists, "exists"}, {ErrUnavailable, "unavailable"}, {ErrAuth, "auth"}, {ErrNoBucket, "no_bucket"}, {ErrDenied, "denied"}, {context.Canceled, "canceled"}} {
		if errors.Is(err, k.err) {
			kind = k.name
			break
		}
	}
	m.errs.WithLabelValues(m.name, op, kind).Inc()
}

// Put implements Store.
func (m *Metered) Put(ctx context.Context, key string, data []byte, opts PutOptions) error {
	err := m.Store.Put(ctx, key, data, opts)
	m.count("put", err)
	if err == nil {
		m.out.Add(float64(len(data)))
	}
	return err
}

// Get implements Store.
func (m *Metered) Get(ctx context.Context, key string, buf []byte) ([]byte, error) {
	b, err := m.Store.Get(ctx, key, buf)
	m.count("get", err)
	m.in.Add(float64(len(b)))
	return b, err
}

// GetRange implements Store.
func (m *Metered) GetRange(ctx context.Context, key string, off, length int64) ([]byte, error) {
	b, err := m.Store.GetRange(ctx, key, off, length)
	m.count("get", err)
	m.in.Add(float64(len(b)))
	return b, err
}

// Stat implements Store.
func (m *Metered) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	in, err := m.Store.Stat(ctx, key)
	m.count("stat", err)
	return in, err
}

// Delete implements Store.
func (m *Metered) Delete(ctx context.Context, key string) error {
	err := m.Store.Delete(ctx, key)
	m.count("delete", err)
	return err
}

// List implements Store.
func (m *Metered) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	err := m.Store.List(ctx, prefix, fn)
	m.count("list", err)
	return err
}

// GetTagged implements Swapper when the decorated store does.
func (m *Metered) GetTagged(ctx context.Context, key string) ([]byte, string, error) {
	sw := innerSwapper(m.Store)
	if sw == nil {
		return nil, "", ErrNoSwap
	}
	b, tag, err := sw.GetTagged(ctx, key)
	m.count("get", err)
	m.in.Add(float64(len(b)))
	return b, tag, err
}

// PutTagged implements Swapper when the decorated store does.
func (m *Metered) PutTagged(ctx context.Context, key string, data []byte, ifMatch string) (string, error) {
	sw := innerSwapper(m.Store)
	if sw == nil {
		return "", ErrNoSwap
	}
	tag, err := sw.PutTagged(ctx, key, data, ifMatch)
	m.count("put", err)
	if err == nil {
		m.out.Add(float64(len(data)))
	}
	return tag, err
}

// Requests is ferry_s3_requests_total, for tests and dashboards.
func (m *StoreMetrics) Requests() *prometheus.CounterVec { return m.requests }

// Errors is ferry_s3_errors_total.
func (m *StoreMetrics) Errors() *prometheus.CounterVec { return m.errs }
