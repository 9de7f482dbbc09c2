package kvm

// Live migration between two gateways sharing a bucket.
//
// The destination's QEMU opens the source gateway's exports (raw node
// diskI over NBD node diskI-nbd) and is started with -S, so the guest
// stays paused after the switchover. The switchover itself is the
// one-gateway one: at pre-switchover the source moves the attachments to
// the destination's holder on the source's gateway. Once QEMU reports
// completed (the source's disks are flushed and inactive):
//
//  1. the source quits its QEMU (its NBD connections close);
//  2. park: the destination switches each disk's file child to a null
//     placeholder node of the same size (blockdev-reopen, which flushes
//     the old child first: nothing is dirty) and deletes the NBD node, so
//     nobody is connected to the source gateway's export any more;
//  3. the source's gateway releases each volume (final recovery point
//     published, writer lease given up);
//  4. adopt: the destination's gateway adopts each volume and the
//     destination attaches it;
//  5. done: the destination adds an NBD node on its gateway's export,
//     switches the raw node's file child to it, deletes the placeholder
//     and resumes the guest (cont).
//
// The guest is paused from the source's pause to the destination's cont:
// one writer at every instant. A volume whose release fails stays on the
// source's gateway (the destination reopens its export there and runs,
// reported); one the destination's gateway cannot adopt is adopted back
// by the source's gateway and stays there. The placeholder never serves
// the guest: done resumes only when every disk is on an NBD export.

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	gwclient "github.com/ferry-io/ferry/gateway/api/client"
	gwire "github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/apiauth"
	"github.com/ferry-io/ferry/kvm/client"
	"github.com/ferry-io/ferry/kvm/wire"
)

// crossIncoming is an incoming migration from another gateway.
type crossIncoming struct {
	Source        []wire.SourceDisk `json:"source"`
	SourceGateway string            `json:"source_gateway,omitempty"`
	// SourceAPI is the source ferry-kvm's API address (handover.go).
	SourceAPI string `json:"source_api,omitempty"`
	// SourceToken and SourceGatewayToken authenticate those calls
	// (wire.IncomingRequest).
	SourceToken        string `json:"source_token,omitempty"`
	SourceGatewayToken string `json:"source_gateway_token,omitempty"`
	// lastCall is when the source last called a hand-over step; v.mu.
	lastCall time.Time
	// Parked[i]: disk i's file child is its placeholder node.
	Parked []bool `json:"parked,omitempty"`
}

// sourceDisk is a disk as the source's gateway serves it, with the name
// of its store there (to adopt it back).
type sourceDisk struct {
	wire.SourceDisk
	storeName string
}

type sourceDisks []sourceDisk

func (s sourceDisks) wire() []wire.SourceDisk {
	out := make([]wire.SourceDisk, len(s))
	for i, d := range s {
		out[i] = d.SourceDisk
	}
	return out
}

// servingGateway is the gateway that serves a VM's disks: this host's,
// or the one a migration between gateways left them on (a release that
// failed), by its API address and token.
type servingGateway struct {
	Gateway
	addr, token string
	// here: this host's gateway.
	here bool
}

// localGateway is this host's gateway as a servingGateway.
func (m *Manager) localGateway() servingGateway {
	return servingGateway{Gateway: m.cfg.Gateway, addr: m.cfg.GatewayAddr, token: m.cfg.GatewayToken, here: true}
}

// servingGateway finds the gateway serving the disks of a VM (served: its
// record.Disks). A VM whose disks are on more than one gateway neither
// starts nor migrates: the destination opens, and the hand-over moves,
// the disks of one source gateway, and a start looks them up on one.
func (m *Manager) servingGateway(served []nbdDisk) (servingGateway, error) {
	var addr, token string
	for i, d := range served {
		if i > 0 && d.Gateway != addr {
			return servingGateway{}, fmt.Errorf("the VM's disks are on more than one gateway (%s on %s, %s on %s): release and adopt them onto one first: %w",
				served[0].Volume, gatewayName(addr), d.Volume, gatewayName(d.Gateway), gwire.ErrInvalid)
		}
		addr, token = d.Gateway, d.GatewayToken
	}
	if addr == "" {
		return m.localGateway(), nil
	}
	return servingGateway{Gateway: m.sourceGateway(addr, token), addr: addr, token: token}, nil
}

// gatewayName names a disk's gateway in a message ("" is this host's).
func gatewayName(addr string) string {
	if addr == "" {
		return "this host's gateway"
	}
	return "gateway " + addr
}

// sourceDisks describes the VM's disks as gw, the gateway serving them,
// serves them.
func (m *Manager) sourceDisks(ctx context.Context, gw Gateway, disks []wire.Disk) (sourceDisks, error) {
	var out sourceDisks
	for _, d := range disks {
		in, err := gw.Volume(ctx, d.Volume)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", d.Volume, err)
		}
		sd := sourceDisk{SourceDisk: wire.SourceDisk{Volume: d.Volume, ID: in.ID, Size: in.Size}}
		if in.Attach.NBD != nil {
			sd.NBDURL = in.Attach.NBD.URL
		}
		if in.Tier != nil && in.Tier.Store != "" {
			sv, err := gw.Store(ctx, in.Tier.Store)
			if err != nil {
				return nil, fmt.Errorf("volume %s: store %s: %w", d.Volume, in.Tier.Store, err)
			}
			sd.Store = &wire.StoreRef{Endpoint: sv.Endpoint, Bucket: sv.Bucket, Prefix: sv.Prefix}
			sd.storeName = sv.Name
		}
		out = append(out, sd)
	}
	return out, nil
}

// crossGateway tells whether an incoming VM's disks are on another
// gateway than this host's, and checks that they can move here: each is
// S3-backed, in a store this host's gateway has added too.
func (m *Manager) crossGateway(ctx context.Context, spec wire.VMSpec, disks []wire.SourceDisk) (bool, error) {
	if len(disks) == 0 {
		return false, nil
	}
	if len(disks) != len(spec.Disks) {
		return false, fmt.Errorf("the request describes %d disks, the VM has %d: %w", len(disks), len(spec.Disks), gwire.ErrInvalid)
	}
	own := 0
	for i, d := range disks {
		if d.Volume != spec.Disks[i].Volume {
			return false, fmt.Errorf("disk %d is %s in the request, %s in the VM: %w", i, d.Volume, spec.Disks[i].Volume, gwire.ErrInvalid)
		}
		in, err := m.cfg.Gateway.Volume(ctx, d.Volume)
		switch {
		case err == nil && in.ID == d.ID:
			own++
		case err == nil:
			return false, fmt.Errorf("volume %s: this host's gateway serves another volume of that name (id %s; the VM's is %s): %w", d.Volume, in.ID, d.ID, gwire.ErrExists)
		case errors.Is(err, gwire.ErrNotFound):
			if d.Store == nil {
				return false, fmt.Errorf("volume %s is not on this host's gateway and is a local volume of the source's: only an S3-backed volume in a bucket both gateways share can move between them: %w", d.Volume, gwire.ErrInvalid)
			}
			if d.NBDURL == "" {
				return false, fmt.Errorf("volume %s: the source's gateway serves no NBD: %w", d.Volume, gwire.ErrInvalid)
			}
			if _, err := m.storeFor(ctx, *d.Store); err != nil {
				return false, fmt.Errorf("volume %s: %w", d.Volume, err)
			}
		default:
			return false, fmt.Errorf("volume %s: %w", d.Volume, err)
		}
	}
	switch own {
	case len(disks):
		return false, nil
	case 0:
		return true, nil
	}
	return false, fmt.Errorf("some of the VM's volumes are on this host's gateway and some are not; move them to one gateway first: %w", gwire.ErrInvalid)
}

// storeFor names the store of this host's gateway on ref's bucket and
// prefix (and endpoint, when more than one store is on that bucket).
func (m *Manager) storeFor(ctx context.Context, ref wire.StoreRef) (string, error) {
	stores, err := m.cfg.Gateway.Stores(ctx)
	if err != nil {
		return "", fmt.Errorf("stores: %w", err)
	}
	norm := func(p string) string { return strings.Trim(p, "/") }
	var same []gwire.StoreView
	for _, s := range stores {
		if s.Bucket == ref.Bucket && norm(s.Prefix) == norm(ref.Prefix) {
			same = append(same, s)
		}
	}
	for _, s := range same {
		if strings.TrimRight(s.Endpoint, "/") == strings.TrimRight(ref.Endpoint, "/") {
			return s.Name, nil
		}
	}
	if len(same) == 1 {
		return same[0].Name, nil
	}
	return "", fmt.Errorf("this host's gateway has no store on bucket %s prefix %q (add it there: ferry store add NAME --endpoint %s --bucket %s): %w",
		ref.Bucket, ref.Prefix, ref.Endpoint, ref.Bucket, gwire.ErrInvalid)
}

// incomingCross returns an incoming VM migrating from another gateway.
func (m *Manager) incomingCross(name string) (*VM, *crossIncoming, error) {
	v, err := m.get(name)
	if err != nil {
		return nil, nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.rec.State != wire.StateIncoming || v.rec.Cross == nil {
		return nil, nil, fmt.Errorf("vm %s is not an incoming migration from another gateway: %w", name, gwire.ErrInvalid)
	}
	v.rec.Cross.lastCall = time.Now()
	return v, v.rec.Cross, nil
}

// ParkIncoming lets go of the source gateway's exports: each disk's file
// child becomes a placeholder node while the guest stays paused. Refused
// until the migration completed (QEMU paused, not inmigrate).
func (m *Manager) ParkIncoming(ctx context.Context, name string) error {
	v, cross, err := m.incomingCross(name)
	if err != nil {
		return err
	}
	v.hmu.Lock()
	defer v.hmu.Unlock()
	// The source sees completed a moment before this QEMU has loaded the
	// last of the stream.
	var status string
	for deadline := time.Now().Add(time.Minute); ; {
		var err error
		if status, err = queryStatus(ctx, v.exec); err != nil {
			return fmt.Errorf("query-status: %w", err)
		}
		if status != "inmigrate" || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	if status != "paused" {
		return fmt.Errorf("vm %s: QEMU is %s; the disks move only once the migration completed and the guest is paused: %w", name, status, gwire.ErrBusy)
	}
	for i, d := range cross.Source {
		if cross.Parked[i] {
			continue
		}
		hold := map[string]any{"driver": "null-co", "node-name": holdNodeName(i), "size": d.Size, "read-zeroes": true}
		if err := v.exec(ctx, "blockdev-add", hold, nil); err != nil {
			return fmt.Errorf("disk %s: placeholder: %w", d.Volume, err)
		}
		if err := reopenFile(ctx, v, i, holdNodeName(i)); err != nil {
			v.exec(ctx, "blockdev-del", map[string]any{"node-name": holdNodeName(i)}, nil)
			return fmt.Errorf("disk %s: switch to the placeholder: %w", d.Volume, err)
		}
		if err := v.exec(ctx, "blockdev-del", map[string]any{"node-name": nbdNodeName(i)}, nil); err != nil {
			// Back to the export: a disk parked is one nobody reads.
			if err2 := reopenFile(ctx, v, i, nbdNodeName(i)); err2 == nil {
				v.exec(ctx, "blockdev-del", map[string]any{"node-name": holdNodeName(i)}, nil)
			} else {
				m.log.Error("disk left on its placeholder", "vm", name, "volume", d.Volume, "err", err2)
				v.mu.Lock()
				cross.Parked[i] = true
				v.saveLocked()
				v.mu.Unlock()
			}
			return fmt.Errorf("disk %s: close the source gateway's export: %w", d.Volume, err)
		}
		v.mu.Lock()
		cross.Parked[i] = true
		v.saveLocked()
		v.mu.Unlock()
	}
	m.log.Info("incoming VM's disks parked: the source's gateway can release them", "vm", name)
	return nil
}

// reopenFile makes node as disk i's raw node's file child.
func reopenFile(ctx context.Context, v *VM, i int, node string) error {
	return v.exec(ctx, "blockdev-reopen", map[string]any{"options": []any{rawNode(i, node)}}, nil)
}

// AdoptIncoming adopts on this host's gateway the volumes the source's
// gateway released, and attaches them for the VM.
func (m *Manager) AdoptIncoming(ctx context.Context, name string, req wire.IncomingAdoptRequest) (wire.IncomingAdoptReply, error) {
	v, cross, err := m.incomingCross(name)
	if err != nil {
		return wire.IncomingAdoptReply{}, err
	}
	v.hmu.Lock()
	defer v.hmu.Unlock()
	rep := wire.IncomingAdoptReply{Adopted: map[string]string{}, Errors: map[string]string{}}
	for _, vol := range req.Volumes {
		var sd *wire.SourceDisk
		for i := range cross.Source {
			if cross.Source[i].Volume == vol {
				sd = &cross.Source[i]
			}
		}
		if sd == nil || sd.Store == nil {
			rep.Errors[vol] = "not an S3-backed disk of this VM"
			continue
		}
		if url, ok := m.adoptedAlready(ctx, name, *sd); ok {
			rep.Adopted[vol] = url
			continue
		}
		store, err := m.storeFor(ctx, *sd.Store)
		if err != nil {
			rep.Errors[vol] = err.Error()
			continue
		}
		r, err := m.cfg.Gateway.Adopt(ctx, gwire.AdoptRequest{Store: store, Volume: sd.ID, Name: vol, Hydrate: "all"})
		if err != nil {
			rep.Errors[vol] = fmt.Sprintf("adopt: %v", err)
			continue
		}
		if r.Volume.Attach.NBD == nil {
			rep.Errors[vol] = "adopted, but this host's gateway serves no NBD"
			continue
		}
		if err := attachOne(ctx, m.cfg.Gateway, vol, m.holder(name), true); err != nil {
			// Advisory: the renewal retries it.
			m.log.Warn("attach the adopted volume", "vm", name, "volume", vol, "err", err)
		}
		rep.Adopted[vol] = r.Volume.Attach.NBD.URL
		m.log.Info("adopted volume from the source's gateway", "vm", name, "volume", vol, "store", store, "recovery_point", r.RecoveryPoint, "generation", r.Generation)
	}
	return rep, nil
}

// doneCross switches every parked disk to the export req names for it
// and resumes the guest. It resumes only when no disk is left on its
// placeholder.
func (m *Manager) doneCross(ctx context.Context, v *VM, cross *crossIncoming, req wire.IncomingDoneRequest) error {
	name := v.name()
	var problems []string
	for i, sd := range cross.Source {
		var ds *wire.DiskServer
		for j := range req.Disks {
			if req.Disks[j].Volume == sd.Volume {
				ds = &req.Disks[j]
			}
		}
		if !cross.Parked[i] {
			// Never parked: QEMU still uses the source gateway's export.
			continue
		}
		if ds == nil || ds.NBDURL == "" {
			problems = append(problems, fmt.Sprintf("disk %s is served by no gateway", sd.Volume))
			continue
		}
		nd, err := parseNBDURL(sd.Volume, ds.NBDURL)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		nd.Gateway, nd.GatewayToken = ds.Gateway, ds.GatewayToken
		if err := v.exec(ctx, "blockdev-add", nbdNode(i, nd, m.cfg.ReconnectDelay, m.cfg.NBDTLS), nil); err != nil {
			problems = append(problems, fmt.Sprintf("disk %s: open %s: %v", sd.Volume, nd.url(), err))
			continue
		}
		if err := reopenFile(ctx, v, i, nbdNodeName(i)); err != nil {
			v.exec(ctx, "blockdev-del", map[string]any{"node-name": nbdNodeName(i)}, nil)
			problems = append(problems, fmt.Sprintf("disk %s: switch to %s: %v", sd.Volume, nd.url(), err))
			continue
		}
		if err := v.exec(ctx, "blockdev-del", map[string]any{"node-name": holdNodeName(i)}, nil); err != nil {
			m.log.Warn("delete placeholder node", "vm", name, "volume", sd.Volume, "err", err)
		}
		v.mu.Lock()
		cross.Parked[i] = false
		v.rec.Disks[i] = nd
		v.saveLocked()
		v.mu.Unlock()
	}
	if len(problems) > 0 {
		msg := "the guest stays paused: " + strings.Join(problems, "; ")
		v.mu.Lock()
		v.rec.LastError = msg
		v.saveLocked()
		v.mu.Unlock()
		m.log.Error("incoming VM not resumed", "vm", name, "err", msg)
		return fmt.Errorf("vm %s: %s: %w", name, msg, gwire.ErrInvalid)
	}
	if err := v.exec(ctx, "cont", nil, nil); err != nil {
		return fmt.Errorf("vm %s: resume the guest: %w", name, err)
	}
	v.mu.Lock()
	v.rec.Cross = nil
	v.mu.Unlock()
	m.log.Info("incoming VM resumed on its disks' new gateway", "vm", name)
	return nil
}

// attachOne takes holder's attachment of vol on g (reclaim: one it held
// before the gateway restarted), waiting out a gateway's start-up grace
// (503) while ctx allows.
func attachOne(ctx context.Context, g Gateway, vol, holder string, reclaim bool) error {
	for try := 0; ; try++ {
		_, err := g.Attach(ctx, vol, holder, gwire.AttachRequest{Protocol: "nbd", Reclaim: reclaim})
		var ae *gwclient.APIError
		if err != nil && errors.As(err, &ae) && ae.Status == 503 && try < 20 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
			continue
		}
		return err
	}
}

// finishCrossGateway completes a migration to a host on another gateway:
// it quits this QEMU and hands each volume over (park, release, adopt,
// done; see the top of this file). Downtime is QEMU's plus the
// hand-over's: the guest is paused until the destination's cont.
func (m *Manager) finishCrossGateway(ctx context.Context, v *VM, dst *client.Client, name string, st migrationStatus, holder string, gw servingGateway, src sourceDisks) {
	log := m.log.With("vm", name)
	start := time.Now()
	v.mu.Lock()
	v.gone = "migrated"
	if mg := v.rec.Migration; mg != nil {
		mg.Status = "handover"
	}
	v.saveLocked()
	v.mu.Unlock()
	m.mu.Lock()
	m.done[name] = v.infoLockedCopy()
	m.mu.Unlock()
	v.quit(ctx)

	servers := make([]wire.DiskServer, len(src))
	for i, d := range src {
		servers[i] = wire.DiskServer{Volume: d.Volume, NBDURL: d.NBDURL, Gateway: gw.addr, GatewayToken: gw.token}
	}
	var notes []string
	if err := dst.IncomingPark(ctx, name); err != nil {
		notes = append(notes, fmt.Sprintf("the destination did not let go of this gateway's exports (%v): the volumes stay on the source's gateway", err))
	} else {
		var released []string
		for _, d := range src {
			if err := gw.Detach(ctx, d.Volume, holder); err != nil && !errors.Is(err, gwire.ErrNotFound) {
				log.Warn("detach before release", "volume", d.Volume, "err", err)
			}
			if _, err := gw.Release(ctx, d.Volume, false); err != nil {
				notes = append(notes, fmt.Sprintf("volume %s stays on the source's gateway: release failed: %v", d.Volume, err))
				if err := attachOne(ctx, gw, d.Volume, holder, true); err != nil {
					log.Error("attach for the destination again", "volume", d.Volume, "err", err)
				}
				continue
			}
			log.Info("volume released for the destination's gateway", "volume", d.Volume)
			released = append(released, d.Volume)
		}
		if len(released) > 0 {
			ar, err := dst.IncomingAdopt(ctx, name, wire.IncomingAdoptRequest{Volumes: released})
			if err != nil {
				ar = wire.IncomingAdoptReply{Errors: map[string]string{}}
				for _, vol := range released {
					ar.Errors[vol] = err.Error()
				}
			}
			for i, d := range src {
				if !slices.Contains(released, d.Volume) {
					continue
				}
				if url, ok := ar.Adopted[d.Volume]; ok {
					servers[i] = wire.DiskServer{Volume: d.Volume, NBDURL: url}
					continue
				}
				// Take it back: the source's gateway serves it on.
				servers[i].NBDURL = ""
				r, err := gw.Adopt(ctx, gwire.AdoptRequest{Store: d.storeName, Volume: d.ID, Name: d.Volume, Hydrate: "all"})
				if err != nil || r.Volume.Attach.NBD == nil {
					notes = append(notes, fmt.Sprintf("volume %s: the destination's gateway did not adopt it (%s) and adopting it back here failed (%v): no gateway serves it; adopt it on one (ferry volume adopt) and the guest resumes there", d.Volume, ar.Errors[d.Volume], err))
					continue
				}
				if err := attachOne(ctx, gw, d.Volume, holder, true); err != nil {
					log.Error("attach for the destination again", "volume", d.Volume, "err", err)
				}
				servers[i].NBDURL = r.Volume.Attach.NBD.URL
				notes = append(notes, fmt.Sprintf("volume %s stays on the source's gateway: the destination's did not adopt it (%s); adopted back here", d.Volume, ar.Errors[d.Volume]))
			}
		}
	}
	note := strings.Join(notes, "; ")
	doneErr := dst.IncomingDone(ctx, name, wire.IncomingDoneRequest{Disks: servers, Note: note})
	handover := time.Since(start)
	m.migrations.WithLabelValues("completed").Inc()
	m.mu.Lock()
	in := m.done[name]
	if in.Migration != nil {
		mg := *in.Migration // readers hold the old copy
		in.Migration = &mg
		mg.Status, mg.Finished = "completed", time.Now()
		mg.DowntimeMS = st.Downtime + handover.Milliseconds()
		mg.TotalMS = st.TotalTime + handover.Milliseconds()
		mg.Handover = "volumes released on the source's gateway and adopted on the destination's"
		if note != "" {
			mg.Handover = note
		}
		if doneErr != nil {
			mg.Error = fmt.Sprintf("the destination did not resume the guest: %v", doneErr)
		}
	}
	m.done[name] = in
	m.mu.Unlock()
	if doneErr != nil {
		log.Error("migration between gateways: the destination did not resume the guest", "err", doneErr, "handover", note)
		return
	}
	log.Info("migration between gateways completed", "downtime_ms", st.Downtime+handover.Milliseconds(), "qemu_downtime_ms", st.Downtime,
		"handover_ms", handover.Milliseconds(), "total_ms", st.TotalTime+handover.Milliseconds(), "transferred", st.RAM.Transferred, "handover", note)
}

// loopbackFromAfar refuses an incoming request from another host (remote,
// the request's peer address) that names the source's gateway, its API
// or its exports by a loopback address: here such an address is this
// host's own gateway or daemon, which would then be asked to release,
// renew or serve the source's volumes. The source must be configured
// with addresses other hosts reach (--gateway, --listen or
// --migration-address).
func loopbackFromAfar(remote string, req wire.IncomingRequest) error {
	if apiauth.IsLoopback(remote) {
		return nil
	}
	hostOf := func(addr string) string {
		if u, err := url.Parse(addr); err == nil && u.Host != "" {
			return u.Host
		}
		return addr
	}
	named := []struct{ what, addr string }{{"its gateway's API (--gateway)", req.SourceGateway}, {"its own API (--listen)", req.SourceAPI}}
	for _, d := range req.Disks {
		named = append(named, struct{ what, addr string }{"the export of " + d.Volume, d.NBDURL})
	}
	for _, n := range named {
		if n.addr != "" && apiauth.IsLoopback(hostOf(n.addr)) {
			return fmt.Errorf("the source host (%s) names %s as %s, a loopback address that means this host here: start its ferry-kvm with addresses other hosts reach: %w",
				remote, n.what, n.addr, gwire.ErrInvalid)
		}
	}
	return nil
}
