package client_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The client links no backend and none of the gateway: only the standard
// library, the wire types and the JSON call it shares with ferry-kvm's
// client (internal/jsonapi, itself stdlib and wire only), so the Docker
// plugin and ferry-kvm stay small and independent of the storage code.
func TestImportsOnlyWire(t *testing.T) {
	for _, pkg := range []string{".", "../wire"} {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			switch dep {
			case "github.com/ferry-io/ferry/gateway/api/client", "github.com/ferry-io/ferry/gateway/api/wire",
				"github.com/ferry-io/ferry/internal/jsonapi":
			default:
				t.Errorf("%s depends on %s", pkg, dep)
			}
		}
	}
}
