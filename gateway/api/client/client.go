// Package client talks to a Ferry gateway's admin API. It imports only the
// standard library and package wire, so the CLI, the Docker volume plugin
// and ferry-kvm link no backend. Errors unwrap to wire's sentinels
// (wire.ErrNotFound, wire.ErrExists, wire.ErrBusy, ...), so callers branch
// with errors.Is, never on strings.
package client

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/jsonapi"
)

// Client talks to a gateway's admin API.
type Client struct {
	base  string
	hc    *http.Client
	token string
}

// Option configures a Client.
type Option func(*Client)

// WithToken sends token as the API's bearer token (see the gateway's
// api-token file).
func WithToken(token string) Option {
	return func(c *Client) { c.token = token }
}

// WithTLS uses cfg for https:// API addresses (e.g. a RootCAs pool
// holding the gateway's certificate authority).
func WithTLS(cfg *tls.Config) Option {
	return func(c *Client) {
		c.hc.Transport = jsonapi.TLSTransport(cfg)
	}
}

// New returns a client for the API at addr ("host:port", or a URL:
// http://... or https://...).
func New(addr string, opts ...Option) *Client {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	c := &Client{base: strings.TrimRight(base, "/"), hc: &http.Client{Timeout: 60 * time.Second}}
	for _, o := range opts {
		o(c)
	}
	return c
}

// APIError is an error reply. It unwraps to the wire sentinel its code
// names (or, from a gateway that sends no code, the one its status
// implies), so callers can use errors.Is.
type APIError = jsonapi.Error

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	call := jsonapi.Caller{Base: c.base, HC: c.hc, Token: c.token, What: "the gateway API",
		Hint: "is `ferry serve` running? set --api or FERRY_API"}
	return call.Do(ctx, method, path, body, out)
}

// CreateVolume creates a volume; access may be nil.
func (c *Client) CreateVolume(ctx context.Context, name string, size int64, access *wire.AccessUpdate) (wire.VolumeInfo, error) {
	return c.Create(ctx, wire.CreateRequest{Name: name, Size: size, Access: access})
}

// Create creates a volume from a full request (S3 store, chunk size).
func (c *Client) Create(ctx context.Context, req wire.CreateRequest) (wire.VolumeInfo, error) {
	var in wire.VolumeInfo
	err := c.do(ctx, http.MethodPost, "/v1/volumes", req, &in)
	return in, err
}

// Checkpoint publishes a recovery point of an S3-backed volume.
func (c *Client) Checkpoint(ctx context.Context, name string) (wire.CheckpointResponse, error) {
	var out wire.CheckpointResponse
	err := c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(name)+"/checkpoint", nil, &out)
	return out, err
}

// Location says where an S3-backed volume's objects are.
func (c *Client) Location(ctx context.Context, name string) (wire.ExportLocation, error) {
	var out wire.ExportLocation
	err := c.do(ctx, http.MethodGet, "/v1/volumes/"+url.PathEscape(name)+"/location", nil, &out)
	return out, err
}

// AddStore registers an S3 store after the gateway checked access.
func (c *Client) AddStore(ctx context.Context, sc wire.StoreConfig) (wire.StoreView, error) {
	var out wire.StoreView
	err := c.do(ctx, http.MethodPost, "/v1/stores", sc, &out)
	return out, err
}

// Stores lists the stores.
func (c *Client) Stores(ctx context.Context) ([]wire.StoreView, error) {
	var out []wire.StoreView
	err := c.do(ctx, http.MethodGet, "/v1/stores", nil, &out)
	return out, err
}

// Store describes one store with its object count and bytes.
func (c *Client) Store(ctx context.Context, name string) (wire.StoreView, error) {
	var out wire.StoreView
	err := c.do(ctx, http.MethodGet, "/v1/stores/"+url.PathEscape(name), nil, &out)
	return out, err
}

// RemoveStore forgets a store no volume uses.
func (c *Client) RemoveStore(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/stores/"+url.PathEscape(name), nil, nil)
}

// Volumes lists volumes.
func (c *Client) Volumes(ctx context.Context) ([]wire.VolumeInfo, error) {
	var out []wire.VolumeInfo
	err := c.do(ctx, http.MethodGet, "/v1/volumes", nil, &out)
	return out, err
}

// Volume describes one volume.
func (c *Client) Volume(ctx context.Context, name string) (wire.VolumeInfo, error) {
	var in wire.VolumeInfo
	err := c.do(ctx, http.MethodGet, "/v1/volumes/"+url.PathEscape(name), nil, &in)
	return in, err
}

// ResizeVolume grows a volume.
func (c *Client) ResizeVolume(ctx context.Context, name string, size int64) (wire.VolumeInfo, error) {
	return c.UpdateVolume(ctx, name, wire.UpdateRequest{Size: &size})
}

// UpdateVolume changes a volume's size and/or access control.
func (c *Client) UpdateVolume(ctx context.Context, name string, req wire.UpdateRequest) (wire.VolumeInfo, error) {
	var in wire.VolumeInfo
	err := c.do(ctx, http.MethodPatch, "/v1/volumes/"+url.PathEscape(name), req, &in)
	return in, err
}

// RemoveVolume removes a volume; force disconnects its clients first.
func (c *Client) RemoveVolume(ctx context.Context, name string, force bool) error {
	q := ""
	if force {
		q = "?force=1"
	}
	return c.do(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(name)+q, nil, nil)
}

// Pool describes the local pool.
func (c *Client) Pool(ctx context.Context) (wire.PoolInfo, error) {
	var p wire.PoolInfo
	err := c.do(ctx, http.MethodGet, "/v1/pool", nil, &p)
	return p, err
}

// Healthy reports whether the gateway answers /healthz.
func (c *Client) Healthy(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/healthz", nil, nil)
}

// Status returns the gateway's overview.
func (c *Client) Status(ctx context.Context) (wire.Status, error) {
	var st wire.Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

// StoreVolumes lists the volumes a store holds, whichever gateway serves
// them.
func (c *Client) StoreVolumes(ctx context.Context, store string) ([]wire.BucketVolume, error) {
	var out []wire.BucketVolume
	err := c.do(ctx, http.MethodGet, "/v1/stores/"+url.PathEscape(store)+"/volumes", nil, &out)
	return out, err
}

// Release hands a volume over to another gateway; force disconnects its
// clients first. It returns the final recovery point.
func (c *Client) Release(ctx context.Context, name string, force bool) (wire.CheckpointResponse, error) {
	q := ""
	if force {
		q = "?force=1"
	}
	var out wire.CheckpointResponse
	err := c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(name)+"/release"+q, nil, &out)
	return out, err
}

// Migrate starts moving a volume to another store while it serves; its
// progress is in the volume's info (Tier.Migration).
func (c *Client) Migrate(ctx context.Context, name string, req wire.MigrateRequest) (wire.VolumeInfo, error) {
	var out wire.VolumeInfo
	err := c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(name)+"/migrate", req, &out)
	return out, err
}

// CancelMigration stops a volume's move before it switched stores.
func (c *Client) CancelMigration(ctx context.Context, name string) (wire.VolumeInfo, error) {
	var out wire.VolumeInfo
	err := c.do(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(name)+"/migrate", nil, &out)
	return out, err
}

// Adopt serves a volume a store holds on this gateway.
func (c *Client) Adopt(ctx context.Context, req wire.AdoptRequest) (wire.AdoptResponse, error) {
	var out wire.AdoptResponse
	err := c.do(ctx, http.MethodPost, "/v1/adopt", req, &out)
	return out, err
}

// CreateSnapshot snapshots a volume.
func (c *Client) CreateSnapshot(ctx context.Context, vol, name string) (wire.Snapshot, error) {
	var out wire.Snapshot
	err := c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(vol)+"/snapshots", wire.SnapshotRequest{Name: name}, &out)
	return out, err
}

// Snapshots lists a volume's snapshots.
func (c *Client) Snapshots(ctx context.Context, vol string) ([]wire.Snapshot, error) {
	var out []wire.Snapshot
	err := c.do(ctx, http.MethodGet, "/v1/volumes/"+url.PathEscape(vol)+"/snapshots", nil, &out)
	return out, err
}

// RemoveSnapshot removes a volume's snapshot.
func (c *Client) RemoveSnapshot(ctx context.Context, vol, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(vol)+"/snapshots/"+url.PathEscape(name), nil, nil)
}

// Clone makes a volume from a snapshot (source VOLUME@SNAPSHOT).
func (c *Client) Clone(ctx context.Context, source, name string) (wire.VolumeInfo, error) {
	var out wire.VolumeInfo
	err := c.do(ctx, http.MethodPost, "/v1/clones", wire.CloneRequest{Source: source, Name: name}, &out)
	return out, err
}

// ReadTokenFile reads an API token from a file (wire.ReadTokenFile).
func ReadTokenFile(path string) (string, error) { return wire.ReadTokenFile(path) }
