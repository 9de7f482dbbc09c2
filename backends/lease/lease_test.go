package lease

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/store"
)

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

var (
	gwA = Holder{ID: "a", Name: "gateway-a"}
	gwB = Holder{ID: "b", Name: "gateway-b"}
)

func opts(c *clock) Options { return Options{TTL: time.Hour, Now: c.Now} } // renewals only when a test asks

func TestCreateRestartHeld(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	c := &clock{now: time.Now()}
	a, err := Acquire(ctx, s, gwA, Options{TTL: time.Hour, Now: c.Now, MinGeneration: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Generation() != 3 || a.Writable() != nil || a.State() != Held {
		t.Fatalf("new lease: generation %d, writable %v", a.Generation(), a.Writable())
	}
	// Another gateway is refused, told who holds it and until when.
	_, err = Acquire(ctx, s, gwB, Options{TTL: time.Hour, Now: c.Now, Takeover: true})
	var held *HeldError
	if !errors.As(err, &held) || !errors.Is(err, ErrHeld) || held.Record.HolderName != "gateway-a" {
		t.Fatalf("second gateway: %v", err)
	}
	// The same gateway, restarted, keeps its generation.
	a.Close()
	a2, err := Acquire(ctx, s, gwA, opts(c))
	if err != nil || a2.Generation() != 3 {
		t.Fatalf("restart: %v, generation %d", err, a2.Generation())
	}
	a2.Close()
}

func TestTakeoverFencesTheOldHolder(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	c := &clock{now: time.Now()}
	a, err := Acquire(ctx, s, gwA, opts(c))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	c.add(2 * time.Hour) // a stopped renewing
	if err := a.Writable(); !errors.Is(err, device.ErrReadOnly) || !errors.Is(err, ErrSuspended) {
		t.Fatalf("unrenewed lease still writable: %v", err)
	}
	if _, err := Acquire(ctx, s, gwB, opts(c)); !errors.Is(err, ErrHeld) {
		t.Fatalf("takeover without asking: %v", err)
	}
	b, err := Acquire(ctx, s, gwB, Options{TTL: time.Hour, Now: c.Now, Takeover: true})
	if err != nil || b.Generation() != 2 {
		t.Fatalf("takeover of an expired lease: %v", err)
	}
	defer b.Close()
	// a learns at its next renewal, and is fenced for good.
	if err := a.Renew(ctx); err == nil {
		t.Fatal("renewal of a lease taken over succeeded")
	}
	if a.State() != Lost || !errors.Is(a.Writable(), ErrLost) || !errors.Is(a.Writable(), device.ErrReadOnly) {
		t.Fatalf("old holder after takeover: %v %v", a.State(), a.Writable())
	}
	if err := a.Renew(ctx); err == nil || a.State() != Lost {
		t.Fatal("a lost lease came back")
	}
	if b.Writable() != nil || b.Renew(ctx) != nil {
		t.Fatal("new holder cannot write")
	}
}

func TestStealAndRelease(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	c := &clock{now: time.Now()}
	a, _ := Acquire(ctx, s, gwA, opts(c))
	b, err := Acquire(ctx, s, gwB, Options{TTL: time.Hour, Now: c.Now, Steal: true})
	if err != nil || b.Generation() != 2 {
		t.Fatalf("steal of a live lease: %v", err)
	}
	a.Renew(ctx)
	if a.State() != Lost {
		t.Fatal("stolen lease still held")
	}
	a.Close()
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if b.Writable() == nil {
		t.Fatal("released lease still writable")
	}
	rec, _, err := Read(ctx, s)
	if err != nil || !rec.Released || rec.Live(c.Now()) {
		t.Fatalf("released record %+v %v", rec, err)
	}
	// A released lease may be taken at once, by its old holder too.
	a2, err := Acquire(ctx, s, gwA, Options{TTL: time.Hour, Now: c.Now, Takeover: true})
	if err != nil || a2.Generation() != 3 {
		t.Fatalf("take a released lease: %v", err)
	}
	a2.Close()
}

// A renewal that cannot reach the store suspends writes near expiry, and
// they resume when a renewal succeeds.
func TestSuspendAndResume(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	c := &clock{now: time.Now()}
	a, _ := Acquire(ctx, s, gwA, opts(c))
	defer a.Close()
	s.SetFail(func(op, key string) error { return store.ErrUnavailable })
	if err := a.Renew(ctx); err == nil || a.State() != Held {
		t.Fatalf("early failed renewal: %v %v", err, a.State())
	}
	c.add(50 * time.Minute) // past expiry less a third of the TTL
	a.Renew(ctx)
	if a.State() != Suspended || !errors.Is(a.Writable(), ErrSuspended) {
		t.Fatalf("late failed renewal: %v %v", a.State(), a.Writable())
	}
	s.SetFail(nil)
	if err := a.Renew(ctx); err != nil || a.State() != Held || a.Writable() != nil {
		t.Fatalf("renewal after the outage: %v %v", err, a.Writable())
	}
}

// lostReply lands puts but reports them failed, as a dropped reply does.
type lostReply struct {
	*store.Mem
	drop bool
}

func (l *lostReply) PutTagged(ctx context.Context, key string, data []byte, ifMatch string) (string, error) {
	tag, err := l.Mem.PutTagged(ctx, key, data, ifMatch)
	if err == nil && l.drop {
		return "", store.ErrUnavailable
	}
	return tag, err
}

func TestRenewalWithALostReply(t *testing.T) {
	ctx := context.Background()
	s := &lostReply{Mem: store.NewMem()}
	c := &clock{now: time.Now()}
	a, err := Acquire(ctx, s, gwA, opts(c))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	s.drop = true
	if err := a.Renew(ctx); err != nil {
		t.Fatalf("renewal that landed: %v", err)
	}
	s.drop = false
	if err := a.Renew(ctx); err != nil || a.State() != Held {
		t.Fatalf("next renewal: %v (the tag was not taken from the landed put)", err)
	}
}

// Two gateways racing to take over an expired lease: one wins.
func TestConcurrentTakeover(t *testing.T) {
	ctx := context.Background()
	s := store.NewMem()
	c := &clock{now: time.Now()}
	a, _ := Acquire(ctx, s, gwA, opts(c))
	a.Close()
	c.add(2 * time.Hour)
	var wg sync.WaitGroup
	wins := make(chan *Lease, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := Holder{ID: string(rune('c' + i)), Name: "contender"}
			if l, err := Acquire(ctx, s, h, Options{TTL: time.Hour, Now: c.Now, Takeover: true}); err == nil {
				wins <- l
			} else if !errors.Is(err, ErrHeld) {
				t.Errorf("contender: %v", err)
			}
		}()
	}
	wg.Wait()
	close(wins)
	n := 0
	for l := range wins {
		n++
		l.Close()
	}
	if n != 1 {
		t.Fatalf("%d gateways took the lease, want 1", n)
	}
}

// lateRenewal lands a renewal after the caller gave up on it, as a timed
// out request the server still carried out does.
type lateRenewal struct {
	*store.Mem
	late bool
}

func (l *lateRenewal) PutTagged(ctx context.Context, key string, data []byte, ifMatch string) (string, error) {
	if l.late {
		l.late = false
		l.Mem.PutTagged(ctx, key, data, ifMatch)
		return "", context.DeadlineExceeded
	}
	return l.Mem.PutTagged(ctx, key, data, ifMatch)
}

// A renewal that timed out but landed leaves the holder a stale tag; the
// next renewal must not take that for a takeover.
func TestRenewalAfterALateRenewal(t *testing.T) {
	ctx := context.Background()
	s := &lateRenewal{Mem: store.NewMem()}
	c := &clock{now: time.Now()}
	a, err := Acquire(ctx, s, gwA, opts(c))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	s.late = true
	if err := a.Renew(ctx); err == nil {
		t.Fatal("timed-out renewal reported success")
	}
	c.add(time.Second) // the next renewal differs
	if err := a.Renew(ctx); err != nil || a.State() != Held {
		t.Fatalf("renewal after a late one: %v, state %v (fenced itself)", err, a.State())
	}
	// A real takeover is still seen as one.
	c.add(2 * time.Hour)
	b, err := Acquire(ctx, s, gwB, Options{TTL: time.Hour, Now: c.Now, Takeover: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a.Renew(ctx)
	if a.State() != Lost {
		t.Fatalf("old holder after a takeover: %v", a.State())
	}
}
