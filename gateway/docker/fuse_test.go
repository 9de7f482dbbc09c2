package docker

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/splice"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
	"github.com/ferry-io/ferry/gateway/docker/internal/nbdclient"
	"github.com/ferry-io/ferry/gateway/nbd"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/testutil"
)

// The volume file reads back what the export holds at every size the
// kernel sends, direct I/O as the loop device does it: the large reads
// through a pipe (readPiped), the small ones through a buffer.
func TestFUSEReads(t *testing.T) {
	if os.Geteuid() != 0 {
		testutil.Missing(t, "mounting FUSE needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no FUSE: %v", err)
	}
	ctx := context.Background()
	const size = 8 << 20
	dev := mem.New(size)
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(i*7 + i>>12)
	}
	if err := dev.WriteAt(ctx, want, 0); err != nil {
		t.Fatal(err)
	}
	srv := nbd.NewServer(volume.NewStaticExports(map[string]device.Device{"v": dev}), nbd.Config{Registerer: prometheus.NewRegistry(), HandshakeTimeout: 5 * time.Second})
	l := testutil.Listen(t)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, l) }()
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-served
	}()
	nc, err := nbdclient.Dial(ctx, "nbd://"+l.Addr().String()+"/v", nbdclient.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	dir := t.TempDir()
	var logs testutil.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	file := &diskNode{c: nc, log: log}
	fsrv, err := mountDisk(dir, file, "ferry-test", log)
	if err != nil {
		t.Fatal(err)
	}
	defer fsrv.Unmount()

	f, err := os.OpenFile(filepath.Join(dir, DiskFile), os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, maxFUSERead, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE) // page-aligned, for O_DIRECT
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)
	wantPiped := int64(0)
	for i, n := range []int{4 << 10, 64 << 10, pipedRead, 512 << 10, maxFUSERead} {
		off := int64(i+1) * (1 << 20)
		clear(buf)
		if got, err := f.ReadAt(buf[:n], off); err != nil || got != n {
			t.Fatalf("read %d at %d: %d, %v", n, off, got, err)
		}
		if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
			t.Fatalf("read %d at %d: data differs", n, off)
		}
		if n >= pipedRead && n+pipeSlack <= splice.MaxPipeSize() {
			wantPiped++
		}
		if got := file.piped.Load(); got != wantPiped {
			t.Fatalf("after the read of %d: %d reads went through a pipe, want %d (fs.pipe-max-size %d)", n, got, wantPiped, splice.MaxPipeSize())
		}
	}
	t.Logf("%d of 5 reads through a pipe (fs.pipe-max-size %d)", wantPiped, splice.MaxPipeSize())
	if c := file.pipeCopied.Load(); c != 0 {
		t.Fatalf("go-fuse read %d pipes back into buffers instead of splicing them", c)
	}
	// go-fuse lets a pipe go (Done) just after the reply is sent.
	for i := 0; file.pipedBytes.Load() != 0; i++ {
		if i == 100 {
			t.Fatalf("%d bytes still counted in pipes after the replies", file.pipedBytes.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// With pipes holding maxPipedBytes, a large read is copied.
	file.pipedBytes.Store(maxPipedBytes)
	before := file.piped.Load()
	clear(buf)
	if got, err := f.ReadAt(buf[:512<<10], 3<<20); err != nil || got != 512<<10 || !bytes.Equal(buf[:512<<10], want[3<<20:3<<20+512<<10]) {
		t.Fatalf("read past the pipe budget: %d, %v, or the data differs", got, err)
	}
	if file.piped.Load() != before {
		t.Fatal("a read went through a pipe past maxPipedBytes")
	}
	file.pipedBytes.Store(0)
	// go-fuse tried no splice of its own (it logs each that fails).
	if l := logs.String(); l != "" {
		t.Fatalf("the FUSE server logged:\n%s", l)
	}
}
