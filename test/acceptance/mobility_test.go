package acceptance

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// lunIDs reads a target's LUN 0 device identification page with libiscsi's
// iscsi-inq and returns its NAA designator (hex) and T10 vendor ID
// designator. iscsi-inq prints a binary designator's bytes with %s, so
// what it shows ends at the first zero byte (about one volume in 40 has
// one in its 8 bytes): the NAA is checked to be, as far as it is shown,
// the one the volume's id gives (SHA-256 of the id, its first nibble
// NAA 6; gateway/iscsi newLU), and that one is returned.
func lunIDs(t *testing.T, g *gateway, vol string) (naa, t10 string) {
	t.Helper()
	out := run(t, time.Minute, testutil.RequireTool(t, "iscsi-inq"), "-e", "1", "-c", "131", // 0x83
		"iscsi://"+g.iscsiAddr+"/iqn.2026-11.io.ferry:"+vol+"/0")
	sum := sha256.Sum256([]byte(g.info(vol).ID))
	want := sum[:8]
	want[0] = 0x60 | want[0]&0x0f
	shown := want
	if i := bytes.IndexByte(want, 0); i >= 0 {
		shown = want[:i]
	}
	if !strings.Contains(out, "Designator Type:(3) NAA\nDesignator:["+string(shown)+"]") {
		t.Fatalf("no NAA designator %x (from the volume's id) in iscsi-inq output:\n%s", want, out)
	}
	naa = hex.EncodeToString(want)
	m := regexp.MustCompile(`Designator Type:\(1\) T10_VENDORT?_ID\nDesignator:\[([^\]]*)\]`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no T10 vendor ID designator in iscsi-inq output:\n%s", out)
	}
	return naa, m[1]
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// A volume's iSCSI identifiers follow its identity (a UUID), not its name:
// two volumes called vm1 on two gateways present different NAA
// identifiers, and a volume keeps its own across restarts.
func TestVolumeIdentity(t *testing.T) {
	a := startGateway(t)
	b := startGateway(t)
	a.mustCLI("volume", "create", "vm1", "--size", "16M")
	b.mustCLI("volume", "create", "vm1", "--size", "16M")
	ia, ib := a.info("vm1"), b.info("vm1")
	if !uuidRE.MatchString(ia.ID) || !uuidRE.MatchString(ib.ID) || ia.ID == ib.ID {
		t.Fatalf("volume ids %q and %q: want two different UUIDs", ia.ID, ib.ID)
	}
	if out := a.mustCLI("volume", "info", "vm1"); !strings.Contains(out, ia.ID) {
		t.Errorf("volume info does not show the id:\n%s", out)
	}
	na, ta := lunIDs(t, a, "vm1")
	nb, tb := lunIDs(t, b, "vm1")
	if na == nb || ta == tb {
		t.Errorf("two volumes named vm1 on two gateways share identifiers: NAA %s/%s, T10 %q/%q", na, nb, ta, tb)
	}
	if !strings.HasPrefix(na, "6") || !strings.Contains(ta, ia.ID) {
		t.Errorf("NAA %s (want NAA 6) and T10 %q (want the volume id %s)", na, ta, ia.ID)
	}
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	a.start()
	if again, _ := lunIDs(t, a, "vm1"); again != na {
		t.Errorf("NAA changed across a restart: %s, then %s", na, again)
	}
}

// An S3-backed volume whose cache is lost (new machine, lost disk) starts
// again from its newest recovery point: what that point holds reads back,
// and the volume goes on taking writes and recovery points without
// touching the objects it still reads.
func TestS3LostCacheResumes(t *testing.T) {
	qemuIO := testutil.RequireTool(t, "qemu-io")
	srv := s3Env(t, "ferry-lost")
	g := startGateway(t, "--checkpoint-interval", "1h")
	g.mustCLI("store", "add", "cloud", "--endpoint", srv.Endpoint, "--bucket", "ferry-lost")
	g.mustCLI("volume", "create", "v", "--size", "64M", "--store", "cloud")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x41 0 5M", "-c", "write -P 0x42 40M 4k", "-c", "flush", g.uri("v"))
	g.mustCLI("volume", "checkpoint", "v")
	id := g.info("v").ID
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(g.data, "pool", "tier-"+id)
	if _, err := os.Stat(cache); err != nil {
		t.Fatalf("cache directory: %v", err)
	}
	if err := os.RemoveAll(cache); err != nil {
		t.Fatal(err)
	}
	g.start()
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x41 0 5M", "-c", "read -P 0x42 40M 4k", "-c", "read -P 0 5M 1M", g.uri("v"))
	for i := range 3 {
		run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x5"+string(rune('0'+i))+" 20M 1M", "-c", "flush", g.uri("v"))
		g.mustCLI("volume", "checkpoint", "v")
	}
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x41 0 5M", "-c", "read -P 0x42 40M 4k", "-c", "read -P 0x52 20M 1M", g.uri("v"))
	g.exportAndCompare("v")
	if !strings.Contains(g.logs.String(), "cache started from the store's newest recovery point") {
		t.Errorf("the gateway did not say where the volume resumed from")
	}
}

// twoGateways starts gateways A and B over one bucket, each with the
// bucket added as store "cloud".
func twoGateways(t *testing.T, bucket string, extra ...string) (*testutil.S3Server, *gateway, *gateway) {
	t.Helper()
	srv := s3Env(t, bucket)
	args := append([]string{"--checkpoint-interval", "1h", "--lease-ttl", "9s", "--cache-size", "2G"}, extra...)
	a, b := startGateway(t, args...), startGateway(t, args...)
	for _, g := range []*gateway{a, b} {
		out := g.mustCLI("store", "add", "cloud", "--endpoint", srv.Endpoint, "--bucket", bucket)
		if strings.Contains(out, "cannot move") {
			t.Fatalf("the S3 server should honour conditional puts: %s", out)
		}
	}
	return srv, a, b
}

// fioArgs writes (or verifies) a crc32c pattern over 1 GiB of a volume.
func fioPattern(uri string, verifyOnly bool) []string {
	args := []string{"--name=move", "--ioengine=nbd", "--uri=" + uri, "--rw=write", "--bs=1M", "--iodepth=8",
		"--size=1G", "--verify=crc32c", "--verify_state_save=0", "--verify_fatal=1", "--randrepeat=0", "--end_fsync=1"}
	if verifyOnly {
		args = append(args, "--verify_only=1")
	}
	return args
}

// A planned move: A writes a 1 GiB pattern and releases the volume, B
// adopts it and serves the whole pattern at once, from the bucket.
func TestMoveReleaseAdopt(t *testing.T) {
	fio := testutil.RequireTool(t, "fio")
	_, a, b := twoGateways(t, "ferry-move")
	a.mustCLI("volume", "create", "vm1", "--size", "2G", "--store", "cloud")
	id := a.info("vm1").ID
	run(t, 10*time.Minute, fio, fioPattern(a.uri("vm1"), false)...)

	// Bad input first: nothing is lost by any of it.
	for _, c := range []struct {
		g    *gateway
		args []string
		want string
	}{
		{b, []string{"volume", "adopt", "cloud", "vm1"}, "holds its writer lease until"},
		{b, []string{"volume", "adopt", "cloud", "ghost"}, "no volume named"},
		{b, []string{"volume", "adopt", "nostore", "vm1"}, "no store named"},
		{b, []string{"volume", "adopt", "cloud", "vm1", "--force", "--steal"}, "not both"},
		{a, []string{"volume", "adopt", "cloud", "vm1"}, "serves it already"},
	} {
		if r := c.g.cli(c.args...); r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("ferry %v: exit %d, stderr %q, want %q", c.args, r.code, r.stderr, c.want)
		}
	}
	a.mustCLI("volume", "create", "plain", "--size", "16M")
	if r := a.cli("volume", "release", "plain"); r.code == 0 || !strings.Contains(r.stderr, "local volume") {
		t.Errorf("release of a local volume: exit %d %q", r.code, r.stderr)
	}

	var listed []struct {
		ID    string `json:"id"`
		Name  string `json:"name"`
		Local string `json:"local"`
		Lease *struct {
			State      string `json:"state"`
			HolderName string `json:"holder_name"`
		} `json:"lease"`
	}
	if err := json.Unmarshal([]byte(b.mustCLI("store", "volumes", "cloud", "--json")), &listed); err != nil {
		t.Fatal(err)
	}
	if len(listed) != 1 || listed[0].ID != id || listed[0].Name != "vm1" || listed[0].Local != "" || listed[0].Lease == nil || listed[0].Lease.State != "held" {
		t.Fatalf("store volumes on B: %+v", listed)
	}

	naaA, _ := lunIDs(t, a, "vm1")
	a.mustCLI("volume", "release", "vm1")
	if r := a.cli("volume", "info", "vm1"); r.code == 0 {
		t.Error("a released volume is still listed on A")
	}
	out := b.mustCLI("volume", "adopt", "cloud", "vm1", "--wait")
	if !strings.Contains(out, "adopted vm1") || !strings.Contains(out, "nbd://"+b.nbdAddr+"/vm1") ||
		!strings.Contains(out, "hydration done: 1 GiB of 1 GiB cached") {
		t.Errorf("adopt --wait output:\n%s", out)
	}
	if info := b.mustCLI("volume", "info", "vm1"); !strings.Contains(info, "hydration:    done") || !strings.Contains(info, "(100%)") {
		t.Errorf("volume info after hydration:\n%s", info)
	}
	if in := b.info("vm1"); in.ID != id {
		t.Errorf("adopted volume has id %s, want %s", in.ID, id)
	}
	if naaB, _ := lunIDs(t, b, "vm1"); naaB != naaA {
		t.Errorf("the moved volume's NAA identifier changed: %s on A, %s on B", naaA, naaB)
	}
	run(t, 10*time.Minute, fio, fioPattern(b.uri("vm1"), true)...)
	if r := b.cli("volume", "adopt", "cloud", "vm1"); r.code == 0 || !strings.Contains(r.stderr, "serves it already") {
		t.Errorf("adopting twice: exit %d %q", r.code, r.stderr)
	}
	// B writes on: a new generation's recovery points, and the bucket's
	// copy is B's.
	run(t, time.Minute, testutil.RequireTool(t, "qemu-io"), "-f", "raw", "-c", "write -P 0x77 1536M 1M", "-c", "flush", b.uri("vm1"))
	b.mustCLI("volume", "checkpoint", "vm1")
	b.exportAndCompare("vm1")
}

// An unplanned move: A is killed -9 without releasing. B is refused while
// A's lease is live, then until --force, and then serves everything A
// flushed before its last recovery point.
func TestMoveAfterKill9Force(t *testing.T) {
	fio := testutil.RequireTool(t, "fio")
	_, a, b := twoGateways(t, "ferry-unplanned")
	a.mustCLI("volume", "create", "vm1", "--size", "2G", "--store", "cloud")
	run(t, 10*time.Minute, fio, fioPattern(a.uri("vm1"), false)...)
	a.mustCLI("volume", "checkpoint", "vm1")
	// Written after the last recovery point: lost in an unplanned move.
	run(t, time.Minute, testutil.RequireTool(t, "qemu-io"), "-f", "raw", "-c", "write -P 0x99 1536M 4M", "-c", "flush", a.uri("vm1"))
	a.kill9()

	if r := b.cli("volume", "adopt", "cloud", "vm1", "--force"); r.code == 0 {
		// Only possible if the lease already expired; the test is then
		// slower than the lease. Nothing to check about refusal.
		t.Log("adopt --force succeeded at once: A's lease had already expired")
	} else {
		if !strings.Contains(r.stderr, "holds its writer lease until") {
			t.Errorf("adopt while A's lease is live: %q", r.stderr)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			time.Sleep(time.Second)
			r = b.cli("volume", "adopt", "cloud", "vm1")
			if strings.Contains(r.stderr, "--force") {
				break
			}
			if time.Now().After(deadline) || r.code == 0 {
				t.Fatalf("adopt after A's lease expired: exit %d %q", r.code, r.stderr)
			}
		}
		out := b.mustCLI("volume", "adopt", "cloud", "vm1", "--force")
		if !strings.Contains(out, "took the writer lease from") || !strings.Contains(out, "old") {
			t.Errorf("adopt --force does not report what it took and the data-loss bound:\n%s", out)
		}
	}
	run(t, 10*time.Minute, fio, fioPattern(b.uri("vm1"), true)...)
	run(t, time.Minute, testutil.RequireTool(t, "qemu-io"), "-f", "raw", "-c", "read -P 0 1536M 4M", b.uri("vm1"))
}

// Fencing: B steals the lease while A serves a client that writes. A
// learns at its next renewal and then refuses every write and recovery
// point; B's image is exactly the recovery point it adopted plus its own
// writes, never a mix with A's later writes.
func TestStealFencesTheOldWriter(t *testing.T) {
	qemuIO := testutil.RequireTool(t, "qemu-io")
	_, a, b := twoGateways(t, "ferry-steal")
	a.mustCLI("volume", "create", "vm1", "--size", "256M", "--store", "cloud")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x11 0 64M", "-c", "flush", a.uri("vm1"))
	a.mustCLI("volume", "checkpoint", "vm1")

	// A client on A keeps writing 0x22 over the same region.
	stop := make(chan struct{})
	writerDone := make(chan string, 1)
	go func() {
		var log strings.Builder
		for {
			select {
			case <-stop:
				writerDone <- log.String()
				return
			default:
			}
			out, _ := runErr(time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x22 0 1M", "-c", "flush", a.uri("vm1"))
			log.WriteString(out)
		}
	}()
	time.Sleep(500 * time.Millisecond)
	r := b.cli("volume", "adopt", "cloud", "vm1", "--steal")
	if r.code != 0 || !strings.Contains(r.stdout, "took the writer lease from") || !strings.Contains(r.stderr, "fenced now") {
		t.Errorf("adopt --steal: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// A notices at its next renewal.
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(a.mustCLI("volume", "info", "vm1"), "lease:        lost") {
		if time.Now().After(deadline) {
			t.Fatalf("A never noticed the steal:\n%s", a.mustCLI("volume", "info", "vm1"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// From now on every write and flush on A fails.
	out, err := runErr(time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x33 0 4k", "-c", "flush", a.uri("vm1"))
	if err == nil && !strings.Contains(out, "failed") {
		t.Errorf("a write to A after it lost the lease succeeded:\n%s", out)
	}
	if !strings.Contains(out, "Operation not permitted") {
		t.Errorf("a fenced write should fail with EPERM:\n%s", out)
	}
	if r := a.cli("volume", "checkpoint", "vm1"); r.code == 0 {
		t.Error("A published a recovery point after losing the lease")
	}
	resp, err := http.Get("http://" + a.apiAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "ferry_volume_writes_fenced 1") {
		t.Errorf("/metrics on A does not count the fenced volume")
	}
	close(stop)
	<-writerDone

	// B's image is the recovery point it adopted (A's checkpoint: 0x11),
	// not A's later writes (0x22).
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x11 0 64M", "-c", "read -P 0 64M 1M", b.uri("vm1"))
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x44 128M 1M", "-c", "flush", b.uri("vm1"))
	b.mustCLI("volume", "checkpoint", "vm1")
	b.exportAndCompare("vm1")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x11 0 64M", "-c", "read -P 0x44 128M 1M", b.uri("vm1"))
	// A restarted still refuses writes: B holds the lease.
	if err := a.stop(); err != nil {
		t.Errorf("A's clean shutdown with a fenced volume: %v", err)
	}
	a.start()
	out, _ = runErr(time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x55 0 4k", a.uri("vm1"))
	if !strings.Contains(out, "Operation not permitted") {
		t.Errorf("A after a restart writes a volume B holds:\n%s", out)
	}
}

// A snapshot taken under a flushing write load reads as exactly one flush
// point that holds every write acknowledged before the command started;
// it is a read-only export over NBD and iSCSI, survives later writes and
// recovery points, and is listed with what only it keeps.
func TestSnapshotUnderLoad(t *testing.T) {
	srv := s3Env(t, "ferry-snap")
	g := startGateway(t, "--checkpoint-interval", "1h")
	g.mustCLI("store", "add", "cloud", "--endpoint", srv.Endpoint, "--bucket", "ferry-snap")
	g.mustCLI("volume", "create", "vm1", "--size", "64M", "--store", "cloud")
	check := snapshotUnderLoad(t, g.uri("vm1"), 3000, func() {
		g.mustCLI("volume", "snapshot", "create", "vm1", "s1")
	})
	checkFlushPoint(t, g.uri("vm1@s1"), check, "snapshot export")
	// The same through iSCSI: the target BASE:vm1:s1, read-only.
	g.checkSnapshotISCSI("vm1", "s1")
	// Overwrite, publish recovery points (each collects): the snapshot
	// still reads the same, and keeps what the overwrite replaced.
	g.qemuIOWrite("vm1", "write -P 0xee 0 16M")
	for range 4 {
		g.mustCLI("volume", "checkpoint", "vm1")
	}
	checkFlushPoint(t, g.uri("vm1@s1"), check, "snapshot after overwrites and collection")
	ls := g.mustCLI("volume", "snapshot", "ls", "vm1")
	if !strings.Contains(ls, "vm1@s1") || strings.Contains(ls, " 0 B\n") {
		t.Errorf("snapshot ls:\n%s", ls)
	}
	g.snapshotBadInput("vm1", "s1")
	g.mustCLI("volume", "snapshot", "rm", "vm1", "s1")
	if out, err := runErr(time.Minute, testutil.RequireTool(t, "nbdinfo"), g.uri("vm1@s1")); err == nil {
		t.Errorf("a removed snapshot is still exported:\n%s", out)
	}
}

// A clone is writable at once, shares its parent's data, changes
// independently, and keeps reading everything after its snapshot and its
// parent are removed and garbage collected, also from a lost cache; the
// image is checked against one built independently with qemu-io.
func TestCloneOutlivesParent(t *testing.T) {
	qemuIO := testutil.RequireTool(t, "qemu-io")
	srv := s3Env(t, "ferry-clone")
	g := startGateway(t, "--checkpoint-interval", "1h")
	g.mustCLI("store", "add", "cloud", "--endpoint", srv.Endpoint, "--bucket", "ferry-clone")
	g.mustCLI("volume", "create", "vm1", "--size", "64M", "--store", "cloud")
	parentWrites := []string{"write -P 0x11 0 16M", "write -P 0x12 20M 4k", "write -P 0x13 30M 300k"}
	g.qemuIOWrite("vm1", parentWrites...)
	g.mustCLI("volume", "snapshot", "create", "vm1", "s1")
	out := g.mustCLI("volume", "clone", "vm1@s1", "c1")
	if !strings.Contains(out, "cloned vm1@s1 as c1") {
		t.Errorf("clone output:\n%s", out)
	}
	cloneWrites := []string{"write -P 0x21 8M 1M", "write -P 0x22 40M 4M"}
	g.qemuIOWrite("c1", cloneWrites...)
	g.qemuIOWrite("vm1", "write -P 0x31 0 16M")

	// The expected image, built independently.
	want := expectedImage(t, "64M", append(parentWrites, cloneWrites...)...)
	g.compareExport("c1", want, "at once")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x31 0 16M", "-c", "read -P 0x12 20M 4k", g.uri("vm1"))
	g.cloneBadInput("vm1", "s1", "c1")

	// The snapshot and the parent go; the clone collects; its cache is lost.
	g.mustCLI("volume", "snapshot", "rm", "vm1", "s1")
	g.mustCLI("volume", "checkpoint", "vm1")
	parentID := g.info("vm1").ID
	g.mustCLI("volume", "rm", "vm1")
	for range 4 {
		run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x22 40M 4M", "-c", "flush", g.uri("c1"))
		g.mustCLI("volume", "checkpoint", "c1")
	}
	id := g.info("c1").ID
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(g.data, "pool", "tier-"+id))
	// The removed parent left only what the clone reads, with a tombstone.
	parentDir := filepath.Join(srv.Dir, "ferry-clone", "volumes", parentID)
	if _, err := os.Stat(filepath.Join(parentDir, "removed.json")); err != nil {
		t.Errorf("removed parent has no tombstone: %v", err)
	}
	if _, err := os.Stat(filepath.Join(parentDir, "manifests")); err == nil {
		if ents, _ := os.ReadDir(filepath.Join(parentDir, "manifests")); len(ents) > 0 {
			t.Errorf("removed parent kept %d manifests", len(ents))
		}
	}
	g.start()
	g.compareExport("c1", want, "after its snapshot and parent were removed and collected, from a lost cache")
	g.exportAndCompare("c1")
	// The last clone's removal takes the removed parent's leftovers along.
	g.mustCLI("volume", "rm", "c1")
	if err := g.stop(); err != nil { // waits for the background deletes
		t.Fatal(err)
	}
	var left []string
	filepath.Walk(filepath.Join(srv.Dir, "ferry-clone", "volumes"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("objects left after the parent and its last clone were removed: %v", left)
	}
}
