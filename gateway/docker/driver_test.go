package docker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-io/ferry/gateway/api"
	"github.com/ferry-io/ferry/gateway/api/client"
	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/testutil"
)

// fileAttacher "attaches" a gateway volume as an image file of its own
// (shared by every driver in the test, like one gateway): the driver's
// counting, formatting and mounting run for real without FUSE.
type fileAttacher struct {
	dir      string
	mu       sync.Mutex
	attached map[string]int
}

func (f *fileAttacher) Method() string { return "file" }

func (f *fileAttacher) Attach(ctx context.Context, spec AttachSpec) (*Attachment, error) {
	p := filepath.Join(f.dir, spec.Gateway+".img")
	if _, err := os.Stat(p); err != nil {
		fh, err := os.Create(p)
		if err != nil {
			return nil, err
		}
		fh.Truncate(64 << 20)
		fh.Close()
	}
	f.mu.Lock()
	f.attached[spec.Gateway]++
	f.mu.Unlock()
	return &Attachment{Method: "file", Device: p, NBDURL: spec.NBDURL}, nil
}

func (f *fileAttacher) Detach(ctx context.Context, a *Attachment) error {
	f.mu.Lock()
	f.attached[strings.TrimSuffix(filepath.Base(a.Device), ".img")]--
	f.mu.Unlock()
	return nil
}

func (f *fileAttacher) Healthy(ctx context.Context, a *Attachment) error { return nil }

func (f *fileAttacher) count(gw string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attached[gw]
}

// gwURL is one in-process gateway API for the package's tests (its
// attachment grace after start is waited out once), run by TestMain.
var gwURL string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ferry-docker-test-")
	if err != nil {
		panic(err)
	}
	reg := prometheus.NewRegistry()
	vm, err := volume.Open(context.Background(), volume.Config{DataDir: dir, Registerer: reg})
	if err != nil {
		panic(err)
	}
	srv := httptest.NewServer(api.Handler(api.Config{Manager: vm, Gatherer: reg, Gateway: api.Gateway{Listeners: []wire.Listener{{Protocol: wire.ListenerNBD, Address: "127.0.0.1:1"}}}}))
	gwURL = srv.URL
	code := m.Run()
	srv.Close()
	vm.Close(context.Background())
	os.RemoveAll(dir)
	os.Exit(code)
}

func testGateway(t *testing.T) *client.Client { return client.New(gwURL) }

func needRoot(t *testing.T) {
	t.Helper()
	testutil.RequireTool(t, "mkfs.ext4")
	testutil.RequireTool(t, "blkid")
	if os.Geteuid() != 0 {
		testutil.Missing(t, "mounting needs root")
	}
}

func newTestDriver(t *testing.T, gw *client.Client, fa *fileAttacher, state, host string) *Driver {
	t.Helper()
	d, err := NewDriver(context.Background(), Config{Gateway: gw, StateDir: state, MountRoot: filepath.Join(state, "mounts"), HostID: host, Attacher: fa, StaleCheck: -1})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func isMounted(t *testing.T, mp string) bool {
	ms, err := readMounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Point == mp {
			return true
		}
	}
	return false
}

func TestDriverLifecycle(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	gw := testGateway(t)
	fa := &fileAttacher{dir: t.TempDir(), attached: map[string]int{}}
	stateA := t.TempDir()
	d := newTestDriver(t, gw, fa, stateA, "hostA")
	defer d.Close()

	name := "Life_1"
	if err := d.Create(ctx, name, map[string]string{"size": "64M"}); err != nil {
		t.Fatal(err)
	}
	if err := d.Create(ctx, name, nil); err != nil {
		t.Fatalf("create again (Docker does): %v", err)
	}
	if err := d.Create(ctx, name, map[string]string{"fstype": "xfs", "size": "400M"}); err == nil {
		t.Fatal("create again with another fstype accepted")
	}
	gwName, _ := GatewayName(name)
	if in, err := gw.Volume(ctx, gwName); err != nil || in.Size != 64<<20 {
		t.Fatalf("gateway volume: %+v %v", in, err)
	}
	// Two mounts by one ID and one by another: a count per ID.
	mp, err := d.Mount(ctx, name, "A")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Mount(ctx, name, "A"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Mount(ctx, name, "B"); err != nil {
		t.Fatal(err)
	}
	if fa.count(gwName) != 1 || !isMounted(t, mp) {
		t.Fatalf("attached %d times, mounted %v", fa.count(gwName), isMounted(t, mp))
	}
	if err := os.WriteFile(filepath.Join(mp, "hello"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove(ctx, name); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("remove while mounted: %v", err)
	}
	// Another host is refused while this one holds it, and told who.
	d2 := newTestDriver(t, gw, fa, t.TempDir(), "hostB")
	if err := d2.Create(ctx, name, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.Mount(ctx, name, "X"); err == nil || !strings.Contains(err.Error(), `"hostA"`) {
		t.Fatalf("second host: %v", err)
	}
	d2.Close()

	// A restart keeps the counts and the mount.
	d.Close()
	d = newTestDriver(t, gw, fa, stateA, "hostA")
	defer d.Close()
	if p, err := d.Path(ctx, name); err != nil || p != mp || !isMounted(t, mp) {
		t.Fatalf("after restart: %q %v mounted=%v", p, err, isMounted(t, mp))
	}
	for _, id := range []string{"A", "B"} {
		if err := d.Unmount(ctx, name, id); err != nil {
			t.Fatal(err)
		}
		if !isMounted(t, mp) {
			t.Fatalf("unmounted with mounts outstanding (after %s)", id)
		}
	}
	if err := d.Unmount(ctx, name, "A"); err != nil {
		t.Fatal(err)
	}
	if isMounted(t, mp) || fa.count(gwName) != 0 {
		t.Fatalf("last unmount: mounted=%v attached=%d", isMounted(t, mp), fa.count(gwName))
	}
	// Mounted again: the file system is kept, not made anew.
	if _, err := d.Mount(ctx, name, "C"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(mp, "hello")); err != nil || string(b) != "kept" {
		t.Fatalf("after remount: %q %v", b, err)
	}
	if err := d.Unmount(ctx, name, "C"); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := gw.Volume(ctx, gwName); err == nil {
		t.Fatal("gateway volume still there after Remove")
	}
	if len(d.List(ctx)) != 0 {
		t.Fatalf("list after remove: %+v", d.List(ctx))
	}
}

func TestDriverNeverReformats(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	gw := testGateway(t)
	fa := &fileAttacher{dir: t.TempDir(), attached: map[string]int{}}
	// A gateway volume made outside Docker, holding ext4 already.
	if _, err := gw.CreateVolume(ctx, "pre-ext4", 64<<20, nil); err != nil {
		t.Fatal(err)
	}
	// The gateway outlives the test (TestMain): leave it as found, so the
	// test runs again under -count.
	t.Cleanup(func() { gw.RemoveVolume(context.Background(), "pre-ext4", true) })
	img := filepath.Join(fa.dir, "pre-ext4.img")
	os.WriteFile(img, nil, 0o600)
	os.Truncate(img, 64<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", "-L", "precious", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	sum := func() []byte { b, _ := os.ReadFile(img); return b }
	before := sum()
	d := newTestDriver(t, gw, fa, t.TempDir(), "hostA")
	defer d.Close()
	// Docker asks Get first and skips Create, options and all, for a
	// volume Get finds: Get must not adopt.
	if _, err := d.Get(ctx, "pre-ext4"); !errors.Is(err, ErrNoVolume) {
		t.Fatalf("Get of a gateway volume this host never created: %v", err)
	}
	if err := d.Create(ctx, "pre-ext4", map[string]string{"fstype": "xfs", "size": "400M"}); err == nil || !strings.Contains(err.Error(), "size") {
		t.Fatalf("adopting with another size: %v", err)
	}
	if err := d.Create(ctx, "pre-ext4", map[string]string{"fstype": "xfs"}); err != nil {
		t.Fatal(err)
	}
	_, err := d.Mount(ctx, "pre-ext4", "A")
	if err == nil || !strings.Contains(err.Error(), "ext4 file system, not xfs") {
		t.Fatalf("mount as xfs: %v", err)
	}
	if !bytes.Equal(before, sum()) {
		t.Fatal("the refused mount changed the volume")
	}
	if fa.count("pre-ext4") != 0 {
		t.Fatal("a refused mount left the volume attached")
	}
	if l, _ := gw.Attachments(ctx, "pre-ext4"); len(l) != 0 {
		t.Fatalf("a refused mount left a gateway attachment: %+v", l)
	}
	// An adopted volume is only forgotten by Remove.
	if err := d.Remove(ctx, "pre-ext4"); err != nil {
		t.Fatal(err)
	}
	if _, err := gw.Volume(ctx, "pre-ext4"); err != nil {
		t.Fatalf("Remove deleted an adopted volume: %v", err)
	}
}

func TestProtocol(t *testing.T) {
	gw := testGateway(t)
	fa := &fileAttacher{dir: t.TempDir(), attached: map[string]int{}}
	d := newTestDriver(t, gw, fa, t.TempDir(), "hostA")
	defer d.Close()
	srv := httptest.NewServer(Handler(d, nil))
	defer srv.Close()
	call := func(path string, body []byte) (int, map[string]any) {
		resp, err := http.Post(srv.URL+path, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		defer resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != ContentType {
			t.Errorf("%s: Content-Type %q", path, ct)
		}
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatalf("%s: reply is not JSON: %v", path, err)
		}
		return resp.StatusCode, out
	}
	if _, out := call("/Plugin.Activate", nil); out["Implements"].([]any)[0] != "VolumeDriver" {
		t.Fatalf("activate: %v", out)
	}
	if _, out := call("/VolumeDriver.Capabilities", nil); out["Capabilities"].(map[string]any)["Scope"] != "global" {
		t.Fatalf("capabilities: %v", out)
	}
	for _, tc := range []struct {
		path string
		body []byte
		want string
	}{
		{"/VolumeDriver.Create", []byte(`{"Name": "x", "Opts": `), "malformed"},
		{"/VolumeDriver.Create", []byte(`[1,2]`), "malformed"},
		{"/VolumeDriver.Mount", bytes.Repeat([]byte(" "), 2<<20), "larger than"},
		{"/VolumeDriver.Create", []byte(`{"Name": "x", "Opts": {"size": "10Q"}}`), "option size"},
		{"/VolumeDriver.Create", []byte(`{"Name": "_x"}`), "not a Docker volume name"},
		{"/VolumeDriver.Snapshot", []byte(`{}`), "unknown endpoint"},
		{"/VolumeDriver.Get", []byte(`{"Name": "nope"}`), "no such volume"},
		{"/VolumeDriver.Unmount", []byte(`{"Name": "nope", "ID": "1"}`), "no such volume"},
	} {
		code, out := call(tc.path, tc.body)
		if e, _ := out["Err"].(string); code == 200 || !strings.Contains(e, tc.want) {
			t.Errorf("%s %.40q: %d %v, want Err containing %q", tc.path, tc.body, code, out, tc.want)
		}
	}
	// And it still serves.
	if code, out := call("/VolumeDriver.Create", []byte(`{"Name": "Proto_1", "Opts": {"size": "32M"}}`)); code != 200 || out["Err"] != "" {
		t.Fatalf("create: %d %v", code, out)
	}
	if _, out := call("/VolumeDriver.List", []byte(`{}`)); len(out["Volumes"].([]any)) != 1 {
		t.Fatalf("list: %v", out)
	}
	_, out := call("/VolumeDriver.Get", []byte(`{"Name": "Proto_1"}`))
	st := out["Volume"].(map[string]any)["Status"].(map[string]any)
	if st["size"] != "32 MiB" || st["store"] != "local" || st["attach_method"] != "file" || !strings.HasPrefix(st["gateway_volume"].(string), "d-proto-1-") || st["id"] == "" {
		t.Fatalf("get status: %v", st)
	}
	if code, out := call("/VolumeDriver.Remove", []byte(`{"Name": "Proto_1"}`)); code != 200 || out["Err"] != "" {
		t.Fatalf("remove: %d %v", code, out)
	}
}

// Counts whose Unmount never came (the plugin was down when the container
// stopped) are dropped once nothing has used the volume for the period;
// a bind mount of the volume (what a container holds) keeps them.
func TestSweepStaleCounts(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	gw := testGateway(t)
	fa := &fileAttacher{dir: t.TempDir(), attached: map[string]int{}}
	d := newTestDriver(t, gw, fa, t.TempDir(), "hostA")
	defer d.Close()
	d.cfg.StaleCheck = time.Minute
	if err := d.Create(ctx, "stale1", map[string]string{"size": "32M"}); err != nil {
		t.Fatal(err)
	}
	mp, err := d.Mount(ctx, "stale1", "A")
	if err != nil {
		t.Fatal(err)
	}
	// A "container": the volume bind-mounted elsewhere.
	ctr := t.TempDir()
	if err := syscall.Mount(mp, ctr, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	d.mu.Lock()
	d.sweepStale(now)
	d.sweepStale(now.Add(2 * time.Minute))
	d.mu.Unlock()
	if !isMounted(t, mp) {
		t.Fatal("dropped the counts of a volume in use")
	}
	syscall.Unmount(ctr, 0)
	d.mu.Lock()
	d.sweepStale(now.Add(3 * time.Minute))
	d.sweepStale(now.Add(3*time.Minute + 30*time.Second))
	d.mu.Unlock()
	if !isMounted(t, mp) {
		t.Fatal("dropped counts before the period passed")
	}
	// A Mount restarts the period.
	if _, err := d.Mount(ctx, "stale1", "B"); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.sweepStale(now.Add(4*time.Minute + 30*time.Second))
	d.mu.Unlock()
	if !isMounted(t, mp) {
		t.Fatal("a Mount did not restart the period")
	}
	d.mu.Lock()
	d.sweepStale(now.Add(6 * time.Minute))
	d.mu.Unlock()
	if isMounted(t, mp) || fa.count("stale1") != 0 {
		t.Fatalf("unused volume still mounted=%v attached=%d", isMounted(t, mp), fa.count("stale1"))
	}
	if p, _ := d.Path(ctx, "stale1"); p != "" {
		t.Fatalf("Path after the sweep: %q", p)
	}
	if err := d.Remove(ctx, "stale1"); err != nil {
		t.Fatal(err)
	}
}
