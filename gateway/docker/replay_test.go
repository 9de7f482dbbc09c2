package docker

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/ferry-io/ferry/gateway/api/client"
	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/bootid"
)

// The FUSE path keeps a replay copy unless the gateway says this host's
// kernel holds the volume's acknowledged writes.
func TestReplayNeeded(t *testing.T) {
	ctx := t.Context()
	log := slog.New(slog.DiscardHandler)
	gw := testGateway(t)
	if _, err := gw.CreateVolume(ctx, "replay-local", 1<<20, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.RemoveVolume(ctx, "replay-local", false) })
	if replayNeeded(ctx, &Lease{Gateway: gw, Volume: "replay-local"}, log) {
		t.Error("a local volume of a gateway on this kernel: replay copy kept")
	}
	if !replayNeeded(ctx, &Lease{Gateway: gw, Volume: "replay-missing"}, log) {
		t.Error("a volume the gateway does not know: no replay copy")
	}
	if !replayNeeded(ctx, &Lease{Gateway: client.New("http://127.0.0.1:1"), Volume: "replay-local"}, log) {
		t.Error("a gateway that cannot be asked: no replay copy")
	}
	for _, heldBy := range []string{"", "00000000-0000-0000-0000-000000000000", bootid.Get() + "x"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			json.NewEncoder(w).Encode(wire.VolumeInfo{Volume: wire.Volume{Name: "v", WritesHeldBy: heldBy}})
		}))
		if !replayNeeded(ctx, &Lease{Gateway: client.New(srv.URL), Volume: "v"}, log) {
			t.Errorf("writes held by kernel %q: no replay copy", heldBy)
		}
		srv.Close()
	}
}
