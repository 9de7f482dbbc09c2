package client_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The client links no backend and none of the gateway: only the standard
// library and the wire types, so the Docker plugin and ferry-kvm stay
// small and independent of the storage code.
func TestImportsOnlyWire(t *testing.T) {
	for _, pkg := range []string{".", "../wire"} {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			switch dep {
			case "github.com/ferry-io/ferry/gateway/api/client", "github.com/ferry-io/ferry/gateway/api/wire":
			default:
				t.Errorf("%s depends on %s", pkg, dep)
			}
		}
	}
}
