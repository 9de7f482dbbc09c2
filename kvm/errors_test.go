package kvm

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	gwire "github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/kvm/wire"
)

// Errors about VMs carry the gateway's sentinels for their status and
// code, and say what they are about: a VM, never a volume (the
// sentinels' words once named volumes: "no such volume").
func TestVMErrorsSpeakOfVMs(t *testing.T) {
	m := &Manager{log: discardLogger(), vms: map[string]*VM{}, done: map[string]wire.VMInfo{
		"gone": {VMSpec: wire.VMSpec{Name: "gone"}, Migration: &wire.Migration{To: "host-b:9810", Status: "completed"}},
	}}
	h := Handler(m, prometheus.NewRegistry(), discardLogger())
	for _, c := range []struct{ method, path, says string }{
		{"GET", "/v1/vms/nosuch", `vm "nosuch": not found here`},
		{"POST", "/v1/vms/nosuch/start", `vm "nosuch": not found here`},
		{"POST", "/v1/incoming/nosuch/done", `vm "nosuch": not found here`},
		{"POST", "/v1/vms/gone/start", "vm gone migrated to host-b:9810; it is not here any more"},
	} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(c.method, c.path, strings.NewReader("{}")))
		var e gwire.ErrorResponse
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || w.Code != http.StatusNotFound || e.Code != gwire.CodeNotFound ||
			!strings.Contains(e.Error, c.says) || strings.Contains(e.Error, "volume") {
			t.Errorf("%s %s: %d %s (%v), want 404 not_found saying %q and not speaking of volumes", c.method, c.path, w.Code, w.Body, err, c.says)
		}
	}
}
