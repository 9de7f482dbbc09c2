package kvm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	gwire "github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/kvm/qmp"
	"github.com/ferry-io/ferry/kvm/wire"
)

// fakeQMP serves QMP clients on sock: query-status answers status, every
// other command succeeds; the commands are recorded.
type fakeQMP struct {
	mu     sync.Mutex
	status string
	cmds   []string
}

func (f *fakeQMP) serve(t *testing.T, sock string) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte(`{"QMP": {"version": {}, "capabilities": []}}` + "\n"))
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadBytes('\n')
					if err != nil {
						return
					}
					var req struct {
						Execute   string          `json:"execute"`
						Arguments json.RawMessage `json:"arguments"`
					}
					json.Unmarshal(line, &req)
					f.mu.Lock()
					ret := `{}`
					switch req.Execute {
					case "qmp_capabilities":
					case "query-status":
						ret = fmt.Sprintf(`{"status": %q}`, f.status)
					default:
						cmd := req.Execute
						if strings.HasPrefix(cmd, "blockdev-") {
							var a struct {
								NodeName string `json:"node-name"`
							}
							json.Unmarshal(req.Arguments, &a)
							cmd = strings.TrimSpace(cmd + " " + a.NodeName)
						}
						f.cmds = append(f.cmds, cmd)
					}
					f.mu.Unlock()
					c.Write([]byte(`{"return": ` + ret + "}\n"))
				}
			}()
		}
	}()
}

func (f *fakeQMP) commands() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.cmds, "; ")
}

// dstGateway is this host's gateway in a hand-over: Adopt makes it serve
// the volume.
type dstGateway struct {
	fakeGateway
	mu    sync.Mutex
	calls []string
}

func (g *dstGateway) Volume(ctx context.Context, name string) (gwire.VolumeInfo, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fakeGateway.Volume(ctx, name)
}

func (g *dstGateway) Adopt(_ context.Context, req gwire.AdoptRequest) (gwire.AdoptResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, "adopt "+req.Store+" "+req.Volume+" as "+req.Name)
	in := gwire.VolumeInfo{Volume: gwire.Volume{Name: req.Name, ID: req.Volume}}
	in.Attach.NBD = &gwire.NBDAttach{URL: "nbd://gw-b:10809/" + req.Name}
	g.vols[req.Name] = in
	return gwire.AdoptResponse{Volume: in}, nil
}

func (g *dstGateway) Attach(_ context.Context, name, host string, _ gwire.AttachRequest) (gwire.Attachment, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, "attach "+name+" "+host)
	return gwire.Attachment{Host: host}, nil
}

func (g *dstGateway) adopts() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, c := range g.calls {
		if strings.HasPrefix(c, "adopt ") {
			n++
		}
	}
	return n
}

// incomingVM sets up host-b's incoming VM x1 from gateway A, migration
// completed (QEMU paused), on a fake QMP.
func incomingVM(t *testing.T, src, dst Gateway, parked bool) (*Manager, *VM, *fakeQMP) {
	t.Helper()
	m := &Manager{cfg: Config{Gateway: dst, GatewayAddr: "gw-b:9809", HostID: "host-b", ReconnectDelay: time.Second, HandoverTimeout: time.Second},
		log: discardLogger(), vms: map[string]*VM{}, done: map[string]wire.VMInfo{},
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "m"}, []string{"result"}),
		qemuExits:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "e"}, []string{"reason"}),
		newGateway: func(addr string) Gateway {
			if addr != "gw-a:9809" {
				t.Errorf("source gateway %q", addr)
			}
			return src
		}}
	sd := wire.SourceDisk{Volume: "v", ID: "id-v", Size: 1 << 20, NBDURL: "nbd://gw-a:10809/v", Store: &wire.StoreRef{Endpoint: "http://s3", Bucket: "b"}}
	nd, err := parseNBDURL("v", sd.NBDURL)
	if err != nil {
		t.Fatal(err)
	}
	nd.Gateway = "gw-a:9809"
	dir, err := os.MkdirTemp("", "h")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	v := &VM{m: m, dir: dir, rec: record{Spec: wire.VMSpec{Name: "x1", Disks: []wire.Disk{{Volume: "v"}}}, State: wire.StateIncoming,
		Disks: []nbdDisk{nd}, Cross: &crossIncoming{Source: []wire.SourceDisk{sd}, SourceGateway: "gw-a:9809", Parked: []bool{parked}}}}
	m.vms["x1"] = v
	q := &fakeQMP{status: "paused"}
	q.serve(t, filepath.Join(dir, "qmp.sock"))
	t.Cleanup(m.Close)
	return m, v, q
}

func (v *VM) dial(t *testing.T) {
	t.Helper()
	conn, err := qmp.Dial(context.Background(), filepath.Join(v.dir, "qmp.sock"), v.onEvent)
	if err != nil {
		t.Fatal(err)
	}
	v.mu.Lock()
	v.attachConnLocked(conn)
	v.mu.Unlock()
}

// TestTakeOver: the destination finishes a hand-over the source left
// after completion: park, forced release on the source's gateway, adopt,
// switch, cont; and again when some steps were done already.
func TestTakeOver(t *testing.T) {
	for _, c := range []struct {
		name                      string
		parked, released, adopted bool
		wantSrc, wantQMP          string
		wantAdopts                int
	}{
		{name: "from completed",
			wantSrc:    "detach v host-b:x1; release v force=true",
			wantQMP:    "blockdev-add disk0-hold; blockdev-reopen; blockdev-del disk0-nbd; blockdev-add disk0-nbd; blockdev-reopen; blockdev-del disk0-hold; cont",
			wantAdopts: 1},
		{name: "parked and released already", parked: true, released: true,
			wantQMP:    "blockdev-add disk0-nbd; blockdev-reopen; blockdev-del disk0-hold; cont",
			wantAdopts: 1},
		{name: "adopted already", parked: true, released: true, adopted: true,
			wantQMP: "blockdev-add disk0-nbd; blockdev-reopen; blockdev-del disk0-hold; cont"},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := &srcGateway{fakeGateway: fakeGateway{vols: map[string]gwire.VolumeInfo{}}}
			if !c.released {
				src.vols["v"] = gwire.VolumeInfo{Volume: gwire.Volume{Name: "v", ID: "id-v"}}
			}
			dst := &dstGateway{fakeGateway: fakeGateway{vols: map[string]gwire.VolumeInfo{},
				stores: []gwire.StoreView{{Name: "cloud-b", Endpoint: "http://s3", Bucket: "b"}}}}
			if c.adopted {
				in := gwire.VolumeInfo{Volume: gwire.Volume{Name: "v", ID: "id-v"}}
				in.Attach.NBD = &gwire.NBDAttach{URL: "nbd://gw-b:10809/v"}
				dst.vols["v"] = in
			}
			m, v, q := incomingVM(t, src, dst, c.parked)
			v.dial(t)
			if err := m.takeOver(context.Background(), v, v.rec.Cross); err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(src.calls, "; "); got != c.wantSrc {
				t.Errorf("source gateway calls %q, want %q", got, c.wantSrc)
			}
			if got := q.commands(); got != c.wantQMP {
				t.Errorf("QMP commands:\n%s\nwant\n%s", got, c.wantQMP)
			}
			if n := dst.adopts(); n != c.wantAdopts {
				t.Errorf("%d adopts on this host's gateway, want %d", n, c.wantAdopts)
			}
			in, _ := m.Info("x1")
			if in.State != wire.StateRunning || !strings.Contains(in.Disks[0].Attach, "nbd://gw-b:10809/v") || strings.Contains(in.Disks[0].Attach, "not this host's") ||
				!strings.Contains(in.LastError, "this host finished the hand-over") {
				t.Fatalf("VM after the take-over: %+v", in)
			}
		})
	}
}

// TestTakeOverReleaseFails: a source gateway that refuses the release
// keeps the volume; the guest resumes on its export there.
func TestTakeOverReleaseFails(t *testing.T) {
	src := &srcGateway{fakeGateway: fakeGateway{vols: map[string]gwire.VolumeInfo{"v": {Volume: gwire.Volume{Name: "v", ID: "id-v"}}}},
		releaseErr: errors.New("s3 down")}
	dst := &dstGateway{fakeGateway: fakeGateway{vols: map[string]gwire.VolumeInfo{}}}
	m, v, _ := incomingVM(t, src, dst, false)
	v.dial(t)
	if err := m.takeOver(context.Background(), v, v.rec.Cross); err != nil {
		t.Fatal(err)
	}
	in, _ := m.Info("x1")
	if in.State != wire.StateRunning || !strings.Contains(in.Disks[0].Attach, "on gateway gw-a:9809") ||
		!strings.Contains(in.LastError, "volume v stays on the source's gateway: release failed") || dst.adopts() != 0 {
		t.Fatalf("VM after the take-over: %+v", in)
	}
}

// TestWatchHandover: the watcher takes over once the source's API says
// it does not know the VM, and not while it says it hands it over.
func TestWatchHandover(t *testing.T) {
	var mu sync.Mutex
	srcState := "handover"
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vms/x1", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if srcState == "gone" {
			reply(w, discardLogger(), 0, nil, fmt.Errorf("no VM named x1: %w", gwire.ErrNotFound))
			return
		}
		reply(w, discardLogger(), http.StatusOK, wire.VMInfo{State: "migrated", Migration: &wire.Migration{Status: "handover"}}, nil)
	})
	api := httptest.NewServer(mux)
	defer api.Close()
	src := &srcGateway{fakeGateway: fakeGateway{vols: map[string]gwire.VolumeInfo{}}}
	dst := &dstGateway{fakeGateway: fakeGateway{vols: map[string]gwire.VolumeInfo{},
		stores: []gwire.StoreView{{Name: "cloud-b", Endpoint: "http://s3", Bucket: "b"}}}}
	m, v, q := incomingVM(t, src, dst, false)
	v.rec.Cross.SourceAPI = strings.TrimPrefix(api.URL, "http://")
	v.dial(t)
	done := make(chan struct{})
	go func() { m.watchHandover(v); close(done) }()
	time.Sleep(4 * time.Second) // several timeouts: the source says it hands over
	if got := q.commands(); got != "" {
		t.Fatalf("the destination acted while the source hands over: %s", got)
	}
	mu.Lock()
	srcState = "gone"
	mu.Unlock()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the watcher did not finish the hand-over")
	}
	if in, _ := m.Info("x1"); in.State != wire.StateRunning || !strings.HasSuffix(q.commands(), "cont") {
		t.Fatalf("VM after the watch: %+v; QMP %s", in, q.commands())
	}
}

// TestWatchIncomingOneGateway: an incoming VM on one gateway whose guest
// runs here (the migration completed) but whose source never called done
// is taken over after HandoverTimeout; one still receiving is left alone.
func TestWatchIncomingOneGateway(t *testing.T) {
	m, v, q := incomingVM(t, nil, &dstGateway{fakeGateway: fakeGateway{vols: map[string]gwire.VolumeInfo{}}}, false)
	v.rec.Cross, v.rec.Disks[0].Gateway = nil, "" // one gateway: the disk is this host's
	q.mu.Lock()
	q.status = "inmigrate"
	q.mu.Unlock()
	v.dial(t)
	done := make(chan struct{})
	go func() { m.watchIncoming(v); close(done) }()
	time.Sleep(3 * time.Second) // three timeouts while it still receives
	if in, _ := m.Info("x1"); in.State != wire.StateIncoming {
		t.Fatalf("VM taken over while its migration runs: %+v", in)
	}
	q.mu.Lock()
	q.status = "running"
	q.mu.Unlock()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("the watcher did not take the VM over")
	}
	if in, _ := m.Info("x1"); in.State != wire.StateRunning || !strings.Contains(in.LastError, "took the VM over") {
		t.Fatalf("VM after the watch: %+v", in)
	}
}

func TestSourceDrives(t *testing.T) {
	answer := func(st int, body string) string {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(st)
			w.Write([]byte(body))
		}))
		t.Cleanup(s.Close)
		return strings.TrimPrefix(s.URL, "http://")
	}
	dead := answer(200, "{}")
	for _, c := range []struct {
		name, api string
		want      bool
	}{
		{"no address", "", false},
		{"unknown VM", answer(404, `{"error": "no VM named x1", "code": "not_found"}`), false},
		{"migrating", answer(200, `{"name": "x1", "state": "migrating"}`), true},
		{"running", answer(200, `{"name": "x1", "state": "running"}`), true},
		{"handing over", answer(200, `{"name": "x1", "state": "migrated", "migration": {"status": "handover"}}`), true},
		{"gave up", answer(200, `{"name": "x1", "state": "migrated", "migration": {"status": "completed", "error": "done refused"}}`), false},
		{"API error", answer(500, `{"error": "boom", "code": "internal"}`), true},
		{"dead", dead, false},
	} {
		if c.name == "dead" {
			// Nothing listens there any more.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			c.api = ln.Addr().String()
			ln.Close()
		}
		m := &Manager{log: discardLogger()}
		if got, why := m.sourceDrives(context.Background(), "x1", c.api, ""); got != c.want {
			t.Errorf("%s: sourceDrives = %v (%s), want %v", c.name, got, why, c.want)
		}
	}
}

// TestSourceDrivesSendsToken: a destination asks a source that requires
// a token with the token the source gave it in the incoming request.
func TestSourceDrivesSendsToken(t *testing.T) {
	const token = "source-token-0123456789abcdef"
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error": "no token", "code": "unauthenticated"}`))
			return
		}
		w.Write([]byte(`{"name": "x1", "state": "migrating"}`))
	}))
	defer s.Close()
	api := strings.TrimPrefix(s.URL, "http://")
	m := &Manager{log: discardLogger()}
	if got, why := m.sourceDrives(context.Background(), "x1", api, token); !got || !strings.Contains(why, "migrating") {
		t.Errorf("with the token: sourceDrives = %v (%s), want the source's state", got, why)
	}
	// Refused (a source that is alive but was not given our token): it
	// answers, so the destination keeps waiting rather than act.
	if got, why := m.sourceDrives(context.Background(), "x1", api, ""); !got || !strings.Contains(why, "answers") {
		t.Errorf("without the token: sourceDrives = %v (%s), want alive", got, why)
	}
}

// TestRestartAfterCompleted: a restarted source daemon quits a QEMU in
// postmigrate and forgets the VM; a restarted destination daemon keeps an
// incoming VM whose QEMU is paused (completed) and drops one still
// inmigrate.
func TestRestartAfterCompleted(t *testing.T) {
	m := &Manager{cfg: Config{StateDir: t.TempDir(), HostID: "host-a"}, log: discardLogger(), vms: map[string]*VM{}, done: map[string]wire.VMInfo{}}
	dir := filepath.Join(t.TempDir(), "x1")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "serial.log"), []byte("counter 1\n"), 0o644)
	v := &VM{m: m, dir: dir, rec: record{Spec: wire.VMSpec{Name: "x1"}, State: wire.StateMigrating, Migration: &wire.Migration{To: "b:1"}}}
	q := &fakeQMP{status: "postmigrate"}
	q.serve(t, filepath.Join(dir, "qmp.sock"))
	conn, err := qmp.Dial(context.Background(), filepath.Join(dir, "qmp.sock"), nil)
	if err != nil {
		t.Fatal(err)
	}
	v.mu.Lock()
	gone := m.migratedAway(context.Background(), v, conn)
	v.mu.Unlock()
	if !gone || q.commands() != "quit" {
		t.Fatalf("migratedAway = %v, QMP %q; want true, quit", gone, q.commands())
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the VM's state dir is still there: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(m.cfg.StateDir, "migrated", "x1", "serial.log")); string(b) != "counter 1\n" {
		t.Errorf("kept serial log %q", b)
	}

	// A running source QEMU is not touched.
	q2 := &fakeQMP{status: "running"}
	dir2 := t.TempDir()
	q2.serve(t, filepath.Join(dir2, "qmp.sock"))
	conn2, err := qmp.Dial(context.Background(), filepath.Join(dir2, "qmp.sock"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	v2 := &VM{m: m, dir: dir2, rec: record{Spec: wire.VMSpec{Name: "x2"}, State: wire.StateMigrating}}
	if m.migratedAway(context.Background(), v2, conn2) || q2.commands() != "" {
		t.Fatalf("a running QEMU was taken for migrated away: %s", q2.commands())
	}

	for _, st := range []string{"paused", "inmigrate"} {
		src := &srcGateway{fakeGateway: fakeGateway{vols: map[string]gwire.VolumeInfo{}}}
		dst := &dstGateway{fakeGateway: fakeGateway{vols: map[string]gwire.VolumeInfo{}}}
		m, v, q := incomingVM(t, src, dst, false)
		q.status = st
		m.cfg.HandoverTimeout = time.Hour
		v.mu.Lock()
		kept := m.resumeHandover(context.Background(), v)
		v.mu.Unlock()
		if kept != (st == "paused") {
			t.Errorf("QEMU %s: resumeHandover = %v", st, kept)
		}
	}
}

// TestNewResumesCompletedIncoming: a daemon starting on a state dir with
// an incoming VM from another gateway keeps it, and watches its
// hand-over, when its QEMU is paused after a completed migration; it
// kills one still inmigrate and forgets it, as before.
func TestNewResumesCompletedIncoming(t *testing.T) {
	for _, st := range []string{"paused", "inmigrate"} {
		t.Run(st, func(t *testing.T) {
			state := t.TempDir()
			dir := filepath.Join(state, "vms", "x1")
			os.MkdirAll(dir, 0o755)
			// A process standing in for QEMU: its pid is what load checks
			// and, for a VM it drops, kills.
			qemu := exec.Command("sleep", "600")
			if err := qemu.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { qemu.Wait(); close(exited) }()
			t.Cleanup(func() { qemu.Process.Kill(); <-exited })
			rec := record{Spec: wire.VMSpec{Name: "x1", Disks: []wire.Disk{{Volume: "v"}}}, State: wire.StateIncoming, PID: qemu.Process.Pid,
				Cross: &crossIncoming{Source: []wire.SourceDisk{{Volume: "v", ID: "id-v"}}, SourceGateway: "gw-a:9809", Parked: []bool{false}}}
			b, _ := json.Marshal(rec)
			os.WriteFile(filepath.Join(dir, "vm.json"), b, 0o644)
			q := &fakeQMP{status: st}
			q.serve(t, filepath.Join(dir, "qmp.sock"))
			m, err := New(context.Background(), Config{Gateway: &fakeGateway{}, StateDir: state, HostID: "host-b", HandoverTimeout: time.Hour, Logger: discardLogger()})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			in, err := m.Info("x1")
			switch st {
			case "paused":
				if err != nil || in.State != wire.StateIncoming {
					t.Fatalf("completed incoming VM after the restart: %+v, %v", in, err)
				}
				select {
				case <-exited:
					t.Fatal("the completed incoming VM's QEMU was killed")
				case <-time.After(500 * time.Millisecond):
				}
			case "inmigrate":
				if err == nil {
					t.Fatalf("unfinished incoming VM kept: %+v", in)
				}
				select {
				case <-exited:
				case <-time.After(30 * time.Second):
					t.Fatal("the unfinished incoming VM's QEMU was not killed")
				}
			}
		})
	}
}

// TestNewForgetsHandedOver: a source daemon starting on a VM whose record
// says it was handing the volumes over, and whose QEMU is gone, forgets
// it (the destination owns it) instead of marking it crashed.
func TestNewForgetsHandedOver(t *testing.T) {
	state := t.TempDir()
	dir := filepath.Join(state, "vms", "x1")
	os.MkdirAll(dir, 0o755)
	rec := record{Spec: wire.VMSpec{Name: "x1"}, State: wire.StateMigrating, Migration: &wire.Migration{To: "b:1", Status: "handover"}}
	b, _ := json.Marshal(rec)
	os.WriteFile(filepath.Join(dir, "vm.json"), b, 0o644)
	m, err := New(context.Background(), Config{Gateway: &fakeGateway{}, StateDir: state, HostID: "host-a", Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if in, err := m.Info("x1"); err == nil {
		t.Fatalf("VM handed over kept: %+v", in)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("its state dir is still there: %v", err)
	}
}

// TestTakeBack: a source daemon restarted during a migration ends the
// destination's attachments of the VM's disks and takes its own again; a
// migration that recorded no destination holder (none moved) is left
// alone.
func TestTakeBack(t *testing.T) {
	gw := &srcGateway{fakeGateway: fakeGateway{vols: map[string]gwire.VolumeInfo{}}}
	m := &Manager{cfg: Config{Gateway: gw, HostID: "host-a"}, log: discardLogger()}
	v := &VM{m: m, rec: record{
		Spec:      wire.VMSpec{Name: "x1", Disks: []wire.Disk{{Volume: "v1"}, {Volume: "v2"}}},
		State:     wire.StateMigrating,
		Migration: &wire.Migration{To: "b:1", Status: "pre-switchover", DestinationHolder: "host-b:x1"},
	}}
	v.mu.Lock()
	m.takeBackLocked(context.Background(), v)
	v.mu.Unlock()
	if got, want := strings.Join(gw.calls, "; "), "detach v1 host-b:x1; attach v1 host-a:x1; detach v2 host-b:x1; attach v2 host-a:x1"; got != want {
		t.Errorf("gateway calls %q, want %q", got, want)
	}

	gw.calls = nil
	v.rec.Migration.DestinationHolder = ""
	v.mu.Lock()
	m.takeBackLocked(context.Background(), v)
	v.mu.Unlock()
	if len(gw.calls) != 0 {
		t.Errorf("without a recorded destination holder: gateway calls %v", gw.calls)
	}
}

// refusingGateway refuses every attach, recording it with its Reclaim.
type refusingGateway struct{ srcGateway }

func (g *refusingGateway) Attach(_ context.Context, name, host string, req gwire.AttachRequest) (gwire.Attachment, error) {
	g.calls = append(g.calls, fmt.Sprintf("attach %s %s reclaim=%v", name, host, req.Reclaim))
	return gwire.Attachment{}, errors.New("gateway says no")
}

// TestTakeBackAttachRefused: when the VM's own attach fails (say the
// gateway just restarted and takes only reclaimed attachments, or is
// away), the take-back does not give the volume to the destination again,
// as a hand-over's fallback would: the renewal retries the VM's own.
func TestTakeBackAttachRefused(t *testing.T) {
	gw := &refusingGateway{srcGateway{fakeGateway: fakeGateway{vols: map[string]gwire.VolumeInfo{}}}}
	m := &Manager{cfg: Config{Gateway: gw, HostID: "host-a"}, log: discardLogger()}
	m.takeBack(context.Background(), "x1", []string{"v1"}, nil, "host-b:x1")
	if got, want := strings.Join(gw.calls, "; "), "detach v1 host-b:x1; attach v1 host-a:x1 reclaim=true"; got != want {
		t.Errorf("gateway calls %q, want %q", got, want)
	}
}
