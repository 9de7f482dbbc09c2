package cpusched

import (
	"runtime"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParse(t *testing.T) {
	for _, p := range Policies {
		got, err := Parse(string(p))
		if err != nil || got != p {
			t.Errorf("Parse(%q) = %q, %v", p, got, err)
		}
	}
	for _, bad := range []string{"", "Batch", "fifo", "idle", "rr"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

// policies returns the policy of every thread of the test process.
func policies(t *testing.T) map[int]string {
	t.Helper()
	tids, err := Threads()
	if err != nil {
		t.Fatal(err)
	}
	m := map[int]string{}
	for _, tid := range tids {
		if p, err := Of(tid); err == nil { // a thread may exit between the two calls
			m[tid] = p
		}
	}
	return m
}

// restore puts the test process back on the policy it started with.
func restore(t *testing.T) {
	start, err := Of(unix.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse(start)
	if err != nil || p == Inherit {
		t.Skipf("the test process runs under %s, which this test cannot restore", start)
	}
	t.Cleanup(func() {
		if _, err := Apply(p); err != nil {
			t.Errorf("restoring %s: %v", p, err)
		}
	})
}

// lockedThreads starts n goroutines, each on an OS thread of its own that
// is kept (runtime.LockOSThread) until release is closed, and returns
// their thread IDs. Threads the runtime lacks are created for them.
func lockedThreads(t *testing.T, n int, release chan struct{}) []int {
	t.Helper()
	tids := make(chan int, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
			tids <- unix.Gettid()
			<-release
		}()
	}
	t.Cleanup(wg.Wait)
	var out []int
	for range n {
		out = append(out, <-tids)
	}
	return out
}

func TestApplySetsEveryThreadAndTheirChildren(t *testing.T) {
	restore(t)
	release := make(chan struct{})
	defer close(release)
	before := lockedThreads(t, 4, release)

	n, err := Apply(Batch)
	if err != nil {
		t.Fatal(err)
	}
	if n < len(before)+1 {
		t.Errorf("Apply set %d threads; the process has at least %d", n, len(before)+1)
	}
	for tid, p := range policies(t) {
		if p != string(Batch) {
			t.Errorf("thread %d runs under %s after Apply(batch)", tid, p)
		}
	}

	// Threads the runtime creates afterwards inherit the policy.
	after := lockedThreads(t, 8, release)
	for _, tid := range after {
		if p, err := Of(tid); err != nil || p != string(Batch) {
			t.Errorf("thread %d, created after Apply(batch), runs under %s (%v)", tid, p, err)
		}
	}

	if _, err := Apply(Normal); err != nil {
		t.Fatal(err)
	}
	for tid, p := range policies(t) {
		if p != string(Normal) {
			t.Errorf("thread %d runs under %s after Apply(normal)", tid, p)
		}
	}
}

func TestApplyKeepsNice(t *testing.T) {
	restore(t)
	release := make(chan struct{})
	var nice int
	tid := make(chan int)
	got := make(chan int)
	go func() {
		runtime.LockOSThread() // never unlocked: the reniced thread exits with the goroutine
		self := unix.Gettid()
		if err := unix.Setpriority(unix.PRIO_PROCESS, self, 7); err != nil {
			t.Error(err)
		}
		p, _ := unix.Getpriority(unix.PRIO_PROCESS, self)
		nice = p
		tid <- self
		<-release
		p, _ = unix.Getpriority(unix.PRIO_PROCESS, self)
		got <- p
	}()
	<-tid
	if _, err := Apply(Batch); err != nil {
		t.Fatal(err)
	}
	close(release)
	if after := <-got; after != nice {
		t.Errorf("a thread's priority was %d before Apply and %d after", nice, after)
	}
	if _, err := Apply(Inherit); err != nil {
		t.Errorf("Apply(inherit): %v", err)
	}
}

func TestName(t *testing.T) {
	for policy, want := range map[int]string{
		unix.SCHED_NORMAL: "normal", unix.SCHED_BATCH: "batch", unix.SCHED_IDLE: "idle",
		unix.SCHED_FIFO: "fifo", unix.SCHED_RR: "rr", unix.SCHED_DEADLINE: "deadline",
		unix.SCHED_BATCH | unix.SCHED_RESET_ON_FORK: "batch", 9: "policy 9",
	} {
		if got := Name(policy); got != want {
			t.Errorf("Name(%d) = %q, want %q", policy, got, want)
		}
	}
}
