// Package buildinfo says which Ferry this is: the version, the commit it
// was built from and the Go toolchain, read from the binary's build
// information (go build stamps the module version and the VCS revision).
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Version overrides the version read from the build information when set
// at link time: -ldflags "-X github.com/ferry-io/ferry/internal/buildinfo.Version=v1.2.3".
var Version = ""

// Info describes a build.
type Info struct {
	// Version is the release version, or the module's pseudo-version when
	// built from a checkout, or "dev" when unknown (go run, go test).
	Version string `json:"version"`
	// Commit is the VCS revision, empty when unknown.
	Commit string `json:"commit,omitempty"`
	// Modified is set when the work tree had uncommitted changes.
	Modified bool `json:"modified,omitempty"`
	// GoVersion is the Go toolchain that built the binary.
	GoVersion string `json:"go_version"`
}

// Read returns this binary's build information.
func Read() Info {
	in := Info{Version: "dev", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if ok {
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			in.Version = v
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				in.Commit = s.Value
			case "vcs.modified":
				in.Modified = s.Value == "true"
			}
		}
	}
	if Version != "" {
		in.Version = Version
	}
	return in
}

// String is the one-line form `ferry version` prints.
func (in Info) String() string {
	s := "ferry " + in.Version
	if in.Commit != "" {
		s += " (commit " + in.Commit
		if in.Modified {
			s += ", modified"
		}
		s += ")"
	}
	return s + " " + in.GoVersion
}
