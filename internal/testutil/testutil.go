// Package testutil holds helpers shared by Ferry's tests: finding the real
// client programs acceptance tests drive, and picking loopback ports.
package testutil

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// RequireEnv is set (to 1) by CI: a test that needs an external program
// fails instead of skipping when the program is missing.
const RequireEnv = "FERRY_TEST_REQUIRE_TOOLS"

// RequireTool returns the path of the named program. When it is missing the
// test is skipped, or failed when FERRY_TEST_REQUIRE_TOOLS=1.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("required program %q not found (install the test dependencies: scripts/install-test-deps)", name)
	}
	t.Skipf("program %q not found; set %s=1 to make this a failure", name, RequireEnv)
	return ""
}

// Missing ends a test that needs what this machine lacks (root, a
// device): it fails with why when FERRY_TEST_REQUIRE_TOOLS=1 (CI), and is
// skipped otherwise.
func Missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// FreePort returns a TCP port on 127.0.0.1 that is free and reserved for
// t until its cleanup, across every process on the machine that asks this
// function.
//
// A port the kernel picks (binding port 0) would not do: it comes from the
// ephemeral range, which the kernel also hands out for outgoing connections
// and to every other program's port-0 binds, so between this call and the
// bind of the server it was picked for, a client's connection or another
// test package's server could take it. The ports here come from just below
// that range (net.ipv4.ip_local_port_range), which the kernel never hands
// out by itself, and each is reserved by an exclusive flock(2) on a file
// named after it, which other test processes respect and the kernel drops
// if this process dies (the empty lock files stay in
// $TMPDIR/ferry-test-ports: removing one could let two processes lock
// different files for one port).
func FreePort(t testing.TB) int {
	t.Helper()
	lo, hi := portRange()
	return pickPort(t, lo, hi, lo+rand.IntN(hi-lo))
}

// pickPort returns the first port from start on, wrapping within [lo, hi),
// that it can reserve and bind.
func pickPort(t testing.TB, lo, hi, start int) int {
	t.Helper()
	for i := range hi - lo {
		port := lo + (start-lo+i)%(hi-lo)
		f, ok := reservePort(t, port)
		if !ok {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil { // some other program listens there
			f.Close()
			continue
		}
		l.Close()
		t.Cleanup(func() { f.Close() })
		return port
	}
	t.Fatalf("no free loopback port in %d-%d", lo, hi-1)
	return 0
}

// portRange returns [lo, hi): the 10,000 ports below the kernel's
// ephemeral range, or 20000-30000 if the range cannot be read or leaves no
// room below it.
func portRange() (lo, hi int) {
	lo, hi = 20000, 30000
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return lo, hi
	}
	first, err := strconv.Atoi(f[0])
	if err != nil || first < 11024 {
		return lo, hi
	}
	return first - 10000, first
}

// reservePort takes port's lock file, shared by every test process, and
// returns it open (the reservation lasts until it is closed), or false if
// another process (or an earlier call in this one) holds it.
func reservePort(t testing.TB, port int) (*os.File, bool) {
	t.Helper()
	dir := filepath.Join(os.TempDir(), "ferry-test-ports")
	if err := os.MkdirAll(dir, 0o1777); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o1777) // past the umask, for other users' tests; not ours to change if another user made it
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_RDONLY|os.O_CREATE, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false
		}
		t.Fatalf("lock %s: %v", f.Name(), err)
	}
	return f, true
}

// Listen returns a listener on a free loopback port, closed at cleanup.
func Listen(t testing.TB) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// Nbdsh returns a command running libnbd's nbdsh with args. nbdsh is
// `python3 -m nbd`; this runs it under a Python that has Debian's nbd
// module, not whatever python3 comes first on PATH (pyenv, a venv).
func Nbdsh(t testing.TB, args ...string) *exec.Cmd {
	t.Helper()
	RequireTool(t, "nbdsh")
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import nbd").Run() == nil {
			return exec.Command(py, append([]string{"-m", "nbd"}, args...)...)
		}
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("no python3 can import the nbd module (install python3-libnbd)")
	}
	t.Skip("no python3 can import the nbd module (python3-libnbd)")
	return nil
}

// ServeStream runs serve on one end of an in-memory connection, writes in
// to the other end and closes it, and fails t unless serve returns within
// 10 s: what fuzzers of a frontend's connection handling check.
func ServeStream(t testing.TB, serve func(ctx context.Context, c net.Conn), in []byte) {
	t.Helper()
	srvSide, cliSide := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		serve(context.Background(), srvSide)
	}()
	go io.Copy(io.Discard, cliSide)
	cliSide.SetWriteDeadline(time.Now().Add(2 * time.Second))
	cliSide.Write(in)
	cliSide.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("connection did not end after the client went away")
	}
}
