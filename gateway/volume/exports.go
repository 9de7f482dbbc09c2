package volume

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/ferry-io/ferry/backends/device"
)

// Exports is what a frontend sees of the catalog: the volume names and a
// way to attach one for the lifetime of a client connection. A volume's
// access rules (Access) hold for every protocol: Attach refuses a client
// they do not admit, and List leaves out the volumes it would refuse.
type Exports interface {
	// List returns the names of the volumes that exist now and that client
	// may attach, sorted.
	List(ctx context.Context, client Client) ([]string, error)
	// Attach opens the named volume for one client connection. It fails
	// with an error wrapping ErrNotFound for unknown names and ErrDenied
	// when the volume's access rules refuse the client. The caller must
	// call Detach when the connection ends.
	Attach(ctx context.Context, name string, client Client) (*Attachment, error)
}

// Attachment is one client connection's hold on a volume.
type Attachment struct {
	// Name is the volume name.
	Name string
	// ID is the volume's identity, which stays with it when it is renamed
	// or moves to another gateway: frontends derive what identifies the
	// device to a client (iSCSI NAA identifier and serial) from it. Empty
	// for devices without one (tests), which then go by Name.
	ID string
	// Dev is the volume's device, shared with every other attachment of
	// the same volume. Never Close it; call Detach.
	Dev device.Device

	revoked <-chan struct{}
	once    sync.Once
	detach  func()
}

// NewAttachment builds an attachment; revoked is closed when the volume is
// forcibly removed, detach is called once by Detach.
func NewAttachment(name string, dev device.Device, revoked <-chan struct{}, detach func()) *Attachment {
	return &Attachment{Name: name, Dev: dev, revoked: revoked, detach: detach}
}

// Revoked is closed when the volume is removed by force: the frontend must
// end the connection.
func (a *Attachment) Revoked() <-chan struct{} { return a.revoked }

// Detach releases the attachment. It is safe to call more than once.
func (a *Attachment) Detach() {
	a.once.Do(func() {
		if a.detach != nil {
			a.detach()
		}
	})
}

// StaticExports serves a fixed set of devices; for frontend unit tests.
type StaticExports struct {
	mu   sync.Mutex
	devs map[string]device.Device
	// Attached counts live attachments per name.
	attached map[string]int
}

var _ Exports = (*StaticExports)(nil)

// NewStaticExports returns exports serving devs by name.
func NewStaticExports(devs map[string]device.Device) *StaticExports {
	return &StaticExports{devs: devs, attached: map[string]int{}}
}

// List implements Exports.
func (s *StaticExports) List(ctx context.Context, client Client) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for n := range s.devs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

// Attach implements Exports.
func (s *StaticExports) Attach(ctx context.Context, name string, client Client) (*Attachment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devs[name]
	if !ok {
		return nil, fmt.Errorf("attach %q: %w", name, ErrNotFound)
	}
	s.attached[name]++
	return NewAttachment(name, d, nil, func() {
		s.mu.Lock()
		s.attached[name]--
		s.mu.Unlock()
	}), nil
}

// Attached returns the number of live attachments of name.
func (s *StaticExports) Attached(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attached[name]
}
