//go:build !linux

package progress

import "os"

// IsTerminal reports whether f is a terminal. Ferry runs on Linux; on other
// systems progress is never drawn.
func IsTerminal(f *os.File) bool { return false }
