package kvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	gwire "github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/kvm/client"
	"github.com/ferry-io/ferry/kvm/wire"
)

// fakeGateway serves volumes and stores from maps; what a test does not
// set up fails.
type fakeGateway struct {
	Gateway // nil: methods not overridden panic
	vols    map[string]gwire.VolumeInfo
	stores  []gwire.StoreView
}

func (f *fakeGateway) Volume(_ context.Context, name string) (gwire.VolumeInfo, error) {
	if in, ok := f.vols[name]; ok {
		return in, nil
	}
	return gwire.VolumeInfo{}, gwire.ErrNotFound
}

func (f *fakeGateway) Stores(context.Context) ([]gwire.StoreView, error) { return f.stores, nil }

func TestStoreFor(t *testing.T) {
	g := &fakeGateway{stores: []gwire.StoreView{
		{Name: "a", Endpoint: "http://s3-a", Bucket: "b1"},
		{Name: "b", Endpoint: "http://s3-b", Bucket: "b1"},
		{Name: "c", Endpoint: "http://s3-x/", Bucket: "b2", Prefix: "p/"},
	}}
	m := &Manager{cfg: Config{Gateway: g}, log: discardLogger()}
	ctx := context.Background()
	for _, c := range []struct {
		ref  wire.StoreRef
		want string
	}{
		{wire.StoreRef{Endpoint: "http://s3-b", Bucket: "b1"}, "b"},               // two on the bucket: the endpoint decides
		{wire.StoreRef{Endpoint: "http://other", Bucket: "b2", Prefix: "p"}, "c"}, // one on bucket+prefix: another name for the endpoint
		{wire.StoreRef{Endpoint: "http://s3-x", Bucket: "b2", Prefix: "/p"}, "c"},
		{wire.StoreRef{Endpoint: "http://other", Bucket: "b1"}, ""}, // ambiguous
		{wire.StoreRef{Endpoint: "http://s3-a", Bucket: "b3"}, ""},  // none
		{wire.StoreRef{Endpoint: "http://s3-x", Bucket: "b2"}, ""},  // other prefix
	} {
		got, err := m.storeFor(ctx, c.ref)
		if got != c.want || (c.want == "") != (err != nil) {
			t.Errorf("storeFor(%+v) = %q, %v; want %q", c.ref, got, err, c.want)
		}
		if err != nil && (!errors.Is(err, gwire.ErrInvalid) || !strings.Contains(err.Error(), "ferry store add")) {
			t.Errorf("storeFor(%+v) error %v: want ErrInvalid saying how to add the store", c.ref, err)
		}
	}
}

func TestCrossGateway(t *testing.T) {
	ref := &wire.StoreRef{Endpoint: "http://s3", Bucket: "b"}
	g := &fakeGateway{
		vols:   map[string]gwire.VolumeInfo{"here": {Volume: gwire.Volume{Name: "here", ID: "id-here"}}},
		stores: []gwire.StoreView{{Name: "cloud", Endpoint: "http://s3", Bucket: "b"}},
	}
	m := &Manager{cfg: Config{Gateway: g}, log: discardLogger()}
	spec := func(vols ...string) wire.VMSpec {
		s := wire.VMSpec{Name: "vm"}
		for _, v := range vols {
			s.Disks = append(s.Disks, wire.Disk{Volume: v})
		}
		return s
	}
	moving := wire.SourceDisk{Volume: "v", ID: "id-v", Size: 1 << 20, NBDURL: "nbd://127.0.0.1:1/v", Store: ref}
	for _, c := range []struct {
		name  string
		spec  wire.VMSpec
		disks []wire.SourceDisk
		cross bool
		err   string
	}{
		{"older source", spec("v"), nil, false, ""},
		{"same gateway", spec("here"), []wire.SourceDisk{{Volume: "here", ID: "id-here"}}, false, ""},
		{"another gateway", spec("v"), []wire.SourceDisk{moving}, true, ""},
		{"another volume of that name", spec("here"), []wire.SourceDisk{{Volume: "here", ID: "id-other", Store: ref}}, false, "another volume of that name"},
		{"local volume", spec("v"), []wire.SourceDisk{{Volume: "v", ID: "id-v", NBDURL: "nbd://x/v"}}, false, "local volume"},
		{"store missing here", spec("v"), []wire.SourceDisk{{Volume: "v", ID: "id-v", NBDURL: "nbd://x/v", Store: &wire.StoreRef{Bucket: "nope"}}}, false, "no store on bucket nope"},
		{"mixed", spec("here", "v"), []wire.SourceDisk{{Volume: "here", ID: "id-here"}, moving}, false, "some of the VM's volumes"},
		{"disks mismatch", spec("v", "w"), []wire.SourceDisk{moving}, false, "describes 1 disks"},
	} {
		cross, err := m.crossGateway(context.Background(), c.spec, c.disks)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: error %v, want one saying %q", c.name, err, c.err)
		case cross != c.cross:
			t.Errorf("%s: cross %v, want %v", c.name, cross, c.cross)
		}
	}
}

// srcGateway is the source's gateway in a hand-over: it records what it
// is asked and fails what the test says.
type srcGateway struct {
	fakeGateway
	releaseErr, adoptErr error
	calls                []string
}

func (g *srcGateway) Detach(_ context.Context, name, host string) error {
	g.calls = append(g.calls, "detach "+name+" "+host)
	return nil
}

func (g *srcGateway) Attach(_ context.Context, name, host string, _ gwire.AttachRequest) (gwire.Attachment, error) {
	g.calls = append(g.calls, "attach "+name+" "+host)
	return gwire.Attachment{Host: host}, nil
}

func (g *srcGateway) Release(_ context.Context, name string, force bool) (gwire.CheckpointResponse, error) {
	g.calls = append(g.calls, fmt.Sprintf("release %s force=%v", name, force))
	return gwire.CheckpointResponse{}, g.releaseErr
}

func (g *srcGateway) Adopt(_ context.Context, req gwire.AdoptRequest) (gwire.AdoptResponse, error) {
	g.calls = append(g.calls, "adopt "+req.Store+" "+req.Volume+" as "+req.Name)
	if g.adoptErr != nil {
		return gwire.AdoptResponse{}, g.adoptErr
	}
	r := gwire.AdoptResponse{}
	r.Volume.Attach.NBD = &gwire.NBDAttach{URL: "nbd://gw-a:10809/" + req.Name}
	return r, nil
}

// TestFinishCrossGatewayFailures drives the source's side of a hand-over
// between gateways against a fake source gateway and a stub destination:
// where each disk ends up and what is reported, when everything works,
// when the destination cannot park, the release fails, or the adopt
// fails (and the adopt back too).
func TestFinishCrossGatewayFailures(t *testing.T) {
	src := sourceDisks{{SourceDisk: wire.SourceDisk{Volume: "v", ID: "id-v", Size: 1 << 20, NBDURL: "nbd://gw-a:10809/v",
		Store: &wire.StoreRef{Endpoint: "http://s3", Bucket: "b"}}, storeName: "cloud-a"}}
	for _, c := range []struct {
		name                      string
		parkErr                   error
		releaseErr, srcAdoptErr   error
		dstAdoptErr               string
		wantURL, wantGW, wantNote string
		wantCalls                 []string
		wantErr                   bool
		// elsewhere: the VM's disks are on a gateway other than this
		// host's (an earlier release failed); every call goes there.
		elsewhere bool
	}{
		{name: "moved", wantURL: "nbd://gw-b:10809/v",
			wantCalls: []string{"detach v host-b:x1", "release v force=false"}},
		{name: "park fails", parkErr: fmt.Errorf("qemu says no: %w", gwire.ErrBusy), wantURL: "nbd://gw-a:10809/v", wantGW: "gw-a:9809",
			wantNote: "the volumes stay on the source's gateway"},
		{name: "release fails", releaseErr: fmt.Errorf("1 client(s) connected: %w", gwire.ErrBusy), wantURL: "nbd://gw-a:10809/v", wantGW: "gw-a:9809",
			wantNote:  "volume v stays on the source's gateway: release failed",
			wantCalls: []string{"detach v host-b:x1", "release v force=false", "attach v host-b:x1"}},
		{name: "adopt fails", dstAdoptErr: "lease held elsewhere", wantURL: "nbd://gw-a:10809/v", wantGW: "gw-a:9809",
			wantNote:  "the destination's did not adopt it (lease held elsewhere); adopted back here",
			wantCalls: []string{"detach v host-b:x1", "release v force=false", "adopt cloud-a id-v as v", "attach v host-b:x1"}},
		{name: "moved from another gateway", elsewhere: true, wantURL: "nbd://gw-b:10809/v",
			wantCalls: []string{"detach v host-b:x1", "release v force=false"}},
		{name: "release fails on another gateway", elsewhere: true, releaseErr: fmt.Errorf("1 client(s) connected: %w", gwire.ErrBusy), wantURL: "nbd://gw-a:10809/v", wantGW: "gw-c:9809",
			wantNote:  "volume v stays on the source's gateway: release failed",
			wantCalls: []string{"detach v host-b:x1", "release v force=false", "attach v host-b:x1"}},
		{name: "adopt and adopt back fail", dstAdoptErr: "lease held elsewhere", srcAdoptErr: errors.New("s3 down"), wantURL: "", wantGW: "gw-a:9809",
			wantNote: "no gateway serves it", wantErr: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var done wire.IncomingDoneRequest
			mux := http.NewServeMux()
			mux.HandleFunc("POST /v1/incoming/x1/park", func(w http.ResponseWriter, r *http.Request) {
				reply(w, discardLogger(), http.StatusOK, struct{}{}, c.parkErr)
			})
			mux.HandleFunc("POST /v1/incoming/x1/adopt", func(w http.ResponseWriter, r *http.Request) {
				var req wire.IncomingAdoptRequest
				json.NewDecoder(r.Body).Decode(&req)
				rep := wire.IncomingAdoptReply{Adopted: map[string]string{}, Errors: map[string]string{}}
				for _, v := range req.Volumes {
					if c.dstAdoptErr != "" {
						rep.Errors[v] = c.dstAdoptErr
					} else {
						rep.Adopted[v] = "nbd://gw-b:10809/" + v
					}
				}
				reply(w, discardLogger(), http.StatusOK, rep, nil)
			})
			mux.HandleFunc("POST /v1/incoming/x1/done", func(w http.ResponseWriter, r *http.Request) {
				json.NewDecoder(r.Body).Decode(&done)
				var err error
				for _, d := range done.Disks {
					if d.NBDURL == "" {
						err = fmt.Errorf("disk %s is served by no gateway: %w", d.Volume, gwire.ErrInvalid)
					}
				}
				reply(w, discardLogger(), http.StatusOK, struct{}{}, err)
			})
			dst := httptest.NewServer(mux)
			defer dst.Close()

			gw := &srcGateway{releaseErr: c.releaseErr, adoptErr: c.srcAdoptErr}
			serving := servingGateway{Gateway: gw, addr: "gw-a:9809"}
			var own Gateway = gw
			if c.elsewhere {
				serving.addr, serving.token = "gw-c:9809", "tok-c"
				own = &srcGateway{releaseErr: errors.New("this host's gateway was asked")}
			}
			m := &Manager{cfg: Config{Gateway: own, GatewayAddr: "gw-a:9809", HostID: "host-a"}, log: discardLogger(),
				vms: map[string]*VM{}, done: map[string]wire.VMInfo{},
				migrations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "m"}, []string{"result"})}
			v := &VM{m: m, dir: t.TempDir(), rec: record{Spec: wire.VMSpec{Name: "x1", Disks: []wire.Disk{{Volume: "v"}}},
				State: wire.StateMigrating, Migration: &wire.Migration{To: dst.URL, Status: "device"}}}
			m.vms["x1"] = v
			m.finishCrossGateway(context.Background(), v, client.New(dst.URL), "x1", migrationStatus{Downtime: 40, TotalTime: 100}, "host-b:x1", serving, src)

			if len(done.Disks) != 1 || done.Disks[0].NBDURL != c.wantURL || done.Disks[0].Gateway != c.wantGW {
				t.Fatalf("done asked for %+v; want url %q gateway %q", done.Disks, c.wantURL, c.wantGW)
			}
			if c.elsewhere && (len(own.(*srcGateway).calls) > 0 || (c.wantGW != "" && done.Disks[0].GatewayToken != "tok-c")) {
				t.Errorf("this host's gateway was called (%q), or the destination was not given the serving gateway's token (%+v)", own.(*srcGateway).calls, done.Disks[0])
			}
			if c.wantCalls != nil && strings.Join(gw.calls, "; ") != strings.Join(c.wantCalls, "; ") {
				t.Errorf("source gateway calls:\n%s\nwant\n%s", strings.Join(gw.calls, "\n"), strings.Join(c.wantCalls, "\n"))
			}
			mg := m.done["x1"].Migration
			if mg == nil || mg.Status != "completed" || mg.DowntimeMS < 40 {
				t.Fatalf("migration report: %+v", mg)
			}
			if c.wantNote == "" && mg.Handover != "volumes released on the source's gateway and adopted on the destination's" {
				t.Errorf("handover %q", mg.Handover)
			}
			if !strings.Contains(mg.Handover, c.wantNote) || !strings.Contains(done.Note, c.wantNote) {
				t.Errorf("handover %q, note to the destination %q; want them to say %q", mg.Handover, done.Note, c.wantNote)
			}
			if (mg.Error != "") != c.wantErr {
				t.Errorf("migration error %q, want error: %v", mg.Error, c.wantErr)
			}
		})
	}
}

// An incoming request from another host that names the source's gateway,
// API or exports by a loopback address is refused: here those addresses
// are this host's own gateway and daemon.
func TestLoopbackFromAfar(t *testing.T) {
	ok := wire.IncomingRequest{SourceGateway: "http://10.0.0.5:9809", SourceAPI: "10.0.0.5:9810",
		Disks: []wire.SourceDisk{{Volume: "v", NBDURL: "nbd://10.0.0.5:10809/v"}}}
	if err := loopbackFromAfar("10.0.0.5:41000", ok); err != nil {
		t.Errorf("reachable addresses: %v", err)
	}
	local := wire.IncomingRequest{SourceGateway: "127.0.0.1:9809", SourceAPI: "127.0.0.1:9810",
		Disks: []wire.SourceDisk{{Volume: "v", NBDURL: "nbd://127.0.0.1:10809/v"}}}
	if err := loopbackFromAfar("127.0.0.1:41000", local); err != nil {
		t.Errorf("both daemons on this host: %v", err)
	}
	for name, req := range map[string]wire.IncomingRequest{
		"gateway": {SourceGateway: "127.0.0.1:9809", SourceAPI: ok.SourceAPI, Disks: ok.Disks},
		"api":     {SourceGateway: ok.SourceGateway, SourceAPI: "localhost:9810", Disks: ok.Disks},
		"export":  {SourceGateway: ok.SourceGateway, SourceAPI: ok.SourceAPI, Disks: []wire.SourceDisk{{Volume: "v", NBDURL: "nbd://[::1]:10809/v"}}},
	} {
		err := loopbackFromAfar("10.0.0.5:41000", req)
		if !errors.Is(err, gwire.ErrInvalid) || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("%s by loopback from another host: %v", name, err)
		}
	}
}

// A migration's source gateway is the one serving the VM's disks: this
// host's, or the one an earlier migration left them on; disks on two
// gateways are refused.
func TestServingGateway(t *testing.T) {
	var made []string
	m := &Manager{cfg: Config{Gateway: &fakeGateway{}, GatewayAddr: "gw-a:9809", GatewayToken: "tok-a"},
		newGateway: func(addr string) Gateway { made = append(made, addr); return &fakeGateway{} }}
	for _, served := range [][]nbdDisk{nil, {{Volume: "v"}, {Volume: "w"}}} {
		g, err := m.servingGateway(served)
		if err != nil || g.Gateway != m.cfg.Gateway || g.addr != "gw-a:9809" || g.token != "tok-a" {
			t.Errorf("disks on this host's gateway (%+v): %+v, %v", served, g, err)
		}
	}
	g, err := m.servingGateway([]nbdDisk{{Volume: "v", Gateway: "gw-b:9809", GatewayToken: "tok-b"}, {Volume: "w", Gateway: "gw-b:9809", GatewayToken: "tok-b"}})
	if err != nil || g.addr != "gw-b:9809" || g.token != "tok-b" || strings.Join(made, " ") != "gw-b:9809" {
		t.Errorf("disks left on gateway B: %+v, %v (clients made for %q)", g, err, made)
	}
	_, err = m.servingGateway([]nbdDisk{{Volume: "v"}, {Volume: "w", Gateway: "gw-b:9809"}})
	if !errors.Is(err, gwire.ErrInvalid) || !strings.Contains(err.Error(), "v on this host's gateway, w on gateway gw-b:9809") {
		t.Errorf("disks on two gateways: %v", err)
	}
}
