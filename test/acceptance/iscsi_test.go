package acceptance

import (
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
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
}
