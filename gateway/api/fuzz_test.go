package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-io/ferry/gateway/api"
	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/jsonapi"
	"github.com/ferry-io/ferry/internal/testutil"
)

// FuzzHandler sends arbitrary requests to the API's handler over a real
// volume manager (a local pool in a temporary directory): whatever the
// method, path and body, the handler must not panic, must answer a client's
// mistake with a 4xx, never a 500, and every error must be JSON that says
// what was wrong (an unknown endpoint or method too). POST /v1/stores is left out: adding a store dials
// its endpoint, and a fuzzer's endpoint could be any address. Without a
// store, adoptions and moves fail before they reach the network.
func FuzzHandler(f *testing.F) {
	ctx := context.Background()
	m, err := volume.Open(ctx, volume.Config{DataDir: f.TempDir(), Registerer: prometheus.NewRegistry()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { m.Close(ctx) })
	gw := api.Gateway{Listeners: []wire.Listener{
		{Protocol: wire.ListenerNBD, Address: "127.0.0.1:10809"},
		{Protocol: wire.ListenerISCSI, Address: "127.0.0.1:3260"},
	}, ISCSIBaseIQN: "iqn.2026-11.io.ferry"}
	h := api.Handler(api.Config{Manager: m, Gateway: gw})
	mux := h.(*jsonapi.Mux) // to tell which route a request takes

	for _, s := range []struct {
		method byte
		path   string
		body   string
	}{
		{0, "/v1/volumes", ""},
		{1, "/v1/volumes", `{"name":"a","size":16777216}`},
		{1, "/v1/volumes", `{"name":"b","size":1048576,"access":{"chap_user":"alice","chap_secret":"0123456789abcdef","allow_initiators":["iqn.x"],"allow_addresses":["127.0.0.1/8"]}}`},
		{1, "/v1/volumes", `{"name":"c","size":-1}`},
		{1, "/v1/volumes", `{"name":"d","size":9223372036854775807}`},
		{1, "/v1/volumes", `{"name":"e","size":1048576,"store":"s3","chunk_size":3}`},
		{0, "/v1/volumes/a", ""},
		{3, "/v1/volumes/a", `{"size":33554432}`},
		{3, "/v1/volumes/a", `{"size":1}`},
		{3, "/v1/volumes/a", `{"access":{"clear_chap":true,"iscsi_without_chap":true,"allow_tls_identities":["bob"]}}`},
		{1, "/v1/volumes/a/snapshots", `{"name":"s1"}`},
		{0, "/v1/volumes/a/snapshots", ""},
		{1, "/v1/clones", `{"source":"a@s1","name":"f"}`},
		{1, "/v1/clones", `{"source":"a@","name":""}`},
		{4, "/v1/volumes/a/snapshots/s1", ""},
		{1, "/v1/volumes/a/checkpoint", ""},
		{0, "/v1/volumes/a/location", ""},
		{1, "/v1/volumes/a/release", ""},
		{1, "/v1/adopt", `{"store":"s3","volume":"a"}`},
		{1, "/v1/volumes/a/migrate", `{"to_store":"s3"}`},
		{4, "/v1/volumes/a/migrate", ""},
		{2, "/v1/volumes/a/attachments/host1", `{"mode":"rw"}`},
		{0, "/v1/volumes/a/attachments", ""},
		{4, "/v1/volumes/a/attachments/host1", ""},
		{0, "/v1/stores", ""},
		{0, "/v1/stores/s3/volumes", ""},
		{4, "/v1/stores/s3", ""},
		{0, "/v1/pool", ""},
		{0, "/v1/status", ""},
		{0, "/readyz", ""},
		{4, "/v1/volumes/a?force=1", ""},
		{2, "/v1/volumes/a", `{}`},   // a method the route does not take
		{0, "/v1/no-such-thing", ""}, // a path no route has
	} {
		f.Add(s.method, s.path, []byte(s.body))
	}
	methods := []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}
	f.Fuzz(func(t *testing.T, method byte, path string, body []byte) {
		r, ok := testutil.FuzzRequest(methods, method, "http://gateway", path, body)
		if !ok {
			return
		}
		if _, pattern := mux.Handler(r); pattern == "POST /v1/stores" {
			return
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code >= 500 {
			t.Fatalf("%s %s %q: %d %s", r.Method, path, body, w.Code, w.Body)
		}
		if w.Code >= 400 {
			if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Fatalf("%s %s %q: %d as %q, not JSON: %s", r.Method, path, body, w.Code, ct, w.Body)
			}
			var e wire.ErrorResponse
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" || e.Code == "" {
				t.Fatalf("%s %s %q: %d with an error that says nothing: %s (%v)", r.Method, path, body, w.Code, w.Body, err)
			}
		}
	})
}
