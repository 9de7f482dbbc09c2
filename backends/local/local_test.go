package local_test

import (
	"path/filepath"
	"testing"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/devicetest"
	"github.com/ferry-io/ferry/backends/local"
)

func TestConformance(t *testing.T) {
	devicetest.Run(t, func(t *testing.T, size int64) device.Device {
		d, err := local.Create(filepath.Join(t.TempDir(), "vol.img"), size)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	})
}

func TestReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vol.img")
	d, err := local.Create(path, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := d.WriteAt(ctx, []byte("ferry"), 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	d.Close()
	d2, err := local.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if d2.Size() != 1<<20 {
		t.Fatalf("size %d", d2.Size())
	}
	p := make([]byte, 5)
	if err := d2.ReadAt(ctx, p, 4096); err != nil || string(p) != "ferry" {
		t.Fatalf("read %q, %v", p, err)
	}
	if _, err := local.Create(path, 1<<20); err == nil {
		t.Fatal("Create over an existing file succeeded")
	}
}
