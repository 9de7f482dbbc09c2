package volume_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-io/ferry/gateway/volume"
)

func open(t *testing.T, dir string) *volume.Manager {
	t.Helper()
	m, err := volume.Open(context.Background(), volume.Config{DataDir: dir, ForceTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestLifecycleAndReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	m := open(t, dir)
	if _, err := m.Create(ctx, "vm1", 1<<30, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, "db-2.x", 512, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	a, err := m.Attach(ctx, "vm1", "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Dev.WriteAt(ctx, []byte("hello"), 1<<29); err != nil {
		t.Fatal(err)
	}
	a.Detach()
	if _, err := m.Resize(ctx, "vm1", 2<<30); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}

	m = open(t, dir)
	defer m.Close(ctx)
	names, _ := m.List(ctx)
	if len(names) != 2 || names[0] != "db-2.x" || names[1] != "vm1" {
		t.Fatalf("names after reopen = %v", names)
	}
	in, err := m.Info(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if in.Size != 2<<30 || in.Allocated == 0 || in.Allocated > 1<<20 {
		t.Fatalf("info after reopen = %+v (want size 2 GiB, small nonzero allocation)", in)
	}
	a, _ = m.Attach(ctx, "vm1", "test")
	p := make([]byte, 5)
	if err := a.Dev.ReadAt(ctx, p, 1<<29); err != nil || string(p) != "hello" {
		t.Fatalf("read after reopen %q %v", p, err)
	}
	a.Detach()
}

func TestValidation(t *testing.T) {
	ctx := context.Background()
	m := open(t, t.TempDir())
	defer m.Close(ctx)
	if _, err := m.Create(ctx, "ok", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		size int64
		want error
	}{
		{"ok", 1 << 20, volume.ErrExists},
		{"Bad", 1 << 20, volume.ErrInvalid},
		{"has space", 1 << 20, volume.ErrInvalid},
		{"", 1 << 20, volume.ErrInvalid},
		{"-x", 1 << 20, volume.ErrInvalid},
		{"under_score", 1 << 20, volume.ErrInvalid},
		{"zero", 0, volume.ErrInvalid},
		{"odd", 1000, volume.ErrInvalid},
		{"neg", -512, volume.ErrInvalid},
	}
	for _, c := range cases {
		if _, err := m.Create(ctx, c.name, c.size, volume.CreateOptions{}); !errors.Is(err, c.want) {
			t.Errorf("Create(%q, %d) = %v, want %v", c.name, c.size, err, c.want)
		}
	}
	if _, err := m.Info(ctx, "nope"); !errors.Is(err, volume.ErrNotFound) {
		t.Errorf("Info(nope) = %v", err)
	}
	if _, err := m.Resize(ctx, "ok", 512); !errors.Is(err, volume.ErrInvalid) {
		t.Errorf("shrink = %v, want ErrInvalid", err)
	}
	if err := m.Remove(ctx, "nope", false); !errors.Is(err, volume.ErrNotFound) {
		t.Errorf("Remove(nope) = %v", err)
	}
}

func TestRemoveBusyAndForce(t *testing.T) {
	ctx := context.Background()
	m := open(t, t.TempDir())
	defer m.Close(ctx)
	in, _ := m.Create(ctx, "v", 1<<20, volume.CreateOptions{})
	a, err := m.Attach(ctx, "v", "127.0.0.1:5555")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := m.Info(ctx, "v")
	if len(got.Connections) != 1 || got.Connections[0] != "127.0.0.1:5555" {
		t.Fatalf("connections = %v", got.Connections)
	}
	if err := m.Remove(ctx, "v", false); !errors.Is(err, volume.ErrBusy) {
		t.Fatalf("Remove while attached = %v, want ErrBusy", err)
	}
	// A frontend detaches when revoked.
	go func() { <-a.Revoked(); a.Detach() }()
	if err := m.Remove(ctx, "v", true); err != nil {
		t.Fatalf("forced Remove: %v", err)
	}
	if _, err := m.Attach(ctx, "v", "x"); !errors.Is(err, volume.ErrNotFound) {
		t.Fatalf("attach after remove = %v", err)
	}
	_ = in
	if files, _ := filepath.Glob(filepath.Join(m.Pool(ctx).Dirs[0].Path, "vol-*.img")); len(files) != 0 {
		t.Fatalf("volume file left behind: %v", files)
	}
}

// A crash between creating a volume file and committing the catalog leaves
// an orphan; reopening removes it and keeps every committed volume.
func TestOrphanCleanupAndTornTemp(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	m := open(t, dir)
	m.Create(ctx, "keep", 1<<20, volume.CreateOptions{})
	m.Close(ctx)
	orphan := filepath.Join(dir, "pool", "vol-deadbeefdeadbeef.img")
	os.WriteFile(orphan, []byte("x"), 0o600)
	os.WriteFile(filepath.Join(dir, ".catalog-123.tmp"), []byte("{torn"), 0o600)
	m = open(t, dir)
	defer m.Close(ctx)
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("orphan volume file not removed")
	}
	if _, err := m.Info(ctx, "keep"); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptCatalogIsAnError(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "catalog.json"), []byte("{not json"), 0o600)
	if _, err := volume.Open(context.Background(), volume.Config{DataDir: dir}); err == nil {
		t.Fatal("Open with a corrupt catalog succeeded")
	}
}

func ptr(s string) *string { return &s }

func TestAccessControlAndReservations(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	m := open(t, dir)
	in, err := m.Create(ctx, "sec", 1<<20, volume.CreateOptions{Access: &volume.AccessUpdate{
		CHAPUser: ptr("alice"), CHAPSecret: ptr("0123456789ab"),
		AllowInitiators: []string{"iqn.2026-11.io.example:host1"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if in.ISCSI == nil || in.ISCSI.CHAPUser != "alice" || len(in.ISCSI.AllowInitiators) != 1 {
		t.Fatalf("info access view = %+v", in.ISCSI)
	}
	bad := []volume.AccessUpdate{
		{CHAPSecret: ptr("")},                                     // a user without a secret
		{CHAPSecret: ptr("short")},                                // too short
		{MutualUser: ptr("t"), MutualSecret: ptr("0123456789ab")}, // same as CHAP secret
		{AllowInitiators: []string{"not-an-iqn"}},
	}
	for i, u := range bad {
		if _, err := m.UpdateAccess(ctx, "sec", u); !errors.Is(err, volume.ErrInvalid) {
			t.Errorf("bad update %d: %v", i, err)
		}
	}
	if _, err := m.UpdateAccess(ctx, "sec", volume.AccessUpdate{MutualUser: ptr("target"), MutualSecret: ptr("abcdefghijklmnop")}); err != nil {
		t.Fatal(err)
	}
	if err := m.SavePR(ctx, "sec", []byte("keys")); err != nil {
		t.Fatal(err)
	}
	m.Close(ctx)

	m = open(t, dir)
	defer m.Close(ctx)
	a, err := m.Access(ctx, "sec")
	if err != nil || a.CHAPSecret != "0123456789ab" || a.MutualSecret != "abcdefghijklmnop" || a.AllowInitiators[0] != "iqn.2026-11.io.example:host1" {
		t.Fatalf("access after reopen = %+v, %v", a, err)
	}
	if pr, err := m.LoadPR(ctx, "sec"); err != nil || string(pr) != "keys" {
		t.Fatalf("reservations after reopen = %q, %v", pr, err)
	}
	st, _ := os.Stat(filepath.Join(dir, "catalog.json"))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("catalog holding secrets has mode %v, want 0600", st.Mode().Perm())
	}
	if _, err := m.UpdateAccess(ctx, "sec", volume.AccessUpdate{ClearCHAP: true, ClearAllow: true}); err != nil {
		t.Fatal(err)
	}
	if in, _ := m.Info(ctx, "sec"); in.ISCSI != nil {
		t.Fatalf("access after clear = %+v", in.ISCSI)
	}
}
