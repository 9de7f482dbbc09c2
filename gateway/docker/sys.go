package docker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-io/ferry/internal/procstat"
)

// run runs a program and returns its trimmed stdout; the error carries
// stderr.
func run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return strings.TrimSpace(out.String()), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	Point  string
	FSType string
	Source string
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// readMounts parses /proc/self/mountinfo.
func readMounts() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+2 >= len(fields) {
			continue
		}
		out = append(out, mountEntry{Point: unescapeMount(fields[4]), FSType: fields[sep+1], Source: unescapeMount(fields[sep+2])})
	}
	return out, sc.Err()
}

// loopDevice is one attached loop device and its backing file.
type loopDevice struct {
	Name     string `json:"name"`
	BackFile string `json:"back-file"`
}

// listLoops runs `losetup -J -l` (util-linux).
func listLoops(ctx context.Context) ([]loopDevice, error) {
	out, err := run(ctx, "losetup", "-J", "-l", "-O", "NAME,BACK-FILE")
	if err != nil {
		return nil, err
	}
	if out == "" {
		return nil, nil
	}
	var v struct {
		Loopdevices []loopDevice `json:"loopdevices"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, fmt.Errorf("parse losetup -J: %w", err)
	}
	for i := range v.Loopdevices {
		// losetup appends " (deleted)" when the file is gone.
		v.Loopdevices[i].BackFile = strings.TrimSuffix(v.Loopdevices[i].BackFile, " (deleted)")
	}
	return v.Loopdevices, nil
}

// fsType probes dev for a file system: "" when there is none.
func fsType(ctx context.Context, dev string) (string, error) {
	cmd := exec.CommandContext(ctx, "blkid", "-p", "-o", "value", "-s", "TYPE", dev)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 {
		return "", nil // nothing found
	}
	if err != nil {
		return "", fmt.Errorf("blkid -p %s: %w: %s (an ambivalent probe is not formatted over)", dev, err, strings.TrimSpace(errb.String()))
	}
	t := strings.TrimSpace(out.String())
	if t == "" {
		// A signature that is not a file system (a partition table...).
		return "", fmt.Errorf("blkid -p %s found a signature that is not a file system; not formatting over it", dev)
	}
	return t, nil
}

// procStart returns a process's start time (clock ticks since boot), which
// with its pid names it unambiguously; 0 when it does not exist.
func procStart(pid int) uint64 {
	fields, err := procstat.Of(pid)
	if err != nil {
		return 0
	}
	// fields[0] is field 3 (state); starttime is field 22.
	if len(fields) < 20 || fields[0] == "Z" {
		return 0
	}
	n, _ := strconv.ParseUint(fields[19], 10, 64)
	return n
}

// unmount unmounts path, lazily when it is busy or its server is gone.
func unmount(path string) error {
	err := syscall.Unmount(path, 0)
	if err == nil || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOENT) {
		return nil // not mounted
	}
	if err2 := syscall.Unmount(path, syscall.MNT_DETACH); err2 != nil {
		return fmt.Errorf("unmount %s: %v; lazily: %w", path, err, err2)
	}
	return nil
}
