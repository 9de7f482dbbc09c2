package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ferry-io/ferry/gateway/volume"
)

type fakeAccess map[string]volume.Access

func (f fakeAccess) Access(_ context.Context, name string) (volume.Access, error) {
	return f[name], nil
}

// Off loopback, iSCSI requires CHAP: a volume without its own, with no
// gateway default, is refused unless it opted out.
func TestISCSIRequiresCHAPOffLoopback(t *testing.T) {
	vols := fakeAccess{
		"open":   {},
		"chap":   {CHAPUser: "u", CHAPSecret: "secret-secret-1"},
		"optout": {ISCSIWithoutCHAP: true},
	}
	ctx := context.Background()
	for _, c := range []struct {
		vol      string
		def      volume.Access
		needCHAP bool
		refused  bool
	}{
		{"open", volume.Access{}, false, false},
		{"open", volume.Access{}, true, true},
		{"chap", volume.Access{}, true, false},
		{"optout", volume.Access{}, true, false},
		{"open", volume.Access{CHAPUser: "d", CHAPSecret: "default-secret-1"}, true, false},
	} {
		a, err := volumeAccess(ctx, vols, c.vol, c.def, c.needCHAP)
		if c.refused {
			if !errors.Is(err, volume.ErrDenied) || !strings.Contains(err.Error(), "--iscsi-without-chap") {
				t.Errorf("%s (needCHAP %v): %v; want a refusal that names the way out", c.vol, c.needCHAP, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s (needCHAP %v): %v", c.vol, c.needCHAP, err)
		}
		if c.def.CHAPUser != "" && a.CHAPUser != c.def.CHAPUser {
			t.Errorf("%s: the gateway default CHAP was not applied", c.vol)
		}
	}
}
