// Package procstat reads the stat files of Linux's /proc
// (/proc/PID/stat, /proc/PID/task/TID/stat).
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"strings"
)

// Read returns the fields of a stat file that follow the command name:
// Read(...)[0] is field 3 of proc(5) (the state), [19] field 22 (the
// start time), [38] field 41 (the scheduling policy). The command name
// may hold spaces and parentheses, so the fields are counted from its
// last ")".
func Read(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("%s: no command name in %q", path, b)
	}
	return strings.Fields(string(b[i+1:])), nil
}

// Of returns Read's fields for process pid.
func Of(pid int) ([]string, error) {
	return Read(fmt.Sprintf("/proc/%d/stat", pid))
}
