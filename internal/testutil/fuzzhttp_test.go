package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

func TestFuzzRequest(t *testing.T) {
	methods := []string{"GET", "POST"}
	if r, ok := FuzzRequest(methods, 3, "http://h", "/x?y=1", []byte("b")); !ok || r.Method != "POST" || r.URL.Path != "/x" {
		t.Errorf("FuzzRequest: %v %v", r, ok)
	}
	for _, bad := range []string{"x", "%zz", " /"} {
		if _, ok := FuzzRequest(methods, 0, "http://h", bad, nil); ok {
			t.Errorf("FuzzRequest made a request of path %q", bad)
		}
	}
}

func TestStray(t *testing.T) {
	base := t.TempDir()
	state := filepath.Join(base, "a", "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	only := map[string]string{base: "a", filepath.Join(base, "a"): "state"}
	if p, err := Stray(only); p != "" || err != nil {
		t.Errorf("Stray = %q, %v with nothing stray", p, err)
	}
	os.WriteFile(filepath.Join(state, "ok"), nil, 0o600)
	os.WriteFile(filepath.Join(base, "a", "x"), nil, 0o600)
	if p, err := Stray(only); p != filepath.Join(base, "a", "x") || err != nil {
		t.Errorf("Stray = %q, %v, want %s", p, err, filepath.Join(base, "a", "x"))
	}
}
