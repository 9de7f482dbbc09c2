package jsonapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ferry-io/ferry/gateway/api/wire"
)

func TestMuxAnswersUnroutedRequestsWithJSON(t *testing.T) {
	m := NewMux("the test API")
	m.HandleFunc("GET /v1/things/{name}", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"name": r.PathValue("name")})
	})
	m.HandleFunc("DELETE /v1/things/{name}", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	m.HandleFunc("GET /tree/", func(w http.ResponseWriter, r *http.Request) {})

	for _, c := range []struct {
		method, path string
		status       int
		code, allow  string
		says         string
	}{
		{"GET", "/v1/things/a", http.StatusOK, "", "", `"name": "a"`},
		{"PUT", "/v1/things/a", http.StatusMethodNotAllowed, wire.CodeInvalid, "DELETE, GET, HEAD", "PUT /v1/things/a: the test API takes only DELETE, GET, HEAD here"},
		{"GET", "/v1/nothing", http.StatusNotFound, wire.CodeNotFound, "", "GET /v1/nothing: the test API has no such endpoint"},
		{"POST", "/", http.StatusNotFound, wire.CodeNotFound, "", "POST /: the test API has no such endpoint"},
		// ServeMux's redirects pass as they are.
		{"GET", "/tree", http.StatusTemporaryRedirect, "", "", ""},
		{"GET", "/v1/./things/a", http.StatusTemporaryRedirect, "", "", ""},
	} {
		w := httptest.NewRecorder()
		m.ServeHTTP(w, httptest.NewRequest(c.method, c.path, nil))
		if w.Code != c.status {
			t.Errorf("%s %s: %d, want %d: %s", c.method, c.path, w.Code, c.status, w.Body)
			continue
		}
		if got := w.Header().Get("Allow"); got != c.allow {
			t.Errorf("%s %s: Allow %q, want %q", c.method, c.path, got, c.allow)
		}
		if !strings.Contains(w.Body.String(), c.says) {
			t.Errorf("%s %s: %s, want it to say %q", c.method, c.path, w.Body, c.says)
		}
		if c.code == "" {
			continue
		}
		var e wire.ErrorResponse
		if ct := w.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: Content-Type %q", c.method, c.path, ct)
		}
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Code != c.code {
			t.Errorf("%s %s: %s (%v), want code %q", c.method, c.path, w.Body, err, c.code)
		}
	}
}

func TestCallerReadsMuxErrors(t *testing.T) {
	m := NewMux("the test API")
	m.HandleFunc("GET /v1/things", func(w http.ResponseWriter, r *http.Request) {})
	srv := httptest.NewServer(m)
	defer srv.Close()
	c := Caller{Base: srv.URL, HC: srv.Client(), What: "the test API"}
	err := c.Do(context.Background(), http.MethodGet, "/v1/other", nil, nil)
	if !errors.Is(err, wire.ErrNotFound) || !strings.Contains(err.Error(), "has no such endpoint") {
		t.Errorf("unknown endpoint: %v", err)
	}
	err = c.Do(context.Background(), http.MethodPost, "/v1/things", struct{}{}, nil)
	var e *Error
	if !errors.Is(err, wire.ErrInvalid) || !errors.As(err, &e) || e.Status != http.StatusMethodNotAllowed {
		t.Errorf("wrong method: %v", err)
	}
}
