package threadsock

import (
	"bufio"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// runtimePoller returns a descriptor of the runtime's network poller (the
// epoll instance every socket, pipe and timer wake-up of the process that
// the runtime waits for is registered with), or -1 if it cannot be found.
// It is readable while the poller holds events nobody has collected yet:
// while some goroutine waiting in the poller could run. A brief hold
// (Conn.hold) waits for it too, and ends when it is readable.
//
// The runtime does not say which descriptor it is: runtimePoller registers
// a socket of its own with the poller and looks for the epoll instance
// that watches it (/proc/self/fdinfo lists each instance's descriptors,
// with their inodes). Found once, and duplicated: the runtime never closes
// its poller.
var runtimePoller = sync.OnceValue(findRuntimePoller)

func findRuntimePoller() int {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	defer unix.Close(fds[1])
	f := os.NewFile(uintptr(fds[0]), "threadsock-probe")
	nc, err := net.FileConn(f) // a duplicate, registered with the poller
	f.Close()
	if err != nil {
		return -1
	}
	defer nc.Close()
	probe := -1
	if raw, err := nc.(syscall.Conn).SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) { probe = int(fd) })
	}
	var st unix.Stat_t
	if probe < 0 || unix.Fstat(probe, &st) != nil {
		return -1
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	for _, e := range ents {
		if link, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || link != "anon_inode:[eventpoll]" {
			continue
		}
		if !watches("/proc/self/fdinfo/"+e.Name(), probe, st.Ino) {
			continue
		}
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if dup, err := unix.FcntlInt(uintptr(n), unix.F_DUPFD_CLOEXEC, 0); err == nil {
			return dup
		}
	}
	return -1
}

// watches reports whether the epoll instance whose fdinfo is at path
// watches descriptor fd of inode ino ("tfd: FD events: ... ino:HEX ...").
func watches(path string, fd int, ino uint64) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	want, wantIno := strconv.Itoa(fd), "ino:"+strconv.FormatUint(ino, 16)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "tfd:" || fields[1] != want {
			continue
		}
		for _, x := range fields[2:] {
			if x == wantIno {
				return true
			}
		}
	}
	return false
}
