package nbd

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
)

// pollClient attaches a raw client to a server polling with cfg and
// returns a function that writes one 4 KiB block and waits for its reply.
func pollClient(t *testing.T, cfg Config) (*testServer, func(i int)) {
	ts := startServerConfig(t, map[string]device.Device{"v": mem.New(1 << 20)}, cfg)
	rc := dialRaw(t, ts.addr)
	rc.attach("v", false)
	return ts, func(i int) {
		t.Helper()
		rc.send(cmdWrite, 0, uint64(i), uint64(i%256)*4096, 4096, pattern(4096, byte(i)))
		if r := rc.recv(0); r.errno != 0 || r.handle != uint64(i) {
			t.Fatalf("write %d: errno %d, handle %d", i, r.errno, r.handle)
		}
	}
}

// A connection with nothing in flight polls for the next request; a
// client that pauses longer than the poll makes it poll less and less
// often, and polling resumes when requests come back to back.
func TestPollHitsBacksOffAndResumes(t *testing.T) {
	// A window far longer than the in-process client takes to send its
	// next request, however loaded the machine, and a pause far longer
	// than the window.
	const window, pause = 20 * time.Millisecond, 60 * time.Millisecond
	ts, write := pollClient(t, Config{Poll: window})
	hits := func() float64 { return testutil.ToFloat64(ts.srv.m.pollHit) }
	misses := func() float64 { return testutil.ToFloat64(ts.srv.m.pollMiss) }

	for i := range 50 {
		write(i)
	}
	if h, m := hits(), misses(); h < 25 || m > 2 {
		t.Fatalf("back to back: %v hits, %v misses; want most requests found by a poll", h, m)
	}

	// Twelve requests after pauses: the poll before the 1st misses, then
	// the connection skips 1, 2, 4 requests between polls (the polls
	// before the 3rd, 6th and 11th miss): four misses, where polling
	// before each would have missed twelve times. (Three if a stall above
	// left a skip pending.)
	h0, m0 := hits(), misses()
	for i := range 12 {
		time.Sleep(pause)
		write(50 + i)
	}
	if h, m := hits()-h0, misses()-m0; h != 0 || m < 3 || m > 4 {
		t.Fatalf("after pauses: %v hits, %v misses; want 0 and 4", h, m)
	}

	// Back to back again: after the skips left (at most 8), polls find
	// the requests again. (Sixty requests, not thirty: under -race on a
	// loaded machine a late request can miss and start a new back-off.)
	h1 := hits()
	for i := range 60 {
		write(62 + i)
	}
	if h := hits() - h1; h < 10 {
		t.Fatalf("back to back again: %v hits; polling did not resume", h)
	}
}

// By default a connection never polls.
func TestPollOffByDefault(t *testing.T) {
	ts, write := pollClient(t, Config{})
	for i := range 20 {
		write(i)
	}
	if h, m := testutil.ToFloat64(ts.srv.m.pollHit), testutil.ToFloat64(ts.srv.m.pollMiss); h+m != 0 {
		t.Fatalf("%v hits, %v misses with polling off", h, m)
	}
}
