// Package bootid reads the running kernel's boot id, which changes on
// every boot: two processes that read the same one run on the same
// kernel, and state written under another one predates a reboot.
package bootid

import (
	"os"
	"strings"
)

// Get returns the kernel's boot id (/proc/sys/kernel/random/boot_id), or
// "" where the kernel does not expose one.
func Get() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
