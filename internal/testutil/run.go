package testutil

import (
	"context"
	"fmt"
	"os/exec"
	"time"
)

// CombinedOutput runs a program for at most timeout and returns what it
// wrote to its standard output and error. A program still running at the
// limit is killed, and the error says it timed out.
func CombinedOutput(timeout time.Duration, name string, args ...string) (string, error) {
	return runLimited(timeout, (*exec.Cmd).CombinedOutput, name, args...)
}

// Output is CombinedOutput with the program's standard output alone (for
// programs that print a banner on standard error, like debugfs).
func Output(timeout time.Duration, name string, args ...string) (string, error) {
	return runLimited(timeout, (*exec.Cmd).Output, name, args...)
}

func runLimited(timeout time.Duration, output func(*exec.Cmd) ([]byte, error), name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// A child that inherited the output cannot hold it past the kill.
	cmd.WaitDelay = 10 * time.Second
	out, err := output(cmd)
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%s timed out after %v", name, timeout)
	}
	return string(out), err
}
