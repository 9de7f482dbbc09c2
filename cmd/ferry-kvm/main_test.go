package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestNameLast(t *testing.T) {
	for _, c := range []struct{ in, want []string }{
		{[]string{"k", "vm", "create", "web", "--cpus", "2"}, []string{"k", "vm", "create", "--cpus", "2", "web"}},
		{[]string{"k", "vm", "--api", "h:1", "stop", "web", "--force"}, []string{"k", "vm", "--api", "h:1", "stop", "--force", "web"}},
		{[]string{"k", "vm", "info", "web"}, []string{"k", "vm", "info", "web"}},
		{[]string{"k", "vm", "stop", "--force", "web"}, []string{"k", "vm", "stop", "--force", "web"}},
		{[]string{"k", "serve", "--listen", "x"}, []string{"k", "serve", "--listen", "x"}},
	} {
		if got := nameLast(c.in); !slices.Equal(got, c.want) {
			t.Errorf("nameLast(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

// The daemon's flags work before the vm subcommand and after it (and
// after the VM's name); given after, they win over before.
func TestDaemonFlagsEitherSide(t *testing.T) {
	var hits []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits = append(hits, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"name":"web","state":"stopped"}`)
	}))
	defer srv.Close()
	tokenFile := filepath.Join(t.TempDir(), "api-token")
	if err := os.WriteFile(tokenFile, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FERRY_KVM_API", "127.0.0.1:1") // nothing listens: the flags must win
	for _, args := range [][]string{
		{"ferry-kvm", "vm", "--api", srv.URL, "info", "web", "--token-file", tokenFile},
		{"ferry-kvm", "vm", "info", "web", "--api", srv.URL, "--token-file", tokenFile},
		{"ferry-kvm", "vm", "info", "--api", srv.URL, "--token-file", tokenFile, "web"},
		{"ferry-kvm", "vm", "--api", "127.0.0.1:1", "--token-file", tokenFile, "info", "web", "--api", srv.URL},
	} {
		hits = nil
		if err := newApp().Run(nameLast(args)); err != nil {
			t.Errorf("%v: %v", args[1:], err)
			continue
		}
		if want := "GET /v1/vms/web Bearer 0123456789abcdef0123456789abcdef"; !slices.Equal(hits, []string{want}) {
			t.Errorf("%v: requests %q, want %q", args[1:], hits, want)
		}
	}
}
