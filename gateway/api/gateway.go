package api

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/jsonapi"
)

// Gateway describes the running gateway.
type Gateway struct {
	Build   wire.Build
	Started time.Time
	// Listeners are the addresses the gateway serves on.
	Listeners []wire.Listener
	// ISCSIBaseIQN prefixes iSCSI target names (BASE:VOLUME).
	ISCSIBaseIQN string
	// ISCSIDefaultCHAPUser and ISCSIDefaultMutualUser are the gateway's
	// default CHAP users, for volumes without CHAP of their own.
	ISCSIDefaultCHAPUser, ISCSIDefaultMutualUser string
}

func (g Gateway) listener(proto string) (wire.Listener, bool) {
	for _, l := range g.Listeners {
		if l.Protocol == proto {
			return l, true
		}
	}
	return wire.Listener{}, false
}

// volumes adds attach details to infos. A listener on a wildcard address
// is named by the host the API request was addressed to.
func (h *handler) volumes(r *http.Request, infos ...volume.Info) []wire.VolumeInfo {
	out := make([]wire.VolumeInfo, len(infos))
	for i, in := range infos {
		out[i] = wire.VolumeInfo{Volume: in}
		if h.att != nil {
			out[i].Attachments = h.att.list(in.ID, openConnections(in))
		}
		if l, ok := h.gw.listener(wire.ListenerNBD); ok {
			out[i].Attach.NBD = &wire.NBDAttach{URL: "nbd://" + reachable(l.Address, r) + "/" + in.Name}
		}
		if l, ok := h.gw.listener(wire.ListenerISCSI); ok {
			portal := reachable(l.Address, r)
			target := h.gw.ISCSIBaseIQN + ":" + in.Name
			ia := &wire.ISCSIAttach{Target: target, Portal: portal, URL: "iscsi://" + portal + "/" + target + "/0",
				CHAPUser: h.gw.ISCSIDefaultCHAPUser, MutualUser: h.gw.ISCSIDefaultMutualUser}
			if in.Access != nil && in.Access.CHAPUser != "" {
				ia.CHAPUser, ia.MutualUser = in.Access.CHAPUser, in.Access.MutualUser
			}
			out[i].Attach.ISCSI = ia
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

func (h *handler) readiness(ctx context.Context) wire.Readiness {
	rd := wire.Readiness{Ready: true, Stores: h.m.ProbeStores(ctx)}
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
	jsonapi.WriteJSON(w, code, rd)
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	rd := h.readiness(ctx)
	st := wire.Status{
		Build:         h.gw.Build,
		Started:       h.gw.Started,
		UptimeSeconds: time.Since(h.gw.Started).Round(time.Second).Seconds(),
		Listeners:     h.gw.Listeners,
		Pool:          h.m.Pool(ctx),
		Stores:        rd.Stores,
		Volumes:       h.volumes(r, h.m.Volumes(ctx)...),
		Ready:         rd.Ready,
	}
	if st.Listeners == nil {
		st.Listeners = []wire.Listener{}
	}
	jsonapi.WriteJSON(w, http.StatusOK, st)
}
