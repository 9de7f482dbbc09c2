package kvm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	gwire "github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/kvm/client"
	"github.com/ferry-io/ferry/kvm/wire"
)

const testToken = "kvm-test-token-0123456789abcdef"

// TestRequireTokenWiring: the daemon's handler behind RequireToken keeps
// /healthz open, /metrics behind the token unless public, and the API
// behind it; the client's token gets through.
func TestRequireTokenWiring(t *testing.T) {
	m := &Manager{log: discardLogger(), vms: map[string]*VM{}, done: map[string]wire.VMInfo{}}
	for _, public := range []bool{false, true} {
		srv := httptest.NewServer(RequireToken(Handler(m, prometheus.NewRegistry(), discardLogger()), testToken, public))
		for _, c := range []struct {
			path, auth string
			want       int
		}{
			{"/healthz", "", 200},
			{"/v1/vms", "", 401},
			{"/v1/vms", "Bearer wrong-token-0123456789abcdef", 401},
			{"/v1/vms", "Bearer " + testToken, 200},
			{"/metrics", "", map[bool]int{false: 401, true: 200}[public]},
			{"/metrics", "Bearer " + testToken, 200},
		} {
			req, _ := http.NewRequest("GET", srv.URL+c.path, nil)
			if c.auth != "" {
				req.Header.Set("Authorization", c.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var e gwire.ErrorResponse
			json.NewDecoder(resp.Body).Decode(&e)
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("metrics public %v: GET %s with %q: %d, want %d", public, c.path, c.auth, resp.StatusCode, c.want)
			}
			if resp.StatusCode == 401 && (e.Code != gwire.CodeUnauthenticated || !strings.Contains(e.Error, "ferry-kvm")) {
				t.Errorf("401 body %+v", e)
			}
		}
		ctx := context.Background()
		if _, err := client.New(srv.URL).List(ctx); !errors.Is(err, gwire.ErrUnauthenticated) {
			t.Errorf("client without token: %v, want ErrUnauthenticated", err)
		}
		if _, err := client.New(srv.URL, client.WithToken("wrong-token-0123456789abcdef")).List(ctx); !errors.Is(err, gwire.ErrUnauthenticated) {
			t.Errorf("client with a wrong token: %v, want ErrUnauthenticated", err)
		}
		if _, err := client.New(srv.URL, client.WithToken(testToken)).List(ctx); err != nil {
			t.Errorf("client with the token: %v", err)
		}
		if _, err := client.New(srv.URL, client.WithToken(testToken)).Log(ctx, "nope", 10); !errors.Is(err, gwire.ErrNotFound) {
			t.Errorf("log with the token: %v, want ErrNotFound (past the token)", err)
		}
		if _, err := client.New(srv.URL).Log(ctx, "nope", 10); !errors.Is(err, gwire.ErrUnauthenticated) {
			t.Errorf("log without the token: %v, want ErrUnauthenticated", err)
		}
		if _, err := client.New(srv.URL, client.WithToken(testToken)).Console(ctx, "nope"); !errors.Is(err, gwire.ErrNotFound) {
			t.Errorf("console with the token: %v, want ErrNotFound (past the token)", err)
		}
		if _, err := client.New(srv.URL).Console(ctx, "nope"); !errors.Is(err, gwire.ErrUnauthenticated) {
			t.Errorf("console without the token: %v, want ErrUnauthenticated", err)
		}
		srv.Close()
	}
}

// TestMigrationSendsDestinationToken: the source daemon sends
// MigrateRequest.ToToken with its requests to the destination, and a
// migration without it fails with the destination's 401, the VM staying.
func TestMigrationSendsDestinationToken(t *testing.T) {
	for _, tok := range []string{testToken, ""} {
		var (
			mu   sync.Mutex
			seen []string
		)
		mux := http.NewServeMux()
		mux.HandleFunc("POST /v1/incoming", func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen = append(seen, "incoming")
			mu.Unlock()
			reply(w, discardLogger(), http.StatusCreated, wire.IncomingReply{URI: "tcp:127.0.0.1:1", Holder: "host-b:x1"}, nil)
		})
		mux.HandleFunc("DELETE /v1/incoming/x1", func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen = append(seen, "abort")
			mu.Unlock()
			reply(w, discardLogger(), http.StatusOK, struct{}{}, nil)
		})
		dst := httptest.NewServer(RequireToken(mux, testToken, false))

		gw := &srcGateway{fakeGateway: fakeGateway{vols: map[string]gwire.VolumeInfo{"v": {Volume: gwire.Volume{Name: "v", ID: "id-v"}}}}} // Attach: the lease renewed after the failure
		m := &Manager{cfg: Config{Gateway: gw, GatewayAddr: "gw-a:9809", HostID: "host-a"}, log: discardLogger(),
			vms: map[string]*VM{}, done: map[string]wire.VMInfo{},
			migrations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "m"}, []string{"result"})}
		v := &VM{m: m, dir: t.TempDir(), rec: record{Spec: wire.VMSpec{Name: "x1", Disks: []wire.Disk{{Volume: "v"}}},
			State: wire.StateMigrating, Migration: &wire.Migration{To: dst.URL, Status: "setup"}}}
		m.vms["x1"] = v
		// No QEMU here: the migration fails right after the destination
		// answered, which is all this test needs.
		m.runMigration(context.Background(), v, wire.MigrateRequest{To: dst.URL, ToToken: tok})
		dst.Close()

		mu.Lock()
		got := strings.Join(seen, ",")
		mu.Unlock()
		v.mu.Lock()
		mg := *v.rec.Migration
		state := v.rec.State
		v.mu.Unlock()
		if tok != "" && got != "incoming,abort" {
			t.Errorf("with the token the destination saw %q, want incoming,abort", got)
		}
		if tok == "" {
			if got != "" {
				t.Errorf("without the token the destination served %q", got)
			}
			if !strings.Contains(mg.Error, "token") {
				t.Errorf("migration error %q does not name the token", mg.Error)
			}
		}
		if mg.Status != "failed" || state != wire.StateRunning {
			t.Errorf("token %q: migration %s, VM %s; want failed, running", tok, mg.Status, state)
		}
	}
}

// TestAPIOverTLS: the client reaches an https:// daemon (JSON calls and
// the console upgrade) with the daemon's CA, not without it; a source
// daemon with PeerTLS reaches an https:// migration destination.
func TestAPIOverTLS(t *testing.T) {
	m := &Manager{log: discardLogger(), vms: map[string]*VM{}, done: map[string]wire.VMInfo{}}
	srv := httptest.NewUnstartedServer(RequireToken(Handler(m, prometheus.NewRegistry(), discardLogger()), testToken, false))
	srv.EnableHTTP2 = false
	srv.StartTLS()
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	cfg := &tls.Config{RootCAs: pool}
	ctx := context.Background()
	c := client.New(srv.URL, client.WithTLS(cfg), client.WithToken(testToken))
	if _, err := c.List(ctx); err != nil {
		t.Fatalf("list over TLS: %v", err)
	}
	if _, err := c.Console(ctx, "nope"); !errors.Is(err, gwire.ErrNotFound) {
		t.Errorf("console over TLS: %v, want ErrNotFound (past TLS and the token)", err)
	}
	if _, err := client.New(srv.URL, client.WithToken(testToken)).List(ctx); err == nil || errors.Is(err, gwire.ErrUnauthenticated) {
		t.Errorf("list over TLS without the CA: %v, want a certificate error", err)
	}
	if _, err := client.New(srv.URL, client.WithToken(testToken)).Console(ctx, "nope"); err == nil || errors.Is(err, gwire.ErrNotFound) {
		t.Errorf("console over TLS without the CA: %v, want a certificate error", err)
	}

	var reached bool
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/incoming", func(w http.ResponseWriter, r *http.Request) {
		reached = true
		reply(w, discardLogger(), http.StatusCreated, wire.IncomingReply{URI: "tcp:127.0.0.1:1", Holder: "host-b:x1"}, nil)
	})
	mux.HandleFunc("DELETE /v1/incoming/x1", func(w http.ResponseWriter, r *http.Request) {
		reply(w, discardLogger(), http.StatusOK, struct{}{}, nil)
	})
	dst := httptest.NewTLSServer(RequireToken(mux, testToken, false))
	defer dst.Close()
	dpool := x509.NewCertPool()
	dpool.AddCert(dst.Certificate())
	gw := &srcGateway{fakeGateway: fakeGateway{vols: map[string]gwire.VolumeInfo{"v": {Volume: gwire.Volume{Name: "v", ID: "id-v"}}}}}
	src := &Manager{cfg: Config{Gateway: gw, HostID: "host-a", PeerTLS: &tls.Config{RootCAs: dpool}}, log: discardLogger(),
		vms: map[string]*VM{}, done: map[string]wire.VMInfo{},
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "m"}, []string{"result"})}
	v := &VM{m: src, dir: t.TempDir(), rec: record{Spec: wire.VMSpec{Name: "x1", Disks: []wire.Disk{{Volume: "v"}}},
		State: wire.StateMigrating, Migration: &wire.Migration{To: dst.URL, Status: "setup"}}}
	src.vms["x1"] = v
	src.runMigration(ctx, v, wire.MigrateRequest{To: dst.URL, ToToken: testToken})
	if !reached {
		v.mu.Lock()
		t.Errorf("the https:// destination was not reached: %s", v.rec.Migration.Error)
		v.mu.Unlock()
	}
}
