package jsonapi

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/ferry-io/ferry/gateway/api/wire"
)

// WriteJSON replies status with v as indented JSON.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// Mux is an http.ServeMux whose requests no route takes get a
// wire.ErrorResponse, as every other failure does, instead of ServeMux's
// plain-text reply: 404 with wire.CodeNotFound for a path no route has,
// 405 with wire.CodeInvalid and ServeMux's Allow header for a route asked
// with a method it does not take. ServeMux's redirects (to a cleaned path,
// or to a subtree's trailing slash) pass unchanged. Register routes with
// the embedded ServeMux's Handle and HandleFunc; its Handler tells which
// route a request takes.
type Mux struct {
	*http.ServeMux
	what string
}

// NewMux returns an empty Mux; what names the API in its messages (e.g.
// "the gateway API").
func NewMux(what string) *Mux {
	return &Mux{ServeMux: http.NewServeMux(), what: what}
}

// ServeHTTP serves r by its route, or answers that none takes it.
func (m *Mux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, pattern := m.Handler(r)
	if pattern != "" {
		// ServeMux.ServeHTTP, not h: it sets the request's path values.
		m.ServeMux.ServeHTTP(w, r)
		return
	}
	var c captured
	h.ServeHTTP(&c, r)
	switch c.status {
	case http.StatusMethodNotAllowed:
		allow := c.header.Get("Allow")
		w.Header().Set("Allow", allow)
		WriteJSON(w, c.status, wire.ErrorResponse{
			Error: fmt.Sprintf("%s %s: %s takes only %s here", r.Method, r.URL.Path, m.what, allow),
			Code:  wire.CodeInvalid})
	case http.StatusNotFound:
		WriteJSON(w, c.status, wire.ErrorResponse{
			Error: fmt.Sprintf("%s %s: %s has no such endpoint", r.Method, r.URL.Path, m.what),
			Code:  wire.CodeNotFound})
	default:
		// A redirect to a path no route has, say: ServeMux's reply.
		m.ServeMux.ServeHTTP(w, r)
	}
}

// captured is the ResponseWriter Mux hands ServeMux's own reply to: it
// keeps the status and headers and drops the plain-text body.
type captured struct {
	header http.Header
	status int
}

func (c *captured) Header() http.Header {
	if c.header == nil {
		c.header = http.Header{}
	}
	return c.header
}

func (c *captured) WriteHeader(status int) {
	if c.status == 0 {
		c.status = status
	}
}

func (c *captured) Write(b []byte) (int, error) {
	c.WriteHeader(http.StatusOK)
	return len(b), nil
}
