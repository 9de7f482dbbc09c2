package api

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/buildinfo"
)

// Protocols of Listener.
const (
	ListenerNBD   = "nbd"
	ListenerISCSI = "iscsi"
	ListenerAPI   = "api"
)

// Gateway describes the running gateway.
type Gateway struct {
	Build   buildinfo.Info
	Started time.Time
	// Listeners are the addresses the gateway serves on.
	Listeners []Listener
	// ISCSIBaseIQN prefixes iSCSI target names (BASE:VOLUME).
	ISCSIBaseIQN string
}

// Listener is one address the gateway serves a protocol on.
type Listener struct {
	Protocol string `json:"protocol"`
	// Address is host:port as bound.
	Address string `json:"address"`
	// Loopback is set when only this machine can reach the address.
	Loopback bool `json:"loopback"`
	// Protection says, in words, what guards the listener.
	Protection string `json:"protection"`
}

func (g Gateway) listener(proto string) (Listener, bool) {
	for _, l := range g.Listeners {
		if l.Protocol == proto {
			return l, true
		}
	}
	return Listener{}, false
}

// VolumeInfo is a volume as the API shows it: the manager's view plus how
// to reach it.
type VolumeInfo struct {
	volume.Info
	Attach AttachInfo `json:"attach"`
}

// AttachInfo says how clients reach a volume over each protocol served.
type AttachInfo struct {
	NBD   *NBDAttach   `json:"nbd,omitempty"`
	ISCSI *ISCSIAttach `json:"iscsi,omitempty"`
}

// NBDAttach is a volume's NBD export.
type NBDAttach struct {
	// URL is nbd://HOST:PORT/NAME (RFC-style NBD URI, as qemu and libnbd
	// take it).
	URL string `json:"url"`
}

// ISCSIAttach is a volume's iSCSI target.
type ISCSIAttach struct {
	Target string `json:"target"`
	Portal string `json:"portal"`
	// URL is iscsi://PORTAL/TARGET/0, as qemu and libiscsi take it.
	URL string `json:"url"`
}

// volumes adds attach details to infos. A listener on a wildcard address
// is named by the host the API request was addressed to.
func (h *handler) volumes(r *http.Request, infos ...volume.Info) []VolumeInfo {
	out := make([]VolumeInfo, len(infos))
	for i, in := range infos {
		out[i] = VolumeInfo{Info: in}
		if l, ok := h.gw.listener(ListenerNBD); ok {
			out[i].Attach.NBD = &NBDAttach{URL: "nbd://" + reachable(l.Address, r) + "/" + in.Name}
		}
		if l, ok := h.gw.listener(ListenerISCSI); ok {
			portal := reachable(l.Address, r)
			target := h.gw.ISCSIBaseIQN + ":" + in.Name
			out[i].Attach.ISCSI = &ISCSIAttach{Target: target, Portal: portal, URL: "iscsi://" + portal + "/" + target + "/0"}
		}
	}
	return out
}

// reachable turns a bound address into one a client can dial: a wildcard
// host becomes the host the request reached the API by.
func reachable(addr string, r *http.Request) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if r != nil {
			if h, _, err := net.SplitHostPort(r.Host); err == nil && h != "" {
				host = h
			} else if r.Host != "" {
				host = r.Host
			}
		}
	}
	return net.JoinHostPort(host, port)
}

// Status is the gateway's overview, GET /v1/status.
type Status struct {
	buildinfo.Info
	Started       time.Time       `json:"started"`
	UptimeSeconds float64         `json:"uptime_seconds"`
	Listeners     []Listener      `json:"listeners"`
	Pool          volume.PoolInfo `json:"pool"`
	// Stores are the S3 stores with whether they answered just now.
	Stores  []volume.StoreHealth `json:"stores"`
	Volumes []VolumeInfo         `json:"volumes"`
	// Ready is what /readyz answers: every store reachable.
	Ready bool `json:"ready"`
}

// Readiness is the body of GET /readyz.
type Readiness struct {
	Ready  bool                 `json:"ready"`
	Stores []volume.StoreHealth `json:"stores"`
}

func (h *handler) readiness(ctx context.Context) Readiness {
	rd := Readiness{Ready: true, Stores: h.m.ProbeStores(ctx)}
	for _, s := range rd.Stores {
		rd.Ready = rd.Ready && s.Reachable
	}
	return rd
}

// ready answers /readyz: 200 when every store is reachable, 503 when one
// is not (the gateway serves, but reads of data only in S3 fail).
func (h *handler) ready(w http.ResponseWriter, r *http.Request) {
	rd := h.readiness(r.Context())
	code := http.StatusOK
	if !rd.Ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, rd)
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	rd := h.readiness(ctx)
	st := Status{
		Info:          h.gw.Build,
		Started:       h.gw.Started,
		UptimeSeconds: time.Since(h.gw.Started).Round(time.Second).Seconds(),
		Listeners:     h.gw.Listeners,
		Pool:          h.m.Pool(ctx),
		Stores:        rd.Stores,
		Volumes:       h.volumes(r, h.m.Volumes(ctx)...),
		Ready:         rd.Ready,
	}
	if st.Listeners == nil {
		st.Listeners = []Listener{}
	}
	writeJSON(w, http.StatusOK, st)
}
