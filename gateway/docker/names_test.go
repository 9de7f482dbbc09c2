package docker

import (
	"fmt"
	"strings"
	"testing"
)

func TestGatewayName(t *testing.T) {
	long := strings.Repeat("a", 63)
	for _, tc := range []struct{ in, want string }{
		{"v1", "v1"},
		{"pg.data-2", "pg.data-2"},
		{long, long},
	} {
		got, err := GatewayName(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("GatewayName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	// Every Docker name maps to a valid gateway name, deterministically,
	// and different names to different gateway names.
	seen := map[string]string{}
	names := []string{"Data", "data", "DATA", "data_1", "data-1", "Data_1", "x", "X", "0", "a.b_c-D",
		long + "a", long + "b", strings.Repeat("Z", 200), strings.Repeat("_", 1) + "a"[:0] + "q_", "A_"}
	for i := 0; i < 200; i++ {
		names = append(names, fmt.Sprintf("Vol_%d", i), fmt.Sprintf("vol_%d", i))
	}
	for _, n := range names {
		if !dockerNameRE.MatchString(n) {
			continue
		}
		g, err := GatewayName(n)
		if err != nil {
			t.Fatalf("%q: %v", n, err)
		}
		if !gatewayNameRE.MatchString(g) {
			t.Fatalf("%q maps to invalid gateway name %q", n, g)
		}
		if g2, _ := GatewayName(n); g2 != g {
			t.Fatalf("%q maps to %q and %q", n, g, g2)
		}
		if other, ok := seen[g]; ok && other != n {
			t.Fatalf("%q and %q both map to %q", n, other, g)
		}
		seen[g] = n
	}
	for _, bad := range []string{"", "_a", "-a", ".a", "a/b", "a b", "a:b", "é"} {
		if _, err := GatewayName(bad); err == nil {
			t.Errorf("GatewayName(%q) accepted", bad)
		}
	}
}

func FuzzGatewayName(f *testing.F) {
	f.Add("Data_1")
	f.Add("v1")
	f.Fuzz(func(t *testing.T, n string) {
		g, err := GatewayName(n)
		if dockerNameRE.MatchString(n) != (err == nil) {
			t.Fatalf("%q: err %v", n, err)
		}
		if err == nil && !gatewayNameRE.MatchString(g) {
			t.Fatalf("%q -> invalid %q", n, g)
		}
	})
}

func TestParseOptions(t *testing.T) {
	o, err := ParseOptions(nil)
	if err != nil || o.Size != DefaultSize || o.FSType != "ext4" || o.ReadOnly || o.SizeSet {
		t.Fatalf("defaults: %+v %v", o, err)
	}
	o, err = ParseOptions(map[string]string{"size": "1G", "store": "cloud", "fstype": "xfs", "readonly": "true"})
	if err != nil || o.Size != 1<<30 || !o.SizeSet || o.Store != "cloud" || o.FSType != "xfs" || !o.ReadOnly {
		t.Fatalf("all set: %+v %v", o, err)
	}
	if o, err := ParseOptions(map[string]string{"from": "db@nightly"}); err != nil || o.From != "db@nightly" {
		t.Fatalf("from: %+v %v", o, err)
	}
	for _, tc := range []struct {
		opts map[string]string
		want string
	}{
		{map[string]string{"sise": "1G"}, `unknown option "sise"`},
		{map[string]string{"size": "lots"}, "option size"},
		{map[string]string{"size": "0"}, "option size"},
		{map[string]string{"size": "1M"}, "at least 16M"},
		{map[string]string{"fstype": "btrfs"}, "ext4 or xfs"},
		{map[string]string{"readonly": "maybe"}, "true or false"},
		{map[string]string{"store": ""}, "store is empty"},
		{map[string]string{"fstype": "xfs", "size": "100M"}, "300M"},
		{map[string]string{"from": "vm1"}, "VOLUME@SNAPSHOT"},
		{map[string]string{"from": "vm1@s", "size": "1G"}, "leave out size and store"},
	} {
		_, err := ParseOptions(tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error containing %q", tc.opts, err, tc.want)
		}
	}
}
