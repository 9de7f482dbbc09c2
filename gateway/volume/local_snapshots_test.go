package volume_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/testutil"
)

// Local snapshots through the manager on XFS: a snapshot export is a
// read-only device, busy snapshots are not removed, a clone is a new
// volume, and a restart keeps the snapshots and sweeps what interrupted
// operations left (an orphaned snapshot directory, temporary files).
func TestLocalSnapshotsThroughManager(t *testing.T) {
	fs := testutil.LoopFS(t, "xfs", 1<<30)
	ctx := context.Background()
	dir := filepath.Join(fs, "data")
	m := open(t, dir)
	if p := m.Pool(ctx); len(p.Dirs) != 1 || !p.Dirs[0].Reflink || p.Dirs[0].FS != "xfs" {
		t.Errorf("pool dirs %+v, want one xfs directory with reflink", p.Dirs)
	}
	in, err := m.Create(ctx, "vm1", 1<<20, volume.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := m.Attach(ctx, "vm1", nbdClient("127.0.0.1:1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Dev.WriteAt(ctx, []byte("before"), 4096); err != nil {
		t.Fatal(err)
	}
	sn, err := m.CreateSnapshot(ctx, "vm1", "s1")
	if err != nil {
		t.Fatal(err)
	}
	if sn.Export != "vm1@s1" || sn.Size != 1<<20 || sn.RecoveryPoint != 0 {
		t.Errorf("snapshot %+v", sn)
	}
	if err := a.Dev.WriteAt(ctx, []byte("after!"), 4096); err != nil {
		t.Fatal(err)
	}
	if err := a.Dev.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	a.Detach()
	// The write replaced one block the snapshot now holds alone.
	if list, err := m.ListSnapshots(ctx, "vm1"); err != nil || len(list) != 1 || list[0].ExclusiveBytes != 4096 {
		t.Errorf("snapshots: %+v, %v (want s1 keeping 4096 bytes of its own)", list, err)
	}
	if _, err := m.CreateSnapshot(ctx, "vm1", "s1"); !errors.Is(err, volume.ErrExists) {
		t.Errorf("second s1: %v, want ErrExists", err)
	}
	if _, err := m.CreateSnapshot(ctx, "vm1", "Bad"); !errors.Is(err, volume.ErrInvalid) {
		t.Errorf("snapshot named Bad: %v, want ErrInvalid", err)
	}
	sa, err := m.Attach(ctx, "vm1@s1", nbdClient("127.0.0.1:2"))
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 6)
	if err := sa.Dev.ReadAt(ctx, p, 4096); err != nil || string(p) != "before" {
		t.Errorf("snapshot reads %q, %v", p, err)
	}
	if !device.IsReadOnly(sa.Dev) || !errors.Is(sa.Dev.WriteAt(ctx, p, 0), device.ErrReadOnly) {
		t.Error("snapshot export is writable")
	}
	if err := m.RemoveSnapshot(ctx, "vm1", "s1"); !errors.Is(err, volume.ErrBusy) {
		t.Errorf("remove a snapshot a client reads: %v, want ErrBusy", err)
	}
	sa.Detach()
	c, err := m.Clone(ctx, "vm1@s1", "c1")
	if err != nil {
		t.Fatal(err)
	}
	if c.ID == in.ID || c.Backend != "local" || c.Size != 1<<20 {
		t.Errorf("clone %+v", c)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// What a crash could leave: a removed volume's snapshots, temporary
	// files of a snapshot and of a clone.
	pool := filepath.Join(dir, "pool")
	orphan := filepath.Join(pool, "snapshots", "00000000-0000-4000-8000-000000000000")
	litter := []string{filepath.Join(orphan, "x.img"), filepath.Join(pool, "snapshots", in.ID, ".s2.img-1.tmp"),
		filepath.Join(pool, ".vol-x.img-1.tmp")}
	os.MkdirAll(orphan, 0o700)
	for _, f := range litter {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m = open(t, dir)
	defer m.Close(ctx)
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("orphaned snapshot directory not removed: %v", err)
	}
	for _, f := range litter[1:] {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s not swept: %v", f, err)
		}
	}
	list, err := m.ListSnapshots(ctx, "vm1")
	if err != nil || len(list) != 1 || list[0].Export != "vm1@s1" || list[0].ExclusiveBytes != 0 {
		t.Fatalf("snapshots after reopen: %+v, %v (want s1, keeping nothing of its own: the clone shares it)", list, err)
	}
	ca, err := m.Attach(ctx, "c1", nbdClient("127.0.0.1:3"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Dev.ReadAt(ctx, p, 4096); err != nil || string(p) != "before" {
		t.Errorf("clone reads %q, %v", p, err)
	}
	ca.Detach()
	if err := m.Remove(ctx, "vm1", false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(pool, "snapshots", in.ID)); !os.IsNotExist(err) {
		t.Errorf("removed volume's snapshots remain: %v", err)
	}
	if _, err := m.CreateSnapshot(ctx, "vm1", "s9"); !errors.Is(err, volume.ErrNotFound) {
		t.Errorf("snapshot of a removed volume: %v", err)
	}
	if !strings.Contains(strings.Join(m.Names(ctx), " "), "c1") {
		t.Errorf("the clone went with its parent: %v", m.Names(ctx))
	}
}
