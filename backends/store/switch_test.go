package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/backends/storetest"
)

func TestSwitchConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return store.NewSwitch(store.NewMem()) })
}

// A held change waits, and lands on the new target once resumed; reads
// go on meanwhile.
func TestSwitchHoldRedirectsHeldChanges(t *testing.T) {
	ctx := context.Background()
	a, b := store.NewMem(), store.NewMem()
	sw := store.NewSwitch(a)
	if err := sw.Put(ctx, "old", []byte("1"), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := sw.Hold(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sw.Hold(ctx); !errors.Is(err, store.ErrHeld) {
		t.Fatalf("second hold: %v, want ErrHeld", err)
	}
	done := make(chan error, 1)
	go func() { done <- sw.Put(ctx, "new", []byte("2"), store.PutOptions{}) }()
	if _, err := sw.Get(ctx, "old", nil); err != nil {
		t.Fatalf("read while held: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("put went on while held (err %v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	sw.Resume(b)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "new", nil); err != nil {
		t.Fatalf("held put not on the new target: %v", err)
	}
	if _, err := a.Get(ctx, "new", nil); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("held put on the old target: %v", err)
	}
	if _, ok := store.AsSwapper(sw); !ok {
		t.Fatal("switch over a swapper is no swapper")
	}
}

// Hold waits for a change in flight; a held change honours its context.
func TestSwitchHoldWaitsForChangesInFlight(t *testing.T) {
	ctx := context.Background()
	m := store.NewMem()
	release := make(chan struct{})
	entered := make(chan struct{})
	m.SetFail(func(op, key string) error {
		if op == "put" && key == "slow" {
			close(entered)
			<-release
		}
		return nil
	})
	sw := store.NewSwitch(m)
	go sw.Put(ctx, "slow", nil, store.PutOptions{})
	<-entered
	hctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := sw.Hold(hctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hold with a change in flight: %v, want the deadline", err)
	}
	held := make(chan error, 1)
	go func() { held <- sw.Hold(ctx) }()
	close(release)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer pcancel()
	if err := sw.Delete(pctx, "slow"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("held delete: %v, want its deadline", err)
	}
	sw.Resume(nil)
	if err := sw.Delete(ctx, "slow"); err != nil {
		t.Fatal(err)
	}
}
