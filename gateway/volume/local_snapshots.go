package volume

import (
	"context"
	"fmt"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/local"
)

// localSnapshots is the snapshotter of a local volume: none so far.
type localSnapshots struct {
	rec *Record
}

var _ snapshotter = (*localSnapshots)(nil)

func (m *Manager) localSnapshotter(rec *Record, _ *local.Device) snapshotter {
	return &localSnapshots{rec: rec}
}

func (s *localSnapshots) refuse() error {
	return fmt.Errorf("volume %q is local: snapshots are for S3-backed volumes so far: %w", s.rec.Name, ErrInvalid)
}

func (s *localSnapshots) Create(context.Context, string) (Snapshot, error) {
	return Snapshot{}, s.refuse()
}
func (s *localSnapshots) List(context.Context) ([]Snapshot, error) { return nil, s.refuse() }
func (s *localSnapshots) Names(context.Context) ([]string, error)  { return nil, nil }
func (s *localSnapshots) Remove(context.Context, string) error     { return s.refuse() }
func (s *localSnapshots) Open(context.Context, string) (device.Device, error) {
	return nil, s.refuse()
}
func (s *localSnapshots) Clone(context.Context, string, *Record) (device.Device, snapshotter, func(), error) {
	return nil, nil, nil, s.refuse()
}
func (s *localSnapshots) Drop(context.Context) {}
