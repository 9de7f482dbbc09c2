package main

import (
	"os"
	"regexp"
	"testing"

	"github.com/ferry-io/ferry/internal/cliconf"
)

// docs/ferry.yaml is accepted by the config check and names every flag of
// ferry serve, set or commented out, so the sample stays true.
func TestSampleConfigCoversEveryFlag(t *testing.T) {
	const sample = "../../docs/ferry.yaml"
	flags := serveFlags()
	if err := cliconf.CheckFile(sample, flags, "ferry serve"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(sample)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flags {
		name := f.Names()[0]
		if name == "config" {
			continue
		}
		if !regexp.MustCompile(`(?m)^(# )?` + regexp.QuoteMeta(name) + `:`).Match(b) {
			t.Errorf("docs/ferry.yaml does not mention --%s", name)
		}
	}
}
