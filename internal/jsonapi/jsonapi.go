// Package jsonapi is the JSON-over-HTTP plumbing Ferry's two admin APIs
// share (the gateway's and ferry-kvm's). Clients: a request with an
// optional JSON body and bearer token, and error replies turned into
// *Error, which unwraps to the wire sentinel the reply's code names.
// Servers: WriteJSON, and Mux, which gives requests no route takes a
// wire.ErrorResponse like every other failure. It imports only the
// standard library and package wire.
package jsonapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/ferry-io/ferry/gateway/api/wire"
)

// TLSTransport is http.DefaultTransport's settings (proxy, timeouts,
// idle-connection limits) with cfg for https:// servers.
func TLSTransport(cfg *tls.Config) http.RoundTripper {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return tr
}

// Error is an error reply. It unwraps to the wire sentinel its code names
// (or, from a server that sends no code, the one its status implies), so
// callers use errors.Is.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Unwrap maps the reply back to a sentinel.
func (e *Error) Unwrap() error {
	if err := wire.ErrOf(e.Code); err != nil {
		return err
	}
	switch e.Status {
	case http.StatusBadRequest:
		return wire.ErrInvalid
	case http.StatusNotFound:
		return wire.ErrNotFound
	case http.StatusConflict:
		return wire.ErrBusy
	case http.StatusForbidden:
		return wire.ErrDenied
	case http.StatusUnauthorized:
		return wire.ErrUnauthenticated
	}
	return nil
}

// Caller calls one server.
type Caller struct {
	// Base is the server's URL (http://host:port), without a final slash.
	Base string
	HC   *http.Client
	// Token, when set, is sent as the bearer token.
	Token string
	// What names the server in errors ("the gateway API"), Hint what to
	// check when it does not answer ("is `ferry serve` running? ...").
	What, Hint string
}

// Do sends body (nil: none) as JSON and decodes the reply into out (nil:
// discarded).
func (c *Caller) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HC.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach %s at %s (%s): %w", c.What, c.Base, c.Hint, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		var e wire.ErrorResponse
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		}
		return &Error{Status: resp.StatusCode, Code: e.Code, Message: e.Error}
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return fmt.Errorf("decode %s %s reply: %w", method, path, err)
		}
	}
	return nil
}
