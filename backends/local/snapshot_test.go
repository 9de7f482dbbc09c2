package local_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/local"
	"github.com/ferry-io/ferry/internal/testutil"
)

const mib = 1 << 20

func fill(t *testing.T, d device.Device, b byte, off, n int64) {
	t.Helper()
	if err := d.WriteAt(t.Context(), bytes.Repeat([]byte{b}, int(n)), off); err != nil {
		t.Fatal(err)
	}
}

// expect checks that [off, off+n) of d reads as byte b.
func expect(t *testing.T, what string, d device.Device, b byte, off, n int64) {
	t.Helper()
	p := make([]byte, n)
	if err := d.ReadAt(t.Context(), p, off); err != nil {
		t.Fatalf("%s: read: %v", what, err)
	}
	if !bytes.Equal(p, bytes.Repeat([]byte{b}, int(n))) {
		t.Fatalf("%s: [%d,+%d) does not read as 0x%02x", what, off, n, b)
	}
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// On XFS a snapshot shares the volume's blocks (taking it allocates next
// to nothing), keeps what it held when later writes replace it, reads
// back read-only, and a clone of it outlives both the volume and the
// snapshot.
func TestSnapshotAndCloneOnXFS(t *testing.T) {
	fs := testutil.LoopFS(t, "xfs", 1<<30)
	ctx := t.Context()
	if err := local.CheckReflink(fs); err != nil {
		t.Fatalf("XFS made by mkfs.xfs cannot reflink: %v", err)
	}
	vol, err := local.Create(filepath.Join(fs, "vol.img"), 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	fill(t, vol, 0xa1, 0, 32*mib)
	fill(t, vol, 0xa2, 40*mib, 4096)
	if err := vol.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	sd := local.SnapshotDir{Dir: filepath.Join(fs, "snapshots", "vol")}
	before := freeBytes(t, fs)
	meta, err := sd.Create(ctx, vol, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if used := before - freeBytes(t, fs); used > 2*mib {
		t.Errorf("a snapshot of 32 MiB of data took %d bytes: a copy, not a reflink", used)
	}
	if meta.Size != 64*mib || meta.Name != "s1" || meta.Created.IsZero() {
		t.Errorf("snapshot meta %+v", meta)
	}
	if _, err := sd.Create(ctx, vol, "s1"); !errors.Is(err, local.ErrSnapshotExists) {
		t.Errorf("second snapshot s1: %v, want ErrSnapshotExists", err)
	}
	list, err := sd.List(ctx)
	if err != nil || len(list) != 1 || list[0].Exclusive != 0 {
		t.Fatalf("list before overwrites: %+v, %v (want s1 keeping nothing of its own)", list, err)
	}

	// The volume moves on; the snapshot keeps what it replaced.
	fill(t, vol, 0xb1, 0, 8*mib)
	if err := vol.Trim(ctx, 40*mib, 4096); err != nil {
		t.Fatal(err)
	}
	if err := vol.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	snap, err := sd.Open("s1")
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	if !device.IsReadOnly(snap) {
		t.Error("snapshot device does not say it is read-only")
	}
	expect(t, "snapshot", snap, 0xa1, 0, 32*mib)
	expect(t, "snapshot", snap, 0xa2, 40*mib, 4096)
	expect(t, "volume", vol, 0xb1, 0, 8*mib)
	expect(t, "volume", vol, 0xa1, 8*mib, 24*mib)
	expect(t, "volume", vol, 0, 40*mib, 4096)
	for name, err := range map[string]error{
		"write":        snap.WriteAt(ctx, []byte{1}, 0),
		"trim":         snap.Trim(ctx, 0, 4096),
		"write zeroes": snap.WriteZeroes(ctx, 0, 4096, false),
		"resize":       snap.Resize(ctx, 128*mib),
	} {
		if !errors.Is(err, device.ErrReadOnly) {
			t.Errorf("%s on a snapshot: %v, want ErrReadOnly", name, err)
		}
	}
	list, err = sd.List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("list: %+v, %v", list, err)
	}
	// What the overwrite and the trim replaced is the snapshot's alone.
	if x := list[0].Exclusive; x < 8*mib+4096 || x > 9*mib {
		t.Errorf("snapshot keeps %d bytes of its own, want 8 MiB + 4 KiB (what later writes replaced)", x)
	}

	// A clone: writable, independent, and it outlives the volume and the
	// snapshot.
	clonePath := filepath.Join(fs, "clone.img")
	if err := sd.Clone(ctx, "s1", clonePath); err != nil {
		t.Fatal(err)
	}
	if err := sd.Clone(ctx, "s1", clonePath); !errors.Is(err, os.ErrExist) {
		t.Errorf("clone over an existing file: %v, want os.ErrExist", err)
	}
	if err := sd.Clone(ctx, "nope", filepath.Join(fs, "c2.img")); !errors.Is(err, local.ErrNoSnapshot) {
		t.Errorf("clone of a missing snapshot: %v, want ErrNoSnapshot", err)
	}
	clone, err := local.Open(clonePath)
	if err != nil {
		t.Fatal(err)
	}
	defer clone.Close()
	fill(t, clone, 0xc1, 16*mib, mib)
	if err := clone.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, "snapshot after the clone's write", snap, 0xa1, 16*mib, mib)
	expect(t, "volume after the clone's write", vol, 0xa1, 16*mib, mib)
	snap.Close()
	if err := sd.Remove("s1"); err != nil {
		t.Fatal(err)
	}
	if err := sd.Remove("s1"); !errors.Is(err, local.ErrNoSnapshot) {
		t.Errorf("removing a removed snapshot: %v, want ErrNoSnapshot", err)
	}
	vol.Close()
	if err := os.Remove(vol.Path()); err != nil {
		t.Fatal(err)
	}
	expect(t, "clone", clone, 0xa1, 0, 16*mib)
	expect(t, "clone", clone, 0xc1, 16*mib, mib)
	expect(t, "clone", clone, 0xa1, 17*mib, 15*mib)
	expect(t, "clone", clone, 0xa2, 40*mib, 4096)
	if names, _ := sd.Names(); len(names) != 0 {
		t.Errorf("snapshots left: %v", names)
	}
	if err := sd.RemoveAll(); err != nil {
		t.Fatal(err)
	}
}

// A snapshot taken while a writer writes block after block, flushing and
// acknowledging each, holds exactly a prefix of the blocks (one flush
// point) that includes every block acknowledged before it was taken.
func TestSnapshotUnderWrites(t *testing.T) {
	fs := testutil.LoopFS(t, "xfs", 1<<30)
	ctx := t.Context()
	const blocks, bs = 4000, 4096
	vol, err := local.Create(filepath.Join(fs, "vol.img"), blocks*bs)
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	var acked atomic.Int64
	acked.Store(-1)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		for k := int64(0); k < blocks && wctx.Err() == nil; k++ {
			if err := vol.WriteAt(ctx, bytes.Repeat([]byte{byte(k%251 + 1)}, bs), k*bs); err != nil {
				done <- err
				return
			}
			if err := vol.Flush(ctx); err != nil {
				done <- err
				return
			}
			acked.Store(k)
			if k == 100 {
				close(started)
			}
		}
		done <- nil
	}()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("writer ended early: %v", err)
	}
	last := acked.Load()
	sd := local.SnapshotDir{Dir: filepath.Join(fs, "snapshots")}
	if _, err := sd.Create(ctx, vol, "s"); err != nil {
		t.Fatal(err)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	snap, err := sd.Open("s")
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	data := make([]byte, blocks*bs)
	if err := snap.ReadAt(ctx, data, 0); err != nil {
		t.Fatal(err)
	}
	j := int64(0)
	for j < blocks && bytes.Equal(data[j*bs:(j+1)*bs], bytes.Repeat([]byte{byte(j%251 + 1)}, bs)) {
		j++
	}
	if !bytes.Equal(data[j*bs:], make([]byte, len(data)-int(j*bs))) {
		t.Fatalf("snapshot is not a flush point: block %d onwards is not all zeroes", j)
	}
	if j <= last {
		t.Fatalf("snapshot holds %d blocks; block %d was acknowledged before it was taken", j, last)
	}
}

// On a file system that cannot share blocks the probe says so, and a
// snapshot is refused, never made by copying.
func TestSnapshotRefusedOnExt4(t *testing.T) {
	fs := testutil.LoopFS(t, "ext4", 256*mib)
	ctx := t.Context()
	err := local.CheckReflink(fs)
	if !errors.Is(err, local.ErrNoReflink) || !strings.Contains(err.Error(), "ext4") {
		t.Fatalf("reflink probe on ext4: %v, want ErrNoReflink naming ext4", err)
	}
	if got := local.FSName(fs); got != "ext4" {
		t.Errorf("FSName = %q", got)
	}
	vol, err := local.Create(filepath.Join(fs, "vol.img"), 16*mib)
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	fill(t, vol, 0xa1, 0, 8*mib)
	sd := local.SnapshotDir{Dir: filepath.Join(fs, "snapshots")}
	before := freeBytes(t, fs)
	if _, err := sd.Create(ctx, vol, "s1"); !errors.Is(err, local.ErrNoReflink) {
		t.Fatalf("snapshot on ext4: %v, want ErrNoReflink", err)
	}
	if names, err := sd.Names(); err != nil || len(names) != 0 {
		t.Errorf("a refused snapshot left %v (%v)", names, err)
	}
	if left, _ := filepath.Glob(filepath.Join(sd.Dir, "*")); len(left) > 0 {
		t.Errorf("a refused snapshot left files: %v", left)
	}
	if used := before - freeBytes(t, fs); used > mib {
		t.Errorf("a refused snapshot used %d bytes", used)
	}
}

// Sweep removes what an interrupted snapshot left.
func TestSnapshotSweep(t *testing.T) {
	sd := local.SnapshotDir{Dir: t.TempDir()}
	for _, f := range []string{".s1.img-123.tmp", "s2.json", "s3.img", "s3.json"} {
		if err := os.WriteFile(filepath.Join(sd.Dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sd.Sweep()
	left, _ := filepath.Glob(filepath.Join(sd.Dir, "*"))
	hidden, _ := filepath.Glob(filepath.Join(sd.Dir, ".*"))
	if got := strings.Join(append(hidden, left...), " "); got != filepath.Join(sd.Dir, "s3.img")+" "+filepath.Join(sd.Dir, "s3.json") {
		t.Errorf("after sweep: %s", got)
	}
	if names, _ := sd.Names(); len(names) != 1 || names[0] != "s3" {
		t.Errorf("names %v", names)
	}
}
