package testutil

import (
	"strings"
	"testing"
	"time"
)

func TestRunLimited(t *testing.T) {
	out, err := CombinedOutput(time.Minute, "sh", "-c", "echo out; echo err >&2")
	if err != nil || out != "out\nerr\n" {
		t.Errorf("CombinedOutput = %q, %v; want both streams", out, err)
	}
	out, err = Output(time.Minute, "sh", "-c", "echo out; echo err >&2")
	if err != nil || out != "out\n" {
		t.Errorf("Output = %q, %v; want standard output alone", out, err)
	}
	if _, err := CombinedOutput(time.Minute, "sh", "-c", "exit 3"); err == nil {
		t.Error("a failing program returned no error")
	}
	_, err = CombinedOutput(200*time.Millisecond, "sleep", "600")
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("a program past its limit: %v; want a time-out error", err)
	}
}
