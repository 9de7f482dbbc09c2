package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/backends/storetest"
)

// Every decorator keeps the store contract.
func TestDecoratorsConformance(t *testing.T) {
	t.Run("retry", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store { return store.WithRetry(store.NewMem(), store.RetryPolicy{}) })
	})
	t.Run("metrics", func(t *testing.T) {
		m := store.NewStoreMetrics(nil)
		storetest.Run(t, func(t *testing.T) store.Store { return m.WithMetrics(store.NewMem(), "t") })
	})
}

func flaky(m *store.Mem, failures int32, err error) *atomic.Int32 {
	var calls atomic.Int32
	m.SetFail(func(op, key string) error {
		if calls.Add(1) <= failures {
			return fmt.Errorf("%s %s: %w", op, key, err)
		}
		return nil
	})
	return &calls
}

func TestRetryTransientThenSuccess(t *testing.T) {
	m := store.NewMem()
	r := store.WithRetry(m, store.RetryPolicy{Attempts: 5, Base: time.Millisecond})
	calls := flaky(m, 3, store.ErrUnavailable)
	if err := r.Put(context.Background(), "k", []byte("v"), store.PutOptions{}); err != nil {
		t.Fatalf("put after 3 transient failures: %v", err)
	}
	if calls.Load() != 4 {
		t.Fatalf("%d calls, want 4", calls.Load())
	}
}

func TestRetryGivesUpAndKeepsTheCause(t *testing.T) {
	m := store.NewMem()
	r := store.WithRetry(m, store.RetryPolicy{Attempts: 3, Base: time.Millisecond})
	calls := flaky(m, 100, store.ErrUnavailable)
	_, err := r.Get(context.Background(), "k", nil)
	if !errors.Is(err, store.ErrUnavailable) || calls.Load() != 3 {
		t.Fatalf("err %v after %d calls, want ErrUnavailable after 3", err, calls.Load())
	}
}

func TestRetryNotForPermanentErrors(t *testing.T) {
	m := store.NewMem()
	r := store.WithRetry(m, store.RetryPolicy{Attempts: 5, Base: time.Millisecond})
	for _, perm := range []error{store.ErrAuth, store.ErrDenied, store.ErrNoBucket} {
		calls := flaky(m, 100, perm)
		if err := r.Delete(context.Background(), "k"); !errors.Is(err, perm) || calls.Load() != 1 {
			t.Errorf("%v: err %v after %d calls, want 1 call", perm, err, calls.Load())
		}
	}
	m.SetFail(nil)
	if _, err := r.Get(context.Background(), "missing", nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("not found: %v", err)
	}
}

func TestRetryBackoffHonoursContext(t *testing.T) {
	m := store.NewMem()
	r := store.WithRetry(m, store.RetryPolicy{Attempts: 10, Base: time.Hour})
	flaky(m, 100, store.ErrUnavailable)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := r.Put(ctx, "k", nil, store.PutOptions{})
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("err %v: want the deadline and the cause", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("backoff ignored the context")
	}
}

func TestRetryListNeverRepeatsObjects(t *testing.T) {
	m := store.NewMem()
	ctx := context.Background()
	for i := range 3 {
		m.Put(ctx, fmt.Sprint(i), nil, store.PutOptions{})
	}
	r := store.WithRetry(m, store.RetryPolicy{Attempts: 5, Base: time.Millisecond})
	seen := 0
	err := r.List(ctx, "", func(store.ObjectInfo) error {
		seen++
		if seen == 2 {
			return fmt.Errorf("mid-listing: %w", store.ErrUnavailable)
		}
		return nil
	})
	if !errors.Is(err, store.ErrUnavailable) || seen != 2 {
		t.Fatalf("err %v after %d objects: a listing that delivered objects must not be retried", err, seen)
	}
}

func TestMetricsCountRequestsErrorsBytes(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := store.NewStoreMetrics(reg)
	s := m.WithMetrics(store.NewMem(), "cloud")
	ctx := context.Background()
	s.Put(ctx, "k", make([]byte, 100), store.PutOptions{})
	s.Get(ctx, "k", nil)
	s.Get(ctx, "missing", nil)
	if n, err := testutil.GatherAndCount(reg, "ferry_s3_requests_total"); err != nil || n != 2 {
		t.Fatalf("request series: %d %v", n, err)
	}
	want := map[string]float64{"put": 1, "get": 2}
	for op, v := range want {
		got := testutil.ToFloat64(m.Requests().WithLabelValues("cloud", op))
		if got != v {
			t.Errorf("requests{op=%s} = %v, want %v", op, got, v)
		}
	}
	if got := testutil.ToFloat64(m.Errors().WithLabelValues("cloud", "get", "not_found")); got != 1 {
		t.Errorf("not_found errors = %v", got)
	}
}

// plainStore hides Mem's optional capabilities.
type plainStore struct{ store.Store }

// Decorators forward the optional Swapper capability, and only when the
// store under them has it.
func TestDecoratorsForwardSwapper(t *testing.T) {
	m := store.NewStoreMetrics(nil)
	wrap := map[string]func(store.Store) store.Store{
		"retry":   func(s store.Store) store.Store { return store.WithRetry(s, store.RetryPolicy{}) },
		"metrics": func(s store.Store) store.Store { return m.WithMetrics(s, "t") },
		"both":    func(s store.Store) store.Store { return m.WithMetrics(store.WithRetry(s, store.RetryPolicy{}), "t") },
	}
	for name, w := range wrap {
		if _, ok := store.AsSwapper(w(store.NewMem())); !ok {
			t.Errorf("%s over Mem hides the Swapper", name)
		}
		if _, ok := store.AsSwapper(w(plainStore{store.NewMem()})); ok {
			t.Errorf("%s over a store without conditional puts claims a Swapper", name)
		}
	}
}
