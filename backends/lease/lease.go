// Package lease is a volume's writer lease in its object store: the one
// object that decides which gateway may write under the volume's prefix
// (docs/FORMAT.md, "Writer lease").
//
// The lease object is created with a conditional put (If-None-Match: *),
// renewed and taken over with If-Match on the ETag last read, and carries a
// generation that increases on every takeover. A writer numbers its object
// versions and recovery points from Generation<<40 up, so nothing a stale
// writer uploads after losing the lease can be taken for the new writer's.
//
// A holder that cannot renew before the lease expires, less a safety
// margin, stops writing until a renewal succeeds (suspended); one whose
// renewal is refused because another gateway took the lease stops for
// good (lost). Clocks of gateways sharing a bucket are assumed to agree to
// well within the margin.
package lease

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/store"
)

// Key is the lease object's key, relative to the volume's prefix.
const Key = "lease.json"

// Format names the lease object's format.
const Format = "ferry-lease/1"

// GenerationShift places a writer's generation in the high bits of its
// object versions and recovery-point numbers.
const GenerationShift = 40

// Record is the lease object's content.
type Record struct {
	Format string `json:"format"`
	// Holder identifies the gateway (its id); HolderName is for people.
	Holder     string `json:"holder"`
	HolderName string `json:"holder_name,omitempty"`
	// Generation increases on every takeover.
	Generation uint64    `json:"generation"`
	Renewed    time.Time `json:"renewed"`
	Expires    time.Time `json:"expires"`
	// Released is set by a holder that gave the lease up (release): any
	// gateway may take it at once.
	Released bool `json:"released,omitempty"`
	// Nonce makes every write differ, so its ETag does.
	Nonce int64 `json:"nonce"`
}

// Live reports whether the lease binds others at now: held, not released,
// not expired.
func (r Record) Live(now time.Time) bool { return !r.Released && now.Before(r.Expires) }

// Sentinel errors.
var (
	// ErrHeld: another gateway holds a live lease.
	ErrHeld = errors.New("another gateway holds the volume's writer lease")
	// ErrLost: another gateway took the lease over; this one may not write
	// the volume again.
	ErrLost = errors.New("writer lease lost to another gateway")
	// ErrSuspended: the lease could not be renewed in time; writes resume
	// when a renewal succeeds.
	ErrSuspended = errors.New("writer lease not renewed in time")
)

// HeldError is ErrHeld with who holds the lease and until when.
type HeldError struct{ Record Record }

func (e *HeldError) Error() string {
	name := e.Record.HolderName
	if name == "" {
		name = e.Record.Holder
	}
	return fmt.Sprintf("gateway %s holds the volume's writer lease (generation %d) until %s", name,
		e.Record.Generation, e.Record.Expires.UTC().Format(time.RFC3339))
}

func (e *HeldError) Unwrap() error { return ErrHeld }

// Read returns the lease record and its ETag; store.ErrNotFound when the
// volume has none.
func Read(ctx context.Context, sw store.Swapper) (Record, string, error) {
	b, tag, err := sw.GetTagged(ctx, Key)
	if err != nil {
		return Record{}, "", err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil || r.Format != Format {
		return Record{}, "", fmt.Errorf("lease object is not %s: %w", Format, errors.Join(err, store.ErrNotFound))
	}
	return r, tag, nil
}

// Holder identifies a gateway.
type Holder struct {
	ID   string
	Name string
}

// Options tune Acquire.
type Options struct {
	// TTL is how long a renewal holds (default 30s); renewals run every
	// TTL/3 and writes stop TTL/3 before expiry when none succeeded.
	TTL time.Duration
	// Takeover lets Acquire take a lease another gateway released or let
	// expire; without it such a lease is ErrHeld too.
	Takeover bool
	// Steal takes the lease even while another gateway holds it live.
	Steal bool
	// MinGeneration is the lowest generation to create a new lease with
	// (a volume that had no lease is generation 0).
	MinGeneration uint64
	// Logger receives state changes; nil discards them.
	Logger *slog.Logger
	// Now is the clock (default time.Now), for tests.
	Now func() time.Time
}

// State of a held lease.
type State int

const (
	Held      State = iota // renewed in time
	Suspended              // not renewed in time: writes stop until a renewal succeeds
	Lost                   // taken over or released: writes stop for good
)

func (s State) String() string {
	return [...]string{"held", "suspended", "lost"}[s]
}

// Lease is a lease this gateway holds. Its methods are safe for concurrent
// use.
type Lease struct {
	sw     store.Swapper
	holder Holder
	opts   Options
	log    *slog.Logger

	mu    sync.Mutex
	rec   Record
	tag   string
	state State
	why   error
	// fresh: Acquire created or took over the lease, so its generation
	// is new: nothing in the store is numbered in it yet.
	fresh bool

	stop context.CancelFunc
	done chan struct{}
}

// Acquire takes the volume's writer lease: creates it when the volume has
// none, renews it when this gateway holds it (a restart), and takes it over
// when allowed. It then renews it in the background until Close or
// Release.
func Acquire(ctx context.Context, sw store.Swapper, h Holder, opts Options) (*Lease, error) {
	if opts.TTL <= 0 {
		opts.TTL = 30 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Lease{sw: sw, holder: h, opts: opts, log: log}
	cur, tag, err := Read(ctx, sw)
	now := opts.Now()
	next := Record{Format: Format, Holder: h.ID, HolderName: h.Name}
	switch {
	case errors.Is(err, store.ErrNotFound) && tag == "":
		next.Generation = max(1, opts.MinGeneration)
	case err != nil:
		return nil, fmt.Errorf("read writer lease: %w", err)
	case cur.Holder == h.ID && !cur.Released:
		next.Generation = cur.Generation // this gateway, restarted: not fresh
	case opts.Steal, opts.Takeover && !cur.Live(now):
		next.Generation = max(cur.Generation+1, opts.MinGeneration)
	default:
		return nil, &HeldError{Record: cur}
	}
	if err := l.put(ctx, next, tag); err != nil {
		if errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrPrecondition) {
			// Someone else got there between our read and our put.
			if r, _, rerr := Read(ctx, sw); rerr == nil {
				return nil, &HeldError{Record: r}
			}
		}
		return nil, fmt.Errorf("take writer lease: %w", err)
	}
	l.fresh = tag == "" || cur.Holder != h.ID || cur.Released
	if tag != "" && cur.Holder != h.ID {
		log.Warn("took over the volume's writer lease", "generation", next.Generation, "from", cur.HolderName,
			"released", cur.Released, "expired", !cur.Live(now))
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.stop, l.done = cancel, make(chan struct{})
	go l.renewLoop(rctx)
	return l, nil
}

// put writes rec (renewed now) if the object is still tag, and remembers
// the new tag. A put whose reply was lost is recognised by reading back.
func (l *Lease) put(ctx context.Context, rec Record, tag string) error {
	now := l.opts.Now()
	rec.Renewed, rec.Nonce = now.UTC(), now.UnixNano()
	if !rec.Released {
		rec.Expires = now.Add(l.opts.TTL).UTC()
	}
	b, _ := json.Marshal(rec)
	newTag, err := l.sw.PutTagged(ctx, Key, b, tag)
	if err != nil && (errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrPrecondition) || errors.Is(err, store.ErrExists)) {
		got, gotTag, rerr := l.sw.GetTagged(ctx, Key)
		var cur Record
		switch {
		case rerr != nil:
		case bytes.Equal(got, b):
			// This put landed; its reply was lost (and a retry then
			// failed its precondition).
			newTag, err = gotTag, nil
		case tag != "" && json.Unmarshal(got, &cur) == nil && cur.Holder == rec.Holder &&
			cur.Generation == rec.Generation && !cur.Released:
			// An earlier renewal of ours landed after we gave up on it
			// (a timeout), so the tag we hold is stale: nobody else
			// writes our holder and generation (a takeover always raises
			// the generation). Renew over the current tag.
			newTag, err = l.sw.PutTagged(ctx, Key, b, gotTag)
		}
	}
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.rec, l.tag = rec, newTag
	l.mu.Unlock()
	return nil
}

// Renew extends the lease once.
func (l *Lease) Renew(ctx context.Context) error {
	l.mu.Lock()
	rec, tag, state := l.rec, l.tag, l.state
	l.mu.Unlock()
	if state == Lost {
		return l.why
	}
	err := l.put(ctx, rec, tag)
	switch {
	case err == nil:
		l.setState(Held, nil)
	case errors.Is(err, store.ErrPrecondition), errors.Is(err, store.ErrNotFound):
		cur, _, _ := Read(ctx, l.sw)
		l.setState(Lost, fmt.Errorf("%w: now generation %d, held by %s", ErrLost, cur.Generation, cur.HolderName))
	default:
		if l.opts.Now().After(rec.Expires.Add(-l.opts.TTL / 3)) {
			l.setState(Suspended, fmt.Errorf("%w: %v", ErrSuspended, err))
		}
	}
	return err
}

func (l *Lease) setState(s State, why error) {
	l.mu.Lock()
	old := l.state
	if old == Lost {
		l.mu.Unlock()
		return
	}
	l.state, l.why = s, why
	l.mu.Unlock()
	if s == old {
		return
	}
	switch s {
	case Held:
		l.log.Info("writer lease renewed again; writes resume", "generation", l.Generation())
	case Suspended:
		l.log.Error("writer lease could not be renewed in time; the volume refuses writes until it is", "generation", l.Generation(), "err", why)
	case Lost:
		l.log.Error("writer lease lost: another gateway writes this volume now; it refuses writes here for good", "generation", l.Generation(), "err", why)
	}
}

func (l *Lease) renewLoop(ctx context.Context) {
	defer close(l.done)
	t := time.NewTicker(l.opts.TTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if l.State() == Lost {
			return
		}
		rctx, cancel := context.WithTimeout(ctx, l.opts.TTL/3)
		l.Renew(rctx)
		cancel()
		// A lease nobody renewed in time suspends writes even when the
		// renewal is still hanging.
		l.mu.Lock()
		late := l.state == Held && l.opts.Now().After(l.rec.Expires.Add(-l.opts.TTL/3))
		l.mu.Unlock()
		if late {
			l.setState(Suspended, ErrSuspended)
		}
	}
}

// Generation is the writer generation this lease holds.
func (l *Lease) Generation() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rec.Generation
}

// Fresh reports whether this gateway created or took over the lease (its
// generation is new) rather than renewing its own after a restart (it may
// have numbered objects in that generation before).
func (l *Lease) Fresh() bool { return l.fresh }

// State reports the lease's state.
func (l *Lease) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state
}

// Record returns the lease as last written by this gateway.
func (l *Lease) Record() Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rec
}

// Writable returns nil while this gateway may write the volume, and an
// error wrapping device.ErrReadOnly (and ErrLost or ErrSuspended) when it
// may not.
func (l *Lease) Writable() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state == Held && l.opts.Now().After(l.rec.Expires.Add(-l.opts.TTL/3)) {
		return fmt.Errorf("%w: %w", device.ErrReadOnly, ErrSuspended)
	}
	if l.state != Held {
		return fmt.Errorf("%w: %w", device.ErrReadOnly, l.why)
	}
	return nil
}

// Release gives the lease up: any gateway may take it at once. The lease
// is lost to this gateway afterwards.
func (l *Lease) Release(ctx context.Context) error {
	l.Close()
	l.mu.Lock()
	rec, tag := l.rec, l.tag
	l.mu.Unlock()
	rec.Released = true
	rec.Expires = l.opts.Now().UTC()
	if err := l.put(ctx, rec, tag); err != nil {
		return fmt.Errorf("release writer lease: %w", err)
	}
	l.setState(Lost, fmt.Errorf("%w: released", ErrLost))
	return nil
}

// Close stops renewing (the lease then expires by itself).
func (l *Lease) Close() {
	if l.stop != nil {
		l.stop()
		<-l.done
	}
}

// Fence is what a writer checks before it changes the volume's objects.
type Fence interface {
	// Writable returns nil while this gateway may write the volume, else
	// an error wrapping device.ErrReadOnly.
	Writable() error
	// Generation is the writer generation (see GenerationShift).
	Generation() uint64
	// Fresh: nothing in the store is numbered in the generation yet.
	Fresh() bool
}

var _ Fence = (*Lease)(nil)

// Fenced decorates a volume's store so that every put and delete first
// checks the fence: a gateway that lost the lease stops changing the
// volume's objects (uploads, recovery points, garbage collection) at
// once. Reads pass through.
func Fenced(s store.Store, f Fence) store.Store { return &fenced{Store: s, f: f} }

type fenced struct {
	store.Store
	f Fence
}

// Unwrap returns the decorated store.
func (s *fenced) Unwrap() store.Store { return s.Store }

func (s *fenced) Put(ctx context.Context, key string, data []byte, opts store.PutOptions) error {
	if err := s.f.Writable(); err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	return s.Store.Put(ctx, key, data, opts)
}

func (s *fenced) Delete(ctx context.Context, key string) error {
	if err := s.f.Writable(); err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	return s.Store.Delete(ctx, key)
}
