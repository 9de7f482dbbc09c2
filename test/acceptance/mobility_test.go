package acceptance

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// lunIDs reads a target's LUN 0 device identification page with libiscsi's
// iscsi-inq and returns its NAA designator (hex) and T10 vendor ID
// designator. iscsi-inq prints a binary designator's bytes as they are.
func lunIDs(t *testing.T, g *gateway, vol string) (naa, t10 string) {
	t.Helper()
	out := run(t, time.Minute, testutil.RequireTool(t, "iscsi-inq"), "-e", "1", "-c", "131", // 0x83
		"iscsi://"+g.iscsiAddr+"/iqn.2026-11.io.ferry:"+vol+"/0")
	const naaMark = "Designator Type:(3) NAA\nDesignator:["
	i := strings.Index(out, naaMark)
	if i < 0 || len(out) < i+len(naaMark)+8 {
		t.Fatalf("no NAA designator in iscsi-inq output:\n%s", out)
	}
	naa = hex.EncodeToString([]byte(out[i+len(naaMark) : i+len(naaMark)+8]))
	m := regexp.MustCompile(`Designator Type:\(1\) T10_VENDORT?_ID\nDesignator:\[([^\]]*)\]`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no T10 vendor ID designator in iscsi-inq output:\n%s", out)
	}
	return naa, m[1]
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// A volume's iSCSI identifiers follow its identity (a UUID), not its name:
// two volumes called vm1 on two gateways present different NAA
// identifiers, and a volume keeps its own across restarts.
func TestVolumeIdentity(t *testing.T) {
	a := startGateway(t)
	b := startGateway(t)
	a.mustCLI("volume", "create", "vm1", "--size", "16M")
	b.mustCLI("volume", "create", "vm1", "--size", "16M")
	ia, ib := a.info("vm1"), b.info("vm1")
	if !uuidRE.MatchString(ia.ID) || !uuidRE.MatchString(ib.ID) || ia.ID == ib.ID {
		t.Fatalf("volume ids %q and %q: want two different UUIDs", ia.ID, ib.ID)
	}
	if out := a.mustCLI("volume", "info", "vm1"); !strings.Contains(out, ia.ID) {
		t.Errorf("volume info does not show the id:\n%s", out)
	}
	na, ta := lunIDs(t, a, "vm1")
	nb, tb := lunIDs(t, b, "vm1")
	if na == nb || ta == tb {
		t.Errorf("two volumes named vm1 on two gateways share identifiers: NAA %s/%s, T10 %q/%q", na, nb, ta, tb)
	}
	if !strings.HasPrefix(na, "6") || !strings.Contains(ta, ia.ID) {
		t.Errorf("NAA %s (want NAA 6) and T10 %q (want the volume id %s)", na, ta, ia.ID)
	}
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	a.start()
	if again, _ := lunIDs(t, a, "vm1"); again != na {
		t.Errorf("NAA changed across a restart: %s, then %s", na, again)
	}
}

// An S3-backed volume whose cache is lost (new machine, lost disk) starts
// again from its newest recovery point: what that point holds reads back,
// and the volume goes on taking writes and recovery points without
// touching the objects it still reads.
func TestS3LostCacheResumes(t *testing.T) {
	qemuIO := testutil.RequireTool(t, "qemu-io")
	srv := s3Env(t, "ferry-lost")
	g := startGateway(t, "--checkpoint-interval", "1h")
	g.mustCLI("store", "add", "cloud", "--endpoint", srv.Endpoint, "--bucket", "ferry-lost")
	g.mustCLI("volume", "create", "v", "--size", "64M", "--store", "cloud")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x41 0 5M", "-c", "write -P 0x42 40M 4k", "-c", "flush", g.uri("v"))
	g.mustCLI("volume", "checkpoint", "v")
	id := g.info("v").ID
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(g.data, "pool", "tier-"+id)
	if _, err := os.Stat(cache); err != nil {
		t.Fatalf("cache directory: %v", err)
	}
	if err := os.RemoveAll(cache); err != nil {
		t.Fatal(err)
	}
	g.start()
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x41 0 5M", "-c", "read -P 0x42 40M 4k", "-c", "read -P 0 5M 1M", g.uri("v"))
	for i := range 3 {
		run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x5"+string(rune('0'+i))+" 20M 1M", "-c", "flush", g.uri("v"))
		g.mustCLI("volume", "checkpoint", "v")
	}
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "read -P 0x41 0 5M", "-c", "read -P 0x42 40M 4k", "-c", "read -P 0x52 20M 1M", g.uri("v"))
	g.exportAndCompare("v")
	if !strings.Contains(g.logs.String(), "cache started from the store's newest recovery point") {
		t.Errorf("the gateway did not say where the volume resumed from")
	}
}
