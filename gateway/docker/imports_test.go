package docker_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The plugin reaches the gateway only through the API client: it links no
// backend and not the volume manager.
func TestImportsNoBackend(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "github.com/ferry-io/ferry/backends/") ||
			dep == "github.com/ferry-io/ferry/gateway/volume" ||
			dep == "github.com/ferry-io/ferry/gateway/nbd" ||
			dep == "github.com/ferry-io/ferry/gateway/iscsi" ||
			dep == "github.com/ferry-io/ferry/gateway/api" {
			t.Errorf("gateway/docker depends on %s", dep)
		}
	}
}
