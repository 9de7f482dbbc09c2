package api

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

func TestRequireToken(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	h := RequireToken(ok, "s3cret-token-0123456789abcdef", "/healthz")
	for _, c := range []struct {
		path, auth string
		want       int
	}{
		{"/healthz", "", 204},
		{"/v1/volumes", "", 401},
		{"/v1/volumes", "Bearer s3cret-token-0123456789abcdef", 204},
		{"/v1/volumes", "Bearer s3cret-token-0123456789abcdeF", 401},
		{"/v1/volumes", "Basic s3cret-token-0123456789abcdef", 401},
		{"/v1/volumes", "Bearer ", 401},
		{"/healthz/../v1/volumes", "", 401},
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
		if w.Code == 401 && w.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("401 without WWW-Authenticate")
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
	os.WriteFile(p, []byte("tiny\n"), 0o600)
	if _, _, err := LoadOrCreateToken(p); err == nil {
		t.Error("a 4-character token accepted")
	}
}
