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
	if _, st, msg := a.acquire("id1", "v1", "hostA", rw, 0); st != http.StatusServiceUnavailable || msg == "" {
		t.Fatalf("during grace: %d %q", st, msg)
	}
	if _, st, msg := a.acquire("id1", "v1", "hostA", wire.AttachRequest{Protocol: "fuse", Reclaim: true}, 0); st != http.StatusCreated {
		t.Fatalf("reclaim during grace: %d %q", st, msg)
	}
	now = now.Add(wire.AttachGrace)
	// Another host is refused, and told who holds it.
	_, st, msg := a.acquire("id1", "v1", "hostB", rw, 0)
	if st != http.StatusConflict || !strings.Contains(msg, `"hostA"`) {
		t.Fatalf("second host: %d %q", st, msg)
	}
	// Renewal by the holder keeps Since.
	l, st, _ := a.acquire("id1", "v1", "hostA", rw, 0)
	if st != http.StatusOK || !l.Since.Equal(now.Add(-wire.AttachGrace)) {
		t.Fatalf("renew: %d %+v", st, l)
	}
	// Read-only holders share, and exclude read-write.
	a.release("id1", "hostA")
	ro := wire.AttachRequest{Protocol: "fuse", ReadOnly: true}
	for _, h := range []string{"hostA", "hostB"} {
		if _, st, msg := a.acquire("id1", "v1", h, ro, 0); st != http.StatusCreated {
			t.Fatalf("read-only %s: %d %q", h, st, msg)
		}
	}
	if _, st, _ := a.acquire("id1", "v1", "hostC", rw, 0); st != http.StatusConflict {
		t.Fatalf("read-write beside read-only holders: %d", st)
	}
	if got := a.list("id1", 0); len(got) != 2 || got[0].Host != "hostA" {
		t.Fatalf("list: %+v", got)
	}
	// A lease nobody renews lapses.
	now = now.Add(wire.DefaultAttachTTL + time.Second)
	if _, st, msg := a.acquire("id1", "v1", "hostC", rw, 0); st != http.StatusCreated {
		t.Fatalf("after the leases lapsed: %d %q", st, msg)
	}
	// Other volumes are independent.
	if _, st, _ := a.acquire("id2", "v2", "hostA", rw, 0); st != http.StatusCreated {
		t.Fatalf("other volume: %d", st)
	}
}

// An expired lease holds while the volume has open client connections
// (its holder's manager is down, what it attached still runs), and lapses
// once they close.
func TestAttachmentHeldWhileConnected(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	a := &attachments{started: now.Add(-time.Hour), now: func() time.Time { return now }, leases: map[string]map[string]wire.Attachment{}}
	rw := wire.AttachRequest{Protocol: "nbd"}
	if _, st, msg := a.acquire("id1", "v1", "kvm-a:vm1", rw, 1); st != http.StatusCreated {
		t.Fatalf("attach: %d %q", st, msg)
	}
	now = now.Add(wire.DefaultAttachTTL + time.Minute)
	_, st, msg := a.acquire("id1", "v1", "kvm-b:vm2", rw, 1)
	if st != http.StatusConflict || !strings.Contains(msg, "kvm-a:vm1") || !strings.Contains(msg, "1 client connection(s) open") {
		t.Fatalf("second holder while the first one's clients are connected: %d %q", st, msg)
	}
	got := a.list("id1", 1)
	if len(got) != 1 || !got[0].Connected {
		t.Fatalf("list while connected: %+v", got)
	}
	// The holder comes back and renews: a normal lease again.
	if l, st, _ := a.acquire("id1", "v1", "kvm-a:vm1", rw, 1); st != http.StatusOK || l.Connected {
		t.Fatalf("renewal: %d %+v", st, l)
	}
	if got := a.list("id1", 1); len(got) != 1 || got[0].Connected {
		t.Fatalf("list after renewal: %+v", got)
	}
	// Expired again, and now its clients are gone: the lease lapses.
	now = now.Add(wire.DefaultAttachTTL + time.Second)
	if _, st, msg := a.acquire("id1", "v1", "kvm-b:vm2", rw, 0); st != http.StatusCreated {
		t.Fatalf("after the clients closed: %d %q", st, msg)
	}
}
