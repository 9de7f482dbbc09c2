package acceptance

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/internal/testutil"
)

// Snapshots and clones as every backend must show them to clients: the
// helpers here are shared by the S3-backed tests (mobility_test.go) and
// the local-pool ones below.

// snapshotUnderLoad writes through NBD to uri 4 KiB block k with byte
// k%251+1, in order, each flushed and then reported, so every flush point
// is a prefix of blocks. Once more than 300 blocks are acknowledged it
// calls take (which snapshots the volume) and lets the writer finish. It
// returns an nbdsh script that checks an export reads as exactly one
// flush point holding every block acknowledged before take, says it is
// read-only and refuses a write sent to it with EPERM or EROFS, and
// prints "prefix N".
func snapshotUnderLoad(t *testing.T, uri string, blocks int, take func()) string {
	t.Helper()
	writer := testutil.Nbdsh(t, "-u", uri, "-c", fmt.Sprintf(`
import sys
for k in range(%d):
    h.pwrite(bytes([k %% 251 + 1]) * 4096, k * 4096)
    h.flush()
    print(k, flush=True)
`, blocks))
	stdout, err := writer.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	acked := make(chan int, blocks)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var k int
			fmt.Sscan(sc.Text(), &k)
			acked <- k
		}
		close(acked)
	}()
	last := -1
	for last < 300 {
		k, ok := <-acked
		if !ok {
			writer.Wait()
			t.Fatalf("the writer stopped after block %d", last)
		}
		last = k
	}
	for more := true; more; { // the newest acknowledgement so far
		select {
		case k := <-acked:
			last = k
		default:
			more = false
		}
	}
	take()
	for range acked { // let the writer finish
	}
	if err := writer.Wait(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	return fmt.Sprintf(`
data = h.pread(%d * 4096, 0)
j = 0
while j < %d and data[j*4096:(j+1)*4096] == bytes([j %% 251 + 1]) * 4096:
    j += 1
assert data[j*4096:] == bytes(len(data) - j*4096), "not a flush point: block %%d onwards is not all zeroes" %% j
assert j > %d, "snapshot misses acknowledged writes: %%d blocks" %% j
assert h.is_read_only()
import errno
h.set_strict_mode(0)  # send the write: the server must refuse it
try:
    h.pwrite(b"x" * 512, 0)
    raise SystemExit("write to a snapshot succeeded")
except nbd.Error as e:
    assert e.errnum in (errno.EPERM, errno.EROFS), "write refused with %%s, want EPERM or EROFS" %% e
print("prefix", j)
`, blocks+16, blocks, last)
}

// checkFlushPoint runs snapshotUnderLoad's script on the export at uri.
func checkFlushPoint(t *testing.T, uri, check, what string) {
	t.Helper()
	out, err := testutil.Nbdsh(t, "-u", uri, "-c", check).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "prefix") {
		t.Fatalf("%s: %v\n%s", what, err, out)
	}
}

// checkSnapshotISCSI reads snapshot vol@snap through its iSCSI target,
// BASE:VOL:SNAP, where snapshotUnderLoad's first block is, and checks
// that a write to it fails.
func (g *gateway) checkSnapshotISCSI(vol, snap string) {
	g.t.Helper()
	qemuIO := testutil.RequireTool(g.t, "qemu-io")
	iurl := "iscsi://" + g.iscsiAddr + "/iqn.2026-11.io.ferry:" + vol + ":" + snap + "/0"
	run(g.t, time.Minute, qemuIO, "-r", "-f", "raw", "-c", "read -P 1 0 4k", iurl)
	if out, _ := runErr(time.Minute, qemuIO, "-f", "raw", "-c", "write -P 9 0 4k", iurl); !strings.Contains(out, "failed") {
		g.t.Errorf("write to the snapshot's iSCSI target:\n%s", out)
	}
}

// snapshotBadInput checks that bad snapshot commands fail with clear
// errors; vol has a snapshot named existing.
func (g *gateway) snapshotBadInput(vol, existing string) {
	g.t.Helper()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"volume", "snapshot", "create", vol, existing}, "already exists"},
		{[]string{"volume", "snapshot", "create", vol, "Bad/Name"}, "snapshot name"},
		{[]string{"volume", "snapshot", "create", vol, ".dot"}, "snapshot name"},
		{[]string{"volume", "snapshot", "create", vol, "UPPER"}, "snapshot name"},
		{[]string{"volume", "snapshot", "create", vol, strings.Repeat("x", 64)}, "snapshot name"},
		{[]string{"volume", "snapshot", "create", "ghost", "s2"}, `volume "ghost": not found`},
		{[]string{"volume", "snapshot", "rm", vol, "nope"}, "remove snapshot " + vol + "@nope: not found"},
	} {
		if r := g.cli(c.args...); r.code == 0 || !strings.Contains(r.stderr, c.want) {
			g.t.Errorf("ferry %v: exit %d %q, want %q", c.args, r.code, r.stderr, c.want)
		}
	}
}

// cloneBadInput checks that bad clone commands fail with clear errors;
// vol@snap exists, and so does a volume named taken.
func (g *gateway) cloneBadInput(vol, snap, taken string) {
	g.t.Helper()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"volume", "clone", vol + "@nope", "c2"}, "no snapshot " + vol + "@nope"},
		{[]string{"volume", "clone", vol, "c2"}, "VOLUME@SNAPSHOT"},
		{[]string{"volume", "clone", vol + "@" + snap, taken}, "already exists"},
		{[]string{"volume", "clone", vol + "@" + snap, "Bad_Name"}, "a-z, 0-9"},
		{[]string{"volume", "clone", "ghost@" + snap, "c2"}, `volume "ghost": not found`},
	} {
		if r := g.cli(c.args...); r.code == 0 || !strings.Contains(r.stderr, c.want) {
			g.t.Errorf("ferry %v: exit %d %q, want %q", c.args, r.code, r.stderr, c.want)
		}
	}
}

// expectedImage builds, with qemu-io on a plain file, the image that the
// qemu-io commands produce on a new volume of size: the reference a clone
// is compared with, computed without Ferry.
func expectedImage(t *testing.T, size string, cmds ...string) string {
	t.Helper()
	want := filepath.Join(t.TempDir(), "want.img")
	run(t, time.Minute, testutil.RequireTool(t, "qemu-img"), "create", "-f", "raw", want, size)
	run(t, time.Minute, testutil.RequireTool(t, "qemu-io"), append(append([]string{"-f", "raw"}, qio(cmds...)...), want)...)
	return want
}

// compareExport copies an export with nbdcopy and compares it with the
// image want byte for byte.
func (g *gateway) compareExport(export, want, what string) {
	g.t.Helper()
	got := filepath.Join(g.t.TempDir(), "got.img")
	run(g.t, 5*time.Minute, testutil.RequireTool(g.t, "nbdcopy"), g.uri(export), got)
	if out, err := runErr(time.Minute, "cmp", want, got); err != nil {
		g.t.Fatalf("%s %s: %v\n%s", export, what, err, out)
	}
}

// qemuIOWrite writes through NBD with qemu-io and flushes.
func (g *gateway) qemuIOWrite(export string, cmds ...string) {
	g.t.Helper()
	qemuIO := testutil.RequireTool(g.t, "qemu-io")
	run(g.t, time.Minute, qemuIO, append(append([]string{"-f", "raw"}, qio(append(cmds, "flush")...)...), g.uri(export))...)
}

// xfsGateway starts a gateway whose data directory, and so its local
// pool, is on a loop-mounted XFS (reflink=1, the mkfs.xfs default).
func xfsGateway(t *testing.T) (*gateway, string) {
	t.Helper()
	fs := testutil.LoopFS(t, "xfs", 2<<30)
	g := newGateway(t, filepath.Join(fs, "data"))
	g.start()
	return g, fs
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// A local volume on XFS: a snapshot taken under a flushing write load
// reads as exactly one flush point holding every write acknowledged
// before the command started, and what fio wrote and flushed before it
// verifies on it; it is a read-only export over NBD and iSCSI, takes next
// to no space, survives later writes and a restart, and is listed with
// what only it keeps; a quiet snapshot equals the volume byte for byte.
func TestLocalSnapshotUnderLoad(t *testing.T) {
	fio := testutil.RequireTool(t, "fio")
	qemuIO := testutil.RequireTool(t, "qemu-io")
	g, fs := xfsGateway(t)
	if out := g.mustCLI("pool", "info"); !strings.Contains(out, "xfs") || !strings.Contains(out, "yes (reflink)") {
		t.Errorf("pool info does not say the pool can snapshot:\n%s", out)
	}
	g.mustCLI("volume", "create", "vm1", "--size", "64M")
	// fio writes an epoch of 4k random writes at 32 MiB, flushed, before
	// the snapshot; another one runs while it is taken.
	if out, err := fioEpoch(fio, g.uri("vm1"), 32<<20, false); err != nil {
		t.Fatalf("fio before the snapshot: %v\n%s", err, out)
	}
	before := freeBytes(t, fs)
	loadDone := make(chan error, 1)
	check := snapshotUnderLoad(t, g.uri("vm1"), 3000, func() {
		go func() {
			_, err := fioEpoch(fio, g.uri("vm1"), 48<<20, false)
			loadDone <- err
		}()
		g.mustCLI("volume", "snapshot", "create", "vm1", "s1")
	})
	if err := <-loadDone; err != nil {
		t.Fatalf("fio during the snapshot: %v", err)
	}
	checkFlushPoint(t, g.uri("vm1@s1"), check, "snapshot export")
	if out, err := fioEpoch(fio, g.uri("vm1@s1"), 32<<20, true); err != nil {
		t.Fatalf("what fio wrote before the snapshot does not verify on it: %v\n%s", err, out)
	}
	// The load wrote ~20 MiB and a reflink shares them all; a copy would
	// take them again.
	if used := before - freeBytes(t, fs); used > 24<<20 {
		t.Errorf("the pool lost %d bytes while ~20 MiB were written and snapshotted: the snapshot copied", used)
	}
	// qemu-io cannot open the export for writing (the server says it is
	// read-only), and the iSCSI target reads.
	if out, err := runErr(time.Minute, qemuIO, "-f", "raw", "-c", "write -P 9 0 4k", g.uri("vm1@s1")); err == nil ||
		!strings.Contains(out, "Permission denied") {
		t.Errorf("qemu-io write to the snapshot export: %v\n%s", err, out)
	}
	g.checkSnapshotISCSI("vm1", "s1")

	// Later writes do not reach the snapshot, which keeps what they
	// replaced and lists it.
	g.qemuIOWrite("vm1", "write -P 0xee 0 16M", "write -P 0xef 32M 8M")
	checkFlushPoint(t, g.uri("vm1@s1"), check, "snapshot after overwrites")
	if out, err := fioEpoch(fio, g.uri("vm1@s1"), 32<<20, true); err != nil {
		t.Fatalf("snapshot after overwrites: %v\n%s", err, out)
	}
	ls := g.mustCLI("volume", "snapshot", "ls", "vm1")
	if !strings.Contains(ls, "vm1@s1") || strings.Contains(ls, " 0 B\n") || !strings.Contains(ls, "64 MiB") {
		t.Errorf("snapshot ls (want vm1@s1, 64 MiB, keeping what the overwrites replaced):\n%s", ls)
	}

	// A snapshot of a quiet volume equals it byte for byte, and stays so.
	g.mustCLI("volume", "snapshot", "create", "vm1", "s2")
	quiet := filepath.Join(t.TempDir(), "quiet.img")
	run(t, 5*time.Minute, testutil.RequireTool(t, "nbdcopy"), g.uri("vm1"), quiet)
	g.compareExport("vm1@s2", quiet, "right after it was taken")
	g.qemuIOWrite("vm1", "write -P 0x77 1M 30M")
	g.compareExport("vm1@s2", quiet, "after the volume changed")
	qemuImg := testutil.RequireTool(t, "qemu-img")
	run(t, 5*time.Minute, qemuImg, "compare", "-f", "raw", "-F", "raw", quiet, g.uri("vm1@s2"))
	run(t, 5*time.Minute, qemuImg, "compare", "-f", "raw", "-F", "raw", quiet, "iscsi://"+g.iscsiAddr+"/iqn.2026-11.io.ferry:vm1:s2/0")
	if out, err := runErr(time.Minute, qemuImg, "compare", "-f", "raw", "-F", "raw", quiet, g.uri("vm1")); err == nil {
		t.Errorf("the volume still equals its snapshot after a write:\n%s", out)
	}

	// A restart finds the snapshots and serves them.
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	g.start()
	checkFlushPoint(t, g.uri("vm1@s1"), check, "snapshot after a restart")
	g.compareExport("vm1@s2", quiet, "after a restart")
	if out := run(t, time.Minute, testutil.RequireTool(t, "nbdinfo"), "--list", "nbd://"+g.nbdAddr); !strings.Contains(out, "vm1@s2") {
		t.Errorf("snapshot exports not listed after a restart:\n%s", out)
	}

	g.snapshotBadInput("vm1", "s1")
	g.mustCLI("volume", "snapshot", "rm", "vm1", "s1")
	if out, err := runErr(time.Minute, testutil.RequireTool(t, "nbdinfo"), g.uri("vm1@s1")); err == nil {
		t.Errorf("a removed snapshot is still exported:\n%s", out)
	}
	// Removing the volume removes its snapshots (as for S3-backed ones).
	id := g.info("vm1").ID
	snapDir := filepath.Join(g.data, "pool", "snapshots", id)
	if _, err := os.Stat(filepath.Join(snapDir, "s2.img")); err != nil {
		t.Fatalf("snapshot file: %v", err)
	}
	g.mustCLI("volume", "rm", "vm1")
	if _, err := os.Stat(snapDir); !os.IsNotExist(err) {
		t.Errorf("the removed volume's snapshots remain: %v", err)
	}
	if out, err := runErr(time.Minute, testutil.RequireTool(t, "nbdinfo"), g.uri("vm1@s2")); err == nil {
		t.Errorf("a removed volume's snapshot is still exported:\n%s", out)
	}
}

// A clone of a local volume's snapshot is writable at once, takes next to
// no space, changes independently of its parent, and reads everything
// after the snapshot and the parent are removed, also after a restart;
// the image is checked against one built independently with qemu-io.
func TestLocalCloneOutlivesParent(t *testing.T) {
	g, fs := xfsGateway(t)
	g.mustCLI("volume", "create", "vm1", "--size", "64M")
	parentWrites := []string{"write -P 0x11 0 16M", "write -P 0x12 20M 4k", "write -P 0x13 30M 300k"}
	g.qemuIOWrite("vm1", parentWrites...)
	g.mustCLI("volume", "snapshot", "create", "vm1", "s1")
	before := freeBytes(t, fs)
	out := g.mustCLI("volume", "clone", "vm1@s1", "c1")
	if !strings.Contains(out, "cloned vm1@s1 as c1") {
		t.Errorf("clone output:\n%s", out)
	}
	if used := before - freeBytes(t, fs); used > 2<<20 {
		t.Errorf("a clone of 16 MiB of data took %d bytes: a copy, not a reflink", used)
	}
	cloneWrites := []string{"write -P 0x21 8M 1M", "write -P 0x22 40M 4M"}
	g.qemuIOWrite("c1", cloneWrites...)
	g.qemuIOWrite("vm1", "write -P 0x31 0 16M")

	want := expectedImage(t, "64M", append(parentWrites, cloneWrites...)...)
	g.compareExport("c1", want, "at once")
	wantParent := expectedImage(t, "64M", append(parentWrites, "write -P 0x31 0 16M")...)
	g.compareExport("vm1", wantParent, "(the parent) after its clone was written")
	g.cloneBadInput("vm1", "s1", "c1")
	if in := g.info("c1"); in.ID == g.info("vm1").ID || in.Size != 64<<20 {
		t.Errorf("clone info: id %s size %d (want a new id, 64 MiB)", in.ID, in.Size)
	}

	// The snapshot and the parent go; the clone reads everything, also
	// after a restart.
	g.mustCLI("volume", "snapshot", "rm", "vm1", "s1")
	g.mustCLI("volume", "rm", "vm1")
	g.compareExport("c1", want, "after its snapshot and parent were removed")
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	g.start()
	g.compareExport("c1", want, "after a restart")
	// A clone has snapshots and clones of its own.
	g.mustCLI("volume", "snapshot", "create", "c1", "t1")
	g.mustCLI("volume", "clone", "c1@t1", "c2")
	g.compareExport("c2", want, "(a clone of a clone)")
	g.mustCLI("volume", "rm", "c1")
	g.compareExport("c2", want, "(a clone of a clone) after its parent was removed")
	g.mustCLI("volume", "rm", "c2")
	left, _ := filepath.Glob(filepath.Join(g.data, "pool", "*"))
	for _, f := range left {
		if filepath.Base(f) != "snapshots" {
			t.Errorf("left in the pool after every volume was removed: %s", f)
		}
	}
	if snaps, _ := filepath.Glob(filepath.Join(g.data, "pool", "snapshots", "*")); len(snaps) > 0 {
		t.Errorf("snapshots left after every volume was removed: %v", snaps)
	}
}

// A local pool on ext4 cannot share blocks between files: a snapshot or
// clone is refused with the file system named and the remedy, nothing is
// copied, and status and pool info say so up front.
func TestLocalSnapshotRefusedOnExt4(t *testing.T) {
	fs := testutil.LoopFS(t, "ext4", 512<<20)
	g := newGateway(t, filepath.Join(fs, "data"))
	g.start()
	if out := g.mustCLI("pool", "info"); !strings.Contains(out, "no (ext4 cannot share blocks") {
		t.Errorf("pool info on ext4:\n%s", out)
	}
	if out := g.mustCLI("status"); !strings.Contains(out, "ext4, snapshots: no") {
		t.Errorf("status on ext4:\n%s", out)
	}
	g.mustCLI("volume", "create", "vm1", "--size", "64M")
	g.qemuIOWrite("vm1", "write -P 0x11 0 32M")
	before := freeBytes(t, fs)
	r := g.cli("volume", "snapshot", "create", "vm1", "s1")
	pool := filepath.Join(g.data, "pool")
	for _, want := range []string{"the local pool at " + pool + " is on ext4, which cannot share blocks between files",
		"put the pool on XFS (mkfs.xfs, reflink is the default) or btrfs, or use an S3-backed volume"} {
		if r.code == 0 || !strings.Contains(r.stderr, want) {
			t.Errorf("snapshot on ext4: exit %d, stderr %q, want %q", r.code, r.stderr, want)
		}
	}
	if used := before - freeBytes(t, fs); used > 1<<20 {
		t.Errorf("a refused snapshot used %d bytes", used)
	}
	if ls := g.mustCLI("volume", "snapshot", "ls", "vm1"); strings.Contains(ls, "s1") {
		t.Errorf("a refused snapshot is listed:\n%s", ls)
	}
	if r := g.cli("volume", "clone", "vm1@s1", "c1"); r.code == 0 || !strings.Contains(r.stderr, "no snapshot vm1@s1") {
		t.Errorf("clone on ext4: exit %d %q", r.code, r.stderr)
	}
	if out, err := runErr(time.Minute, testutil.RequireTool(t, "nbdinfo"), g.uri("vm1@s1")); err == nil {
		t.Errorf("a refused snapshot is exported:\n%s", out)
	}
}

// TestKill9DuringLocalSnapshots kills the gateway while snapshots and
// clones of a local volume on XFS are being taken and removed: after the
// restart every acknowledged snapshot and clone is there and reads what
// the volume held, every acknowledged removal is gone, and nothing is
// left that no catalog entry or snapshot names (temporary files, orphan
// volume files).
func TestKill9DuringLocalSnapshots(t *testing.T) {
	cycles := crashCycles(t, 5)
	qemuIO := testutil.RequireTool(t, "qemu-io")
	g, _ := xfsGateway(t)
	g.mustCLI("volume", "create", "vm1", "--size", "16M")
	g.qemuIOWrite("vm1", "write -P 0x11 0 8M")
	id := g.info("vm1").ID
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	snaps, clones := map[string]bool{}, map[string]bool{} // acknowledged: name -> exists
	n := 0
	for c := 0; c < cycles; c++ {
		type result struct {
			kind, name string
			exists, ok bool
		}
		results := make(chan result, 1000)
		stop := make(chan struct{})
		go func() {
			defer close(results)
			for {
				select {
				case <-stop:
					return
				default:
				}
				n++
				s := fmt.Sprintf("s%d", n)
				r := g.cli("volume", "snapshot", "create", "vm1", s)
				results <- result{"snapshot", s, true, r.code == 0}
				if r.code != 0 {
					return
				}
				if n%2 == 0 {
					cl := fmt.Sprintf("c%d", n)
					r := g.cli("volume", "clone", "vm1@"+s, cl)
					results <- result{"clone", cl, true, r.code == 0}
					if r.code != 0 {
						return
					}
				}
				if n%3 == 0 {
					r := g.cli("volume", "snapshot", "rm", "vm1", s)
					results <- result{"snapshot", s, false, r.code == 0}
					if r.code != 0 {
						return
					}
				}
			}
		}()
		time.Sleep(time.Duration(100+rng.IntN(600)) * time.Millisecond)
		g.kill9()
		close(stop)
		uncertain := map[string]bool{}
		for r := range results {
			m := snaps
			if r.kind == "clone" {
				m = clones
			}
			if r.ok {
				m[r.name] = r.exists
			} else {
				uncertain[r.name] = true
			}
		}
		g.start()
		var list []struct {
			Name string `json:"name"`
			Size int64  `json:"size"`
		}
		if err := json.Unmarshal([]byte(g.mustCLI("volume", "snapshot", "ls", "vm1", "--json")), &list); err != nil {
			t.Fatal(err)
		}
		haveSnap := map[string]bool{}
		for _, s := range list {
			haveSnap[s.Name] = true
			if s.Size != 16<<20 {
				t.Errorf("cycle %d: snapshot %s size %d", c, s.Name, s.Size)
			}
		}
		var vols []volumeInfo
		if err := json.Unmarshal([]byte(g.mustCLI("volume", "ls", "--json")), &vols); err != nil {
			t.Fatal(err)
		}
		haveVol := map[string]bool{}
		for _, v := range vols {
			haveVol[v.Name] = true
		}
		check := func(kind string, want, have map[string]bool) string {
			newest, newestN := "", 0
			for name, exists := range want {
				if uncertain[name] {
					continue
				}
				if have[name] != exists {
					t.Fatalf("cycle %d: %s %s exists=%v after restart, but its last acknowledged operation left exists=%v", c, kind, name, have[name], exists)
				}
				var k int
				fmt.Sscan(name[1:], &k)
				if exists && k > newestN {
					newest, newestN = name, k
				}
			}
			for name := range uncertain {
				if name[0] == kind[0] {
					want[name] = have[name]
				}
			}
			return newest
		}
		if s := check("snapshot", snaps, haveSnap); s != "" {
			run(t, time.Minute, qemuIO, "-r", "-f", "raw", "-c", "read -P 0x11 0 8M", "-c", "read -P 0 8M 8M", g.uri("vm1@"+s))
		}
		if cl := check("clone", clones, haveVol); cl != "" {
			run(t, time.Minute, qemuIO, "-r", "-f", "raw", "-c", "read -P 0x11 0 8M", "-c", "read -P 0 8M 8M", g.uri(cl))
		}
		files, _ := filepath.Glob(filepath.Join(g.data, "pool", "vol-*.img"))
		if len(files) != len(vols) {
			t.Fatalf("cycle %d: %d volume files for %d volumes: orphans left behind", c, len(files), len(vols))
		}
		imgs, _ := filepath.Glob(filepath.Join(g.data, "pool", "snapshots", id, "*.img"))
		if len(imgs) != len(list) {
			t.Fatalf("cycle %d: %d snapshot files for %d snapshots", c, len(imgs), len(list))
		}
		for _, dir := range []string{filepath.Join(g.data, "pool"), filepath.Join(g.data, "pool", "snapshots", id)} {
			if tmps, _ := filepath.Glob(filepath.Join(dir, ".*.tmp")); len(tmps) > 0 {
				t.Fatalf("cycle %d: temporary files left after the restart: %v", c, tmps)
			}
		}
	}
	if len(snaps) == 0 {
		t.Fatal("no snapshot completed")
	}
	t.Logf("%d kill -9 cycles; %d snapshots and %d clones acknowledged", cycles, len(snaps), len(clones))
}
