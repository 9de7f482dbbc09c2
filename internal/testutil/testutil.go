// Package testutil holds helpers shared by Ferry's tests: finding the real
// client programs acceptance tests drive, and picking loopback ports.
package testutil

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
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

var (
	portsMu sync.Mutex
	ports   = map[int]bool{} // returned by FreePort before
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that it has not returned before in this process: the kernel may hand a
// just-closed port out again at once, so two calls in a row could return
// one port (seen in CI: a gateway given the same port for two listeners).
func FreePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !ports[port] {
			ports[port] = true
			return port
		}
	}
	t.Fatal("no loopback port not handed out before")
	return 0
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
