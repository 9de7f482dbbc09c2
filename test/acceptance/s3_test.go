package acceptance

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// s3Env starts a real S3 server with a bucket and puts its credentials in
// the standard AWS variables for the CLI.
func s3Env(t *testing.T, bucket string) *testutil.S3Server {
	srv := testutil.StartS3(t)
	srv.Bucket(bucket)
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	return srv
}

type tierInfo struct {
	Tier *struct {
		DirtyBytes   int64   `json:"dirty_bytes"`
		CachedBytes  int64   `json:"cached_bytes"`
		StoredChunks int     `json:"stored_chunks"`
		RPOSeconds   float64 `json:"rpo_seconds"`
	} `json:"tier"`
	WritesHeldBy string `json:"writes_held_by"`
}

func (g *gateway) tier(vol string) tierInfo {
	g.t.Helper()
	var in tierInfo
	if err := json.Unmarshal([]byte(g.mustCLI("volume", "info", vol, "--json")), &in); err != nil || in.Tier == nil {
		g.t.Fatalf("volume info %s: %v", vol, err)
	}
	return in
}

func (g *gateway) waitUploaded(vol string, within time.Duration) {
	g.t.Helper()
	deadline := time.Now().Add(within)
	for g.tier(vol).Tier.DirtyBytes > 0 {
		if time.Now().After(deadline) {
			g.t.Fatalf("upload backlog of %s did not drain in %v", vol, within)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// exportAndCompare exports the volume's latest recovery point from S3 alone
// and compares it byte for byte with the volume read over NBD.
func (g *gateway) exportAndCompare(vol string) {
	g.t.Helper()
	dir := g.t.TempDir()
	img := filepath.Join(dir, "from-s3.img")
	g.mustCLI("volume", "export", vol, "--from-s3", "--to", img)
	live := filepath.Join(dir, "live.img")
	run(g.t, 5*time.Minute, testutil.RequireTool(g.t, "nbdcopy"), g.uri(vol), live)
	run(g.t, 5*time.Minute, "cmp", img, live)
}

// rebuildAndCompare rebuilds the volume's latest recovery point from the
// S3 server's files with testdata/rebuild.py, which follows docs/FORMAT.md
// and shares no code with Ferry, and compares it with the volume.
func (g *gateway) rebuildAndCompare(srv *testutil.S3Server, bucket, prefix, vol string) {
	g.t.Helper()
	var in struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(g.mustCLI("volume", "info", vol, "--json")), &in); err != nil || in.ID == "" {
		g.t.Fatalf("volume info %s: %v", vol, err)
	}
	dir := g.t.TempDir()
	img := filepath.Join(dir, "rebuilt.img")
	src := filepath.Join(srv.Dir, bucket, prefix, "volumes", in.ID)
	out := run(g.t, 5*time.Minute, testutil.RequireTool(g.t, "python3"), "testdata/rebuild.py", src, img)
	g.t.Logf("%s: %s", vol, strings.TrimSpace(out))
	live := filepath.Join(dir, "live.img")
	run(g.t, 5*time.Minute, testutil.RequireTool(g.t, "nbdcopy"), g.uri(vol), live)
	run(g.t, 5*time.Minute, "cmp", img, live)
}

// A 4 GiB S3-backed volume with a 256 MiB cache: fio writes 1 GiB of
// random data at random offsets (4 KiB–256 KiB, four times the cache)
// through NBD and reads it back verified; a checkpoint exported from S3
// alone, and an image rebuilt from the bucket by following docs/FORMAT.md,
// equal the volume. Trim, partial-chunk writes, growth and a second volume
// in the same store (with a prefix) too.
func TestS3VolumeThroughNBD(t *testing.T) {
	fio := testutil.RequireTool(t, "fio")
	qemuIO := testutil.RequireTool(t, "qemu-io")
	srv := s3Env(t, "ferry-vols")
	g := startGateway(t, "--cache-size", "256M", "--checkpoint-interval", "1h")
	r := g.cli("store", "add", "cloud", "--endpoint", srv.Endpoint, "--bucket", "ferry-vols", "--prefix", "site-a", "--secret-key", "wrong-secret")
	if r.code == 0 || !strings.Contains(r.stderr, "credentials") || strings.Contains(r.stderr+r.stdout+g.logs.String(), "wrong-secret") {
		t.Fatalf("store add with a bad secret: exit %d %q", r.code, r.stderr)
	}
	g.mustCLI("store", "add", "cloud", "--endpoint", srv.Endpoint, "--bucket", "ferry-vols", "--prefix", "site-a")
	g.mustCLI("volume", "create", "big", "--size", "4G", "--store", "cloud")
	g.mustCLI("volume", "create", "small", "--size", "64M", "--store", "cloud", "--chunk-size", "256K")
	if h := g.tier("big").WritesHeldBy; h != "" {
		t.Errorf("an S3-backed volume says its unflushed writes are held by kernel %q", h)
	}

	run(t, 10*time.Minute, fio, "--name=s3verify", "--ioengine=nbd", "--verify_state_save=0", "--uri="+g.uri("big"), "--rw=randwrite",
		"--bsrange=4k-256k", "--iodepth=16", "--offset=512M", "--size=1G", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
		"--randrepeat=0", "--end_fsync=1")
	if c := g.tier("big").Tier.CachedBytes; c > 256<<20 {
		t.Errorf("cache holds %d bytes, budget 256 MiB", c)
	}
	// Partial-chunk writes, a discard and zeroes on the small volume.
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x11 1000 5000", "-c", "write -P 0x22 300k 700k",
		"-c", "discard 512k 256k", "-c", "write -z 2M 100k", "-c", "flush", g.uri("small"))
	g.mustCLI("volume", "resize", "small", "--size", "96M")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x33 90M 1M", "-c", "flush", g.uri("small"))
	for _, v := range []string{"big", "small"} {
		g.mustCLI("volume", "checkpoint", v)
		g.exportAndCompare(v)
		g.rebuildAndCompare(srv, "ferry-vols", "site-a", v)
	}
	out := g.mustCLI("store", "info", "cloud")
	if !strings.Contains(out, "volumes:   2") {
		t.Errorf("store info:\n%s", out)
	}
	// Every object is under the store's prefix.
	filepath.Walk(filepath.Join(srv.Dir, "ferry-vols"), func(p string, fi os.FileInfo, err error) error {
		rel, _ := filepath.Rel(filepath.Join(srv.Dir, "ferry-vols"), p)
		if err == nil && !fi.IsDir() && !strings.HasPrefix(rel, "site-a/") && !strings.HasPrefix(rel, ".") {
			t.Errorf("object outside the store prefix: %s", rel)
		}
		return nil
	})
	if r := g.cli("store", "rm", "cloud"); r.code == 0 {
		t.Error("store rm succeeded while volumes use it")
	}
}

// kill -9 at random moments under a flushing fio load, 10 cycles: after
// each restart every flushed epoch verifies, the dirty data is uploaded,
// and a checkpoint exported from S3 equals the volume.
func TestS3Kill9UnderFlushingLoad(t *testing.T) {
	fio := testutil.RequireTool(t, "fio")
	srv := s3Env(t, "ferry-crash")
	cycles := crashCycles(t, 10)
	g := startGateway(t, "--cache-size", "32M", "--checkpoint-interval", "2s")
	g.mustCLI("store", "add", "cloud", "--endpoint", srv.Endpoint, "--bucket", "ferry-crash")
	g.mustCLI("volume", "create", "crash", "--size", fmt.Sprint(int64(cycles)*64*epochSize), "--store", "cloud", "--chunk-size", "1M")
	uri := g.uri("crash")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	var durable []int64
	next := int64(0)
	for c := 0; c < cycles; c++ {
		durable = append(durable, crashCycle(g, fio, uri, &next, time.Duration(1000+rng.IntN(2000))*time.Millisecond)...)
		for _, off := range durable {
			checkEpoch(t, fio, uri, off)
		}
	}
	if len(durable) < cycles/2 {
		t.Fatalf("only %d epochs completed in %d cycles", len(durable), cycles)
	}
	g.waitUploaded("crash", 2*time.Minute)
	g.mustCLI("volume", "checkpoint", "crash")
	g.exportAndCompare("crash")
	t.Logf("%d kill -9 cycles, %d flushed epochs verified after every crash and found in S3", cycles, len(durable))
}

// S3 stops mid-run: writes go on into the cache, reads of data only in S3
// fail with EIO within the bound, and when S3 is back the backlog drains,
// a checkpoint completes and the export verifies.
func TestS3Outage(t *testing.T) {
	qemuIO := testutil.RequireTool(t, "qemu-io")
	srv := s3Env(t, "ferry-outage")
	g := startGateway(t, "--cache-size", "16M", "--checkpoint-interval", "1h", "--s3-read-timeout", "2s", "--s3-timeout", "2s")
	g.mustCLI("store", "add", "cloud", "--endpoint", srv.Endpoint, "--bucket", "ferry-outage")
	g.mustCLI("volume", "create", "o", "--size", "256M", "--store", "cloud", "--chunk-size", "1M")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x44 0 64M", "-c", "flush", g.uri("o"))
	g.waitUploaded("o", time.Minute)

	srv.Stop()
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x55 128M 4M", "-c", "flush", g.uri("o"))
	start := time.Now()
	out, err := runErr(time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x44 0 1M", g.uri("o"))
	took := time.Since(start)
	if err == nil && !strings.Contains(out, "error") && !strings.Contains(out, "failed") {
		t.Fatalf("read of evicted data during the outage succeeded:\n%s", out)
	}
	if !strings.Contains(out, "Input/output error") {
		t.Errorf("read during the outage: want EIO, got:\n%s", out)
	}
	if took > 30*time.Second {
		t.Errorf("failing read took %v; bound is 2s plus retries", took)
	}
	if r := g.cli("volume", "checkpoint", "o"); r.code == 0 {
		t.Error("checkpoint succeeded with S3 down")
	}

	srv.Start()
	g.waitUploaded("o", 2*time.Minute)
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x44 0 64M", "-c", "read -P 0x55 128M 4M", g.uri("o"))
	g.mustCLI("volume", "checkpoint", "o")
	g.exportAndCompare("o")

	// A gateway that starts while the store is down starts (its volumes
	// read-only: it cannot take their writer leases; reads need the store,
	// since a restart drops clean cached copies) and takes writes again
	// once the store answers.
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	g.start()
	out, _ = runErr(time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x66 200M 4k", g.uri("o"))
	if !strings.Contains(out, "Operation not permitted") {
		t.Errorf("a write without the writer lease: want EPERM, got:\n%s", out)
	}
	if info := g.mustCLI("volume", "info", "o"); !strings.Contains(info, "lease:        pending") {
		t.Errorf("volume info while the lease is not taken:\n%s", info)
	}
	srv.Start()
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, err := runErr(time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x66 200M 4k", "-c", "flush", g.uri("o"))
		if err == nil && !strings.Contains(out, "failed") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes did not resume after the store came back:\n%s", out)
		}
		time.Sleep(time.Second)
	}
	// The restart did not forget the last recovery point: once the store
	// answers, its age is read back from the bucket.
	deadline = time.Now().Add(90 * time.Second)
	for {
		info := g.mustCLI("volume", "info", "o")
		if strings.Contains(info, "recovery:     last point") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the last recovery point was not read back after a restart:\n%s", info)
		}
		time.Sleep(time.Second)
	}
	g.mustCLI("volume", "checkpoint", "o")
	g.exportAndCompare("o")
}
