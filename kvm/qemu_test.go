package kvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/kvm/wire"
)

func TestQEMUArgsDisks(t *testing.T) {
	spec := wire.VMSpec{Name: "vm1", CPUs: 2, MemoryMiB: 256, Net: "tap:tap0", Kernel: "/k", Initrd: "/i", Append: "console=ttyS0"}
	d, err := parseNBDURL("vol1", "nbd://127.0.0.1:10809/vol1")
	if err != nil {
		t.Fatal(err)
	}
	args, err := qemuArgs(spec, "/state/vm1", []nbdDisk{d}, 45*time.Second, wire.AccelTCG, "tcp:127.0.0.1:4444", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Join(args, " ")
	for _, want := range []string{"-accel tcg", "-m 256M", "-smp 2", "-incoming tcp:127.0.0.1:4444", " -S", "drive=disk0,id=vd0", "ifname=tap0", "-kernel /k", "-initrd /i", "-append console=ttyS0", "unix:/state/vm1/qmp.sock"} {
		if !strings.Contains(line, want) {
			t.Errorf("args lack %q:\n%s", want, line)
		}
	}
	// disk0 is a raw node over the NBD node disk0-nbd (so a migration
	// between gateways can switch the file child).
	var nodes []map[string]any
	for i, a := range args {
		if a == "-blockdev" {
			var bd map[string]any
			if err := json.Unmarshal([]byte(args[i+1]), &bd); err != nil {
				t.Fatal(err)
			}
			nodes = append(nodes, bd)
		}
	}
	if len(nodes) != 2 {
		t.Fatalf("want 2 block nodes, got %v", nodes)
	}
	bd, raw := nodes[0], nodes[1]
	if raw["driver"] != "raw" || raw["node-name"] != "disk0" || raw["file"] != "disk0-nbd" || raw["discard"] != "unmap" {
		t.Fatalf("raw node: %v", raw)
	}
	if bd["node-name"] != "disk0-nbd" || bd["driver"] != "nbd" || bd["export"] != "vol1" || bd["reconnect-delay"] != float64(45) || bd["discard"] != "unmap" {
		t.Fatalf("blockdev: %v", bd)
	}
	if c := bd["cache"].(map[string]any); c["direct"] != true {
		t.Fatalf("blockdev cache: %v (want direct: cache=none)", c)
	}
	if srv := bd["server"].(map[string]any); srv["host"] != "127.0.0.1" || srv["port"] != "10809" {
		t.Fatalf("blockdev server: %v", srv)
	}
}

func TestQEMUArgsRefuseBadNet(t *testing.T) {
	if _, err := qemuArgs(wire.VMSpec{Name: "x", CPUs: 1, MemoryMiB: 1, Net: "wifi"}, "/s", nil, time.Second, wire.AccelTCG, "", false, nil); err == nil {
		t.Fatal("bad --net accepted")
	}
	for n, ok := range map[string]bool{"user": true, "none": true, "tap:t0": true, "bridge:br0": true, "tap:": false, "x": false} {
		if validNet(n) != ok {
			t.Errorf("validNet(%q) = %v", n, !ok)
		}
	}
}

func TestParseNBDURL(t *testing.T) {
	if _, err := parseNBDURL("v", "iscsi://x/y"); err == nil {
		t.Fatal("non-NBD URL accepted")
	}
	d, err := parseNBDURL("v", "nbd://[::1]:10810/v")
	if err != nil || d.Host != "::1" || d.Port != "10810" || d.Export != "v" || d.url() != "nbd://[::1]:10810/v" {
		t.Fatalf("%+v %v", d, err)
	}
}

func TestTransitions(t *testing.T) {
	m := &Manager{log: discardLogger()}
	v := &VM{m: m, dir: t.TempDir(), rec: record{Spec: wire.VMSpec{Name: "v"}, State: wire.StateStopped}}
	if err := v.transition(wire.StateRunning, "skip"); err == nil {
		t.Fatal("stopped -> running allowed without starting")
	}
	for _, s := range []string{wire.StateStarting, wire.StateRunning, wire.StateMigrating, wire.StateRunning, wire.StateStopping, wire.StateStopped} {
		if err := v.transition(s, "test"); err != nil {
			t.Fatal(err)
		}
	}
}

// listenIncoming asks QEMU to bind port 0 on the migration address and
// builds the URI from the port QEMU reports; QEMU's refusal and a reply
// without a TCP port are errors.
func TestListenIncoming(t *testing.T) {
	for _, c := range []struct {
		name, addr, reply string
		bindErr           error
		want, wantErr     string
	}{
		{name: "ipv4", addr: "127.0.0.1", reply: `{"socket-address":[{"type":"inet","host":"127.0.0.1","port":"35797","ipv4":true}]}`, want: "tcp:127.0.0.1:35797"},
		{name: "ipv6", addr: "::1", reply: `{"socket-address":[{"type":"inet","host":"::1","port":"40001","ipv6":true}]}`, want: "tcp:[::1]:40001"},
		{name: "refused", addr: "192.0.2.1", bindErr: errors.New("GenericError: Failed to bind socket: Cannot assign requested address"), wantErr: "migration address 192.0.2.1: GenericError: Failed to bind"},
		{name: "no port", addr: "127.0.0.1", reply: `{"status":"setup"}`, wantErr: "no TCP port"},
		{name: "port zero", addr: "127.0.0.1", reply: `{"socket-address":[{"type":"inet","host":"127.0.0.1","port":"0"}]}`, wantErr: "no TCP port"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var cmds []string
			exec := func(_ context.Context, cmd string, args, out any) error {
				a, _ := json.Marshal(args)
				cmds = append(cmds, cmd+" "+string(a))
				switch cmd {
				case "migrate-incoming":
					return c.bindErr
				case "query-migrate":
					return json.Unmarshal([]byte(c.reply), out)
				}
				return fmt.Errorf("unexpected command %s", cmd)
			}
			uri, err := listenIncoming(context.Background(), exec, c.addr)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v; want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil || uri != c.want {
				t.Fatalf("uri %q, err %v; want %q", uri, err, c.want)
			}
			wantBind := `migrate-incoming {"uri":"tcp:` + net.JoinHostPort(c.addr, "0") + `"}`
			if len(cmds) != 2 || cmds[0] != wantBind {
				t.Fatalf("commands %q; want %s first", cmds, wantBind)
			}
		})
	}
}
