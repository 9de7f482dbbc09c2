package acceptance

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
	"github.com/ferry-io/ferry/test/guest"
)

func (g *gateway) iscsiURL(vol string) string {
	return "iscsi://" + g.iscsiAddr + "/iqn.2026-11.io.ferry:" + vol + "/0"
}

// One volume, two protocols: what qemu-io writes over iSCSI reads back
// over NBD and the other way round, and a volume created while the
// gateway runs is a target at once; after a restart the data is there.
func TestISCSIAndNBDShareAVolume(t *testing.T) {
	qemuIO := testutil.RequireTool(t, "qemu-io")
	inq := testutil.RequireTool(t, "iscsi-inq")
	g := startGateway(t)
	g.mustCLI("volume", "create", "both", "--size", "64M")
	if out := run(t, time.Minute, inq, g.iscsiURL("both")); !strings.Contains(out, "FERRY") {
		t.Fatalf("iscsi-inq on a new volume:\n%s", out)
	}
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x5a 1M 2M", "-c", "flush", g.iscsiURL("both"))
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x5a 1M 2M", "-c", "write -P 0x6b 8M 512k", "-c", "flush", g.uri("both"))
	out := run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x6b 8M 512k", "-c", "read -P 0x5a 1M 2M", "-c", "read -P 0 0 1M", g.iscsiURL("both"))
	if strings.Contains(out, "verification failed") {
		t.Fatalf("iSCSI read of NBD writes:\n%s", out)
	}
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	g.start()
	out = run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x5a 1M 2M", "-c", "read -P 0x6b 8M 512k", g.iscsiURL("both"))
	if strings.Contains(out, "verification failed") {
		t.Fatalf("after restart:\n%s", out)
	}

	// Growing the volume while the gateway runs changes the capacity the
	// target reports.
	g.mustCLI("volume", "resize", "both", "--size", "128M")
	rc16 := testutil.RequireTool(t, "iscsi-readcapacity16")
	if out := run(t, time.Minute, rc16, g.iscsiURL("both")); !strings.Contains(out, "RETURNED LOGICAL BLOCK ADDRESS:262143") {
		t.Fatalf("capacity after growing to 128 MiB:\n%s", out)
	}
}

// Access control set from the CLI: CHAP secrets and an initiator
// allow-list decide logins; `volume info` shows the user and the list but
// never a secret, and neither do the gateway's logs.
func TestISCSIAccessFromCLI(t *testing.T) {
	inq := testutil.RequireTool(t, "iscsi-inq")
	const secret, other = "s3cret-s3cret-42", "wrong-wrong-wrong"
	const host1, host2 = "iqn.2026-11.io.example:host1", "iqn.2026-11.io.example:host2"
	g := startGateway(t, "--iscsi-chap-user", "gw", "--iscsi-chap-secret", "gateway-default-1")
	g.mustCLI("volume", "create", "sec", "--size", "16M", "--chap-user", "alice", "--chap-secret", secret, "--allow-initiator", host1)
	g.mustCLI("volume", "create", "plain", "--size", "16M")

	info := g.mustCLI("volume", "info", "sec")
	if !strings.Contains(info, "alice") || !strings.Contains(info, host1) || strings.Contains(info, secret) {
		t.Fatalf("volume info should show the CHAP user and allow-list, never the secret:\n%s", info)
	}
	if js := g.mustCLI("volume", "info", "sec", "--json"); strings.Contains(js, secret) {
		t.Fatalf("volume info --json shows the secret:\n%s", js)
	}
	url := func(user, pass, vol string) string {
		return "iscsi://" + user + "%" + pass + "@" + g.iscsiAddr + "/iqn.2026-11.io.ferry:" + vol + "/0"
	}
	login := func(initiator, u string) error {
		_, err := runErr(time.Minute, inq, "-i", initiator, u)
		return err
	}
	if err := login(host1, url("alice", secret, "sec")); err != nil {
		t.Fatalf("right secret, allowed initiator: %v", err)
	}
	if err := login(host1, url("alice", other, "sec")); err == nil {
		t.Fatal("wrong secret logged in")
	}
	if err := login(host1, g.iscsiURL("sec")); err == nil {
		t.Fatal("no CHAP logged in to a CHAP volume")
	}
	if err := login(host2, url("alice", secret, "sec")); err == nil {
		t.Fatal("initiator outside the allow-list logged in")
	}
	// A volume without its own CHAP uses the gateway default.
	if err := login(host2, url("gw", "gateway-default-1", "plain")); err != nil {
		t.Fatalf("gateway default CHAP: %v", err)
	}
	if err := login(host2, g.iscsiURL("plain")); err == nil {
		t.Fatal("no CHAP logged in under a gateway default")
	}
	// Changes apply to the next login.
	g.mustCLI("volume", "update", "sec", "--clear-allow")
	if err := login(host2, url("alice", secret, "sec")); err != nil {
		t.Fatalf("after --clear-allow: %v", err)
	}
	if logs := g.logs.String(); strings.Contains(logs, secret) || strings.Contains(logs, "gateway-default-1") {
		t.Fatal("a CHAP secret reached the gateway log")
	}
}

// kill -9 while an initiator writes with SYNCHRONIZE CACHE: after the
// restart every epoch whose writes and SYNCHRONIZE CACHE were acknowledged
// reads back.
func TestISCSIKill9WithSyncCache(t *testing.T) {
	qemuIO := testutil.RequireTool(t, "qemu-io")
	g := startGateway(t)
	g.mustCLI("volume", "create", "crash", "--size", "1G")
	const epoch = 2 << 20
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	pattern := func(off int64) int { return int(off/epoch)%250 + 1 }
	var next int64
	var done []int64
	for cycle := range crashCycles(t, 5) {
		finished := make(chan []int64)
		var stop atomic.Bool
		go func() {
			var ok []int64
			for !stop.Load() {
				off := next
				next += epoch
				args := []string{"-f", "raw"}
				for i := int64(0); i < epoch; i += 256 << 10 {
					args = append(args, "-c", fmt.Sprintf("write -P %d %d 256k", pattern(off), off+i))
				}
				args = append(args, "-c", "flush", g.iscsiURL("crash"))
				out, err := runErr(time.Minute, qemuIO, args...)
				if err != nil || strings.Contains(out, "error") || strings.Contains(out, "failed") {
					finished <- ok
					return
				}
				ok = append(ok, off)
			}
			finished <- ok
		}()
		time.Sleep(time.Duration(300+rng.IntN(1500)) * time.Millisecond)
		g.kill9()
		stop.Store(true)
		// The initiator retries its connection: the epoch in flight fails
		// or completes against the restarted gateway; either way what it
		// was told is what must hold.
		g.start()
		ok := <-finished
		done = append(done, ok...)
		t.Logf("cycle %d: %d epochs synced before the kill", cycle, len(ok))
		args := []string{"-f", "raw"}
		for _, off := range done {
			args = append(args, "-c", fmt.Sprintf("read -P %d %d %d", pattern(off), off, epoch))
		}
		out, err := runErr(2*time.Minute, qemuIO, append(args, g.iscsiURL("crash"))...)
		if err != nil || strings.Contains(out, "verification failed") || strings.Count(out, "read ") != len(done) {
			t.Fatalf("epochs written and synced before a crash do not all read back: %v\n%s", err, out)
		}
	}
	if len(done) == 0 {
		t.Fatal("no epoch completed in any cycle: the test proved nothing")
	}
}

// guestDigestScript logs open-iscsi in to @TARGET@ at @PORTAL@ with
// CRC32C header and data digests required, writes 8 MiB of random bytes
// to LUN 0 with O_DIRECT and fsync, reads them back, and logs out.
const guestDigestScript = `#!/bin/sh
say() { echo "FERRY-GUEST: $*"; }
fail() { echo "--- iscsid"; grep -v "Poll was woken" /var/log/iscsid.log 2>/dev/null | tail -n 60; dmesg | tail -n 40; say "error $*"; exit 1; }
T=@TARGET@; P=@PORTAL@
modprobe iscsi_tcp || fail "modprobe iscsi_tcp"
iscsiadm -m node -T "$T" -p "$P" -o new >/dev/null || fail "node record"
for k in HeaderDigest DataDigest; do
	iscsiadm -m node -T "$T" -p "$P" -o update -n "node.conn[0].iscsi.$k" -v CRC32C || fail "set $k"
done
iscsiadm -m node -T "$T" -p "$P" --login >/dev/null || fail "login"
say "negotiated $(iscsiadm -m session -P 2 | grep -E 'HeaderDigest|DataDigest' | tr -s ' \t\n' ' ')"
dev=""
i=0
while [ -z "$dev" ]; do
	for b in /sys/class/iscsi_session/session*/device/target*/*:*:*:0/block/*; do [ -e "$b" ] && dev=/dev/${b##*/}; done
	[ -n "$dev" ] && [ -b "$dev" ] && break
	dev=""; i=$((i+1)); [ $i -lt 300 ] || fail "no block device for LUN 0"; sleep 0.1
done
dd if=/dev/urandom of=/tmp/a bs=1M count=8 2>/dev/null
dd if=/tmp/a of="$dev" bs=1M oflag=direct conv=fsync 2>/dev/null || fail "write to $dev"
sum=$(sha256sum </tmp/a | cut -d' ' -f1)
back=$(dd if="$dev" bs=1M count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$back" = "$sum" ] || fail "read back $back, wrote $sum"
say "wrote $sum"
iscsiadm -m node -T "$T" -p "$P" --logout >/dev/null || fail "logout"
say "logged out"
`

// TestISCSIDigestsInGuest: the kernel's iSCSI initiator (open-iscsi, in
// a QEMU guest: the host kernel has none) requires CRC32C header and data
// digests; Ferry negotiates them, 8 MiB written with O_DIRECT and fsync
// read back the same in the guest and through NBD on the host, and the
// gateway counts no digest error.
func TestISCSIDigestsInGuest(t *testing.T) {
	img := guest.Require(t)
	g := startGateway(t)
	g.mustCLI("volume", "create", "dg", "--size", "64M")
	ports := gatewayPorts(t, g)
	script := strings.NewReplacer("@TARGET@", "iqn.2026-11.io.ferry:dg", "@PORTAL@", fmt.Sprintf("%s:%d", guest.HostAddr, ports[2])).Replace(guestDigestScript)
	out := runGuest(t, guest.Config{Image: img, Forward: ports, Script: script})
	neg := regexp.MustCompile(`FERRY-GUEST: negotiated (.*)`).FindStringSubmatch(out)
	if neg == nil || !strings.Contains(neg[1], "HeaderDigest: CRC32C") || !strings.Contains(neg[1], "DataDigest: CRC32C") {
		t.Fatalf("the session's digests are not CRC32C: %q\n%s", neg, tail(out, 40))
	}
	t.Logf("guest: negotiated %s", neg[1])
	sum := regexp.MustCompile(`FERRY-GUEST: wrote ([0-9a-f]{64})`).FindStringSubmatch(out)
	if sum == nil || !strings.Contains(out, "FERRY-GUEST: logged out") {
		t.Fatalf("the guest did not write, read back and log out:\n%s", tail(out, 40))
	}
	f, err := os.Open(volumeImage(t, g, "dg"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, 8<<20); err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum[1] {
		t.Fatalf("the volume's first 8 MiB read through NBD: sha256 %s, the guest wrote %s", got, sum[1])
	}
	resp, err := g.get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, seg := range []string{"header", "data"} {
		if !regexp.MustCompile(`(?m)^ferry_iscsi_digest_errors_total\{segment="` + seg + `"\} 0$`).Match(b) {
			t.Errorf("metrics: want ferry_iscsi_digest_errors_total{segment=%q} 0 in\n%s", seg, regexp.MustCompile(`(?m)^ferry_iscsi_digest.*$`).FindAll(b, -1))
		}
	}
}
