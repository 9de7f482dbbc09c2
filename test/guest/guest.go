package guest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// HostAddr is where the guest reaches the host's loopback: a connection to
// HostAddr:PORT reaches 127.0.0.1:PORT for every port in Config.Forward.
const HostAddr = "10.0.2.100"

// DirectHostAddr is where the guest reaches the host's loopback with
// Config.Direct: QEMU user networking's own host address.
const DirectHostAddr = "10.0.2.2"

// Marker starts every line the guest prints for the host to react to:
// "FERRY-GUEST: TEXT" anywhere in a console line is the marker TEXT.
const Marker = "FERRY-GUEST: "

// Config says what to boot.
type Config struct {
	Image Image
	// Dir holds the test's initramfs, the console log (console.log), the
	// control socket and socat's logs. Required.
	Dir string
	// Script is the guest's /ferry-test/run (a shell script; its exit
	// status is the guest's). Empty: the guest boots and powers off.
	Script string
	// Files are added to the guest's root (e.g. /usr/local/bin/ferry).
	Files []File
	// Forward lists host loopback ports the guest reaches at HostAddr with
	// the same port number, one socat per guest connection; the guest
	// reaches nothing else (restrict=on). QEMU accepts the guest's
	// connection before socat dials the host, so a connection to a port
	// nobody listens on is accepted and then closed.
	Forward []int
	// Direct instead lets the guest reach every host loopback port at
	// DirectHostAddr, through QEMU's own NAT, with no socat: a connection to
	// a port nobody listens on is refused (RST) as on a real network. The
	// guest is not restricted then.
	Direct bool
	// MemoryMiB defaults to 1024, CPUs to 1.
	MemoryMiB int
	CPUs      int
	// Append is added to the kernel command line.
	Append string
}

// Guest is one running QEMU guest. Its console (ttyS0) is read line by
// line: Next and Expect return the markers in order, Console the whole
// log. Send writes a line to its control port (ttyS1), which a guest
// script reads from /dev/ttyS1.
type Guest struct {
	cmd     *exec.Cmd
	ctlPath string
	stderr  bytes.Buffer // QEMU's own messages

	mu      sync.Mutex
	console strings.Builder
	markers []string
	exited  bool
	waitErr error
	changed chan struct{} // closed and replaced on every new line or exit
	done    chan struct{} // closed when QEMU exited and the console is read

	ctlMu sync.Mutex
	ctl   net.Conn
}

// Start builds the test's initramfs (the image's, then an archive of the
// script and files) and starts QEMU. The caller must Kill or Wait for it.
func Start(cfg Config) (*Guest, error) {
	if cfg.Dir == "" {
		return nil, errors.New("guest: Config.Dir is required")
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 1024
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	initrd := filepath.Join(cfg.Dir, "initrd")
	if err := buildInitrd(initrd, cfg); err != nil {
		return nil, err
	}
	g := &Guest{ctlPath: filepath.Join(cfg.Dir, "ctl.sock"), changed: make(chan struct{}), done: make(chan struct{})}
	netdev := "user,id=n0,restrict=on,net=10.0.2.0/24"
	if cfg.Direct {
		netdev = "user,id=n0,net=10.0.2.0/24,host=" + DirectHostAddr
	}
	for _, p := range cfg.Forward {
		logf := filepath.Join(cfg.Dir, fmt.Sprintf("socat-%d.log", p))
		// libslirp splits the command like a shell (g_shell_parse_argv);
		// QEMU's option parser needs commas doubled.
		cmdline := fmt.Sprintf("socat -lf %s - TCP:127.0.0.1:%d", shellQuote(logf), p)
		netdev += fmt.Sprintf(",guestfwd=tcp:%s:%d-cmd:%s", HostAddr, p, strings.ReplaceAll(cmdline, ",", ",,"))
	}
	kernelArgs := "console=ttyS0 quiet panic=-1 " + cfg.Append
	args := []string{
		"-accel", "tcg", "-m", strconv.Itoa(cfg.MemoryMiB), "-smp", strconv.Itoa(cfg.CPUs),
		"-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
		"-serial", "stdio",
		"-chardev", "socket,id=ctl,path=" + strings.ReplaceAll(g.ctlPath, ",", ",,") + ",server=on,wait=off",
		"-serial", "chardev:ctl",
		"-kernel", cfg.Image.Kernel, "-initrd", initrd, "-append", strings.TrimSpace(kernelArgs),
		"-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
	}
	g.cmd = exec.Command("qemu-system-x86_64", args...)
	g.cmd.Stdin = nil
	g.cmd.Stderr = &lockedWriter{mu: &g.mu, w: &g.stderr}
	out, err := g.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(cfg.Dir, "console.log"))
	if err != nil {
		return nil, err
	}
	if err := g.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	go g.read(out, logFile)
	return g, nil
}

// buildInitrd writes the image's initramfs followed by a second archive
// holding the script and files (the kernel unpacks concatenated archives
// in order, later files replacing earlier ones).
func buildInitrd(dst string, cfg Config) error {
	base, err := os.Open(cfg.Image.Initrd)
	if err != nil {
		return fmt.Errorf("guest initrd: %w", err)
	}
	defer base.Close()
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, base)
	if err != nil {
		f.Close()
		return fmt.Errorf("copy guest initrd: %w", err)
	}
	if n%4 != 0 { // the next archive starts 4-aligned
		if _, err := f.Write(make([]byte, 4-n%4)); err != nil {
			f.Close()
			return err
		}
	}
	files := cfg.Files
	if cfg.Script != "" {
		files = append(append([]File(nil), files...),
			File{Path: "/ferry-test/script", Mode: 0o755, Data: []byte(cfg.Script)},
			File{Path: "/ferry-test/run", Mode: 0o755, Data: []byte(runScript)})
	}
	if err := writeCPIO(f, files); err != nil {
		f.Close()
		return fmt.Errorf("guest archive: %w", err)
	}
	return f.Close()
}

// RacePrefix starts every console line of a race detector's report that a
// process in the guest wrote (RaceReports).
const RacePrefix = "FERRY-RACE: "

// runScript is the guest's /ferry-test/run: it runs the test's script with
// every race-built Go program in the guest (a ferry built by a test under
// GOFLAGS=-race) writing its race reports to files, and then prints those
// files on the console, each line after RacePrefix, where the host reads
// them: the programs' own stderr goes to logs inside the guest that nobody
// reads unless a test fails. Programs built without the race detector
// ignore GORACE. The script's exit status is the guest's.
const runScript = `#!/bin/sh
mkdir -p /var/log/ferry-race
GORACE=log_path=/var/log/ferry-race/r /ferry-test/script
rc=$?
for f in /var/log/ferry-race/r.*; do
	[ -e "$f" ] || continue
	echo "== $f" | sed "s/^/` + RacePrefix + `/"
	sed "s/^/` + RacePrefix + `/" "$f"
done
exit $rc
`

// RaceReports returns what the race detector reported in the guest so far
// (empty when nothing raced): the guest prints the reports once its test
// script has ended, so call it after Wait.
func (g *Guest) RaceReports() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var b strings.Builder
	for _, line := range strings.Split(g.console.String(), "\n") {
		if i := strings.Index(line, RacePrefix); i >= 0 {
			b.WriteString(line[i+len(RacePrefix):] + "\n")
		}
	}
	return b.String()
}

// read records the console until QEMU closes it, then waits for QEMU.
func (g *Guest) read(out io.Reader, logFile *os.File) {
	r := bufio.NewReaderSize(out, 64<<10)
	for {
		line, err := r.ReadString('\n')
		if line != "" {
			logFile.WriteString(line)
			line = strings.TrimRight(line, "\r\n")
			g.mu.Lock()
			g.console.WriteString(line + "\n")
			if i := strings.Index(line, Marker); i >= 0 {
				g.markers = append(g.markers, strings.TrimSpace(line[i+len(Marker):]))
			}
			g.notifyLocked()
			g.mu.Unlock()
		}
		if err != nil {
			break
		}
	}
	logFile.Close()
	err := g.cmd.Wait()
	g.mu.Lock()
	g.exited, g.waitErr = true, err
	g.notifyLocked()
	g.mu.Unlock()
	g.ctlMu.Lock()
	if g.ctl != nil {
		g.ctl.Close()
	}
	g.ctlMu.Unlock()
	close(g.done)
}

func (g *Guest) notifyLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// ErrExited is returned by Next and Expect when QEMU exited and no marker
// is left.
var ErrExited = errors.New("guest: qemu exited")

// Next returns the next marker the guest printed, waiting for it.
func (g *Guest) Next(ctx context.Context) (string, error) {
	for {
		g.mu.Lock()
		if len(g.markers) > 0 {
			m := g.markers[0]
			g.markers = g.markers[1:]
			g.mu.Unlock()
			return m, nil
		}
		if g.exited {
			g.mu.Unlock()
			return "", ErrExited
		}
		ch := g.changed
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for the guest: %w", ctx.Err())
		}
	}
}

// Expect returns the next marker starting with prefix, passing every
// marker before it to skipped (which may be nil; an error from it ends the
// wait with that error).
func (g *Guest) Expect(ctx context.Context, prefix string, skipped func(string) error) (string, error) {
	for {
		m, err := g.Next(ctx)
		if err != nil {
			return "", fmt.Errorf("waiting for %q: %w", prefix, err)
		}
		if strings.HasPrefix(m, prefix) {
			return m, nil
		}
		if skipped != nil {
			if err := skipped(m); err != nil {
				return "", err
			}
		}
	}
}

// Send writes line to the guest's control port, /dev/ttyS1 in the guest.
func (g *Guest) Send(line string) error {
	g.ctlMu.Lock()
	defer g.ctlMu.Unlock()
	if g.ctl == nil {
		c, err := net.Dial("unix", g.ctlPath)
		if err != nil {
			return fmt.Errorf("guest control port: %w", err)
		}
		g.ctl = c
		go io.Copy(io.Discard, c) // the tty's echo, if the guest left it on
	}
	_, err := g.ctl.Write([]byte(line + "\n"))
	return err
}

// Console returns everything the guest printed on its console so far,
// then QEMU's own messages.
func (g *Guest) Console() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.console.String()
	if g.stderr.Len() > 0 {
		s += "--- qemu:\n" + g.stderr.String()
	}
	return s
}

// Wait waits for QEMU to exit and returns the exit status the guest's
// /init reported ("FERRY-GUEST: exit N"), or an error when QEMU failed
// or exited without one (a crash, a panic).
func (g *Guest) Wait(ctx context.Context) (int, error) {
	select {
	case <-g.done:
	case <-ctx.Done():
		return -1, fmt.Errorf("waiting for the guest to power off: %w", ctx.Err())
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.waitErr != nil {
		return -1, fmt.Errorf("qemu: %w", g.waitErr)
	}
	const exit = Marker + "exit "
	lines := strings.Split(g.console.String(), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if j := strings.Index(lines[i], exit); j >= 0 {
			// "exit RC (up SECONDS s)"
			f := strings.Fields(lines[i][j+len(exit):])
			if len(f) == 0 {
				break
			}
			return strconv.Atoi(f[0])
		}
	}
	return -1, errors.New("guest powered off without reporting an exit status")
}

// Kill ends QEMU (the process this Guest started) and waits for it.
func (g *Guest) Kill() {
	select {
	case <-g.done:
		return
	default:
	}
	g.cmd.Process.Kill()
	<-g.done
}

// Boot starts a guest for a test: it is killed at the end of the test, and
// its console is logged when the test failed. The test fails when a
// process in the guest reported a data race (RaceReports).
func Boot(t testing.TB, cfg Config) *Guest {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	g, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.Kill()
		if r := g.RaceReports(); r != "" {
			t.Errorf("the race detector reported data races in the guest:\n%s", r)
		}
		if t.Failed() {
			t.Logf("guest console (%s):\n%s", filepath.Join(cfg.Dir, "console.log"), tail(g.Console(), 150))
			logs, _ := filepath.Glob(filepath.Join(cfg.Dir, "socat-*.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				t.Logf("%s:\n%s", filepath.Base(l), tail(string(b), 40))
			}
		}
	})
	return g
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// shellQuote quotes s for a shell-like command line.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
