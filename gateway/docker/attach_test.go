package docker

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestReachable(t *testing.T) {
	for _, c := range []struct{ reported, api, want string }{
		// The plugin on another host: the gateway's loopback is replaced.
		{"127.0.0.1:10809", "10.0.2.100:9809", "10.0.2.100:10809"},
		{"127.0.0.1:3260", "http://10.0.2.100:9809", "10.0.2.100:3260"},
		{"[::1]:10809", "gw.example:9809", "gw.example:10809"},
		{"localhost:10809", "[fd00::5]:9809", "[fd00::5]:10809"},
		{"0.0.0.0:10809", "10.0.2.100:9809", "10.0.2.100:10809"},
		{"[::]:3260", "https://gw.example", "gw.example:3260"},
		{"127.0.0.1:10809", "10.0.2.100", "10.0.2.100:10809"},
		// A real address is kept.
		{"10.0.0.7:10809", "10.0.2.100:9809", "10.0.0.7:10809"},
		{"gw.internal:3260", "127.0.0.1:9809", "gw.internal:3260"},
		// The plugin on the gateway's host: loopback is right.
		{"127.0.0.1:10809", "127.0.0.1:9809", "127.0.0.1:10809"},
		{"127.0.0.1:10809", "localhost:9809", "127.0.0.1:10809"},
		{"0.0.0.0:10809", "127.0.0.1:9809", "127.0.0.1:10809"},
		// Not HOST:PORT: left alone.
		{"garbage", "10.0.2.100:9809", "garbage"},
	} {
		if got := Reachable(c.reported, c.api); got != c.want {
			t.Errorf("Reachable(%q, %q) = %q, want %q", c.reported, c.api, got, c.want)
		}
	}
}

func TestEndpoints(t *testing.T) {
	e := Endpoints{API: "10.0.2.100:9809"}
	got, err := e.NBDURL("nbd://127.0.0.1:10809/d-data-0b5e")
	if err != nil || got != "nbd://10.0.2.100:10809/d-data-0b5e" {
		t.Fatalf("NBDURL = %q, %v", got, err)
	}
	if got := e.ISCSIPortal("127.0.0.1:3260"); got != "10.0.2.100:3260" {
		t.Fatalf("ISCSIPortal = %q", got)
	}
	e = Endpoints{API: "10.0.2.100:9809", NBD: "203.0.113.9:31000", ISCSI: "203.0.113.9:32000"}
	got, err = e.NBDURL("nbd://127.0.0.1:10809/v")
	if err != nil || got != "nbd://203.0.113.9:31000/v" {
		t.Fatalf("NBDURL with override = %q, %v", got, err)
	}
	if got := e.ISCSIPortal("10.0.0.7:3260"); got != "203.0.113.9:32000" {
		t.Fatalf("ISCSIPortal with override = %q", got)
	}
	if _, err := e.NBDURL("iscsi://127.0.0.1:3260/t/0"); err == nil {
		t.Fatal("an iscsi URL was taken for an NBD export")
	}
}

// fakeCandidate is an attach method that works or not.
type fakeCandidate struct {
	Attacher
	method string
	err    error
}

func (f *fakeCandidate) Method() string   { return f.method }
func (f *fakeCandidate) Available() error { return f.err }
func (f *fakeCandidate) Attach(context.Context, AttachSpec) (*Attachment, error) {
	return nil, errors.New("not here")
}

func TestPickAttacher(t *testing.T) {
	nbdC := &fakeCandidate{method: MethodNBD, err: errors.New("no nbd module")}
	iscsiC := &fakeCandidate{method: MethodISCSI}
	fuseC := &fakeCandidate{method: MethodFUSE}
	a, why, err := PickAttacher(MethodAuto, nbdC, iscsiC, fuseC)
	if err != nil || a != iscsiC || !strings.Contains(why, "nbd: no nbd module") {
		t.Fatalf("auto: %v %q %v; want iscsi, saying why not nbd", a, why, err)
	}
	nbdC.err = nil
	if a, _, _ := PickAttacher("", nbdC, iscsiC, fuseC); a != nbdC {
		t.Fatalf("auto with nbd working picked %v", a.Method())
	}
	if a, why, err := PickAttacher(MethodFUSE, nbdC, iscsiC, fuseC); a != fuseC || why != "fuse (asked for)" || err != nil {
		t.Fatalf("fuse: %v %q %v", a, why, err)
	}
	iscsiC.err = errors.New("no iscsiadm")
	if _, _, err := PickAttacher(MethodISCSI, nbdC, iscsiC, fuseC); err == nil || !strings.Contains(err.Error(), "no iscsiadm") {
		t.Fatalf("iscsi unavailable: %v", err)
	}
	nbdC.err, fuseC.err = errors.New("a"), errors.New("b")
	if _, _, err := PickAttacher(MethodAuto, nbdC, iscsiC, fuseC); err == nil || !strings.Contains(err.Error(), "fuse: b") {
		t.Fatalf("nothing works: %v", err)
	}
	if _, _, err := PickAttacher("loop", nbdC, iscsiC, fuseC); err == nil || !strings.Contains(err.Error(), "auto, nbd, iscsi, fuse") {
		t.Fatalf("unknown method: %v", err)
	}
}
