package acceptance

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSystemdNotify: under systemd (Type=notify, $NOTIFY_SOCKET) the
// gateway reports READY=1 once it serves, and STOPPING=1 when SIGTERM
// starts its drain; appliance/systemd/ferry.service relies on both.
func TestSystemdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	g := newGateway(t, t.TempDir())
	g.env = []string{"NOTIFY_SOCKET=" + sock}
	g.start()
	recv := func() string {
		t.Helper()
		l.SetReadDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 4096)
		n, _, err := l.ReadFromUnix(buf)
		if err != nil {
			t.Fatalf("no notification from the gateway: %v", err)
		}
		return string(buf[:n])
	}
	if msg := recv(); !strings.Contains(msg, "READY=1") || !strings.Contains(msg, "STATUS=serving 0 volumes") {
		t.Fatalf("first notification %q, want READY=1 with a status", msg)
	}
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	if msg := recv(); !strings.Contains(msg, "STOPPING=1") {
		t.Fatalf("notification at SIGTERM %q, want STOPPING=1", msg)
	}
}
