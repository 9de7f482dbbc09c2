package local_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/local"
	"github.com/ferry-io/ferry/internal/vfs"
)

// kernelHeldChild is set in the child process of
// TestUnflushedWritesOutliveAKilledProcess: the volume file to write.
const kernelHeldChild = "FERRY_LOCAL_KERNEL_HELD_CHILD"

// pattern is what the child writes: 3 MiB of a repeating byte sequence,
// then the middle MiB trimmed.
func pattern() []byte {
	p := make([]byte, 3<<20)
	for i := range p {
		p[i] = byte(i*7 + i>>12)
	}
	clear(p[1<<20 : 2<<20])
	return p
}

// TestUnflushedWritesOutliveAKilledProcess is what device.KernelHeld
// promises: a child process writes (and trims) without ever flushing,
// says so, and is killed with SIGKILL; the volume then reads back every
// acknowledged write.
func TestUnflushedWritesOutliveAKilledProcess(t *testing.T) {
	if path := os.Getenv(kernelHeldChild); path != "" {
		writeAndWait(path)
		return
	}
	path := filepath.Join(t.TempDir(), "vol.img")
	cmd := exec.Command(os.Args[0], "-test.run=^TestUnflushedWritesOutliveAKilledProcess$")
	cmd.Env = append(os.Environ(), kernelHeldChild+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	cmd.Process.Kill()
	cmd.Wait()
	if line != "written\n" {
		t.Fatalf("child said %q (%v)", line, err)
	}
	d, err := local.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	want := pattern()
	got := make([]byte, len(want))
	if err := d.ReadAt(t.Context(), got, 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the volume lost writes acknowledged before its process was killed")
	}
}

// writeAndWait is the child: create the volume, write and trim without
// a flush, report, and wait to be killed.
func writeAndWait(path string) {
	d, err := local.Create(path, 8<<20)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if !device.WritesHeldByKernel(d) {
		fmt.Fprintln(os.Stderr, "a local device on the OS's file system does not say its writes are held by the kernel")
		os.Exit(1)
	}
	p := pattern()
	full := bytes.Clone(p)
	copy(full[1<<20:2<<20], bytes.Repeat([]byte{0xa5}, 1<<20))
	if err := d.WriteAt(context.Background(), full, 4096); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := d.Trim(context.Background(), 4096+1<<20, 1<<20); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("written")
	select {}
}

func TestInMemoryFileSystemIsNotKernelHeld(t *testing.T) {
	mem := vfs.NewCrashableMem()
	if err := mem.MkdirAll("/pool", 0o700); err != nil {
		t.Fatal(err)
	}
	d, err := local.On(mem).Create("/pool/vol.img", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if device.WritesHeldByKernel(d) {
		t.Fatal("a device on an in-memory file system says its writes are held by the kernel")
	}
}
