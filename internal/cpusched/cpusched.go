// Package cpusched sets the Linux CPU scheduling policy of every thread of
// the running process.
//
// A policy belongs to a thread, not to a process, and a new thread takes
// the policy of the thread that creates it. The Go runtime starts threads
// of its own before main runs and more whenever it needs them, so Apply
// sets every thread that exists, then looks again until no thread it has
// not set remains: from then on every new thread inherits the policy.
package cpusched

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Policy names a scheduling policy for the gateway's threads.
type Policy string

const (
	// Inherit leaves every thread as the process was started (by chrt,
	// or by systemd's CPUSchedulingPolicy=).
	Inherit Policy = "inherit"
	// Normal is SCHED_OTHER, the kernel's default: a woken thread may
	// preempt the task running on its CPU.
	Normal Policy = "normal"
	// Batch is SCHED_BATCH: the same fair share as Normal, but a woken
	// thread waits for the running task to sleep or for the scheduler's
	// tick instead of preempting it.
	Batch Policy = "batch"
)

// Policies lists the accepted names, in the order help text gives them.
var Policies = []Policy{Inherit, Normal, Batch}

// Parse returns the policy a name stands for.
func Parse(s string) (Policy, error) {
	for _, p := range Policies {
		if string(p) == s {
			return p, nil
		}
	}
	return "", fmt.Errorf("CPU scheduling policy %q: want inherit, normal or batch", s)
}

// kernel returns the kernel's number for a policy.
func (p Policy) kernel() (int, error) {
	switch p {
	case Normal:
		return unix.SCHED_NORMAL, nil
	case Batch:
		return unix.SCHED_BATCH, nil
	}
	return 0, fmt.Errorf("CPU scheduling policy %q cannot be set", p)
}

// maxPasses bounds Apply's passes over the thread list. A pass finds new
// threads only if one was created by a thread not yet set; each pass sets
// every thread it sees, so two or three passes suffice in practice.
const maxPasses = 64

// Apply sets p on every thread of the process and returns how many
// threads it set. Inherit sets nothing. The nice value of each thread is
// kept.
func Apply(p Policy) (int, error) {
	if p == Inherit {
		return 0, nil
	}
	pol, err := p.kernel()
	if err != nil {
		return 0, err
	}
	done := map[int]bool{}
	for pass := 0; pass < maxPasses; pass++ {
		tids, err := Threads()
		if err != nil {
			return len(done), err
		}
		fresh := false
		for _, tid := range tids {
			if done[tid] {
				continue
			}
			fresh = true
			done[tid] = true
			if err := set(tid, pol); err != nil && !errors.Is(err, unix.ESRCH) { // ESRCH: the thread has exited
				return len(done) - 1, fmt.Errorf("setting CPU scheduling policy %s on thread %d: %w", p, tid, err)
			}
		}
		if !fresh {
			return len(done), nil
		}
	}
	return len(done), fmt.Errorf("setting CPU scheduling policy %s: new threads kept appearing after %d passes", p, maxPasses)
}

// set calls sched_setscheduler(2), which keeps the thread's nice value
// (sched_setattr(2) would reset it unless told otherwise).
func set(tid, policy int) error {
	param := struct{ priority int32 }{0}
	_, _, errno := unix.RawSyscall(unix.SYS_SCHED_SETSCHEDULER, uintptr(tid), uintptr(policy), uintptr(unsafe.Pointer(&param)))
	if errno != 0 {
		return errno
	}
	return nil
}

// Threads lists the thread IDs of the running process.
func Threads() ([]int, error) {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, fmt.Errorf("listing threads: %w", err)
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// Of returns the name of a thread's policy: "normal", "batch", or the
// kernel's name for any other ("idle", "fifo", "rr", "deadline").
func Of(tid int) (string, error) {
	r, _, errno := unix.RawSyscall(unix.SYS_SCHED_GETSCHEDULER, uintptr(tid), 0, 0)
	if errno != 0 {
		return "", fmt.Errorf("thread %d: %w", tid, errno)
	}
	return Name(int(r)), nil
}

// Name returns the name of a kernel policy number, as /proc/PID/stat's
// policy field gives it.
func Name(policy int) string {
	switch policy &^ unix.SCHED_RESET_ON_FORK {
	case unix.SCHED_NORMAL:
		return string(Normal)
	case unix.SCHED_BATCH:
		return string(Batch)
	case unix.SCHED_IDLE:
		return "idle"
	case unix.SCHED_FIFO:
		return "fifo"
	case unix.SCHED_RR:
		return "rr"
	case unix.SCHED_DEADLINE:
		return "deadline"
	}
	return "policy " + strconv.Itoa(policy)
}
