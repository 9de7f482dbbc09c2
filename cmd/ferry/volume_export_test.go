package main

import (
	"testing"

	"github.com/ferry-io/ferry/backends/tier"
)

func TestManifestBytes(t *testing.T) {
	m := tier.Manifest{
		Size:      10<<20 + 512, // the last chunk holds 512 bytes
		ChunkSize: 1 << 20,
		Chunks:    map[string]string{"0": "a", "3": "b", "10": "c"},
		Overlays:  map[string][]tier.Overlay{"3": nil, "4": nil, "99": nil, "x": nil},
	}
	// Chunks 0, 3 and 4 whole, chunk 10 clipped; 99 and x are not in the volume.
	if got, want := manifestBytes(m), int64(3<<20+512); got != want {
		t.Errorf("manifestBytes = %d, want %d", got, want)
	}
	if got := manifestBytes(tier.Manifest{Size: 1 << 20}); got != 0 {
		t.Errorf("empty manifest: %d bytes", got)
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"vm1.img":        "vm1.img",
		"/tmp/a-b_c.img": "/tmp/a-b_c.img",
		"my disk.img":    "'my disk.img'",
		"it's":           `'it'\''s'`,
		"":               "''",
		"$HOME/x":        "'$HOME/x'",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}
