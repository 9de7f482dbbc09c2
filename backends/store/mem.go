package store

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Mem is an in-memory Store for unit tests. Fail, when set, is consulted
// before every operation and its error returned instead.
type Mem struct {
	mu   sync.Mutex
	objs map[string]memObject
	tags int
	// Fail injects errors: it gets the operation name and key.
	Fail func(op, key string) error
}

type memObject struct {
	data []byte
	mod  time.Time
	etag string
}

var (
	_ Store   = (*Mem)(nil)
	_ Swapper = (*Mem)(nil)
)

// NewMem returns an empty in-memory store.
func NewMem() *Mem { return &Mem{objs: map[string]memObject{}} }

func (m *Mem) check(ctx context.Context, op, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	fail := m.Fail
	m.mu.Unlock()
	if fail != nil {
		return fail(op, key)
	}
	return nil
}

// SetFail replaces the error injector; nil stops injecting.
func (m *Mem) SetFail(f func(op, key string) error) {
	m.mu.Lock()
	m.Fail = f
	m.mu.Unlock()
}

// Put implements Store.
func (m *Mem) Put(ctx context.Context, key string, data []byte, opts PutOptions) error {
	if err := m.check(ctx, "put", key); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.objs[key]; ok && opts.IfAbsent {
		return fmt.Errorf("put %q: %w", key, ErrExists)
	}
	m.objs[key] = memObject{data: bytes.Clone(data), mod: time.Now(), etag: m.nextTag()}
	return nil
}

// nextTag returns a fresh ETag; called with m.mu held.
func (m *Mem) nextTag() string {
	m.tags++
	return fmt.Sprintf("\"mem-%d\"", m.tags)
}

// GetTagged implements Swapper.
func (m *Mem) GetTagged(ctx context.Context, key string) ([]byte, string, error) {
	if err := m.check(ctx, "get", key); err != nil {
		return nil, "", err
	}
	o, err := m.get(key)
	if err != nil {
		return nil, "", err
	}
	return bytes.Clone(o.data), o.etag, nil
}

// PutTagged implements Swapper.
func (m *Mem) PutTagged(ctx context.Context, key string, data []byte, ifMatch string) (string, error) {
	if err := m.check(ctx, "put", key); err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objs[key]
	switch {
	case ifMatch == "" && ok:
		return "", fmt.Errorf("put %q: %w", key, ErrExists)
	case ifMatch != "" && (!ok || o.etag != ifMatch):
		return "", fmt.Errorf("put %q: %w", key, ErrPrecondition)
	}
	o = memObject{data: bytes.Clone(data), mod: time.Now(), etag: m.nextTag()}
	m.objs[key] = o
	return o.etag, nil
}

func (m *Mem) get(key string) (memObject, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objs[key]
	if !ok {
		return memObject{}, fmt.Errorf("get %q: %w", key, ErrNotFound)
	}
	return o, nil
}

// Get implements Store.
func (m *Mem) Get(ctx context.Context, key string, buf []byte) ([]byte, error) {
	if err := m.check(ctx, "get", key); err != nil {
		return nil, err
	}
	o, err := m.get(key)
	if err != nil {
		return nil, err
	}
	return append(buf[:0], o.data...), nil
}

// GetRange implements Store.
func (m *Mem) GetRange(ctx context.Context, key string, off, length int64) ([]byte, error) {
	if err := m.check(ctx, "get", key); err != nil {
		return nil, err
	}
	if off < 0 || length < 0 {
		return nil, fmt.Errorf("get %q: bad range %d+%d", key, off, length)
	}
	o, err := m.get(key)
	if err != nil {
		return nil, err
	}
	if off >= int64(len(o.data)) {
		return []byte{}, nil
	}
	end := min(off+length, int64(len(o.data)))
	return bytes.Clone(o.data[off:end]), nil
}

// Stat implements Store.
func (m *Mem) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := m.check(ctx, "stat", key); err != nil {
		return ObjectInfo{}, err
	}
	o, err := m.get(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	return ObjectInfo{Key: key, Size: int64(len(o.data)), Modified: o.mod}, nil
}

// Delete implements Store.
func (m *Mem) Delete(ctx context.Context, key string) error {
	if err := m.check(ctx, "delete", key); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.objs, key)
	return nil
}

// List implements Store.
func (m *Mem) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	if err := m.check(ctx, "list", prefix); err != nil {
		return err
	}
	m.mu.Lock()
	var infos []ObjectInfo
	for k, o := range m.objs {
		if strings.HasPrefix(k, prefix) {
			infos = append(infos, ObjectInfo{Key: k, Size: int64(len(o.data)), Modified: o.mod})
		}
	}
	m.mu.Unlock()
	slices.SortFunc(infos, func(a, b ObjectInfo) int { return strings.Compare(a.Key, b.Key) })
	for _, in := range infos {
		if err := fn(in); err != nil {
			return err
		}
	}
	return nil
}
