package acceptance

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
	"github.com/ferry-io/ferry/test/guest"
)

// TestGuestRaceReportsReachTheHost runs a program with a data race, built
// with the race detector, in the test guest, and checks that its report
// reaches the host (guest.RaceReports), which is how guest.Boot fails a
// test whose race-built ferry raced inside a guest (the race long mode in
// docs/TESTING.md): the guest's own logs are read only when a test fails.
func TestGuestRaceReportsReachTheHost(t *testing.T) {
	img := guest.Require(t)
	testutil.RequireTool(t, "gcc") // the race detector needs cgo
	bin := filepath.Join(t.TempDir(), "racy")
	run(t, 5*time.Minute, "go", "build", "-race", "-o", bin, "./testdata/racy")
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	// guest.Start, not guest.Boot: Boot would fail this test for the race
	// it is about.
	vm, err := guest.Start(guest.Config{
		Image: img,
		Dir:   t.TempDir(),
		Files: []guest.File{{Path: "/usr/local/bin/racy", Mode: 0o755, Data: b}},
		Script: `#!/bin/sh
racy >/var/log/racy.log 2>&1
echo "FERRY-GUEST: racy exit $?"
`,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	rc, err := vm.Wait(ctx)
	if err != nil || rc != 0 {
		t.Fatalf("guest: exit %d, %v\n%s", rc, err, tail(vm.Console(), 60))
	}
	console := vm.Console()
	if !strings.Contains(console, guest.Marker+"racy exit 66") { // the race detector's exit status
		t.Errorf("racy did not exit as a program that raced (66):\n%s", tail(console, 60))
	}
	r := vm.RaceReports()
	for _, want := range []string{"WARNING: DATA RACE", "main.main", "== /var/log/ferry-race/r."} {
		if !strings.Contains(r, want) {
			t.Errorf("the guest's race reports lack %q; they are:\n%s\nconsole:\n%s", want, r, tail(console, 60))
		}
	}
	t.Logf("race report from the guest:\n%s", tail(r, 12))
}
