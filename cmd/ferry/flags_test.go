package main

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"512": 512, "512M": 512 << 20, "10G": 10 << 30, "10GiB": 10 << 30, "10gb": 10 << 30,
		"1T": 1 << 40, "1.5G": 3 << 29, "4k": 4096, "4KiB": 4096, " 2M ": 2 << 20, "8EiB": -1,
	}
	for in, want := range good {
		got, err := parseSize(in)
		if want == -1 {
			if err == nil {
				t.Errorf("parseSize(%q) = %d, want overflow error", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "10X", "-1G", "abc", "1.3", "10 G B", "1e400"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want error", in, got)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for in, want := range map[int64]string{0: "0 B", 512: "512 B", 1 << 30: "1 GiB", 3 << 29: "1.5 GiB"} {
		if got := formatSize(in); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", in, got, want)
		}
	}
}

func TestInterspersed(t *testing.T) {
	app := newApp()
	for _, tc := range []struct{ in, want string }{
		{"ferry volume create vm1 --size 20G", "ferry volume create --size 20G vm1"},
		{"ferry volume create vm1 --size=20G --json", "ferry volume create --size=20G --json vm1"},
		{"ferry volume rm vm1 --force", "ferry volume rm --force vm1"},
		{"ferry volume rm -- --force", "ferry volume rm -- --force"},
		{"ferry volume info vm1", "ferry volume info vm1"},
		{"ferry", "ferry"},
		{"ferry volume rm vm1 --generate-bash-completion", "ferry volume rm vm1 --generate-bash-completion"},
		{"ferry volume create vm1 --si --generate-bash-completion", "ferry volume create --si vm1 --generate-bash-completion"},
	} {
		got := strings.Join(interspersed(app, strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("interspersed(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
