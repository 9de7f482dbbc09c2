package acceptance

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/internal/testutil"
)

// ferryOnPath runs name with the built ferry first on PATH, as a user's
// shell finds it, and returns its combined output.
func ferryOnPath(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(ferryBin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// The bash script registers a completion for ferry whose candidates come
// from the binary: commands, aliases, subcommands, flags and shells.
func TestCompletionBash(t *testing.T) {
	bash := testutil.RequireTool(t, "bash")
	out, err := ferryOnPath(t, bash, "-c", `source <(ferry completion bash) && complete -p ferry`)
	if err != nil || !strings.Contains(out, "-F _ferry_complete ferry") {
		t.Fatalf("source <(ferry completion bash): %v\n%s", err, out)
	}
	const drive = `source <(ferry completion bash) || exit 1
complete_words() {
  COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=()
  _ferry_complete
  echo "$*|${COMPREPLY[*]}"
}
complete_words ferry vol
complete_words ferry volume ''
complete_words ferry volume cr
complete_words ferry volume create vm1 --si
complete_words ferry volume export vm1 --pro
complete_words ferry completion ''
`
	out, err = ferryOnPath(t, bash, "-c", drive)
	if err != nil {
		t.Fatalf("driving the completion: %v\n%s", err, out)
	}
	got := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		words, reply, _ := strings.Cut(line, "|")
		got[words] = strings.Fields(reply)
	}
	for words, want := range map[string][]string{
		"ferry vol":                     {"volume"},
		"ferry volume ":                 {"create", "ls", "info", "resize", "rm", "checkpoint", "export"},
		"ferry volume cr":               {"create"},
		"ferry volume create vm1 --si":  {"--size"},
		"ferry volume export vm1 --pro": {"--progress"},
		"ferry completion ":             {"bash", "zsh", "fish"},
	} {
		for _, w := range want {
			if !slices.Contains(got[words], w) {
				t.Errorf("completing %q: %q, want %q among them\n%s", words, got[words], w, out)
			}
		}
	}
	if r := got["ferry volume cr"]; len(r) != 1 {
		t.Errorf("completing \"ferry volume cr\": %q, want only create", r)
	}
}

// zsh and fish scripts are printed, and parse when the shell is installed.
func TestCompletionZshFish(t *testing.T) {
	for _, c := range []struct{ shell, marker string }{
		{"zsh", "compdef _ferry ferry"},
		{"fish", "complete -c ferry"},
	} {
		out, err := ferryOnPath(t, ferryBin, "completion", c.shell)
		if err != nil || !strings.Contains(out, c.marker) {
			t.Errorf("ferry completion %s: %v\n%s", c.shell, err, out)
			continue
		}
		sh, err := exec.LookPath(c.shell)
		if err != nil {
			t.Logf("%s is not installed: its script's syntax is not checked", c.shell)
			continue
		}
		script := filepath.Join(t.TempDir(), "ferry."+c.shell)
		if err := os.WriteFile(script, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := runErr(time.Minute, sh, "-n", script); err != nil {
			t.Errorf("%s -n on the script: %v\n%s", c.shell, err, out)
		}
	}
}

func TestCompletionUnknownShell(t *testing.T) {
	for _, args := range [][]string{{"completion", "tcsh"}, {"completion"}} {
		out, err := ferryOnPath(t, ferryBin, args...)
		if err == nil || !strings.Contains(out, "bash, zsh or fish") {
			t.Errorf("ferry %v: %v\n%s", args, err, out)
		}
	}
}
