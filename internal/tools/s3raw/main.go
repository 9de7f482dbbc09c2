// Command s3raw measures an S3 server's raw PutObject and GetObject
// throughput with minio-go, for scripts/bench-s3 to compare Ferry's S3
// tier against: objects of one size, a fixed number in flight.
//
//	s3raw -endpoint http://127.0.0.1:7070 -bucket b -size 4194304 -count 256 -concurrency 4 put
//	s3raw ... get
//	s3raw ... -range 4096 -requests 20000 -concurrency 32 get
//
// With -range, get reads that many bytes at a random aligned offset of a
// random object per request (a ranged GetObject), -requests times. With
// -keep DIR, get writes each object it read into a file of its own in DIR
// past the page cache (O_DIRECT), as Ferry's hydration keeps what it
// fetches: what a plain client that keeps the data reaches on that disk.
//
// Credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. It
// prints MiB/s on one line.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	mrand "math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

func main() {
	endpoint := flag.String("endpoint", "", "S3 endpoint URL")
	bucket := flag.String("bucket", "", "bucket")
	size := flag.Int64("size", 4<<20, "object size in bytes")
	count := flag.Int("count", 256, "number of objects")
	conc := flag.Int("concurrency", 4, "requests in flight")
	crc := flag.Bool("crc32c", false, "put as backends/s3 does (unsigned body, CRC32C header) and check it on get")
	keys := flag.String("keys", "raw/%08d", "object key format, given the object's number")
	rng := flag.Int64("range", 0, "get: bytes per ranged request at a random aligned offset (0: whole objects)")
	requests := flag.Int("requests", 0, "get with -range: how many ranged requests")
	keep := flag.String("keep", "", "get: write each object into a file in this directory, past the page cache")
	flag.Parse()
	if flag.NArg() != 1 || (flag.Arg(0) != "put" && flag.Arg(0) != "get") {
		fmt.Fprintln(os.Stderr, "usage: s3raw [flags] put|get")
		os.Exit(2)
	}
	if err := run(context.Background(), *endpoint, *bucket, *keys, *size, *count, *conc, *crc, flag.Arg(0), *rng, *requests, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "s3raw:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, endpoint, bucket, keys string, size int64, count, conc int, crc bool, op string, rng int64, requests int, keep string) error {
	u, err := url.Parse(endpoint)
	if err != nil {
		return err
	}
	c, err := minio.New(u.Host, &minio.Options{
		Creds:  credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), ""),
		Secure: u.Scheme == "https",
		// Needed for the x-amz-checksum-crc32c header; off by default, as
		// minio-go then signs the body with SHA-256 over plain HTTP.
		TrailingHeaders: crc,
	})
	if err != nil {
		return err
	}
	data := make([]byte, size)
	rand.Read(data)
	var po minio.PutObjectOptions
	if crc {
		sum := crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))
		po.DisableContentSha256 = true
		po.UserMetadata = map[string]string{"x-amz-checksum-crc32c": base64.StdEncoding.EncodeToString(binary.BigEndian.AppendUint32(nil, sum))}
	}
	if op == "get" && rng > 0 {
		return ranged(ctx, c, bucket, keys, size, count, conc, rng, requests)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(conc)
	start := time.Now()
	for i := range count {
		key := fmt.Sprintf(keys, i)
		g.Go(func() error {
			if op == "put" {
				_, err := c.PutObject(gctx, bucket, key, bytes.NewReader(data), size, po)
				return err
			}
			o, err := c.GetObject(gctx, bucket, key, minio.GetObjectOptions{Checksum: crc})
			if err != nil {
				return err
			}
			defer o.Close()
			if keep != "" {
				return keepObject(o, filepath.Join(keep, fmt.Sprint(i)), size)
			}
			n, err := io.Copy(io.Discard, o)
			if err == nil && n != size {
				err = fmt.Errorf("%s: %d bytes, want %d", key, n, size)
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	fmt.Printf("%.1f\n", float64(size)*float64(count)/(1<<20)/secs)
	return nil
}

// ranged reads requests random aligned ranges of rng bytes of the count
// objects, conc at a time, and prints MiB/s.
func ranged(ctx context.Context, c *minio.Client, bucket, keys string, size int64, count, conc int, rng int64, requests int) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(conc)
	start := time.Now()
	for range requests {
		key := fmt.Sprintf(keys, mrand.IntN(count))
		off := mrand.Int64N(size/rng) * rng
		g.Go(func() error {
			var opts minio.GetObjectOptions
			if err := opts.SetRange(off, off+rng-1); err != nil {
				return err
			}
			o, err := c.GetObject(gctx, bucket, key, opts)
			if err != nil {
				return err
			}
			defer o.Close()
			n, err := io.Copy(io.Discard, o)
			if err == nil && n != rng {
				err = fmt.Errorf("%s at %d: %d bytes, want %d", key, off, n, rng)
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	fmt.Printf("%.1f\n", float64(rng)*float64(requests)/(1<<20)/secs)
	return nil
}

// keepObject reads an object of size bytes into a 4 KiB-aligned buffer
// and writes it into a new file past the page cache.
func keepObject(r io.Reader, path string, size int64) error {
	raw := make([]byte, size+4096)
	off := int((4096 - uintptr(unsafe.Pointer(&raw[0]))%4096) % 4096)
	buf := raw[off : off+int(size)]
	if _, err := io.ReadFull(r, buf); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_DIRECT, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(buf); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}
