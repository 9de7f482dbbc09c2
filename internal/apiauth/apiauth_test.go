package apiauth

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-io/ferry/gateway/api/wire"
)

func TestRequireToken(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	h := RequireToken(ok, "s3cret-token-0123456789abcdef", Messages{Missing: "need it", Wrong: "not it"}, "/healthz")
	for _, c := range []struct {
		path, auth, msg string
		want            int
	}{
		{"/healthz", "", "", 204},
		{"/v1/volumes", "", "need it", 401},
		{"/v1/volumes", "Bearer s3cret-token-0123456789abcdef", "", 204},
		{"/v1/volumes", "Bearer s3cret-token-0123456789abcdeF", "not it", 401},
		{"/v1/volumes", "Basic s3cret-token-0123456789abcdef", "need it", 401},
		{"/v1/volumes", "Bearer ", "not it", 401},
		{"/healthz/../v1/volumes", "", "need it", 401},
	} {
		req := httptest.NewRequest("GET", c.path, nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != c.want {
			t.Errorf("GET %s with %q: %d, want %d", c.path, c.auth, w.Code, c.want)
		}
		if w.Code != 401 {
			continue
		}
		if w.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("401 without WWW-Authenticate")
		}
		var e wire.ErrorResponse
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Code != wire.CodeUnauthenticated || e.Error != c.msg {
			t.Errorf("GET %s with %q: body %q (%v), want code %s and %q", c.path, c.auth, w.Body, err, wire.CodeUnauthenticated, c.msg)
		}
	}
}

func TestLoadOrCreateToken(t *testing.T) {
	p := filepath.Join(t.TempDir(), TokenFile)
	tok, created, err := LoadOrCreateToken(p)
	if err != nil || !created || len(tok) != 43 {
		t.Fatalf("first: %q %v %v", tok, created, err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode().Perm())
	}
	tok2, created, err := LoadOrCreateToken(p)
	if err != nil || created || tok2 != tok {
		t.Fatalf("second: %q %v %v", tok2, created, err)
	}
	if got, err := wire.ReadTokenFile(p); err != nil || got != tok {
		t.Errorf("wire.ReadTokenFile: %q %v", got, err)
	}
	os.WriteFile(p, []byte("tiny\n"), 0o600)
	if _, _, err := LoadOrCreateToken(p); err == nil {
		t.Error("a 4-character token accepted")
	}
}

func TestClientToken(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(p, []byte("from-the-file-0123456789\n"), 0o600)
	for _, c := range []struct {
		value, file, want string
		bad               bool
	}{
		{"", "", "", false},
		{"from-the-flag-0123456789", p, "from-the-flag-0123456789", false},
		{"", p, "from-the-file-0123456789", false},
		{"short", "", "", true},
		{"", p + ".missing", "", true},
	} {
		got, err := ClientToken(c.value, c.file, "--token")
		if got != c.want || (err != nil) != c.bad {
			t.Errorf("ClientToken(%q, %q) = %q, %v", c.value, c.file, got, err)
		}
	}
}

func TestNeedToken(t *testing.T) {
	for _, c := range []struct {
		mode               string
		insecure, loopback bool
		want               bool
		err                bool
	}{
		{ModeAuto, false, true, false, false},
		{ModeAuto, false, false, true, false},
		{ModeToken, false, true, true, false},
		{ModeNone, false, true, false, false},
		{ModeNone, false, false, false, true},
		{ModeNone, true, false, false, false},
		{"maybe", false, true, false, true},
	} {
		got, err := NeedToken(c.mode, c.insecure, c.loopback)
		if got != c.want || (err != nil) != c.err {
			t.Errorf("NeedToken(%q, %v, %v) = %v, %v", c.mode, c.insecure, c.loopback, got, err)
		}
		if c.mode == ModeNone && c.err && !errors.Is(err, ErrInsecure) {
			t.Errorf("none off loopback: %v, want ErrInsecure", err)
		}
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:9810": true, "[::1]:9810": true, "localhost:1": true, "127.0.0.2": true, "::1": true,
		"0.0.0.0:9810": false, ":9810": false, "[::]:9810": false, "10.0.0.1:9810": false, "example.com:1": false, "": false,
	} {
		if got := IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v", addr, got)
		}
	}
}
