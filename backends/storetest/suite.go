// Package storetest is the conformance suite every store.Store runs: the
// in-memory store in unit tests, the S3 store against a real S3 server.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ferry-io/ferry/backends/store"
)

// Factory returns an empty store for one subtest.
type Factory func(t *testing.T) store.Store

// Run runs the suite.
func Run(t *testing.T, newStore Factory) {
	ctx := context.Background()
	t.Run("PutGetRoundTrip", func(t *testing.T) {
		s := newStore(t)
		data := bytes.Repeat([]byte("ferry"), 100_000)
		mustPut(t, s, "vol/chunk/0001", data, store.PutOptions{})
		got, err := s.Get(ctx, "vol/chunk/0001", nil)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("get: %v, equal %v", err, bytes.Equal(got, data))
		}
		info, err := s.Stat(ctx, "vol/chunk/0001")
		if err != nil || info.Size != int64(len(data)) || info.Key != "vol/chunk/0001" {
			t.Fatalf("stat: %+v %v", info, err)
		}
	})
	t.Run("GetIntoBuffer", func(t *testing.T) {
		s := newStore(t)
		data := bytes.Repeat([]byte("chunk"), 1000)
		mustPut(t, s, "k", data, store.PutOptions{})
		// A buffer with room: the object lands in its storage, exactly.
		buf := bytes.Repeat([]byte{0xAA}, len(data))
		got, err := s.Get(ctx, "k", buf[:7])
		if err != nil || !bytes.Equal(got, data) || &got[0] != &buf[0] {
			t.Fatalf("get into a buffer with room: %v, equal %v, same storage %v", err, bytes.Equal(got, data), len(got) > 0 && &got[0] == &buf[0])
		}
		// A buffer too small grows.
		if got, err := s.Get(ctx, "k", make([]byte, 3, 10)); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("get into a small buffer: %v, equal %v", err, bytes.Equal(got, data))
		}
	})
	t.Run("EmptyObject", func(t *testing.T) {
		s := newStore(t)
		mustPut(t, s, "empty", nil, store.PutOptions{})
		got, err := s.Get(ctx, "empty", nil)
		if err != nil || len(got) != 0 {
			t.Fatalf("get empty: %q %v", got, err)
		}
	})
	t.Run("Overwrite", func(t *testing.T) {
		s := newStore(t)
		mustPut(t, s, "k", []byte("one"), store.PutOptions{})
		mustPut(t, s, "k", []byte("two!"), store.PutOptions{})
		if got, _ := s.Get(ctx, "k", nil); string(got) != "two!" {
			t.Fatalf("after overwrite: %q", got)
		}
	})
	t.Run("IfAbsent", func(t *testing.T) {
		s := newStore(t)
		mustPut(t, s, "manifest/1", []byte("first"), store.PutOptions{IfAbsent: true})
		err := s.Put(ctx, "manifest/1", []byte("second"), store.PutOptions{IfAbsent: true})
		if !errors.Is(err, store.ErrExists) {
			t.Fatalf("conditional put over an existing key: %v, want ErrExists", err)
		}
		if got, _ := s.Get(ctx, "manifest/1", nil); string(got) != "first" {
			t.Fatalf("conditional put replaced the object: %q", got)
		}
	})
	t.Run("IfAbsentRace", func(t *testing.T) {
		s := newStore(t)
		var wins atomic.Int32
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := s.Put(ctx, "race", []byte{byte(i)}, store.PutOptions{IfAbsent: true})
				switch {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, store.ErrExists):
					t.Errorf("racing conditional put: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("%d conditional puts of one key succeeded, want exactly 1", wins.Load())
		}
	})
	t.Run("NotFound", func(t *testing.T) {
		s := newStore(t)
		if _, err := s.Get(ctx, "nope", nil); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("get: %v", err)
		}
		if _, err := s.GetRange(ctx, "nope", 0, 10); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("get range: %v", err)
		}
		if _, err := s.Stat(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("stat: %v", err)
		}
	})
	t.Run("GetRange", func(t *testing.T) {
		s := newStore(t)
		data := make([]byte, 10000)
		for i := range data {
			data[i] = byte(i * 13)
		}
		mustPut(t, s, "r", data, store.PutOptions{})
		// Ranges past the end read as what there is (nothing at all
		// when they start past it): objects may be shorter than the
		// chunk they hold.
		for _, c := range []struct{ off, n int64 }{{0, 1}, {0, 10000}, {4096, 4096}, {9990, 10}, {9990, 100}, {1, 9999}, {10000, 10}, {20000, 4096}} {
			got, err := s.GetRange(ctx, "r", c.off, c.n)
			want := data[min(c.off, int64(len(data))):min(c.off+c.n, int64(len(data)))]
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("range %d+%d: %d bytes, err %v", c.off, c.n, len(got), err)
			}
		}
	})
	t.Run("DeleteIdempotent", func(t *testing.T) {
		s := newStore(t)
		mustPut(t, s, "d", []byte("x"), store.PutOptions{})
		for range 2 {
			if err := s.Delete(ctx, "d"); err != nil {
				t.Fatalf("delete: %v", err)
			}
		}
		if _, err := s.Get(ctx, "d", nil); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("get after delete: %v", err)
		}
	})
	t.Run("ListPrefixOrderAndStop", func(t *testing.T) {
		s := newStore(t)
		const n = 1005 // more than one S3 listing page
		var wg sync.WaitGroup
		var failed atomic.Pointer[error]
		sem := make(chan struct{}, 16)
		for i := range n {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := s.Put(ctx, fmt.Sprintf("v1/c/%06d", i), []byte{1, 2, 3}, store.PutOptions{}); err != nil {
					failed.CompareAndSwap(nil, &err)
				}
			}()
		}
		wg.Wait()
		if err := failed.Load(); err != nil {
			t.Fatalf("put: %v", *err)
		}
		mustPut(t, s, "v10/c/000000", []byte("other volume"), store.PutOptions{})
		mustPut(t, s, "v1-manifest", []byte("not under v1/"), store.PutOptions{})
		var keys []string
		err := s.List(ctx, "v1/", func(o store.ObjectInfo) error {
			if o.Size != 3 {
				t.Errorf("%s: size %d", o.Key, o.Size)
			}
			keys = append(keys, o.Key)
			return nil
		})
		if err != nil || len(keys) != n {
			t.Fatalf("list: %d keys, err %v", len(keys), err)
		}
		for i, k := range keys {
			if k != fmt.Sprintf("v1/c/%06d", i) {
				t.Fatalf("key %d is %q: not in order", i, k)
			}
		}
		stop := errors.New("stop")
		seen := 0
		err = s.List(ctx, "v1/", func(store.ObjectInfo) error {
			seen++
			if seen == 3 {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) || seen != 3 {
			t.Fatalf("list did not stop at fn's error: %v after %d", err, seen)
		}
	})
	t.Run("Swap", func(t *testing.T) {
		s := newStore(t)
		sw, ok := store.AsSwapper(s)
		if !ok {
			t.Skip("no conditional put")
		}
		if _, _, err := sw.GetTagged(ctx, "lease"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetTagged of a missing key: %v", err)
		}
		if _, err := sw.PutTagged(ctx, "lease", []byte("x"), "\"no-such-tag\""); !errors.Is(err, store.ErrPrecondition) {
			t.Fatalf("PutTagged with If-Match on a missing key: %v", err)
		}
		t1, err := sw.PutTagged(ctx, "lease", []byte("gen 1"), "")
		if err != nil || t1 == "" {
			t.Fatalf("create: %q %v", t1, err)
		}
		if _, err := sw.PutTagged(ctx, "lease", []byte("gen 1 again"), ""); !errors.Is(err, store.ErrExists) {
			t.Fatalf("second create: %v", err)
		}
		b, tag, err := sw.GetTagged(ctx, "lease")
		if err != nil || string(b) != "gen 1" || tag != t1 {
			t.Fatalf("GetTagged = %q %q %v, want gen 1 with tag %q", b, tag, err, t1)
		}
		t2, err := sw.PutTagged(ctx, "lease", []byte("gen 1 renewed"), t1)
		if err != nil || t2 == t1 {
			t.Fatalf("renew: %q %v", t2, err)
		}
		if _, err := sw.PutTagged(ctx, "lease", []byte("stale writer"), t1); !errors.Is(err, store.ErrPrecondition) {
			t.Fatalf("put with a stale tag: %v", err)
		}
		// Of concurrent swaps from one tag, at most one wins.
		var wins atomic.Int32
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := sw.PutTagged(ctx, "lease", fmt.Appendf(nil, "gen 2 by %d", i), t2); err == nil {
					wins.Add(1)
				} else if !errors.Is(err, store.ErrPrecondition) {
					t.Errorf("concurrent swap: %v", err)
				}
			}()
		}
		wg.Wait()
		if n := wins.Load(); n != 1 {
			t.Fatalf("%d concurrent swaps from one tag succeeded, want 1", n)
		}
	})
	t.Run("ListDirs", func(t *testing.T) {
		s := newStore(t)
		for _, k := range []string{"volumes/a/x", "volumes/a/y/z", "volumes/b/x", "volumes/c", "other/d/x"} {
			mustPut(t, s, k, []byte("x"), store.PutOptions{})
		}
		var dirs []string
		if err := store.ListDirs(ctx, s, "volumes/", func(d string) error { dirs = append(dirs, d); return nil }); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(dirs) != "[a/ b/]" {
			t.Fatalf("ListDirs(volumes/) = %q, want [a/ b/]", dirs)
		}
	})
	t.Run("CancelledContext", func(t *testing.T) {
		s := newStore(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := s.Put(cctx, "c", []byte("x"), store.PutOptions{}); err == nil {
			t.Fatal("put with a cancelled context succeeded")
		}
	})
}

func mustPut(t *testing.T, s store.Store, key string, data []byte, opts store.PutOptions) {
	t.Helper()
	if err := s.Put(context.Background(), key, data, opts); err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
}
