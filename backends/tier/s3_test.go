package tier

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-io/ferry/backends/s3"
	"github.com/ferry-io/ferry/backends/store"
	"github.com/ferry-io/ferry/internal/testutil"
)

// Against a real S3 server: two volumes share one bucket under their own
// prefixes; each writes more than its cache holds, checkpoints, and the
// image exported from the bucket alone equals the volume.
func TestTwoVolumesOnVersitygw(t *testing.T) {
	ctx := context.Background()
	srv := testutil.StartS3(t)
	bucket := srv.Bucket("ferry-tier")
	for i, prefix := range []string{"site/vol-a/", "site/vol-b/"} {
		st, err := s3.New(s3.Config{Endpoint: srv.Endpoint, Bucket: bucket, Prefix: prefix, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey})
		if err != nil {
			t.Fatal(err)
		}
		s := store.WithRetry(st, store.RetryPolicy{})
		d := openTest(t, t.TempDir(), s, 16<<20)
		data := pattern(3<<20, byte(i+1))
		if err := d.WriteAt(ctx, data, 12345); err != nil {
			t.Fatal(err)
		}
		if err := d.Trim(ctx, 1<<20, 512<<10); err != nil {
			t.Fatal(err)
		}
		m, err := d.Checkpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, 16<<20)
		if err := d.ReadAt(ctx, want, 0); err != nil {
			t.Fatal(err)
		}
		d.Close()
		latest, err := LatestManifest(ctx, s)
		if err != nil || latest.Sequence != m.Sequence {
			t.Fatalf("%s: latest manifest %v %d", prefix, err, latest.Sequence)
		}
		img := filepath.Join(t.TempDir(), "img")
		f, _ := os.Create(img)
		f.Truncate(latest.Size)
		if err := Export(ctx, s, latest, f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		got, _ := os.ReadFile(img)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: exported image differs", prefix)
		}
	}
}
