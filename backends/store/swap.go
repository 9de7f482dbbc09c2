package store

import (
	"context"
	"errors"
	"strings"
)

// ErrPrecondition: a conditional put found the object changed (its ETag is
// not the one given) or gone.
var ErrPrecondition = errors.New("object changed since it was read")

// Swapper is the optional capability of compare-and-swap on one object:
// what a volume's writer lease needs (docs/FORMAT.md, "Writer lease"). A
// store without it cannot fence a writer; volumes on it cannot move
// between gateways but work otherwise.
//
//   - GetTagged returns the object and its ETag, read in one request (the
//     content and the tag belong together).
//   - PutTagged writes data when the object's current ETag is ifMatch
//     (If-Match), or, with ifMatch "", when no object has the key
//     (If-None-Match: *), and returns the new object's ETag. It fails with
//     ErrPrecondition when the object changed or is gone, and with
//     ErrExists when ifMatch is "" and the key exists. Of two concurrent
//     puts with the same ifMatch at most one succeeds.
//
// An ETag is opaque; a put of the same bytes may or may not change it, so
// callers put content that differs on every write (a lease carries its
// renewal time).
type Swapper interface {
	GetTagged(ctx context.Context, key string) (data []byte, etag string, err error)
	PutTagged(ctx context.Context, key string, data []byte, ifMatch string) (etag string, err error)
}

// AsSwapper returns s as a Swapper when the store under every decorator
// has the capability (decorators forward it; see Unwrap).
func AsSwapper(s Store) (Swapper, bool) {
	inner := s
	for {
		u, ok := inner.(interface{ Unwrap() Store })
		if !ok {
			break
		}
		inner = u.Unwrap()
	}
	if _, ok := inner.(Swapper); !ok {
		return nil, false
	}
	sw, ok := s.(Swapper)
	return sw, ok
}

// innerSwapper is the Swapper a decorator forwards to.
func innerSwapper(s Store) Swapper {
	if sw, ok := AsSwapper(s); ok {
		return sw
	}
	return nil
}

// ErrNoSwap is what a decorator's Swapper methods return over a store
// without the capability (AsSwapper reports that before anyone calls).
var ErrNoSwap = errors.New("the object store has no conditional put (If-Match); volumes on it cannot move between gateways")

// DirLister is the optional capability of listing the "directories" just
// under a prefix (S3's delimiter listing), without listing every key.
type DirLister interface {
	// ListDirs calls fn with every distinct "NAME/" that follows prefix in
	// some key, in lexical order.
	ListDirs(ctx context.Context, prefix string, fn func(dir string) error) error
}

// ListDirs lists the directories under prefix with s's DirLister, or, when
// s (under its decorators) lacks one, by listing every key.
func ListDirs(ctx context.Context, s Store, prefix string, fn func(dir string) error) error {
	inner := s
	for {
		if dl, ok := inner.(DirLister); ok {
			return dl.ListDirs(ctx, prefix, fn)
		}
		u, ok := inner.(interface{ Unwrap() Store })
		if !ok {
			break
		}
		inner = u.Unwrap()
	}
	last := ""
	return s.List(ctx, prefix, func(o ObjectInfo) error {
		rest := o.Key[len(prefix):]
		i := strings.IndexByte(rest, '/')
		if i < 0 {
			return nil
		}
		if dir := rest[:i+1]; dir != last {
			last = dir
			return fn(dir)
		}
		return nil
	})
}
