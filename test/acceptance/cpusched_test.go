package acceptance

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/cpusched"
	"github.com/ferry-io/ferry/internal/procstat"
	"github.com/ferry-io/ferry/internal/testutil"
)

// threadPolicies counts a process's threads by scheduling policy, as
// /proc/PID/task/TID/stat gives it (field 41).
func threadPolicies(t *testing.T, pid int) map[string]int {
	t.Helper()
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(stats) == 0 {
		t.Fatalf("threads of %d: %v", pid, err)
	}
	n := map[string]int{}
	for _, f := range stats {
		fields, err := procstat.Read(f)
		if err != nil {
			continue // the thread has exited
		}
		var policy int
		if len(fields) < 39 {
			t.Fatalf("%s: %q", f, fields)
		}
		fmt.Sscan(fields[38], &policy)
		n[cpusched.Name(policy)]++
	}
	return n
}

// wantPolicy fails t unless every thread of g runs under want.
func (g *gateway) wantPolicy(t *testing.T, want, when string) {
	t.Helper()
	got := threadPolicies(t, g.cmd.Process.Pid)
	if got[want] == 0 || len(got) != 1 {
		t.Errorf("%s: the gateway's threads run under %v, want all %s", when, got, want)
	}
	t.Logf("%s: %v", when, got)
}

// TestServeCPUSched checks --cpu-sched: by default the gateway keeps the
// policy it was started under; batch and normal put every thread of it
// under that policy, those the runtime starts while serving included; a
// bad value is refused.
func TestServeCPUSched(t *testing.T) {
	chrt := testutil.RequireTool(t, "chrt")
	inherit := newGateway(t, t.TempDir())
	inherit.prefix = []string{chrt, "--batch", "0"}
	inherit.start()
	inherit.wantPolicy(t, "batch", "the defaults under chrt --batch")

	normal := newGateway(t, t.TempDir(), "--cpu-sched", "normal")
	normal.prefix = []string{chrt, "--batch", "0"}
	normal.start()
	normal.wantPolicy(t, "normal", "--cpu-sched normal under chrt --batch")

	g := newGateway(t, t.TempDir())
	g.env = []string{"FERRY_CPU_SCHED=batch"}
	g.start()
	g.wantPolicy(t, "batch", "FERRY_CPU_SCHED=batch")
	g.mustCLI("volume", "create", "v", "--size", "64M")
	// Many requests at once over NBD and iSCSI make the runtime start
	// threads for the system calls they block in.
	run(t, 2*time.Minute, testutil.RequireTool(t, "fio"), "--name=w", "--ioengine=nbd", "--uri="+g.uri("v"),
		"--rw=randwrite", "--bs=64k", "--iodepth=32", "--numjobs=4", "--size=32M", "--group_reporting")
	qemuIOCheck(t, g.iscsiURL("v"), "write -P 0x5a 0 4M", "read -P 0x5a 0 4M")
	g.wantPolicy(t, "batch", "after NBD and iSCSI traffic")
	g.waitLog(t, "CPU scheduling policy set", time.Second)

	out, err := runErr(time.Minute, ferryBin, "serve", "--data", t.TempDir(), "--cpu-sched", "fifo",
		"--api-listen", fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)))
	if err == nil || !strings.Contains(out, "want inherit, normal or batch") {
		t.Errorf("ferry serve --cpu-sched fifo: %v\n%s", err, out)
	}
}
