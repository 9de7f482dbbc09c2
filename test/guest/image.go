package guest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// ImageEnv names a directory holding a prebuilt image (vmlinuz, initrd);
// when set, the image is not built. DockerImageEnv is the same for the
// Docker flavour.
const (
	ImageEnv       = "FERRY_GUEST_IMAGE"
	DockerImageEnv = "FERRY_GUEST_DOCKER_IMAGE"
)

// Flavour picks what the guest's root holds besides the base packages.
type Flavour string

const (
	// Base: the kernel initiators and their tools (scripts/guest-image).
	Base Flavour = ""
	// Docker adds docker.io and busybox-static (scripts/guest-image docker).
	Docker Flavour = "docker"
)

func (f Flavour) env() string {
	if f == Docker {
		return DockerImageEnv
	}
	return ImageEnv
}

// Image is a built guest: a kernel and the initramfs holding its root.
type Image struct {
	Dir     string // the cache directory scripts/guest-image printed
	Kernel  string // Dir/vmlinuz
	Initrd  string // Dir/initrd (cpio newc, uncompressed)
	Version string // the kernel's release, e.g. 6.1.0-57-amd64
}

// BuildImage returns the guest image of flavour f: the directory in its
// variable ($FERRY_GUEST_IMAGE, $FERRY_GUEST_DOCKER_IMAGE), or what
// scripts/guest-image builds (or finds in its cache). The script's progress
// goes to log.
func BuildImage(ctx context.Context, f Flavour, log *bytes.Buffer) (Image, error) {
	dir := os.Getenv(f.env())
	if dir == "" {
		script, err := scriptPath()
		if err != nil {
			return Image{}, err
		}
		cmd := exec.CommandContext(ctx, script)
		if f != Base {
			cmd.Args = append(cmd.Args, string(f))
		}
		var out bytes.Buffer
		cmd.Stdout = &out
		if log != nil {
			cmd.Stderr = log
		}
		if err := cmd.Run(); err != nil {
			return Image{}, fmt.Errorf("scripts/guest-image: %w", err)
		}
		dir = strings.TrimSpace(out.String())
	}
	img := Image{Dir: dir, Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd")}
	for _, p := range []string{img.Kernel, img.Initrd} {
		if _, err := os.Stat(p); err != nil {
			return Image{}, fmt.Errorf("guest image: %w", err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "kernel-version")); err == nil {
		img.Version = strings.TrimSpace(string(b))
	}
	return img, nil
}

// scriptPath finds scripts/guest-image from this source file's place in
// the repository (tests run from a checkout).
func scriptPath() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("guest: cannot locate the repository")
	}
	p := filepath.Join(filepath.Dir(file), "..", "..", "scripts", "guest-image")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("guest: %w (set %s to a built image)", err, ImageEnv)
	}
	return p, nil
}

// built is one flavour's image, built at most once per test process.
type built struct {
	once sync.Once
	img  Image
	err  error
	log  bytes.Buffer
	took time.Duration
}

var (
	imagesMu sync.Mutex
	images   = map[Flavour]*built{}
)

// Require skips the test, or fails it under FERRY_TEST_REQUIRE_TOOLS=1,
// when the programs a guest needs are missing: qemu-system-x86_64 and
// socat to run it, and (without $FERRY_GUEST_IMAGE) root, mmdebstrap and
// cpio to build it. Then it returns the image, built at most once per
// test process; the first caller logs how long the build took.
func Require(t testing.TB) Image {
	t.Helper()
	return RequireFlavour(t, Base)
}

// RequireFlavour is Require for a flavour ($FERRY_GUEST_DOCKER_IMAGE
// instead of $FERRY_GUEST_IMAGE for Docker).
func RequireFlavour(t testing.TB, f Flavour) Image {
	t.Helper()
	testutil.RequireTool(t, "qemu-system-x86_64")
	testutil.RequireTool(t, "socat")
	if os.Getenv(f.env()) == "" {
		testutil.RequireTool(t, "mmdebstrap")
		testutil.RequireTool(t, "cpio")
		if os.Geteuid() != 0 {
			if os.Getenv(testutil.RequireEnv) == "1" {
				t.Fatalf("building the guest image needs root (or set %s)", f.env())
			}
			t.Skipf("building the guest image needs root (or set %s)", f.env())
		}
	}
	imagesMu.Lock()
	b := images[f]
	if b == nil {
		b = &built{}
		images[f] = b
	}
	imagesMu.Unlock()
	first := false
	b.once.Do(func() {
		first = true
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		start := time.Now()
		b.img, b.err = BuildImage(ctx, f, &b.log)
		b.took = time.Since(start)
	})
	if b.err != nil {
		t.Fatalf("guest image: %v\n%s", b.err, b.log.String())
	}
	if first {
		t.Logf("guest image %s (kernel %s) ready in %v", b.img.Dir, b.img.Version, b.took.Round(100*time.Millisecond))
	}
	return b.img
}
