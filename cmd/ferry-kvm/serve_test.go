package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	gwclient "github.com/ferry-io/ferry/gateway/api/client"
)

func TestCheckDurations(t *testing.T) {
	for _, c := range []struct {
		reconnect, stop time.Duration
		want            string
	}{
		{60 * time.Second, 60 * time.Second, ""},
		{time.Second, time.Millisecond, ""},
		{0, time.Minute, "--reconnect-delay 0s: give whole seconds"},
		{-5 * time.Second, time.Minute, "--reconnect-delay -5s"},
		{1500 * time.Millisecond, time.Minute, "--reconnect-delay 1.5s"},
		{time.Minute, 0, "--stop-timeout 0s"},
		{time.Minute, -time.Second, "--stop-timeout -1s"},
	} {
		err := checkDurations(c.reconnect, c.stop)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("checkDurations(%s, %s) = %v, want %q", c.reconnect, c.stop, err, c.want)
		}
	}
}

// At start the daemon warns about what would make every VM start fail,
// and says nothing when all is there.
func TestWarnMissing(t *testing.T) {
	status := http.StatusOK
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		if status == http.StatusOK {
			w.Write([]byte(`{}`))
			return
		}
		w.Write([]byte(`{"error":"token missing","code":"unauthenticated"}`))
	}))
	defer gw.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	for _, c := range []struct {
		qemu, gateway string
		status        int
		want          []string
	}{
		{"sh", gw.URL, http.StatusOK, nil},
		{"/nonexistent/qemu", gw.URL, http.StatusOK, []string{"QEMU not found"}},
		{"sh", closed.URL, http.StatusOK, []string{"the gateway does not answer"}},
		{"sh", gw.URL, http.StatusUnauthorized, []string{"the gateway refuses this daemon's token"}},
		{"/nonexistent/qemu", closed.URL, http.StatusOK, []string{"QEMU not found", "the gateway does not answer"}},
	} {
		status = c.status
		var buf bytes.Buffer
		warnMissing(context.Background(), slog.New(slog.NewTextHandler(&buf, nil)), c.qemu, c.gateway, gwclient.New(c.gateway))
		if got := strings.Count(buf.String(), "level=WARN"); got != len(c.want) {
			t.Errorf("qemu %s, gateway %s (%d): %d warnings, want %d:\n%s", c.qemu, c.gateway, c.status, got, len(c.want), buf.String())
		}
		for _, w := range c.want {
			if !strings.Contains(buf.String(), w) {
				t.Errorf("qemu %s, gateway %s (%d): no %q in\n%s", c.qemu, c.gateway, c.status, w, buf.String())
			}
		}
	}
}
