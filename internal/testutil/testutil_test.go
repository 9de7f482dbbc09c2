package testutil

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// FreePort's ports are distinct, below the kernel's ephemeral range, and
// reserved against other processes until the test's cleanup.
func TestFreePort(t *testing.T) {
	ephemeral := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		ephemeral, _ = strconv.Atoi(strings.Fields(string(b))[0])
	}
	seen := map[int]bool{}
	var held int
	t.Run("reserve", func(t *testing.T) {
		for range 20 {
			p := FreePort(t)
			if p >= ephemeral || p < 1024 {
				t.Fatalf("port %d: not below the ephemeral range (from %d)", p, ephemeral)
			}
			if seen[p] {
				t.Fatalf("port %d returned twice", p)
			}
			seen[p] = true
			held = p
		}
		// A second test binary's flock would come through a new open
		// file description, as this one does.
		if lockedByOther(t, held) == nil {
			t.Fatalf("port %d not reserved while its test runs", held)
		}
	})
	if err := lockedByOther(t, held); err != nil {
		t.Fatalf("port %d still reserved after its test ended: %v", held, err)
	}
}

// A port some other program listens on, or another process has reserved,
// is passed over.
func TestPickPortSkipsTaken(t *testing.T) {
	lo, hi := portRange()
	base := lo
	for ; base+3 <= hi && !(free(t, base) && free(t, base+1) && free(t, base+2)); base++ {
	}
	if base+3 > hi {
		t.Skip("no three adjacent free ports")
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(base)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, ok := reservePort(t, base+1)
	if !ok {
		t.Fatalf("port %d: reserved by someone else meanwhile", base+1)
	}
	defer f.Close()
	if p := pickPort(t, base, base+3, base); p != base+2 {
		t.Fatalf("picked %d; want %d (%d is listened on, %d reserved)", p, base+2, base, base+1)
	}
}

// free reports whether port is neither reserved nor listened on.
func free(t *testing.T, port int) bool {
	f, ok := reservePort(t, port)
	if !ok {
		return false
	}
	defer f.Close()
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// lockedByOther tries to take port's lock through a new open file
// description and releases it at once; nil means it was free.
func lockedByOther(t *testing.T, port int) error {
	t.Helper()
	f, err := os.Open(filepath.Join(os.TempDir(), "ferry-test-ports", strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
}
