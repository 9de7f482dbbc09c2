package docker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
	"github.com/ferry-io/ferry/gateway/docker/internal/nbdnl"
)

// requireKernelNBD skips unless this is root with the nbd module (loaded
// here if need be); FERRY_TEST_REQUIRE_KERNEL_NBD=1 (the QEMU guest) makes
// that a failure instead.
func requireKernelNBD(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "not root"
	} else if err := (&NBDAttacher{}).Available(); err != nil {
		why = err.Error()
	}
	if why == "" {
		return
	}
	if os.Getenv("FERRY_TEST_REQUIRE_KERNEL_NBD") == "1" {
		t.Fatalf("kernel NBD client needed: %s", why)
	}
	t.Skipf("kernel NBD client not usable here: %s (FERRY_TEST_REQUIRE_KERNEL_NBD=1 makes this fail)", why)
}

// The keeper with the real kernel: connect a device to Ferry's NBD server,
// write through /dev/nbdN, restart the server while a write and fsync are
// under way, and find every byte on the server; stopping the keeper
// disconnects the device.
func TestKernelNBDKeeperReconnects(t *testing.T) {
	requireKernelNBD(t)
	dev := mem.New(64 << 20)
	g := startGateway(t, map[string]device.Device{"v": dev})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- KeepNBD(ctx, NBDKeepConfig{NBDURL: "nbd://" + g.addr + "/v", Timeout: 30 * time.Second, DeadTimeout: 120 * time.Second, Backend: "ferry:test-" + strconv.Itoa(os.Getpid()), Ready: pw, checkEvery: time.Second})
	}()
	line := make([]byte, 32)
	n, err := pr.Read(line)
	if err != nil {
		t.Fatalf("keeper: %v (%v)", err, <-done)
	}
	index, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(string(line[:n]), "ready ")))
	if err != nil {
		t.Fatalf("keeper said %q", line[:n])
	}
	path := fmt.Sprintf("/dev/nbd%d", index)
	t.Logf("connected %s", path)
	if b, err := os.ReadFile(fmt.Sprintf("/sys/block/nbd%d/backend", index)); err == nil && strings.TrimSpace(string(b)) != "ferry:test-"+strconv.Itoa(os.Getpid()) {
		t.Errorf("backend %q", b)
	}
	var f *os.File
	for i := 0; ; i++ {
		if f, err = os.OpenFile(path, os.O_RDWR, 0); err == nil {
			break
		} else if i == 100 {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer f.Close()
	a := pattern(1<<20, 1)
	if _, err := f.WriteAt(a, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(a))
	if err := dev.ReadAt(context.Background(), got, 0); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("the server does not have what was written and fsynced: %v", err)
	}
	for round := 1; round <= 2; round++ {
		g.stop()
		b := pattern(256<<10, round+1)
		errc := make(chan error, 1)
		go func() {
			if _, err := f.WriteAt(b, int64(round)<<20); err != nil {
				errc <- err
				return
			}
			errc <- f.Sync()
		}()
		time.Sleep(500 * time.Millisecond) // let the write meet the dead link
		g.start()
		select {
		case err := <-errc:
			if err != nil {
				t.Fatalf("round %d: write and fsync across a gateway restart: %v", round, err)
			}
		case <-time.After(3 * time.Minute):
			t.Fatalf("round %d: write and fsync still waiting 3 minutes after the gateway came back", round)
		}
		got := make([]byte, len(b))
		if err := dev.ReadAt(context.Background(), got, int64(round)<<20); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("round %d: the server lacks the write fsynced across its restart: %v", round, err)
		}
	}
	f.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("keeper: %v", err)
	}
	c, err := nbdnl.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The kernel lets go of the configuration once its receive work ends.
	for i := 0; ; i++ {
		ds, err := c.Status(context.Background(), index)
		if err != nil {
			t.Fatal(err)
		}
		connected := false
		for _, d := range ds {
			connected = connected || (d.Index == index && d.Connected)
		}
		if !connected {
			break
		}
		if i == 100 {
			t.Fatalf("%s still connected 10 s after the keeper stopped", path)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
