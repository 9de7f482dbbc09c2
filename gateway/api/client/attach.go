package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/ferry-io/ferry/gateway/api/wire"
)

// Attach records (or renews) host's attachment of a volume. Another host's
// read-write hold fails it with wire.ErrBusy, naming that host; during the
// gateway's start-up grace a non-reclaim request fails with ErrBusy and
// status 503 (retry later).
func (c *Client) Attach(ctx context.Context, name, host string, req wire.AttachRequest) (wire.Attachment, error) {
	var out wire.Attachment
	err := c.do(ctx, http.MethodPut, "/v1/volumes/"+url.PathEscape(name)+"/attachments/"+url.PathEscape(host), req, &out)
	return out, err
}

// Detach ends host's attachment of a volume; detaching what is not
// attached succeeds.
func (c *Client) Detach(ctx context.Context, name, host string) error {
	return c.do(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(name)+"/attachments/"+url.PathEscape(host), nil, nil)
}

// Attachments lists the hosts holding a volume.
func (c *Client) Attachments(ctx context.Context, name string) ([]wire.Attachment, error) {
	var out []wire.Attachment
	err := c.do(ctx, http.MethodGet, "/v1/volumes/"+url.PathEscape(name)+"/attachments", nil, &out)
	return out, err
}
