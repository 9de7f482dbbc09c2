// Package store defines the object-store seam: where the S3 tier keeps
// volume chunks and manifests. backends/s3 implements it over any
// S3-compatible server; Mem is an in-memory implementation for unit tests.
//
// # Contract
//
//   - Keys are opaque strings of at most 1024 bytes; '/' has no meaning to
//     the store but List groups nothing: it returns every key under a prefix.
//   - Put replaces the object atomically: a concurrent Get sees the old or the
//     new content, never a mix. With PutOptions.IfAbsent it fails with an
//     error wrapping ErrExists when the key exists, and of two concurrent
//     IfAbsent puts of one key at most one succeeds.
//   - Get returns the whole object, read into buf's storage when it fits
//     (as append(buf[:0], object...) would), so callers may reuse buffers;
//     nil allocates.
//   - Get and GetRange fail with ErrNotFound for a missing key. GetRange
//     returns fewer bytes than asked only at the end of the object.
//   - Delete of a missing key succeeds.
//   - List calls fn for every key with the prefix, in lexical order, and stops
//     at fn's first error, which it returns.
//   - Errors wrap the sentinels below where one applies, so callers decide
//     with errors.Is whether to retry (ErrUnavailable), give up, or tell the
//     operator what to fix.
package store

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors.
var (
	// ErrNotFound: no object has that key.
	ErrNotFound = errors.New("object not found")
	// ErrExists: a conditional put found the key taken.
	ErrExists = errors.New("object already exists")
	// ErrUnavailable: the store could not be reached or answered with a
	// transient failure (network error, 5xx, throttling). Worth retrying.
	ErrUnavailable = errors.New("object store unavailable")
	// ErrAuth: the credentials were rejected.
	ErrAuth = errors.New("object store rejected the credentials")
	// ErrNoBucket: the bucket does not exist.
	ErrNoBucket = errors.New("bucket does not exist")
	// ErrDenied: the credentials lack permission for the operation.
	ErrDenied = errors.New("access denied")
)

// ObjectInfo describes one object.
type ObjectInfo struct {
	Key      string
	Size     int64
	Modified time.Time
}

// PutOptions modify Put.
type PutOptions struct {
	// IfAbsent makes the put conditional on the key not existing
	// (If-None-Match: *).
	IfAbsent bool
}

// Store is the object-store seam. See the package documentation for the
// contract; storetest checks it.
type Store interface {
	Put(ctx context.Context, key string, data []byte, opts PutOptions) error
	Get(ctx context.Context, key string, buf []byte) ([]byte, error)
	GetRange(ctx context.Context, key string, off, length int64) ([]byte, error)
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	Delete(ctx context.Context, key string) error
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
}
