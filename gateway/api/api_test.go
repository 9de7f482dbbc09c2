package api_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-io/ferry/gateway/api"
	"github.com/ferry-io/ferry/gateway/api/client"
	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/gateway/volume"
)

func TestClientServerRoundTrip(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	m, err := volume.Open(ctx, volume.Config{DataDir: t.TempDir(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(ctx)
	srv := httptest.NewServer(api.Handler(api.Config{Manager: m, Gatherer: reg}))
	defer srv.Close()
	c := client.New(srv.URL)

	if err := c.Healthy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVolume(ctx, "a", 10<<20, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVolume(ctx, "a", 10<<20, nil); !errors.Is(err, wire.ErrExists) || errors.Is(err, wire.ErrBusy) || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("duplicate create: %v", err)
	}
	if _, err := c.CreateVolume(ctx, "B", 10<<20, nil); !errors.Is(err, wire.ErrInvalid) {
		t.Fatalf("bad name: %v", err)
	}
	if _, err := c.Volume(ctx, "zz"); !errors.Is(err, wire.ErrNotFound) || err.Error() != `volume "zz": not found` {
		t.Fatalf("unknown: %v", err)
	}
	// Errors name what they are about: a store or a snapshot that is not
	// there is not "no such volume".
	if _, err := c.Store(ctx, "zz"); !errors.Is(err, wire.ErrNotFound) || err.Error() != `store "zz": not found` {
		t.Fatalf("unknown store: %v", err)
	}
	if err := c.RemoveSnapshot(ctx, "a", "zz"); !errors.Is(err, wire.ErrNotFound) || strings.Contains(err.Error(), "volume") {
		t.Fatalf("unknown snapshot: %v", err)
	}
	in, err := c.ResizeVolume(ctx, "a", 20<<20)
	if err != nil || in.Size != 20<<20 {
		t.Fatalf("resize: %+v %v", in, err)
	}
	vs, err := c.Volumes(ctx)
	if err != nil || len(vs) != 1 || vs[0].Name != "a" {
		t.Fatalf("list: %+v %v", vs, err)
	}
	p, err := c.Pool(ctx)
	if err != nil || p.Volumes != 1 || p.Provisioned != 20<<20 || len(p.Dirs) != 1 {
		t.Fatalf("pool: %+v %v", p, err)
	}
	if err := c.RemoveVolume(ctx, "a", false); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveVolume(ctx, "a", false); !errors.Is(err, wire.ErrNotFound) {
		t.Fatalf("second remove: %v", err)
	}
	// Bad sizes and access settings are 400s, not 500s, and replies never
	// carry secrets.
	if _, err := c.CreateVolume(ctx, "b", 1<<20, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ResizeVolume(ctx, "b", -1); !errors.Is(err, wire.ErrInvalid) {
		t.Fatalf("negative resize: %v", err)
	}
	secret := "0123456789abcdef"
	user := "alice"
	in, err = c.UpdateVolume(ctx, "b", wire.UpdateRequest{Access: &wire.AccessUpdate{CHAPUser: &user, CHAPSecret: &secret}})
	if err != nil || in.Access == nil || in.Access.CHAPUser != "alice" {
		t.Fatalf("update access: %+v %v", in, err)
	}
	short := "x"
	if _, err := c.UpdateVolume(ctx, "b", wire.UpdateRequest{Access: &wire.AccessUpdate{CHAPSecret: &short}}); !errors.Is(err, wire.ErrInvalid) {
		t.Fatalf("short secret: %v", err)
	}
	resp, err := http.Get(srv.URL + "/v1/volumes")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(body), secret) {
		t.Fatal("volume listing leaks the CHAP secret")
	}
}

func TestUnreachableGatewayError(t *testing.T) {
	c := client.New("127.0.0.1:1")
	_, err := c.Volumes(context.Background())
	if err == nil || !strings.Contains(err.Error(), "ferry serve") {
		t.Fatalf("error should tell the user what to do: %v", err)
	}
}

// A volume's iSCSI attach details name the CHAP users a login needs: the
// volume's own, or the gateway's default for a volume without its own;
// no secret ever.
func TestISCSIAttachCHAPUsers(t *testing.T) {
	ctx := context.Background()
	m, err := volume.Open(ctx, volume.Config{DataDir: t.TempDir(), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(ctx)
	gw := api.Gateway{Listeners: []wire.Listener{{Protocol: wire.ListenerISCSI, Address: "127.0.0.1:3260"}}, ISCSIBaseIQN: "iqn.x",
		ISCSIDefaultCHAPUser: "gwdef", ISCSIDefaultMutualUser: "gw-default"}
	srv := httptest.NewServer(api.Handler(api.Config{Manager: m, Gateway: gw}))
	defer srv.Close()
	c := client.New(srv.URL)
	str := func(s string) *string { return &s }
	if _, err := c.CreateVolume(ctx, "own", 10<<20, &wire.AccessUpdate{CHAPUser: str("alice"), CHAPSecret: str("alice-secret-1"), MutualUser: str("gw-own"), MutualSecret: str("target-secret-1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVolume(ctx, "plain", 10<<20, nil); err != nil {
		t.Fatal(err)
	}
	for vol, want := range map[string][2]string{"own": {"alice", "gw-own"}, "plain": {"gwdef", "gw-default"}} {
		in, err := c.Volume(ctx, vol)
		if err != nil || in.Attach.ISCSI == nil || in.Attach.ISCSI.CHAPUser != want[0] || in.Attach.ISCSI.MutualUser != want[1] {
			t.Errorf("volume %s: iSCSI attach %+v (%v), want CHAP users %v", vol, in.Attach.ISCSI, err, want)
		}
	}
	resp, err := http.Get(srv.URL + "/v1/volumes/own")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if b, _ := io.ReadAll(resp.Body); strings.Contains(string(b), "secret-1") {
		t.Errorf("volume info shows a secret: %s", b)
	}
}
