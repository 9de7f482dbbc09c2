// Package client talks to a ferry-kvm daemon's HTTP API (the CLI, and one
// daemon to another during a live migration). Errors unwrap to the
// gateway's wire sentinels (wire.ErrNotFound, ErrExists, ErrBusy,
// ErrInvalid), so callers branch with errors.Is.
package client

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	gwire "github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/jsonapi"
	"github.com/ferry-io/ferry/kvm/wire"
)

// Client talks to one ferry-kvm daemon.
type Client struct {
	base  string
	addr  string
	hc    *http.Client
	token string
	tls   *tls.Config // for an https:// daemon; nil: the system's roots
}

// Option configures a Client.
type Option func(*Client)

// WithToken sends the daemon's API token (its STATE/api-token) as a
// bearer token with every request.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// WithTLS uses cfg for an https:// daemon (e.g. a RootCAs pool holding
// the certificate authority of its --api-tls-cert).
func WithTLS(cfg *tls.Config) Option {
	return func(c *Client) {
		c.tls = cfg
		c.hc.Transport = jsonapi.TLSTransport(cfg)
	}
}

// New returns a client for the daemon at addr (host:port, http://... or
// https://...).
func New(addr string, opts ...Option) *Client {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u, _ := url.Parse(base)
	host := ""
	if u != nil {
		host = u.Host
		if u.Port() == "" && u.Hostname() != "" {
			port := "80"
			if u.Scheme == "https" {
				port = "443"
			}
			host = net.JoinHostPort(u.Hostname(), port)
		}
	}
	c := &Client{base: strings.TrimRight(base, "/"), addr: host, hc: &http.Client{Timeout: 5 * time.Minute}}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Error is an error reply; it unwraps to the sentinel its code names.
type Error = jsonapi.Error

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	call := jsonapi.Caller{Base: c.base, HC: c.hc, Token: c.token, What: "ferry-kvm",
		Hint: "is `ferry-kvm serve` running? set --api or FERRY_KVM_API; for https:// its CA with --api-ca"}
	return call.Do(ctx, method, path, body, out)
}

func vmPath(name string, rest string) string { return "/v1/vms/" + url.PathEscape(name) + rest }

// Create defines a VM (and creates its new disks).
func (c *Client) Create(ctx context.Context, req wire.CreateRequest) (wire.VMInfo, error) {
	var out wire.VMInfo
	err := c.do(ctx, http.MethodPost, "/v1/vms", req, &out)
	return out, err
}

// List returns every VM.
func (c *Client) List(ctx context.Context) ([]wire.VMInfo, error) {
	var out []wire.VMInfo
	err := c.do(ctx, http.MethodGet, "/v1/vms", nil, &out)
	return out, err
}

// Info returns one VM.
func (c *Client) Info(ctx context.Context, name string) (wire.VMInfo, error) {
	var out wire.VMInfo
	err := c.do(ctx, http.MethodGet, vmPath(name, ""), nil, &out)
	return out, err
}

// Start starts a stopped (or crashed) VM.
func (c *Client) Start(ctx context.Context, name string) (wire.VMInfo, error) {
	var out wire.VMInfo
	err := c.do(ctx, http.MethodPost, vmPath(name, "/start"), struct{}{}, &out)
	return out, err
}

// Stop powers a VM down (or quits QEMU with Force).
func (c *Client) Stop(ctx context.Context, name string, req wire.StopRequest) (wire.VMInfo, error) {
	var out wire.VMInfo
	err := c.do(ctx, http.MethodPost, vmPath(name, "/stop"), req, &out)
	return out, err
}

// Remove deletes a stopped VM and, unless keepDisks, its volumes.
func (c *Client) Remove(ctx context.Context, name string, keepDisks bool) error {
	q := ""
	if keepDisks {
		q = "?keep-disks=1"
	}
	return c.do(ctx, http.MethodDelete, vmPath(name, q), nil, nil)
}

// Log returns the last max bytes of a VM's serial output.
func (c *Client) Log(ctx context.Context, name string, max int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+vmPath(name, fmt.Sprintf("/log?bytes=%d", max)), nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach ferry-kvm at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 {
		var e gwire.ErrorResponse
		json.Unmarshal(b, &e)
		return nil, &Error{Status: resp.StatusCode, Code: e.Code, Message: e.Error}
	}
	return b, err
}

// Migrate starts a live migration of name to the ferry-kvm at req.To;
// follow it with Info (VMInfo.Migration).
func (c *Client) Migrate(ctx context.Context, name string, req wire.MigrateRequest) (wire.VMInfo, error) {
	var out wire.VMInfo
	err := c.do(ctx, http.MethodPost, vmPath(name, "/migrate"), req, &out)
	return out, err
}

// Incoming asks a destination to start QEMU waiting for a migration.
func (c *Client) Incoming(ctx context.Context, req wire.IncomingRequest) (wire.IncomingReply, error) {
	var out wire.IncomingReply
	err := c.do(ctx, http.MethodPost, "/v1/incoming", req, &out)
	return out, err
}

// IncomingDone tells the destination the migration completed: the VM is
// its own now. After a migration between gateways req says where each
// disk is served; the destination switches to it and resumes the guest.
func (c *Client) IncomingDone(ctx context.Context, name string, req wire.IncomingDoneRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/incoming/"+url.PathEscape(name)+"/done", req, nil)
}

// IncomingPark asks the destination of a migration between gateways to
// let go of the source gateway's exports (the guest stays paused), so
// the source's gateway can release the volumes.
func (c *Client) IncomingPark(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/v1/incoming/"+url.PathEscape(name)+"/park", struct{}{}, nil)
}

// IncomingAdopt asks the destination's gateway to adopt volumes the
// source's gateway released.
func (c *Client) IncomingAdopt(ctx context.Context, name string, req wire.IncomingAdoptRequest) (wire.IncomingAdoptReply, error) {
	var out wire.IncomingAdoptReply
	err := c.do(ctx, http.MethodPost, "/v1/incoming/"+url.PathEscape(name)+"/adopt", req, &out)
	return out, err
}

// IncomingAbort tells the destination the migration failed: quit its
// QEMU and forget the VM.
func (c *Client) IncomingAbort(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/incoming/"+url.PathEscape(name), nil, nil)
}

// Console opens the VM's serial console: a raw byte stream both ways.
func (c *Client) Console(ctx context.Context, name string) (net.Conn, error) {
	var nc net.Conn
	var err error
	if strings.HasPrefix(c.base, "https://") {
		cfg := &tls.Config{}
		if c.tls != nil {
			cfg = c.tls.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(c.addr)
		}
		d := tls.Dialer{Config: cfg}
		nc, err = d.DialContext(ctx, "tcp", c.addr)
	} else {
		var d net.Dialer
		nc, err = d.DialContext(ctx, "tcp", c.addr)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot reach ferry-kvm at %s: %w", c.base, err)
	}
	auth := ""
	if c.token != "" {
		auth = "Authorization: Bearer " + c.token + "\r\n"
	}
	fmt.Fprintf(nc, "GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: Upgrade\r\nUpgrade: ferry-console\r\n\r\n", vmPath(name, "/console"), c.addr, auth)
	br := bufioReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		nc.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		nc.Close()
		var e gwire.ErrorResponse
		json.Unmarshal(b, &e)
		return nil, &Error{Status: resp.StatusCode, Code: e.Code, Message: e.Error}
	}
	return &bufConn{Conn: nc, r: br}, nil
}
