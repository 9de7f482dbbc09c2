package sdnotify

import (
	"net"
	"path/filepath"
	"testing"
)

func TestNotify(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := Ready("x"); sent || err != nil {
		t.Fatalf("without NOTIFY_SOCKET: sent %v, err %v", sent, err)
	}
	for _, name := range []string{filepath.Join(t.TempDir(), "notify"), "@ferry-sdnotify-test"} {
		laddr := &net.UnixAddr{Name: name, Net: "unixgram"}
		if name[0] == '@' {
			laddr.Name = "\x00" + name[1:]
		}
		l, err := net.ListenUnixgram("unixgram", laddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("NOTIFY_SOCKET", name)
		if sent, err := Ready("serving 3 volumes"); !sent || err != nil {
			t.Fatalf("%s: sent %v, err %v", name, sent, err)
		}
		buf := make([]byte, 256)
		n, _, err := l.ReadFromUnix(buf)
		if err != nil || string(buf[:n]) != "READY=1\nSTATUS=serving 3 volumes" {
			t.Fatalf("%s: got %q, %v", name, buf[:n], err)
		}
		l.Close()
	}
	t.Setenv("NOTIFY_SOCKET", "relative")
	if _, err := Ready("x"); err == nil {
		t.Error("a relative NOTIFY_SOCKET accepted")
	}
}
