package api

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferry-io/ferry/gateway/api/wire"
)

func TestAttachmentLeases(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	a := &attachments{started: now, now: func() time.Time { return now }, leases: map[string]map[string]wire.Attachment{}}
	rw := wire.AttachRequest{Protocol: "fuse"}

	// Grace after start: only reclaims.
	if _, st, msg := a.acquire("id1", "v1", "hostA", rw); st != http.StatusServiceUnavailable || msg == "" {
		t.Fatalf("during grace: %d %q", st, msg)
	}
	if _, st, msg := a.acquire("id1", "v1", "hostA", wire.AttachRequest{Protocol: "fuse", Reclaim: true}); st != http.StatusCreated {
		t.Fatalf("reclaim during grace: %d %q", st, msg)
	}
	now = now.Add(wire.AttachGrace)
	// Another host is refused, and told who holds it.
	_, st, msg := a.acquire("id1", "v1", "hostB", rw)
	if st != http.StatusConflict || !strings.Contains(msg, `"hostA"`) {
		t.Fatalf("second host: %d %q", st, msg)
	}
	// Renewal by the holder keeps Since.
	l, st, _ := a.acquire("id1", "v1", "hostA", rw)
	if st != http.StatusOK || !l.Since.Equal(now.Add(-wire.AttachGrace)) {
		t.Fatalf("renew: %d %+v", st, l)
	}
	// Read-only holders share, and exclude read-write.
	a.release("id1", "hostA")
	ro := wire.AttachRequest{Protocol: "fuse", ReadOnly: true}
	for _, h := range []string{"hostA", "hostB"} {
		if _, st, msg := a.acquire("id1", "v1", h, ro); st != http.StatusCreated {
			t.Fatalf("read-only %s: %d %q", h, st, msg)
		}
	}
	if _, st, _ := a.acquire("id1", "v1", "hostC", rw); st != http.StatusConflict {
		t.Fatalf("read-write beside read-only holders: %d", st)
	}
	if got := a.list("id1"); len(got) != 2 || got[0].Host != "hostA" {
		t.Fatalf("list: %+v", got)
	}
	// A lease nobody renews lapses.
	now = now.Add(wire.DefaultAttachTTL + time.Second)
	if _, st, msg := a.acquire("id1", "v1", "hostC", rw); st != http.StatusCreated {
		t.Fatalf("after the leases lapsed: %d %q", st, msg)
	}
	// Other volumes are independent.
	if _, st, _ := a.acquire("id2", "v2", "hostA", rw); st != http.StatusCreated {
		t.Fatalf("other volume: %d", st)
	}
}
