package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// fakeQEMU serves one QMP client on a unix socket: a greeting, then
// replies from answer; it emits an event before each reply.
func fakeQEMU(t *testing.T, answer func(cmd string) string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(`{"QMP": {"version": {}, "capabilities": []}}` + "\n"))
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			var req struct {
				Execute string `json:"execute"`
			}
			json.Unmarshal(line, &req)
			c.Write([]byte(`{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}` + "\n"))
			a := answer(req.Execute)
			if a == "" {
				return // hang up, like an exiting QEMU
			}
			c.Write([]byte(a + "\n"))
		}
	}()
	return path
}

func TestExecuteReturnErrorEventsAndClose(t *testing.T) {
	path := fakeQEMU(t, func(cmd string) string {
		switch cmd {
		case "qmp_capabilities":
			return `{"return": {}}`
		case "query-status":
			return `{"return": {"status": "running", "running": true}}`
		case "bad":
			return `{"error": {"class": "CommandNotFound", "desc": "The command bad has not been found"}}`
		}
		return ""
	})
	events := make(chan string, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, path, func(e Event) { events <- e.Event })
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := c.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "running" {
		t.Fatalf("query-status: %+v %v", st, err)
	}
	err = c.Execute(ctx, "bad", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("bad command: %v", err)
	}
	if e := <-events; e != "STOP" {
		t.Fatalf("event %q", e)
	}
	if err := c.Execute(ctx, "quit", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("command when QEMU hangs up: %v, want ErrClosed", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the peer hung up")
	}
}

func TestDialRefusesNonQMP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, _ := l.Accept()
		if c != nil {
			c.Write([]byte("hello\n"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := Dial(ctx, path, nil); err == nil {
		t.Fatal("Dial accepted a non-QMP greeting")
	}
}
