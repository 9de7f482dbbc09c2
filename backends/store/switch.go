package store

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

// Switch is a store whose target can change while it serves: what a
// volume moving to another store uses (docs/S3.md, "Moving a volume to
// another store"). Reads go to the current target at once. Changes (Put,
// Delete, PutTagged) can be held: Hold waits for the changes in flight
// to end and makes new ones wait, so the target's contents stand still;
// Resume lets them go on, to a new target if one is given.
//
// Lock order: mu is innermost; no store request is made under it.
type Switch struct {
	cur atomic.Pointer[target]

	mu      sync.Mutex
	held    bool
	active  int           // changes in flight
	resume  chan struct{} // closed by Resume: held changes go on
	drained chan struct{} // closed when the last change in flight ends while held
}

type target struct{ s Store }

var (
	_ Store   = (*Switch)(nil)
	_ Swapper = (*Switch)(nil)
)

// ErrHeld: Hold was called on a Switch already held.
var ErrHeld = errors.New("store changes are held already")

// NewSwitch returns a Switch whose target is s.
func NewSwitch(s Store) *Switch {
	sw := &Switch{}
	sw.cur.Store(&target{s})
	return sw
}

// Target is the store requests go to now.
func (s *Switch) Target() Store { return s.cur.Load().s }

// Unwrap returns the current target.
func (s *Switch) Unwrap() Store { return s.Target() }

// Hold waits until no change is in flight and makes later ones wait for
// Resume. When ctx ends first, it resumes and returns ctx's error.
func (s *Switch) Hold(ctx context.Context) error {
	s.mu.Lock()
	if s.held {
		s.mu.Unlock()
		return ErrHeld
	}
	s.held, s.resume = true, make(chan struct{})
	if s.active == 0 {
		s.mu.Unlock()
		return nil
	}
	d := make(chan struct{})
	s.drained = d
	s.mu.Unlock()
	select {
	case <-d:
		return nil
	case <-ctx.Done():
		s.Resume(nil)
		return ctx.Err()
	}
}

// Resume lets held changes go on, to to when it is not nil (it becomes
// the target of every request from then on).
func (s *Switch) Resume(to Store) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if to != nil {
		s.cur.Store(&target{to})
	}
	if !s.held {
		return
	}
	s.held, s.drained = false, nil
	close(s.resume)
}

// enter waits while changes are held and counts a change in flight.
func (s *Switch) enter(ctx context.Context) error {
	s.mu.Lock()
	for s.held {
		ch := s.resume
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.mu.Lock()
	}
	s.active++
	s.mu.Unlock()
	return nil
}

func (s *Switch) leave() {
	s.mu.Lock()
	s.active--
	if s.active == 0 && s.drained != nil {
		close(s.drained)
		s.drained = nil
	}
	s.mu.Unlock()
}

func (s *Switch) Put(ctx context.Context, key string, data []byte, opts PutOptions) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.leave()
	return s.Target().Put(ctx, key, data, opts)
}

func (s *Switch) Delete(ctx context.Context, key string) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.leave()
	return s.Target().Delete(ctx, key)
}

func (s *Switch) Get(ctx context.Context, key string, buf []byte) ([]byte, error) {
	return s.Target().Get(ctx, key, buf)
}

func (s *Switch) GetRange(ctx context.Context, key string, off, length int64) ([]byte, error) {
	return s.Target().GetRange(ctx, key, off, length)
}

func (s *Switch) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	return s.Target().Stat(ctx, key)
}

func (s *Switch) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	return s.Target().List(ctx, prefix, fn)
}

func (s *Switch) GetTagged(ctx context.Context, key string) ([]byte, string, error) {
	sw := innerSwapper(s.Target())
	if sw == nil {
		return nil, "", ErrNoSwap
	}
	return sw.GetTagged(ctx, key)
}

func (s *Switch) PutTagged(ctx context.Context, key string, data []byte, ifMatch string) (string, error) {
	sw := innerSwapper(s.Target())
	if sw == nil {
		return "", ErrNoSwap
	}
	if err := s.enter(ctx); err != nil {
		return "", err
	}
	defer s.leave()
	return sw.PutTagged(ctx, key, data, ifMatch)
}
