package volume_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/bootid"
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
	a, err := m.Attach(ctx, "vm1", nbdClient("127.0.0.1:1"))
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
	names := m.Names(ctx)
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
	if in.WritesHeldBy != bootid.Get() || in.WritesHeldBy == "" {
		t.Fatalf("a local volume's writes held by %q, want this kernel's boot id %q", in.WritesHeldBy, bootid.Get())
	}
	a, _ = m.Attach(ctx, "vm1", nbdClient("127.0.0.1:1"))
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
	a, err := m.Attach(ctx, "v", nbdClient("127.0.0.1:5555"))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := m.Info(ctx, "v")
	if len(got.Connections) != 1 || got.Connections[0].Remote != "127.0.0.1:5555" || got.Connections[0].Protocol != "nbd" || got.Connections[0].Since.IsZero() {
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
	if _, err := m.Attach(ctx, "v", nbdClient("127.0.0.1:1")); !errors.Is(err, volume.ErrNotFound) {
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

func nbdClient(remote string) volume.Client {
	return volume.Client{Protocol: volume.ProtoNBD, Remote: remote}
}

// A volume's access rules hold for every protocol: an address allow-list
// admits only its clients over NBD and iSCSI, and CHAP or an initiator
// list (which NBD cannot check) keeps NBD out unless addresses admit it.
func TestAccessAppliesToEveryProtocol(t *testing.T) {
	ctx := context.Background()
	m := open(t, t.TempDir())
	defer m.Close(ctx)
	m.Create(ctx, "open", 1<<20, volume.CreateOptions{})
	m.Create(ctx, "chap", 1<<20, volume.CreateOptions{Access: &volume.AccessUpdate{CHAPUser: ptr("alice"), CHAPSecret: ptr("0123456789ab")}})
	m.Create(ctx, "addr", 1<<20, volume.CreateOptions{Access: &volume.AccessUpdate{AllowAddresses: []string{"127.0.0.2", "10.1.0.0/16", "::1"}}})
	m.Create(ctx, "cert", 1<<20, volume.CreateOptions{Access: &volume.AccessUpdate{AllowTLSIdentities: []string{"host-a"}}})
	m.Create(ctx, "chapcert", 1<<20, volume.CreateOptions{Access: &volume.AccessUpdate{CHAPUser: ptr("alice"), CHAPSecret: ptr("0123456789ab"), AllowTLSIdentities: []string{"host-a"}}})
	tlsClient := func(id string) volume.Client {
		return volume.Client{Protocol: volume.ProtoNBD, Remote: "127.0.0.1:7", TLSIdentity: id}
	}
	iscsi := func(remote string) volume.Client {
		return volume.Client{Protocol: volume.ProtoISCSI, Remote: remote, Initiator: "iqn.2026-11.io.example:h"}
	}
	cases := []struct {
		vol    string
		client volume.Client
		ok     bool
	}{
		{"open", nbdClient("127.0.0.1:1"), true},
		{"chap", nbdClient("127.0.0.1:1"), false},
		{"chap", iscsi("127.0.0.1:1"), true}, // CHAP is the iSCSI frontend's check
		{"addr", nbdClient("127.0.0.2:9"), true},
		{"addr", nbdClient("127.0.0.1:9"), false},
		{"addr", iscsi("127.0.0.1:9"), false},
		{"addr", iscsi("10.1.200.3:9"), true},
		{"addr", nbdClient("[::ffff:10.1.2.3]:9"), true},
		{"addr", nbdClient("[::1]:9"), true},
		{"addr", nbdClient("[::2]:9"), false},
		{"cert", tlsClient("host-a"), true},
		{"cert", tlsClient("host-b"), false},
		{"cert", nbdClient("127.0.0.1:1"), false},
		{"cert", iscsi("127.0.0.1:1"), false}, // iSCSI cannot show a certificate
		{"chapcert", tlsClient("host-a"), true},
		{"chapcert", nbdClient("127.0.0.1:1"), false},
		{"chapcert", iscsi("127.0.0.1:1"), true}, // CHAP is the iSCSI frontend's check
	}
	for _, c := range cases {
		a, err := m.Attach(ctx, c.vol, c.client)
		if c.ok != (err == nil) {
			t.Errorf("attach %s from %+v: %v, want ok=%v", c.vol, c.client, err, c.ok)
		}
		if err == nil {
			a.Detach()
		} else if !errors.Is(err, volume.ErrDenied) {
			t.Errorf("attach %s from %+v: %v, want ErrDenied", c.vol, c.client, err)
		}
		names, _ := m.List(ctx, c.client)
		if slices.Contains(names, c.vol) != c.ok {
			t.Errorf("List for %+v = %v: %s listed should be %v", c.client, names, c.vol, c.ok)
		}
	}
	// Addresses admit NBD clients to a CHAP volume.
	if _, err := m.UpdateAccess(ctx, "chap", volume.AccessUpdate{AllowAddresses: []string{"127.0.0.0/8"}}); err != nil {
		t.Fatal(err)
	}
	if a, err := m.Attach(ctx, "chap", nbdClient("127.0.0.1:1")); err != nil {
		t.Errorf("NBD client on the address list refused: %v", err)
	} else {
		a.Detach()
	}
	if _, err := m.UpdateAccess(ctx, "open", volume.AccessUpdate{AllowAddresses: []string{"300.1.1.1"}}); !errors.Is(err, volume.ErrInvalid) {
		t.Errorf("bad address accepted: %v", err)
	}
	if in, _ := m.Info(ctx, "addr"); in.Access == nil || !slices.Equal(in.Access.AllowAddresses, []string{"127.0.0.2/32", "10.1.0.0/16", "::1/128"}) {
		t.Errorf("address list shown as %+v", in.Access)
	}
}

// A version 1 catalog kept access control under "iscsi"; it is read as the
// volume's access rules.
func TestCatalogVersion1AccessMigrates(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	m := open(t, dir)
	if _, err := m.Create(ctx, "v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	m.Close(ctx)
	b, _ := os.ReadFile(filepath.Join(dir, "catalog.json"))
	var cat map[string]any
	json.Unmarshal(b, &cat)
	cat["version"] = 1
	rec := cat["volumes"].([]any)[0].(map[string]any)
	rec["iscsi"] = map[string]any{"chap_user": "alice", "chap_secret": "0123456789ab"}
	b, _ = json.Marshal(cat)
	os.WriteFile(filepath.Join(dir, "catalog.json"), b, 0o600)

	m = open(t, dir)
	defer m.Close(ctx)
	if a, err := m.Access(ctx, "v"); err != nil || a.CHAPUser != "alice" || a.CHAPSecret != "0123456789ab" {
		t.Fatalf("access from a version 1 catalog = %+v, %v", a, err)
	}
	if _, err := m.Attach(ctx, "v", nbdClient("127.0.0.1:1")); !errors.Is(err, volume.ErrDenied) {
		t.Errorf("NBD attach of a migrated CHAP volume = %v, want ErrDenied", err)
	}
	m.Resize(ctx, "v", 2<<20) // any change rewrites the catalog
	b, _ = os.ReadFile(filepath.Join(dir, "catalog.json"))
	if !strings.Contains(string(b), `"version": 2`) || strings.Contains(string(b), `"iscsi"`) || !strings.Contains(string(b), `"access"`) {
		t.Errorf("rewritten catalog:\n%s", b)
	}
}

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
	if in.Access == nil || in.Access.CHAPUser != "alice" || len(in.Access.AllowInitiators) != 1 {
		t.Fatalf("info access view = %+v", in.Access)
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
	if in, _ := m.Info(ctx, "sec"); in.Access != nil {
		t.Fatalf("access after clear = %+v", in.Access)
	}
}
