package nbd

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
	"github.com/ferry-io/ferry/internal/threadsock"
)

// The tests that serve plain connections, again with each connection
// served outside the runtime's poller (Config.ThreadPerConn): the protocol,
// errors, shutdown and forced removal, payloads in pieces, splicing, views,
// the turn, real clients. (Not the executors': such a connection runs
// large reads as it runs other large requests.)
func TestThreadPerConn(t *testing.T) {
	threadPerConn = true
	defer func() { threadPerConn = false }()
	for _, tc := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"ReadWriteFlushTrimZeroes", TestReadWriteFlushTrimZeroes},
		{"BadRequestsAnsweredNotDropped", TestBadRequestsAnsweredNotDropped},
		{"DeviceErrorsMapToErrno", TestDeviceErrorsMapToErrno},
		{"MalformedAndAbruptClientsDoNotLeak", TestMalformedAndAbruptClientsDoNotLeak},
		{"FlushCoversOtherConnections", TestFlushCoversOtherConnections},
		{"ShutdownAndRevoke", TestShutdownAndRevoke},
		{"RealClients", TestRealClients},
		{"AccessDenied", TestAccessDenied},
		{"SlowInlineRequestHandsOffTheTurn", TestSlowInlineRequestHandsOffTheTurn},
		{"SlowBatchHandsOffTheTurn", TestSlowBatchHandsOffTheTurn},
		{"LargeWritePassesTheTurnWhenMoreWaits", TestLargeWritePassesTheTurnWhenMoreWaits},
		{"LargePayloadsArriveInPieces", TestLargePayloadsArriveInPieces},
		{"PipeWriteErrors", TestPipeWriteErrors},
		{"SplicedWritesBeforeTheTurnPasses", TestSplicedWritesBeforeTheTurnPasses},
		{"ShutdownInTheMiddleOfALargePayload", TestShutdownInTheMiddleOfALargePayload},
		{"PollHitsBacksOffAndResumes", TestPollHitsBacksOffAndResumes},
		{"ReadsFromViews", TestReadsFromViews},
		{"ViewThatFaultsClosesTheConnection", TestViewThatFaultsClosesTheConnection},
		{"StartTLSAllowed", TestStartTLSAllowed},
	} {
		t.Run(tc.name, tc.f)
	}
}

// A connection is served outside the poller once attached, up to
// MaxThreadConns at once; the others, and TLS ones, through the poller;
// the count comes back when they end.
func TestThreadPerConnCountsAndLimits(t *testing.T) {
	ts := startServerConfig(t, map[string]device.Device{"v": mem.New(1 << 20)}, Config{ThreadPerConn: true, MaxThreadConns: 1})
	waitThreadConns := func(want int32) {
		t.Helper()
		taken := func() int32 { return int32(testutil.ToFloat64(ts.srv.m.threadConns)) }
		for deadline := time.Now().Add(5 * time.Second); taken() != want || ts.srv.threadConns.Load() != want; {
			if time.Now().After(deadline) {
				t.Fatalf("%d connections outside the poller (%d places taken), want %d", taken(), ts.srv.threadConns.Load(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	a := dialRaw(t, ts.addr)
	a.attach("v", false)
	if r := a.do(cmdWrite, 0, 0, 4096, pattern(4096, 1)); r.errno != 0 {
		t.Fatalf("write on A: %v", r)
	}
	waitThreadConns(1)
	// Idle, A's reads park (at once, or once their holds pass), and the
	// gauges read the server's Waiters.
	waitGauges(t, ts, 1, 0)
	b := dialRaw(t, ts.addr)
	b.attach("v", false)
	if r := b.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 || string(r.data) != string(pattern(4096, 1)) {
		t.Fatalf("read on B (through the poller): %v", r)
	}
	waitThreadConns(1)
	// A's socket is the threadsock.Conn's: its writes and reads still work.
	if r := a.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 || string(r.data) != string(pattern(4096, 1)) {
		t.Fatalf("read on A: %v", r)
	}
	for _, rc := range []*rawClient{a, b} {
		rc.send(cmdDisc, 0, 1, 0, 0, nil)
		if !rc.closed() {
			t.Fatal("connection open after NBD_CMD_DISC")
		}
	}
	waitThreadConns(0)
	waitGauges(t, ts, 0, 0)
}

// waitGauges waits until the server's ferry_nbd_thread_parked_connections
// and ferry_nbd_thread_waiting_connections read parked and waiting.
func waitGauges(t *testing.T, ts *testServer, parked, waiting float64) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		p, w := testutil.ToFloat64(ts.srv.m.parked), testutil.ToFloat64(ts.srv.m.waiting)
		if p == parked && w == waiting {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gauges: %v parked, %v waiting; want %v and %v", p, w, parked, waiting)
		}
	}
}

// A threaded connection whose client waits for each reply (queue depth 1)
// parks its reads in the runtime's poller after quietRequests requests;
// one that keeps several in flight waits on its thread again; neither
// changes what the client reads.
func TestThreadedConnParksAtQueueDepthOne(t *testing.T) {
	testParking(t, false)
}

// With one processor, the reads decide alike, but a busy connection's
// finds no place to wait on its thread (the server's Waiters allows none
// there) and parks all the same.
func TestThreadedConnWithOneProcessorNeverWaitsOnItsThread(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	testParking(t, true)
}

// testParking runs a connection at queue depth 1, then at 8, and checks
// what its reads decide when they find the socket empty at the end of
// each: park when quiet and wait on the thread when busy; with one
// processor (oneProc), that the busy one parked anyway, crowded out.
func testParking(t *testing.T, oneProc bool) {
	const quietParks = true
	type takenConn struct {
		c  *conn
		tc *threadsock.Conn
	}
	taken := make(chan takenConn, 1)
	var last atomic.Int32 // the last decision: 1 park, 2 wait on the thread
	var decisions atomic.Int64
	threadedHook = func(c *conn, tc *threadsock.Conn) {
		tc.SetPark(func() bool {
			park := c.parkReads()
			last.Store(map[bool]int32{true: 1, false: 2}[park])
			decisions.Add(1)
			return park
		}, &c.s.waiters)
		taken <- takenConn{c, tc}
	}
	defer func() { threadedHook = nil }()
	ts := startServerConfig(t, map[string]device.Device{"v": mem.New(1 << 20)}, Config{ThreadPerConn: true})
	a := dialRaw(t, ts.addr)
	a.attach("v", false)
	var tc *threadsock.Conn
	select {
	case got := <-taken:
		tc = got.tc
	case <-time.After(5 * time.Second):
		t.Fatal("the connection was not taken out of the poller")
	}
	// decided waits for the connection's reads to decide park (or not)
	// once the client has stopped sending.
	decided := func(phase string, park bool) {
		t.Helper()
		want := map[bool]int32{true: 1, false: 2}[park]
		for deadline := time.Now().Add(5 * time.Second); last.Load() != want; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: reads decided park=%v last (%d decisions), want park=%v", phase, last.Load() == 1, decisions.Load(), park)
			}
		}
	}
	// Queue depth 1, until the reads decide as a quiet connection's do: a
	// request that runs past the inline budget (a loaded machine) passes
	// the turn on, and the next one may then be taken while it finishes,
	// which counts as another in progress and starts the count again.
	want := map[bool]int32{true: 1, false: 2}[quietParks]
	written := map[uint64]int{} // offset: the write that wrote it last
	for i := 0; i < quietRequests+8 || last.Load() != want; i++ {
		if i > 20*quietRequests {
			break // decided reports what the reads decided
		}
		written[uint64(i%16)*4096] = i
		if r := a.do(cmdWrite, 0, uint64(i%16)*4096, 4096, pattern(4096, byte(i))); r.errno != 0 {
			t.Fatalf("write %d: %v", i, r)
		}
	}
	decided("queue depth 1", quietParks)
	// (With one processor, the reads before it was quiet parked already,
	// crowded out; and a quiet one holds briefly on its thread before it
	// parks: threadsock's Brief holds.)
	for deadline := time.Now().Add(5 * time.Second); !tc.Parked() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if p := tc.Parks(); !tc.Parked() || p.Asked == 0 && (!oneProc || p.Crowded == 0) {
		t.Fatalf("quiet: parked %v, %+v; want parked, asked (or crowded out, one processor)", tc.Parked(), p)
	}
	// Eight reads at a time, in one send: the server takes them while
	// others are in progress.
	for round := range 8 {
		var reqs []byte
		for i := range 8 {
			reqs = append(reqs, encodeRequest(request{typ: cmdRead, handle: uint64(i), offset: uint64(i) * 4096, length: 4096})...)
		}
		a.write(reqs)
		seen := map[uint64]bool{}
		for range 8 {
			r := a.recv(4096)
			want := pattern(4096, byte(written[r.handle*4096]))
			if r.errno != 0 || seen[r.handle] || string(r.data) != string(want) {
				t.Fatalf("round %d: reply %d: errno %d, repeated %v, data as written %v", round, r.handle, r.errno, seen[r.handle], string(r.data) == string(want))
			}
			seen[r.handle] = true
		}
	}
	decided("queue depth 8", !quietParks)
	if oneProc {
		if p := tc.Parks(); !tc.Parked() || p.Crowded == 0 || ts.srv.waiters.Waiting() != 0 {
			t.Fatalf("one processor, busy: parked %v, %+v, %d places taken; want parked, crowded out, none taken", tc.Parked(), p, ts.srv.waiters.Waiting())
		}
	}
}
