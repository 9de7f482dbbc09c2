package kvm

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/ferry-io/ferry/internal/procstat"
)

// procStart returns a process's start time (clock ticks since boot, field
// 22 of /proc/PID/stat) and whether it is alive (exists and is not a
// zombie).
func procStart(pid int) (uint64, bool) {
	if pid <= 0 {
		return 0, false
	}
	f, err := procstat.Of(pid)
	if err != nil {
		return 0, false
	}
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0, false
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, false
	}
	return st, true
}

// alive says the process pid started at start still runs.
func alive(pid int, start uint64) bool {
	st, ok := procStart(pid)
	return ok && (start == 0 || st == start)
}

// hostMemory returns MemTotal from /proc/meminfo in bytes.
func hostMemory() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fs := strings.Fields(s.Text())
		if len(fs) >= 2 && fs[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(fs[1], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no MemTotal in /proc/meminfo")
}

// tailLines returns the last n lines of a file.
func tailLines(path string, n int) string {
	b := tailBytes(path, 16<<10)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}

// tailBytes returns up to the last n bytes of a file.
func tailBytes(path string, n int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	off := max(fi.Size()-n, 0)
	b, _ := io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	return b
}
