package kvm

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-io/ferry/gateway/api"
	gwclient "github.com/ferry-io/ferry/gateway/api/client"
	gwire "github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/jsonapi"
	"github.com/ferry-io/ferry/internal/testutil"
	"github.com/ferry-io/ferry/kvm/client"
)

// FuzzHandler sends arbitrary requests to ferry-kvm's API over a real
// manager whose gateway is a real one in process (a local pool in a
// temporary directory), and whose "QEMU" is a stub that exits at once, so
// no VM ever runs. Whatever the method, path and body, the handler must
// not panic; every error must be JSON that says what was wrong (an unknown
// endpoint or method too), a client's mistake (4xx) with its code; a
// server error (500) is allowed only for a VM whose QEMU failed; nothing
// may be created beside the state directory. Migrations and their
// incoming side (/v1/incoming...) are in: other ferry-kvms are one that
// refuses every call, and other gateways the in-process one, so no
// address a body names is ever dialled. Left out: the console, which
// needs a real connection to hijack.
func FuzzHandler(f *testing.F) {
	ctx := context.Background()
	vm, err := volume.Open(ctx, volume.Config{DataDir: f.TempDir(), Registerer: prometheus.NewRegistry()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { vm.Close(ctx) })
	gsrv := httptest.NewServer(api.Handler(api.Config{Manager: vm, Gateway: api.Gateway{Listeners: []gwire.Listener{{Protocol: gwire.ListenerNBD, Address: "127.0.0.1:1"}}}}))
	f.Cleanup(gsrv.Close)

	base := f.TempDir()
	qemu := filepath.Join(f.TempDir(), "qemu-stub")
	if err := os.WriteFile(qemu, []byte("#!/bin/sh\necho 'qemu-stub: the fuzzer runs no VM' >&2\nexit 1\n"), 0o755); err != nil {
		f.Fatal(err)
	}
	kernel := filepath.Join(f.TempDir(), "vmlinuz")
	if err := os.WriteFile(kernel, nil, 0o644); err != nil {
		f.Fatal(err)
	}
	state := filepath.Join(base, "a", "state")
	m, err := New(ctx, Config{Gateway: gwclient.New(gsrv.URL), StateDir: state, HostID: "fuzz", QEMU: qemu, Logger: discardLogger()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(m.Close)
	m.newGateway = func(string) Gateway { return gwclient.New(gsrv.URL) } // never another address
	// Another ferry-kvm (a migration's destination or source) is one that
	// refuses everything: no address a body names is ever dialled.
	peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		jsonapi.WriteJSON(w, http.StatusServiceUnavailable, gwire.ErrorResponse{Error: "the fuzzer's peer refuses"})
	}))
	f.Cleanup(peer.Close)
	m.newPeer = func(string) *client.Client { return client.New(peer.URL) }
	h := Handler(m, prometheus.NewRegistry(), discardLogger())
	mux := h.(*jsonapi.Mux) // to tell which route a request takes

	for _, s := range []struct {
		method byte
		path   string
		body   string
	}{
		{0, "/v1/vms", ""},
		{1, "/v1/vms", `{"name":"v1","cpus":1,"memory_mib":64,"new_disks":[{"name":"v1-root","size":16777216}]}`},
		{1, "/v1/vms", `{"name":"v2","memory_mib":64,"kernel":"` + kernel + `","append":"console=ttyS0","net":"none","accel":"tcg","autostart":true}`},
		{1, "/v1/vms", `{"name":"v3","memory_mib":64,"disks":[{"volume":"v1-root"}],"net":"tap:x"}`},
		{1, "/v1/vms", `{"name":"../v4","memory_mib":-1,"new_disks":[{"name":"../x","size":-1,"store":"s3"}],"accel":"xen","net":"bridge:"}`},
		{1, "/v1/vms", `{"name":"v5","memory_mib":64,"cdrom":"/nonexistent","initrd":"/etc/hostname"}`},
		{1, "/v1/vms", `{"name":"v6","memory_mib":9223372036854775807,"kernel":"` + kernel + `"}`},
		{0, "/v1/vms/v1", ""},
		{1, "/v1/vms/v1/start", ""},
		{1, "/v1/vms/v1/stop", `{"force":true}`},
		{1, "/v1/vms/v1/stop", `{"timeout":"x"}`},
		{0, "/v1/vms/v1/log?bytes=-5", ""},
		{0, "/v1/vms/v1/log?bytes=99999999999999999999", ""},
		{3, "/v1/vms/v1?keep-disks=1", ""},
		{3, "/v1/vms/v2", ""},
		{0, "/healthz", ""},
		{0, "/metrics", ""},
		{2, "/v1/vms/v1", `{}`},
		{1, "/v1/vms/v1/migrate", `{"to":"127.0.0.1:1","to_token":"t","max_bandwidth":-1}`},
		{1, "/v1/vms/v1/migrate", `{"to":""}`},
		{1, "/v1/incoming", `{"spec":{"name":"in1","memory_mib":64,"disks":[{"volume":"v1-root"}]},"source_host":"h"}`},
		{1, "/v1/incoming", `{"spec":{"name":"in2","memory_mib":64,"disks":[{"volume":"x"}]},"source_host":"h","disks":[{"volume":"x","nbd_url":"nbd://127.0.0.1:1/x"}],"source_gateway":"127.0.0.1:1","source_api":"127.0.0.1:1"}`},
		{1, "/v1/incoming", `{"spec":{"name":"in3","memory_mib":64},"disks":[{"volume":"x","nbd_url":"::"}]}`},
		{1, "/v1/incoming/in1/done", `{"disks":[{"volume":"x","nbd_url":"nbd://127.0.0.1:1/x"}],"note":"n"}`},
		{1, "/v1/incoming/in1/park", ""},
		{1, "/v1/incoming/in1/adopt", `{"volumes":["x","../y"]}`},
		{3, "/v1/incoming/in1", ""},
	} {
		f.Add(s.method, s.path, []byte(s.body))
	}
	methods := []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete}
	f.Fuzz(func(t *testing.T, method byte, path string, body []byte) {
		r, ok := testutil.FuzzRequest(methods, method, "http://kvm", path, body)
		if !ok {
			return
		}
		if _, pattern := mux.Handler(r); strings.HasSuffix(pattern, "/console") {
			return
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code >= 400 {
			if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Fatalf("%s %s %q: %d as %q, not JSON: %s", r.Method, path, body, w.Code, ct, w.Body)
			}
			var e gwire.ErrorResponse
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("%s %s %q: %d with an error that says nothing: %s (%v)", r.Method, path, body, w.Code, w.Body, err)
			}
			switch {
			case w.Code < 500 && e.Code == "":
				t.Fatalf("%s %s %q: %d without a code: %s", r.Method, path, body, w.Code, w.Body)
			case w.Code >= 500 && !strings.Contains(e.Error, "qemu-stub"):
				t.Fatalf("%s %s %q: %d for what is not QEMU's failure: %s", r.Method, path, body, w.Code, w.Body)
			}
		}
		for _, in := range m.List() {
			if total, err := hostMemory(); err == nil && in.MemoryMiB > total>>20 {
				t.Fatalf("%s %s %q: VM %s defined with %d MiB of memory, more than the host's %d", r.Method, path, body, in.Name, in.MemoryMiB, total>>20)
			}
		}
		if p, err := testutil.Stray(map[string]string{base: "a", filepath.Join(base, "a"): "state"}); err != nil || p != "" {
			t.Fatalf("%s %s %q: created %s beside the state directory (%v)", r.Method, path, body, p, err)
		}
	})
}
