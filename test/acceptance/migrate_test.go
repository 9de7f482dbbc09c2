package acceptance

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// migrationView is what the migration tests read of `volume info --json`.
type migrationView struct {
	Store     string `json:"store"`
	Migration *struct {
		State       string  `json:"state"`
		From        string  `json:"from"`
		To          string  `json:"to"`
		TotalBytes  int64   `json:"total_bytes"`
		DoneBytes   int64   `json:"done_bytes"`
		CopiedBytes int64   `json:"copied_bytes"`
		Percent     float64 `json:"percent"`
		Passes      int     `json:"passes"`
		Error       string  `json:"error"`
	} `json:"migration"`
}

func (g *gateway) migration(vol string) migrationView {
	g.t.Helper()
	var in struct {
		Tier *migrationView `json:"tier"`
	}
	if err := json.Unmarshal([]byte(g.mustCLI("volume", "info", vol, "--json")), &in); err != nil || in.Tier == nil {
		g.t.Fatalf("volume info %s: %v", vol, err)
	}
	return *in.Tier
}

// twoStores starts two S3 servers (a cloud bucket and one at home) and a
// gateway with both added, as "cloud" and "home".
func twoStores(t *testing.T, extra ...string) (cloud, home *testutil.S3Server, g *gateway) {
	t.Helper()
	cloud, home = s3Env(t, "ferry-cloud"), s3Env(t, "ferry-home")
	g = startGateway(t, append([]string{"--checkpoint-interval", "1h", "--lease-ttl", "9s", "--cache-size", "2G"}, extra...)...)
	g.mustCLI("store", "add", "cloud", "--endpoint", cloud.Endpoint, "--bucket", "ferry-cloud")
	g.mustCLI("store", "add", "home", "--endpoint", home.Endpoint, "--bucket", "ferry-home")
	return cloud, home, g
}

// fioRegion is fioPattern over size bytes from off.
func fioRegion(uri string, verifyOnly bool, off, size string) []string {
	args := fioPattern(uri, verifyOnly)
	for i, a := range args {
		if strings.HasPrefix(a, "--size=") {
			args[i] = "--size=" + size
		}
	}
	return append(args, "--offset="+off)
}

// Bring it home: a volume in the cloud bucket moves to the bucket at home
// while fio keeps writing to it; the whole pattern then reads back through
// the gateway, from the home bucket alone (the cloud server stopped, the
// cache emptied), and on a second gateway that adopts it from home.
func TestMigrateWhileServing(t *testing.T) {
	fio := testutil.RequireTool(t, "fio")
	cloud, home, g := twoStores(t)
	g.mustCLI("volume", "create", "vm1", "--size", "2G", "--store", "cloud")
	id := g.info("vm1").ID
	run(t, 10*time.Minute, fio, fioPattern(g.uri("vm1"), false)...)

	// fio writes a second region while the volume moves.
	fioDone := make(chan error, 1)
	go func() {
		out, err := runErr(10*time.Minute, fio, fioRegion(g.uri("vm1"), false, "1G", "512M")...)
		if err != nil {
			t.Logf("fio during the move:\n%s", out)
		}
		fioDone <- err
	}()
	time.Sleep(2 * time.Second)
	out := g.mustCLI("volume", "migrate", "vm1", "--to-store", "home", "--wait")
	if !strings.Contains(out, "migration of vm1: done, cloud → home") || !strings.Contains(out, "(100%)") {
		t.Errorf("migrate --wait output:\n%s", out)
	}
	if err := <-fioDone; err != nil {
		t.Fatalf("fio writing during the move: %v", err)
	}
	mv := g.migration("vm1")
	if mv.Store != "home" || mv.Migration == nil || mv.Migration.State != "done" || mv.Migration.TotalBytes < 1<<30 {
		t.Fatalf("volume after the move: %+v %+v", mv, mv.Migration)
	}
	t.Logf("move: %+v", *mv.Migration)
	if info := g.mustCLI("volume", "info", "vm1"); !strings.Contains(info, "store:        home") || !strings.Contains(info, "migration:    done, cloud → home") {
		t.Errorf("volume info after the move:\n%s", info)
	}
	resp, err := http.Get("http://" + g.apiAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "ferry_migration_done_bytes") || !strings.Contains(string(metrics), "ferry_migrations_running 0") {
		t.Errorf("/metrics has no migration gauges")
	}
	run(t, 10*time.Minute, fio, fioPattern(g.uri("vm1"), true)...)
	run(t, 10*time.Minute, fio, fioRegion(g.uri("vm1"), true, "1G", "512M")...)
	g.mustCLI("volume", "checkpoint", "vm1")
	g.exportAndCompare("vm1") // from home, the volume's store now
	g.rebuildAndCompare(home, "ferry-home", "", "vm1")
	// The cloud copy stays, its lease released (with no recovery point:
	// the only one was published at home, after the switch).
	if _, err := os.Stat(filepath.Join(cloud.Dir, "ferry-cloud", "volumes", id, "chunks")); err != nil {
		t.Errorf("the cloud copy is gone without --delete-source: %v", err)
	}
	if ls := g.mustCLI("store", "volumes", "cloud"); !strings.Contains(ls, "released") {
		t.Errorf("store volumes cloud after the move:\n%s", ls)
	}

	// Only home is needed now: the cloud server goes, the cache too.
	cloud.Stop()
	g.restartWithoutCache(id)
	run(t, 10*time.Minute, fio, fioPattern(g.uri("vm1"), true)...)
	run(t, 10*time.Minute, fio, fioRegion(g.uri("vm1"), true, "1G", "512M")...)

	// A second gateway adopts it from home.
	g.mustCLI("volume", "release", "vm1")
	g2 := startGateway(t, "--checkpoint-interval", "1h", "--lease-ttl", "9s", "--cache-size", "2G")
	g2.mustCLI("store", "add", "home", "--endpoint", home.Endpoint, "--bucket", "ferry-home")
	g2.mustCLI("volume", "adopt", "home", "vm1", "--hydrate", "none")
	run(t, 10*time.Minute, fio, fioPattern(g2.uri("vm1"), true)...)
	run(t, 10*time.Minute, fio, fioRegion(g2.uri("vm1"), true, "1G", "512M")...)
}

// kill -9 during the copy: the restarted gateway resumes the move where it
// was (what was copied is not copied again) and completes it.
func TestMigrateResumesAfterKill9(t *testing.T) {
	fio := testutil.RequireTool(t, "fio")
	cloud, home, g := twoStores(t)
	g.mustCLI("volume", "create", "vm1", "--size", "1G", "--store", "cloud")
	id := g.info("vm1").ID
	run(t, 10*time.Minute, fio, fioRegion(g.uri("vm1"), false, "0", "512M")...)
	g.mustCLI("volume", "checkpoint", "vm1")
	out := g.mustCLI("volume", "migrate", "vm1", "--to-store", "home", "--rate", "16M", "--delete-source")
	if !strings.Contains(out, "migrating vm1 from store cloud to home") {
		t.Errorf("migrate output:\n%s", out)
	}
	// Part of the copy done, then kill -9.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		mv := g.migration("vm1")
		if mv.Migration == nil || mv.Migration.State == "failed" {
			t.Fatalf("migration: %+v", mv.Migration)
		}
		if mv.Migration.CopiedBytes >= 64<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the copy did not progress: %+v", mv.Migration)
		}
		time.Sleep(200 * time.Millisecond)
	}
	g.kill9()
	g.start()
	if !strings.Contains(g.logs.String(), "resuming the volume's migration") {
		t.Errorf("the restarted gateway did not say it resumes the move")
	}
	deadline = time.Now().Add(5 * time.Minute)
	var mv migrationView
	for {
		mv = g.migration("vm1")
		if mv.Migration == nil {
			t.Fatalf("no migration after the restart (store %s)", mv.Store)
		}
		if s := mv.Migration.State; s == "done" || s == "failed" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the resumed move did not end: %+v", mv.Migration)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if mv.Migration.State != "done" || mv.Store != "home" {
		t.Fatalf("resumed move: store %s, %+v", mv.Store, mv.Migration)
	}
	t.Logf("resumed move: %+v", *mv.Migration)
	if mv.Migration.CopiedBytes >= mv.Migration.TotalBytes {
		t.Errorf("the resumed move copied everything again: %d of %d", mv.Migration.CopiedBytes, mv.Migration.TotalBytes)
	}
	run(t, 10*time.Minute, fio, fioRegion(g.uri("vm1"), true, "0", "512M")...)
	g.exportAndCompare("vm1")
	g.rebuildAndCompare(home, "ferry-home", "", "vm1")
	// --delete-source: nothing of the volume is left in the cloud.
	var left []string
	filepath.Walk(filepath.Join(cloud.Dir, "ferry-cloud", "volumes", id), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("--delete-source left %d objects in the cloud: %v", len(left), left[:min(5, len(left))])
	}
	// A restart after the move serves from home, with no move left over.
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(g.data, "catalog.json")); err != nil || strings.Contains(string(b), `"migration"`) || !strings.Contains(string(b), `"store": "home"`) {
		t.Errorf("catalog after the move (%v):\n%s", err, b)
	}
	os.RemoveAll(filepath.Join(g.data, "pool", "tier-"+id))
	g.start()
	run(t, 10*time.Minute, fio, fioRegion(g.uri("vm1"), true, "0", "512M")...)
}

// Bad input and failures: nothing is lost, the volume stays where it was
// and takes writes; a cancelled move leaves no copy behind.
func TestMigrateBadInputAndFailures(t *testing.T) {
	qemuIO := testutil.RequireTool(t, "qemu-io")
	_, home, g := twoStores(t)
	g.mustCLI("volume", "create", "vm1", "--size", "256M", "--store", "cloud")
	g.mustCLI("volume", "create", "plain", "--size", "16M")
	id := g.info("vm1").ID
	g.qemuIOWrite("vm1", "write -P 0x11 0 64M")
	g.mustCLI("volume", "checkpoint", "vm1")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"volume", "migrate", "plain", "--to-store", "home"}, "local volume"},
		{[]string{"volume", "migrate", "vm1", "--to-store", "cloud"}, "in store \"cloud\" already"},
		{[]string{"volume", "migrate", "vm1", "--to-store", "nowhere"}, "no store named \"nowhere\""},
		{[]string{"volume", "migrate", "vm1"}, "--to-store STORE is required"},
		{[]string{"volume", "migrate", "ghost", "--to-store", "home"}, `migrate volume "ghost" to store "home": not found`},
		{[]string{"volume", "migrate", "vm1", "--cancel"}, "no migration runs"},
	} {
		if r := g.cli(c.args...); r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("ferry %v: exit %d, stderr %q, want %q", c.args, r.code, r.stderr, c.want)
		}
	}

	// The home server is down: a clear error, the volume stays in the
	// cloud and takes writes and recovery points.
	home.Stop()
	r := g.cli("volume", "migrate", "vm1", "--to-store", "home", "--wait")
	if r.code == 0 || !strings.Contains(r.stderr, `store "home" does not answer`) || !strings.Contains(r.stderr, "stays on its store") {
		t.Errorf("migrate to a stopped server: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if mv := g.migration("vm1"); mv.Store != "cloud" || mv.Migration == nil || mv.Migration.State != "failed" || mv.Migration.Error == "" {
		t.Errorf("volume after the failed move: %+v %+v", mv, mv.Migration)
	}
	g.qemuIOWrite("vm1", "write -P 0x22 64M 1M")
	g.mustCLI("volume", "checkpoint", "vm1")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x11 0 64M", "-c", "read -P 0x22 64M 1M", g.uri("vm1"))
	g.exportAndCompare("vm1")

	// A slow move, cancelled: the volume stays, the copy in home goes.
	home.Start()
	g.mustCLI("volume", "migrate", "vm1", "--to-store", "home", "--rate", "1M")
	for _, c := range [][]string{
		{"volume", "snapshot", "create", "vm1", "s1"},
		{"volume", "release", "vm1"},
		{"volume", "rm", "vm1"},
		{"volume", "migrate", "vm1", "--to-store", "home"},
	} {
		if r := g.cli(c...); r.code == 0 || !strings.Contains(r.stderr, "is moving to store \"home\"") {
			t.Errorf("ferry %v during a move: exit %d, stderr %q", c, r.code, r.stderr)
		}
	}
	out := g.mustCLI("volume", "migrate", "vm1", "--cancel")
	if !strings.Contains(out, "cancelled") {
		t.Errorf("migrate --cancel output:\n%s", out)
	}
	if mv := g.migration("vm1"); mv.Store != "cloud" || mv.Migration.State != "cancelled" {
		t.Errorf("volume after cancel: %+v %+v", mv, mv.Migration)
	}
	if left := filesUnder(filepath.Join(home.Dir, "ferry-home", "volumes", id)); len(left) > 0 {
		t.Errorf("a cancelled move left %d objects in home: %v", len(left), left[:min(5, len(left))])
	}
	g.qemuIOWrite("vm1", "write -P 0x33 65M 1M")
	g.mustCLI("volume", "checkpoint", "vm1")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x11 0 64M", "-c", "read -P 0x22 64M 1M", "-c", "read -P 0x33 65M 1M", g.uri("vm1"))
	g.exportAndCompare("vm1")
}

// restartWithoutCache restarts the gateway with the cache of the
// S3-backed volume id gone: it then reads only from its store.
func (g *gateway) restartWithoutCache(id string) {
	g.t.Helper()
	if err := g.stop(); err != nil {
		g.t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(g.data, "pool", "tier-"+id)); err != nil {
		g.t.Fatal(err)
	}
	g.start()
}

// filesUnder lists the files under dir (none when it does not exist).
func filesUnder(dir string) []string {
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// A clone moves home with what it reads of its parent, which stays in the
// cloud: a cancelled move leaves nothing in home; a completed one with
// --delete-source reads its parent's data from home at once, and from
// home alone once the cloud is gone (its cache emptied, and exported from
// home); the parent's objects the clone kept in the cloud go with the
// parent there; and removing the
// moved clone takes its copies of the parent's objects in home with it.
func TestMigrateClone(t *testing.T) {
	qemuIO := testutil.RequireTool(t, "qemu-io")
	cloud, home, g := twoStores(t)
	g.mustCLI("volume", "create", "vm1", "--size", "256M", "--store", "cloud")
	pid := g.info("vm1").ID
	g.qemuIOWrite("vm1", "write -P 0x11 0 64M")
	g.mustCLI("volume", "snapshot", "create", "vm1", "s1")
	g.mustCLI("volume", "clone", "vm1@s1", "c1")
	cid := g.info("c1").ID
	g.qemuIOWrite("c1", "write -P 0x22 16M 8M")
	g.qemuIOWrite("vm1", "write -P 0x33 0 64M") // after the snapshot: not the clone's
	g.mustCLI("volume", "checkpoint", "c1")
	g.mustCLI("volume", "checkpoint", "vm1")
	cloneReads := []string{"-c", "read -P 0x11 0 16M", "-c", "read -P 0x22 16M 8M", "-c", "read -P 0x11 24M 40M", "-c", "read -P 0 64M 192M"}
	homeVols := filepath.Join(home.Dir, "ferry-home", "volumes")
	cloudVols := filepath.Join(cloud.Dir, "ferry-cloud", "volumes")

	// Cancelled: nothing of the clone or its parent stays in home.
	g.mustCLI("volume", "migrate", "c1", "--to-store", "home", "--rate", "1M")
	time.Sleep(2 * time.Second)
	if out := g.mustCLI("volume", "migrate", "c1", "--cancel"); !strings.Contains(out, "cancelled") {
		t.Errorf("migrate --cancel output:\n%s", out)
	}
	if left := filesUnder(homeVols); len(left) > 0 {
		t.Errorf("a cancelled clone move left %d objects in home: %v", len(left), left[:min(5, len(left))])
	}

	out := g.mustCLI("volume", "migrate", "c1", "--to-store", "home", "--delete-source", "--wait")
	if !strings.Contains(out, "migration of c1: done, cloud → home") {
		t.Errorf("migrate --wait output:\n%s", out)
	}
	if mv := g.migration("c1"); mv.Store != "home" || mv.Migration == nil || mv.Migration.State != "done" || mv.Migration.TotalBytes < 64<<20 {
		t.Fatalf("clone after the move: %+v %+v", mv, mv.Migration)
	}
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x33 0 64M", g.uri("vm1"))
	for _, f := range []string{filepath.Join(homeVols, pid, "clones", cid+".json"), filepath.Join(homeVols, pid, "removed.json")} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("home after the move: %v", err)
		}
	}
	for _, f := range []string{filepath.Join(cloudVols, cid), filepath.Join(cloudVols, pid, "clones", cid+".json")} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("the cloud keeps %s after the move with --delete-source (%v)", f, err)
		}
	}
	// The parent goes in the cloud, all of it: no clone reads it there.
	g.mustCLI("volume", "snapshot", "rm", "vm1", "s1")
	g.mustCLI("volume", "rm", "vm1")
	waitEmpty := func(dir, what string) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for len(filesUnder(dir)) > 0 && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		if left := filesUnder(dir); len(left) > 0 {
			t.Errorf("%s: %d objects left: %v", what, len(left), left[:min(5, len(left))])
		}
	}
	waitEmpty(filepath.Join(cloudVols, pid), "the removed parent in the cloud")
	// The clone never read its parent's data: it reads it from home now.
	run(t, time.Minute, qemuIO, append(append([]string{"-f", "raw"}, cloneReads...), g.uri("c1"))...)

	// Home alone: the cloud server stops, the clone's cache goes.
	cloud.Stop()
	g.restartWithoutCache(cid)
	run(t, time.Minute, qemuIO, append(append([]string{"-f", "raw"}, cloneReads...), g.uri("c1"))...)
	g.qemuIOWrite("c1", "write -P 0x44 100M 1M")
	g.mustCLI("volume", "checkpoint", "c1")
	g.exportAndCompare("c1")

	// The clone goes: its copies of the parent's objects in home too.
	g.mustCLI("volume", "rm", "c1")
	waitEmpty(homeVols, "home after the moved clone was removed")
}
