package api

import (
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/jsonapi"
)

// attachments records which hosts hold which volumes (Docker plugins,
// later ferry-kvm), as leases in memory: a holder renews its lease every
// wire.AttachRenew, a crashed host's lease lapses after its TTL, and for
// wire.AttachGrace after the gateway starts only reclaims are accepted,
// so the leases a restart forgot are re-asserted before anyone else can
// take a volume. Nothing is written to disk: the holders are the record.
//
// An expired lease is kept while the volume has client connections open,
// whoever's (wire.Attachment.Connected): the holder's manager may be down
// while what it attached still runs (ferry-kvm restarting under a VM
// whose QEMU holds its NBD connections). Once a crashed host's
// connections close (or TCP keepalive ends them) and no other client is
// connected, its lease lapses.
//
// Leases are keyed by volume ID, so a volume removed and created again
// under its name starts free.
type attachments struct {
	started time.Time
	now     func() time.Time

	mu     sync.Mutex
	leases map[string]map[string]wire.Attachment // volume ID -> host -> lease
}

var hostRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,254}$`)

// registerAttachments adds the attachment routes to mux.
func registerAttachments(mux *http.ServeMux, h *handler) {
	a := &attachments{started: time.Now(), now: time.Now, leases: map[string]map[string]wire.Attachment{}}
	h.att = a
	mux.HandleFunc("GET /v1/volumes/{name}/attachments", func(w http.ResponseWriter, r *http.Request) {
		in, err := h.m.Info(r.Context(), r.PathValue("name"))
		if err != nil {
			h.fail(w, r, err)
			return
		}
		jsonapi.WriteJSON(w, http.StatusOK, a.list(in.ID, openConnections(in)))
	})
	mux.HandleFunc("PUT /v1/volumes/{name}/attachments/{host}", func(w http.ResponseWriter, r *http.Request) {
		var req wire.AttachRequest
		if !decode(w, r, &req) {
			return
		}
		host := r.PathValue("host")
		if !hostRE.MatchString(host) {
			jsonapi.WriteJSON(w, http.StatusBadRequest, wire.ErrorResponse{Error: fmt.Sprintf("bad host name %q", host), Code: wire.CodeInvalid})
			return
		}
		in, err := h.m.Info(r.Context(), r.PathValue("name"))
		if err != nil {
			h.fail(w, r, err)
			return
		}
		lease, status, msg := a.acquire(in.ID, in.Name, host, req, openConnections(in))
		if msg != "" {
			jsonapi.WriteJSON(w, status, wire.ErrorResponse{Error: msg, Code: wire.CodeBusy})
			return
		}
		jsonapi.WriteJSON(w, status, lease)
	})
	mux.HandleFunc("DELETE /v1/volumes/{name}/attachments/{host}", func(w http.ResponseWriter, r *http.Request) {
		in, err := h.m.Info(r.Context(), r.PathValue("name"))
		if err != nil {
			h.fail(w, r, err)
			return
		}
		a.release(in.ID, r.PathValue("host"))
		w.WriteHeader(http.StatusNoContent)
	})
}

// openConnections counts the client connections to the volume itself
// (not to its snapshots' exports).
func openConnections(in volume.Info) int {
	n := 0
	for _, c := range in.Connections {
		if c.Export == "" {
			n++
		}
	}
	return n
}

// live returns the leases of a volume that hold: unexpired ones, and
// expired ones while the volume has open connections (marked
// Connected); called with mu held.
func (a *attachments) live(id string, open int) map[string]wire.Attachment {
	now := a.now()
	m := a.leases[id]
	for host, l := range m {
		switch {
		case !now.After(l.Expires):
			if l.Connected {
				l.Connected = false
				m[host] = l
			}
		case open > 0:
			if !l.Connected {
				l.Connected = true
				m[host] = l
			}
		default:
			delete(m, host)
		}
	}
	return m
}

func (a *attachments) list(id string, open int) []wire.Attachment {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := []wire.Attachment{}
	for _, l := range a.live(id, open) {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out
}

// acquire grants or renews host's lease, or says (status, message) why not.
func (a *attachments) acquire(id, name, host string, req wire.AttachRequest, open int) (wire.Attachment, int, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	ttl := wire.DefaultAttachTTL
	if req.TTLSeconds > 0 {
		ttl = time.Duration(min(req.TTLSeconds, 3600)) * time.Second
	}
	m := a.live(id, open)
	for other, l := range m {
		if other == host || (l.ReadOnly && req.ReadOnly) {
			continue
		}
		mode := "read-write"
		if l.ReadOnly {
			mode = "read-only"
		}
		if l.Connected {
			return wire.Attachment{}, http.StatusConflict, fmt.Sprintf("volume %s is attached %s on host %q (over %s, since %s); that host stopped renewing its lease %s ago, but the volume still has %d client connection(s) open, so the lease holds until they close (or `ferry volume detach %s --force`)",
				name, mode, other, l.Protocol, l.Since.UTC().Format(time.RFC3339), now.Sub(l.Expires).Round(time.Second), open, name)
		}
		return wire.Attachment{}, http.StatusConflict, fmt.Sprintf("volume %s is attached %s on host %q (over %s, since %s); it can be attached elsewhere once that host detaches it, or when its lease lapses (%s from now unless that host renews it)",
			name, mode, other, l.Protocol, l.Since.UTC().Format(time.RFC3339), l.Expires.Sub(now).Round(time.Second))
	}
	old, renew := m[host]
	if !renew && !req.Reclaim && now.Sub(a.started) < wire.AttachGrace {
		return wire.Attachment{}, http.StatusServiceUnavailable, fmt.Sprintf("the gateway started %s ago and accepts only reclaimed attachments for %s, while hosts re-assert theirs; retry shortly",
			now.Sub(a.started).Round(time.Second), wire.AttachGrace)
	}
	l := wire.Attachment{Host: host, Protocol: req.Protocol, ReadOnly: req.ReadOnly, Since: now, Expires: now.Add(ttl)}
	if renew {
		l.Since = old.Since
	}
	if m == nil {
		m = map[string]wire.Attachment{}
		a.leases[id] = m
	}
	m[host] = l
	if renew {
		return l, http.StatusOK, ""
	}
	return l, http.StatusCreated, ""
}

func (a *attachments) release(id, host string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.leases[id], host)
	if len(a.leases[id]) == 0 {
		delete(a.leases, id)
	}
}
