package docker

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
)

var (
	// dockerNameRE is what Docker accepts as a volume name.
	dockerNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)
	// gatewayNameRE is what the gateway accepts (gateway/volume/names.go).
	gatewayNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)
)

// GatewayName maps a Docker volume name to the gateway volume that holds
// it, the same way on every host. A Docker name that is already a valid
// gateway name maps to itself (so `ferry volume ls` shows it as is, and a
// volume made with `ferry volume create` can be used by that name); any
// other gets "d-", a readable lowercased part and 10 hex digits of the
// SHA-256 of the exact Docker name, so "Data", "data_1" and "DATA" all map
// to different gateway names. The plugin's state file keeps the mapping
// both ways, and refuses a Docker name whose gateway name another Docker
// name already uses.
func GatewayName(docker string) (string, error) {
	if !dockerNameRE.MatchString(docker) {
		return "", fmt.Errorf("%q is not a Docker volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)", docker)
	}
	if gatewayNameRE.MatchString(docker) {
		return docker, nil
	}
	var b strings.Builder
	for _, r := range strings.ToLower(docker) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	readable := b.String()
	if len(readable) > 40 {
		readable = readable[:40]
	}
	sum := sha256.Sum256([]byte(docker))
	name := "d-" + readable + "-" + hex.EncodeToString(sum[:])[:10]
	if !gatewayNameRE.MatchString(name) {
		return "", fmt.Errorf("internal error: mapped %q to invalid gateway name %q", docker, name)
	}
	return name, nil
}
