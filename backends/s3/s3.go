// Package s3 implements store.Store over any S3-compatible server with
// minio-go: AWS S3, MinIO, Ceph RGW, versitygw, ...
package s3

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/ferry-io/ferry/backends/store"
)

// Config locates a bucket. Secrets live only here and are never logged or
// formatted: Config's String method hides them.
type Config struct {
	// Endpoint is the server URL, e.g. https://s3.eu-west-1.amazonaws.com
	// or http://127.0.0.1:7070. The scheme decides TLS.
	Endpoint string
	Bucket   string
	// Prefix is prepended to every key ("ferry/" keeps Ferry's objects
	// apart from others in a shared bucket).
	Prefix    string
	Region    string
	AccessKey string
	SecretKey string
	// Timeout bounds one request (default 60s).
	Timeout time.Duration
}

// String describes the config without credentials.
func (c Config) String() string {
	return fmt.Sprintf("s3 %s bucket %q prefix %q", c.Endpoint, c.Bucket, c.Prefix)
}

// Store is a bucket (and key prefix) on an S3 server.
type Store struct {
	cfg    Config
	client *minio.Client
	gcs    bool
}

var _ store.Store = (*Store)(nil)

// New returns a store for cfg. It does not contact the server; call Check.
func New(cfg Config) (*Store, error) {
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("endpoint %q: want http://HOST[:PORT] or https://HOST[:PORT]", cfg.Endpoint)
	}
	if cfg.Bucket == "" {
		return nil, errors.New("no bucket given")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	tr.ResponseHeaderTimeout = cfg.Timeout
	c, err := minio.New(u.Host, &minio.Options{
		Creds:        credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure:       u.Scheme == "https",
		Region:       cfg.Region,
		Transport:    tr,
		BucketLookup: minio.BucketLookupPath,
		// minio-go accepts x-amz-checksum-* headers only with this set;
		// Put sends the checksum as a header, not a trailer.
		TrailingHeaders: true,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg, err)
	}
	return &Store{cfg: cfg, client: c, gcs: s3utils.IsGoogleEndpoint(*u)}, nil
}

// Check verifies that the bucket exists and that the credentials may
// write, read, list and delete under the prefix, with a probe object. The
// error says which of these failed.
func (s *Store) Check(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.cfg.Bucket)
	if err != nil {
		return s.wrap("check bucket", "", err)
	}
	if !ok {
		return fmt.Errorf("%s: %w", s.cfg, store.ErrNoBucket)
	}
	key := fmt.Sprintf(".ferry-probe-%d", time.Now().UnixNano())
	if err := s.Put(ctx, key, []byte("probe"), store.PutOptions{}); err != nil {
		return fmt.Errorf("write probe: %w", err)
	}
	defer s.Delete(context.WithoutCancel(ctx), key)
	if _, err := s.Get(ctx, key, nil); err != nil {
		return fmt.Errorf("read probe: %w", err)
	}
	if err := s.List(ctx, key, func(store.ObjectInfo) error { return nil }); err != nil {
		return fmt.Errorf("list: %w", err)
	}
	return nil
}

func (s *Store) key(k string) string { return s.cfg.Prefix + k }

// Put implements store.Store.
func (s *Store) Put(ctx context.Context, key string, data []byte, opts store.PutOptions) error {
	po := s.putOptions(data)
	if opts.IfAbsent {
		po.SetMatchETagExcept("*")
	}
	_, err := s.client.PutObject(ctx, s.cfg.Bucket, s.key(key), bytes.NewReader(data), int64(len(data)), po)
	return s.wrap("put", key, err)
}

// CheckConditional probes whether the server honours If-Match on puts
// (writer leases need it): a put with a wrong ETag must fail and one with
// the right ETag succeed. It returns store.ErrNoSwap when the server
// ignores the condition.
func (s *Store) CheckConditional(ctx context.Context) error {
	key := fmt.Sprintf(".ferry-probe-cas-%d", time.Now().UnixNano())
	defer s.Delete(context.WithoutCancel(ctx), key)
	tag, err := s.PutTagged(ctx, key, []byte("1"), "")
	if err != nil {
		return fmt.Errorf("conditional create: %w", err)
	}
	if _, err := s.PutTagged(ctx, key, []byte("2"), `"ferry-probe-wrong-etag"`); !errors.Is(err, store.ErrPrecondition) {
		if err == nil {
			return fmt.Errorf("a put with a wrong If-Match ETag succeeded: %w", store.ErrNoSwap)
		}
		return fmt.Errorf("conditional put: %w", err)
	}
	if _, err := s.PutTagged(ctx, key, []byte("3"), tag); err != nil {
		return fmt.Errorf("a put with the right If-Match ETag failed: %w", err)
	}
	return nil
}

// ListDirs implements store.DirLister with a delimiter listing.
func (s *Store) ListDirs(ctx context.Context, prefix string, fn func(dir string) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for o := range s.client.ListObjects(ctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: s.key(prefix), Recursive: false}) {
		if o.Err != nil {
			return s.wrap("list", prefix, o.Err)
		}
		if !strings.HasSuffix(o.Key, "/") {
			continue
		}
		if err := fn(strings.TrimPrefix(o.Key, s.key(prefix))); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// GetTagged implements store.Swapper: the object and the ETag of the
// response that carried it.
func (s *Store) GetTagged(ctx context.Context, key string) ([]byte, string, error) {
	body, info, _, err := minio.Core{Client: s.client}.GetObject(ctx, s.cfg.Bucket, s.key(key), minio.GetObjectOptions{Checksum: true})
	if err != nil {
		return nil, "", s.wrap("get", key, err)
	}
	defer body.Close()
	b, err := readAll(body, nil, info.Size)
	if err != nil {
		return nil, "", s.wrap("get", key, err)
	}
	return b, info.ETag, nil
}

// PutTagged implements store.Swapper with If-Match (or If-None-Match: *).
func (s *Store) PutTagged(ctx context.Context, key string, data []byte, ifMatch string) (string, error) {
	po := s.putOptions(data)
	if ifMatch == "" {
		po.SetMatchETagExcept("*")
	} else {
		po.SetMatchETag(strings.Trim(ifMatch, `"`))
	}
	info, err := s.client.PutObject(ctx, s.cfg.Bucket, s.key(key), bytes.NewReader(data), int64(len(data)), po)
	if err != nil {
		err = s.wrap("put", key, err)
		if ifMatch != "" && (errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrNotFound)) {
			return "", fmt.Errorf("put %q if it is still %s: %w", key, ifMatch, store.ErrPrecondition)
		}
		return "", err
	}
	return info.ETag, nil
}

// putOptions are the options of every put of data.
func (s *Store) putOptions(data []byte) minio.PutObjectOptions {
	var po minio.PutObjectOptions
	po.ContentType = "application/octet-stream"
	// The body goes unsigned (no SHA-256 over it, on either side) with its
	// CRC32C in a signed header: the server rejects a body that does not
	// match it and stores it, and Get checks the body against it again.
	// Over HTTPS, TLS covers the body as well.
	po.DisableMultipart = true
	if !s.gcs { // minio-go refuses checksum headers for GCS
		po.DisableContentSha256 = true
		po.UserMetadata = map[string]string{"x-amz-checksum-crc32c": crc32c(data)}
	}
	return po
}

// Get implements store.Store. The body is checked against the object's
// full-object checksum when the server returns one (Put stores CRC32C).
func (s *Store) Get(ctx context.Context, key string, buf []byte) ([]byte, error) {
	return s.get(ctx, key, minio.GetObjectOptions{Checksum: true}, buf)
}

// GetRange implements store.Store.
func (s *Store) GetRange(ctx context.Context, key string, off, length int64) ([]byte, error) {
	if off < 0 || length < 0 {
		return nil, fmt.Errorf("get %q: bad range %d+%d", key, off, length)
	}
	if length == 0 {
		_, err := s.Stat(ctx, key)
		return []byte{}, err
	}
	var o minio.GetObjectOptions
	if err := o.SetRange(off, off+length-1); err != nil {
		return nil, err
	}
	b, err := s.get(ctx, key, o, nil)
	if err != nil && isInvalidRange(err) {
		// The range starts at or past the end of the object.
		if _, serr := s.Stat(ctx, key); serr != nil {
			return nil, serr
		}
		return []byte{}, nil
	}
	return b, err
}

// get reads the object (or range) o asks for into buf's storage when it
// fits.
func (s *Store) get(ctx context.Context, key string, o minio.GetObjectOptions, buf []byte) ([]byte, error) {
	// Core's GetObject hands over the response body as it is; Client's
	// wraps it in a goroutine per object that every Read goes through.
	body, info, _, err := minio.Core{Client: s.client}.GetObject(ctx, s.cfg.Bucket, s.key(key), o)
	if err != nil {
		return nil, s.wrap("get", key, err)
	}
	defer body.Close()
	b, err := readAll(body, buf[:0], info.Size)
	if err != nil {
		return nil, s.wrap("get", key, err)
	}
	return b, nil
}

// readAll appends r's content, of about size bytes, to b, growing it only
// when it does not fit. It reads to EOF, where the checksum is checked.
func readAll(r io.Reader, b []byte, size int64) ([]byte, error) {
	if free := int64(cap(b) - len(b)); size > free {
		b = slices.Grow(b, int(size))
	}
	for {
		if len(b) == cap(b) {
			b = slices.Grow(b, bytes.MinRead) // only past the expected size
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// Stat implements store.Store.
func (s *Store) Stat(ctx context.Context, key string) (store.ObjectInfo, error) {
	in, err := s.client.StatObject(ctx, s.cfg.Bucket, s.key(key), minio.StatObjectOptions{})
	if err != nil {
		return store.ObjectInfo{}, s.wrap("stat", key, err)
	}
	return store.ObjectInfo{Key: key, Size: in.Size, Modified: in.LastModified}, nil
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	err := s.client.RemoveObject(ctx, s.cfg.Bucket, s.key(key), minio.RemoveObjectOptions{})
	if err != nil && errors.Is(s.wrap("delete", key, err), store.ErrNotFound) {
		return nil
	}
	return s.wrap("delete", key, err)
}

// List implements store.Store.
func (s *Store) List(ctx context.Context, prefix string, fn func(store.ObjectInfo) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for o := range s.client.ListObjects(ctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: s.key(prefix), Recursive: true}) {
		if o.Err != nil {
			return s.wrap("list", prefix, o.Err)
		}
		if err := fn(store.ObjectInfo{Key: strings.TrimPrefix(o.Key, s.cfg.Prefix), Size: o.Size, Modified: o.LastModified}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func isInvalidRange(err error) bool {
	var er minio.ErrorResponse
	if errors.As(err, &er) && (er.Code == "InvalidRange" || er.StatusCode == http.StatusRequestedRangeNotSatisfiable) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "InvalidRange") || strings.Contains(msg, "range is not satisfiable") ||
		strings.Contains(msg, "Range Not Satisfiable")
}

// wrap classifies a minio-go error into the store sentinels.
func (s *Store) wrap(op, key string, err error) error {
	if err == nil {
		return nil
	}
	what := op
	if key != "" {
		what = fmt.Sprintf("%s %q", op, key)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", what, err)
	}
	resp := minio.ToErrorResponse(err)
	var kind error
	switch resp.Code {
	case "NoSuchKey", "NotFound":
		kind = store.ErrNotFound
	case "NoSuchBucket":
		kind = store.ErrNoBucket
	case "PreconditionFailed", "ConditionalRequestConflict":
		kind = store.ErrExists
	case "AccessDenied", "AllAccessDisabled", "AccountProblem":
		kind = store.ErrDenied
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidSecurity",
		"XAdminUserNotFound": // versitygw's answer (with 404) for an unknown access key
		kind = store.ErrAuth
	case "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed":
		kind = store.ErrUnavailable
	}
	if kind == nil {
		switch {
		case resp.StatusCode == http.StatusNotFound:
			kind = store.ErrNotFound
		case resp.StatusCode == http.StatusPreconditionFailed:
			kind = store.ErrExists
		case resp.StatusCode == http.StatusForbidden:
			kind = store.ErrDenied
		case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
			kind = store.ErrUnavailable
		case isNetError(err):
			kind = store.ErrUnavailable
		}
	}
	if kind == nil {
		return fmt.Errorf("%s on %s: %w", what, s.cfg, err)
	}
	return fmt.Errorf("%s on %s: %w (%v)", what, s.cfg, kind, err)
}

func isNetError(err error) bool {
	var ne net.Error
	var ue *url.Error
	return errors.As(err, &ne) || errors.As(err, &ue) || errors.Is(err, io.ErrUnexpectedEOF) ||
		strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "connection reset")
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is data's CRC32C as S3's x-amz-checksum-crc32c header wants it.
func crc32c(data []byte) string {
	return base64.StdEncoding.EncodeToString(binary.BigEndian.AppendUint32(nil, crc32.Checksum(data, castagnoli)))
}
