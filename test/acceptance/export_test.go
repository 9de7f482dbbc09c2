package acceptance

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// ttyCLI runs `ferry ARGS` against this gateway under a pseudo-terminal
// (util-linux script), so the CLI sees a terminal on stdout and stderr.
// It returns what the terminal showed, both streams together.
func (g *gateway) ttyCLI(args ...string) cliResult {
	g.t.Helper()
	script := testutil.RequireTool(g.t, "script")
	quoted := []string{shellQuote(ferryBin)}
	for _, a := range args {
		quoted = append(quoted, shellQuote(a))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, "-qec", strings.Join(quoted, " "), "/dev/null")
	cmd.Env = append(os.Environ(), "FERRY_API="+g.apiAddr, "SHELL=/bin/sh")
	var o bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &o
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		g.t.Fatalf("script ferry %v: %v", args, err)
	}
	return cliResult{stdout: o.String(), code: code}
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// ferry volume export shows bytes, percent and rate on a terminal, and
// nothing on stderr when stderr is not a terminal or with --progress=false;
// the image equals the volume every time.
func TestExportProgress(t *testing.T) {
	qemuIO := testutil.RequireTool(t, "qemu-io")
	nbdcopy := testutil.RequireTool(t, "nbdcopy")
	srv := s3Env(t, "ferry-progress")
	g := startGateway(t, "--checkpoint-interval", "1h")
	g.mustCLI("store", "add", "cloud", "--endpoint", srv.Endpoint, "--bucket", "ferry-progress")
	g.mustCLI("volume", "create", "p", "--size", "256M", "--store", "cloud", "--chunk-size", "1M")
	run(t, time.Minute, qemuIO, "-f", "raw", "-c", "write -P 0x5a 0 64M", "-c", "write -P 0xa5 200M 1536k", "-c", "flush", g.uri("p"))
	g.mustCLI("volume", "checkpoint", "p")
	dir := t.TempDir()
	live := filepath.Join(dir, "live.img")
	run(t, 5*time.Minute, nbdcopy, g.uri("p"), live)

	// Under a terminal: a progress line, ending at the 66 MiB the chunks hold.
	img := filepath.Join(dir, "tty.img")
	r := g.ttyCLI("volume", "export", "p", "--from-s3", "--to", img)
	if r.code != 0 {
		t.Fatalf("export under a terminal: exit %d\n%s", r.code, r.stdout)
	}
	if !strings.Contains(r.stdout, "\rexport p: 66.0 MiB / 66.0 MiB  100%") || !strings.Contains(r.stdout, "MiB/s") {
		t.Errorf("no progress line on the terminal:\n%q", r.stdout)
	}
	if !strings.Contains(r.stdout, "exported p recovery point") {
		t.Errorf("no summary on the terminal:\n%q", r.stdout)
	}
	run(t, time.Minute, "cmp", img, live)

	// Not a terminal: stderr stays empty.
	img = filepath.Join(dir, "pipe.img")
	r = g.cli("volume", "export", "p", "--from-s3", "--to", img)
	if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, "exported p") {
		t.Errorf("export to a pipe: exit %d\nstdout: %q\nstderr: %q", r.code, r.stdout, r.stderr)
	}
	run(t, time.Minute, "cmp", img, live)

	// --progress=false under a terminal: only the summary.
	img = filepath.Join(dir, "quiet.img")
	r = g.ttyCLI("volume", "export", "p", "--from-s3", "--to", img, "--progress=false")
	if r.code != 0 || strings.Contains(r.stdout, "export p:") || strings.Contains(r.stdout, "/s") || strings.Contains(r.stdout, "%") ||
		!strings.Contains(r.stdout, "exported p") {
		t.Errorf("export --progress=false under a terminal: exit %d\n%q", r.code, r.stdout)
	}
	run(t, time.Minute, "cmp", img, live)
}

// Exporting a local volume says to copy it over NBD, with both commands
// and the volume's actual NBD URL.
func TestExportLocalVolume(t *testing.T) {
	g := startGateway(t)
	g.mustCLI("volume", "create", "loc", "--size", "16M")
	img := filepath.Join(t.TempDir(), "loc.img")
	r := g.cli("volume", "export", "loc", "--from-s3", "--to", img)
	if r.code == 0 {
		t.Fatalf("export of a local volume succeeded: %s", r.stdout)
	}
	u := g.uri("loc") // the gateway's own NBD address, as volume info reports it
	for _, want := range []string{"local", "nbdcopy " + u + " " + img, "qemu-img convert -O raw " + u + " " + img} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr does not say %q:\n%s", want, r.stderr)
		}
	}
	if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n > 1 {
		t.Errorf("%d lines of advice, want at most 2:\n%s", n+1, r.stderr)
	}
	if _, err := os.Stat(img); err == nil {
		t.Error("the failed export left a file")
	}
	if r := g.cli("volume", "export", "ghost", "--from-s3", "--to", img); r.code == 0 || !strings.Contains(r.stderr, `"ghost": not found`) {
		t.Errorf("export of a missing volume: exit %d %q", r.code, r.stderr)
	}
}
