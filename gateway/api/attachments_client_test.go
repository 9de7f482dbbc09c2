package api_test

import (
	"context"
	"errors"
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

// Attachments through the client: the reclaim grace answers 503, another
// host's hold is ErrBusy naming the holder, unknown volumes ErrNotFound.
func TestAttachmentsThroughClient(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	m, err := volume.Open(ctx, volume.Config{DataDir: t.TempDir(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(ctx)
	srv := httptestServer(t, api.Handler(api.Config{Manager: m, Gatherer: reg}))
	c := client.New(srv)
	if _, err := c.CreateVolume(ctx, "a", 10<<20, nil); err != nil {
		t.Fatal(err)
	}
	_, err = c.Attach(ctx, "a", "host-a", wire.AttachRequest{Protocol: "fuse"})
	var ae *client.APIError
	if !errors.Is(err, wire.ErrBusy) || !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
		t.Fatalf("new attachment during the start-up grace: %v", err)
	}
	if _, err := c.Attach(ctx, "a", "host-a", wire.AttachRequest{Protocol: "fuse", Reclaim: true}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Attach(ctx, "a", "host-b", wire.AttachRequest{Protocol: "fuse", Reclaim: true})
	if !errors.Is(err, wire.ErrBusy) || !strings.Contains(err.Error(), `"host-a"`) {
		t.Fatalf("second host: %v", err)
	}
	if l, err := c.Attachments(ctx, "a"); err != nil || len(l) != 1 || l[0].Host != "host-a" {
		t.Fatalf("list: %v %+v", err, l)
	}
	if err := c.Detach(ctx, "a", "host-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Attach(ctx, "a", "host-b", wire.AttachRequest{Protocol: "fuse", Reclaim: true}); err != nil {
		t.Fatalf("after detach: %v", err)
	}
	if _, err := c.Attach(ctx, "zz", "host-a", wire.AttachRequest{Reclaim: true}); !errors.Is(err, wire.ErrNotFound) {
		t.Fatalf("unknown volume: %v", err)
	}
	if _, err := c.Attach(ctx, "a", "bad host", wire.AttachRequest{Reclaim: true}); !errors.Is(err, wire.ErrInvalid) {
		t.Fatalf("bad host: %v", err)
	}
}

func httptestServer(t *testing.T, h http.Handler) string {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}
