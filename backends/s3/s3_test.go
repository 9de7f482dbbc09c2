package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/backends/storetest"
	"github.com/ferry-io/ferry/internal/testutil"
)

var bucketSeq atomic.Int32

// The S3 store keeps the store contract against a real S3 server, with and
// without a key prefix.
func TestConformanceAgainstVersitygw(t *testing.T) {
	srv := testutil.StartS3(t)
	for _, prefix := range []string{"", "tenant-a/ferry/"} {
		t.Run(fmt.Sprintf("prefix=%q", prefix), func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) store.Store {
				b := srv.Bucket(fmt.Sprintf("bucket-%d", bucketSeq.Add(1)))
				s, err := New(Config{Endpoint: srv.Endpoint, Bucket: b, Prefix: prefix, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
				if err != nil {
					t.Fatal(err)
				}
				return s
			})
		})
	}
}

// Check tells the operator what is wrong: unreachable endpoint, bad
// credentials, missing bucket. Secrets never appear in errors.
func TestCheckClassifiesFailures(t *testing.T) {
	srv := testutil.StartS3(t)
	bucket := srv.Bucket("ferry-ok")
	ctx := context.Background()
	good := Config{Endpoint: srv.Endpoint, Bucket: bucket, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}
	s, err := New(good)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatalf("check of a good store: %v", err)
	}
	for name, c := range map[string]struct {
		mod  func(*Config)
		want error
	}{
		"bad secret":  {func(c *Config) { c.SecretKey = "wrong-secret-value" }, store.ErrAuth},
		"bad key id":  {func(c *Config) { c.AccessKey = "nobody" }, store.ErrAuth},
		"no bucket":   {func(c *Config) { c.Bucket = "missing-bucket" }, store.ErrNoBucket},
		"unreachable": {func(c *Config) { c.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t)) }, store.ErrUnavailable},
	} {
		cfg := good
		c.mod(&cfg)
		s, err := New(cfg)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		err = s.Check(ctx)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
		if err != nil && (strings.Contains(err.Error(), cfg.SecretKey) || strings.Contains(fmt.Sprint(cfg), cfg.SecretKey)) {
			t.Errorf("%s: the secret leaked into %q", name, err)
		}
	}
	for _, bad := range []Config{{Endpoint: "127.0.0.1:9000", Bucket: "b"}, {Endpoint: "ftp://x", Bucket: "b"}, {Endpoint: "http://x"}} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%v) accepted a bad config", bad)
		}
	}
}

// A body that does not match its CRC32C is refused by the server, and an
// object corrupted at rest fails Get instead of returning wrong data.
func TestChecksumsCatchCorruption(t *testing.T) {
	srv := testutil.StartS3(t)
	bucket := srv.Bucket("ferry-crc")
	s, err := New(Config{Endpoint: srv.Endpoint, Bucket: bucket, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	data := []byte(strings.Repeat("ferry chunk data ", 4096))
	po := minio.PutObjectOptions{DisableMultipart: true, DisableContentSha256: true,
		UserMetadata: map[string]string{"x-amz-checksum-crc32c": crc32c([]byte("something else"))}}
	if _, err := s.client.PutObject(ctx, bucket, "bad", bytes.NewReader(data), int64(len(data)), po); err == nil {
		t.Fatal("server took a body that does not match its CRC32C")
	}
	if err := s.Put(ctx, "good", data, store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, "good", nil); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("get: %v, equal %v", err, bytes.Equal(got, data))
	}
	path := filepath.Join(srv.Dir, bucket, "good")
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("X"), 1000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got, err := s.Get(ctx, "good", nil); err == nil {
		t.Fatalf("get of a corrupted object succeeded (%d bytes, equal %v)", len(got), bytes.Equal(got, data))
	}
}
