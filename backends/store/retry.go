package store

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// RetryPolicy bounds retries of transient failures (ErrUnavailable).
type RetryPolicy struct {
	// Attempts is the total number of tries, at least 1 (default 5).
	Attempts int
	// Base is the first backoff (default 100ms); each retry doubles it,
	// with jitter, up to Max (default 5s).
	Base, Max time.Duration
}

// Retrying wraps a store so operations failing with ErrUnavailable are
// retried with exponential backoff and jitter. The wait honours ctx: a
// cancelled context ends it at once with ctx's error. Permanent errors
// (ErrNotFound, ErrExists, ErrAuth, ...) return at once.
type Retrying struct {
	Store
	p RetryPolicy
}

// WithRetry decorates s with p.
func WithRetry(s Store, p RetryPolicy) *Retrying {
	if p.Attempts < 1 {
		p.Attempts = 5
	}
	if p.Base <= 0 {
		p.Base = 100 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 5 * time.Second
	}
	return &Retrying{Store: s, p: p}
}

// Unwrap returns the decorated store.
func (r *Retrying) Unwrap() Store { return r.Store }

func (r *Retrying) do(ctx context.Context, op func() error) error {
	return r.doIf(ctx, op, func() bool { return true })
}

// doIf runs op until it succeeds, fails permanently, or may not be retried
// (again returns false), sleeping between attempts.
func (r *Retrying) doIf(ctx context.Context, op func() error, again func() bool) error {
	d := r.p.Base
	var err error
	for i := 0; i < r.p.Attempts; i++ {
		if err = op(); err == nil || !errors.Is(err, ErrUnavailable) || ctx.Err() != nil || !again() {
			return err
		}
		if i == r.p.Attempts-1 {
			break
		}
		wait := d/2 + time.Duration(rand.Int64N(int64(d)/2+1))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(ctx.Err(), err)
		case <-t.C:
		}
		d = min(2*d, r.p.Max)
	}
	return err
}

// Put implements Store. A conditional put that failed transiently may have
// succeeded on the server; a retry that then reports ErrExists is still
// reported, so callers of IfAbsent must check the object when that matters.
func (r *Retrying) Put(ctx context.Context, key string, data []byte, opts PutOptions) error {
	return r.do(ctx, func() error { return r.Store.Put(ctx, key, data, opts) })
}

// Get implements Store.
func (r *Retrying) Get(ctx context.Context, key string, buf []byte) (b []byte, err error) {
	err = r.do(ctx, func() error { b, err = r.Store.Get(ctx, key, buf); return err })
	return b, err
}

// GetRange implements Store.
func (r *Retrying) GetRange(ctx context.Context, key string, off, length int64) (b []byte, err error) {
	err = r.do(ctx, func() error { b, err = r.Store.GetRange(ctx, key, off, length); return err })
	return b, err
}

// Stat implements Store.
func (r *Retrying) Stat(ctx context.Context, key string) (in ObjectInfo, err error) {
	err = r.do(ctx, func() error { in, err = r.Store.Stat(ctx, key); return err })
	return in, err
}

// Delete implements Store.
func (r *Retrying) Delete(ctx context.Context, key string) error {
	return r.do(ctx, func() error { return r.Store.Delete(ctx, key) })
}

// List implements Store. Only a listing that fails before fn has seen any
// object is retried, so fn never sees an object twice.
func (r *Retrying) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	seen := false
	return r.doIf(ctx, func() error {
		return r.Store.List(ctx, prefix, func(o ObjectInfo) error { seen = true; return fn(o) })
	}, func() bool { return !seen })
}

// GetTagged implements Swapper when the decorated store does, retrying
// like Get.
func (r *Retrying) GetTagged(ctx context.Context, key string) (b []byte, tag string, err error) {
	sw := innerSwapper(r.Store)
	if sw == nil {
		return nil, "", ErrNoSwap
	}
	err = r.do(ctx, func() error { b, tag, err = sw.GetTagged(ctx, key); return err })
	return b, tag, err
}

// PutTagged implements Swapper when the decorated store does. It is not
// retried: after a lost reply a retry would fail its precondition whether
// or not the first attempt succeeded, so the caller decides by reading
// the object back.
func (r *Retrying) PutTagged(ctx context.Context, key string, data []byte, ifMatch string) (string, error) {
	sw := innerSwapper(r.Store)
	if sw == nil {
		return "", ErrNoSwap
	}
	return sw.PutTagged(ctx, key, data, ifMatch)
}
