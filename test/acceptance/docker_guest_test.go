package acceptance

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/test/guest"
)

// guestFerry is the ferry binary as a file for the guest's root.
func guestFerry(t *testing.T) guest.File {
	t.Helper()
	b, err := os.ReadFile(ferryBin)
	if err != nil {
		t.Fatal(err)
	}
	return guest.File{Path: "/usr/local/bin/ferry", Mode: 0o755, Data: b}
}

// gatewayPorts are the gateway's API, NBD and iSCSI ports, which a guest
// reaches at guest.HostAddr under the same numbers.
func gatewayPorts(t *testing.T, g *gateway) []int {
	t.Helper()
	var ports []int
	for _, a := range []string{g.apiAddr, g.nbdAddr, g.iscsiAddr} {
		i := strings.LastIndexByte(a, ':')
		p, err := strconv.Atoi(a[i+1:])
		if err != nil {
			t.Fatalf("port of %s: %v", a, err)
		}
		ports = append(ports, p)
	}
	return ports
}

// TestGuestSmoke boots the kernel-initiator test guest: it loads nbd and
// iscsi_tcp, runs iscsid, runs the ferry binary built for this test, and
// reaches the host's gateway through the forwarded API port.
func TestGuestSmoke(t *testing.T) {
	img := guest.Require(t)
	g := startGateway(t)
	ports := gatewayPorts(t, g)
	vm := guest.Boot(t, guest.Config{
		Image:   img,
		Files:   []guest.File{guestFerry(t)},
		Forward: ports,
		Script: fmt.Sprintf(`#!/bin/sh
say() { echo "FERRY-GUEST: $*"; }
for m in nbd iscsi_tcp; do
	modprobe "$m" && grep -q "^$m " /proc/modules && say "loaded $m"
done
[ -b /dev/nbd0 ] && say "device /dev/nbd0"
pidof iscsid >/dev/null && iscsiadm --version >/dev/null && say "iscsid running"
say "ferry $(ferry version | head -1)"
curl -sSf http://%s:%d/healthz >/dev/null && say "gateway healthz ok"
`, guest.HostAddr, ports[0]),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var seen []string
	for {
		m, err := vm.Next(ctx)
		if err != nil {
			break
		}
		seen = append(seen, m)
	}
	rc, err := vm.Wait(ctx)
	if err != nil || rc != 0 {
		t.Fatalf("guest: exit %d, %v", rc, err)
	}
	all := strings.Join(seen, "\n")
	for _, want := range []string{"ready", "loaded nbd", "loaded iscsi_tcp", "device /dev/nbd0", "iscsid running", "ferry ferry", "gateway healthz ok"} {
		if !strings.Contains(all, want) {
			t.Errorf("guest never said %q; it said:\n%s", want, all)
		}
	}
}
