package nbd

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/backends/mem"
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
}
