// Package sdnotify tells systemd about a service's state (sd_notify(3)):
// READY=1 when a Type=notify service is up, STOPPING=1 when it begins to
// stop, STATUS=... for `systemctl status`. Outside systemd ($NOTIFY_SOCKET
// unset) every call does nothing.
package sdnotify

import (
	"errors"
	"net"
	"os"
)

// Notify sends state (e.g. "READY=1\nSTATUS=serving") to the socket
// systemd names in $NOTIFY_SOCKET. It returns false, nil when there is
// none.
func Notify(state string) (bool, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return false, nil
	}
	if path[0] != '/' && path[0] != '@' {
		return false, errors.New("NOTIFY_SOCKET is neither a path nor an abstract socket name")
	}
	addr := &net.UnixAddr{Name: path, Net: "unixgram"}
	if path[0] == '@' {
		addr.Name = "\x00" + path[1:] // the abstract namespace
	}
	c, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return false, err
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return false, err
	}
	return true, nil
}

// Ready reports that the service is up, with a status line.
func Ready(status string) (bool, error) {
	return Notify("READY=1\nSTATUS=" + status)
}

// Stopping reports that the service has begun to stop.
func Stopping(status string) (bool, error) {
	return Notify("STOPPING=1\nSTATUS=" + status)
}
