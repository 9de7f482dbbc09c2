package docker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ferry-io/ferry/gateway/api/client"
	"github.com/ferry-io/ferry/gateway/api/wire"
	"github.com/ferry-io/ferry/internal/bootid"
	"github.com/ferry-io/ferry/internal/size"
)

// Config configures a Driver.
type Config struct {
	// Gateway is the gateway's admin API client.
	Gateway *client.Client
	// StateDir holds state.json, the FUSE mount points and helper logs.
	StateDir string
	// MountRoot holds one mount point per mounted volume (MountRoot/NAME).
	MountRoot string
	// HostID names this host to the gateway's attachments.
	HostID string
	// Attacher attaches volumes (FUSEAttacher, NBDAttacher, ISCSIAttacher).
	Attacher Attacher
	// Endpoints says how this host reaches the gateway's NBD and iSCSI
	// listeners.
	Endpoints Endpoints
	// StaleCheck is how long a mounted volume must be unused by any
	// container before leftover mount counts are dropped (see
	// sweepStale); 0 means DefaultStaleCheck, negative never.
	StaleCheck time.Duration
	Logger     *slog.Logger
}

// Driver implements the Docker volume plugin's operations. One mutex
// serialises them: Docker sends few requests, and a Mount that formats a
// volume must not race an Unmount of it.
type Driver struct {
	cfg  Config
	log  *slog.Logger
	path string

	mu sync.Mutex
	st *stateFile
	// unused records since when a mounted volume was seen unused.
	unused map[string]time.Time

	stopRenew chan struct{}
	renewDone chan struct{}
	closeOnce sync.Once
}

// VolumeInfo is one volume as Docker sees it (Get and List).
type VolumeInfo struct {
	Name       string
	Mountpoint string
	CreatedAt  string
	Status     map[string]any
}

// ErrNoVolume: Docker asked about a volume the plugin does not know.
var ErrNoVolume = errors.New("no such volume")

// NewDriver loads the state, reconciles it with what is mounted and
// attached on this host, and starts renewing the gateway attachments of
// mounted volumes.
func NewDriver(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.StaleCheck == 0 {
		cfg.StaleCheck = DefaultStaleCheck
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.MountRoot, 0o755); err != nil {
		return nil, err
	}
	// mountinfo shows real paths: compare like with like.
	if real, err := filepath.EvalSymlinks(cfg.MountRoot); err == nil {
		cfg.MountRoot = real
	}
	d := &Driver{cfg: cfg, log: cfg.Logger, path: filepath.Join(cfg.StateDir, "state.json"), stopRenew: make(chan struct{}), renewDone: make(chan struct{}), unused: map[string]time.Time{}}
	st, err := loadState(d.path)
	if err != nil {
		return nil, err
	}
	if st.HostID != "" && st.HostID != cfg.HostID {
		d.log.Warn("host id changed since the state was written", "was", st.HostID, "now", cfg.HostID)
	}
	st.HostID = cfg.HostID
	d.st = st
	if err := d.reconcile(ctx); err != nil {
		return nil, err
	}
	if s, ok := cfg.Attacher.(Sweeper); ok {
		known := map[string]bool{}
		var keep []*Attachment
		for _, v := range d.st.Volumes {
			known[v.Gateway] = true
			if v.Attachment != nil {
				keep = append(keep, v.Attachment)
			}
		}
		if err := s.Sweep(ctx, cfg.HostID, known, keep); err != nil {
			d.log.Warn("take down leftover attachments", "err", err)
		}
	}
	go d.renewLoop()
	return d, nil
}

// Close stops renewing attachments. Mounted volumes stay mounted: a
// stopped plugin must not pull storage from under running containers.
func (d *Driver) Close() {
	d.closeOnce.Do(func() {
		close(d.stopRenew)
		<-d.renewDone
	})
}

func (d *Driver) save() error {
	d.st.BootID = bootid.Get()
	return d.st.save(d.path)
}

func (d *Driver) mountpoint(name string) string { return filepath.Join(d.cfg.MountRoot, name) }

// Create makes a volume: a new gateway volume, or an existing one adopted.
func (d *Driver) Create(ctx context.Context, name string, opts map[string]string) error {
	gw, err := GatewayName(name)
	if err != nil {
		return err
	}
	o, err := ParseOptions(opts)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.st.Volumes[name]; ok {
		if len(opts) > 0 && (v.FSType != o.FSType || v.ReadOnly != o.ReadOnly) {
			return fmt.Errorf("volume %s exists with fstype=%s readonly=%t; remove it first to change them", name, v.FSType, v.ReadOnly)
		}
		return nil
	}
	for other, v := range d.st.Volumes {
		if v.Gateway == gw {
			return fmt.Errorf("volume name %q maps to gateway volume %s, which Docker volume %q uses already; choose another name", name, gw, other)
		}
	}
	v := &volumeState{Gateway: gw, FSType: o.FSType, ReadOnly: o.ReadOnly, Created: time.Now().UTC(), Mounts: map[string]int{}}
	if o.From != "" {
		// A clone shares the snapshot's data: nothing is copied.
		_, err = d.cfg.Gateway.Clone(ctx, o.From, gw)
		if errors.Is(err, wire.ErrExists) {
			return fmt.Errorf("gateway volume %s exists; a clone needs a new volume: choose another name", gw)
		}
	} else {
		_, err = d.cfg.Gateway.Create(ctx, wire.CreateRequest{Name: gw, Size: o.Size, Store: o.Store})
	}
	switch {
	case errors.Is(err, wire.ErrExists):
		// Another host created it (global scope), or `ferry volume create`
		// did: use it as it is.
		in, err := d.cfg.Gateway.Volume(ctx, gw)
		if err != nil {
			return fmt.Errorf("gateway volume %s: %w", gw, err)
		}
		if o.SizeSet && in.Size != o.Size {
			return fmt.Errorf("gateway volume %s exists with size %s, not %s; leave out -o size to use it as it is", gw, size.Format(in.Size), size.Format(o.Size))
		}
		if o.Store != "" && (in.Tier == nil || in.Tier.Store != o.Store) {
			return fmt.Errorf("gateway volume %s exists and is not in store %s; leave out -o store to use it as it is", gw, o.Store)
		}
		v.Adopted = true
		v.Created = in.Created
		d.log.Info("using existing gateway volume", "volume", name, "gateway", gw)
	case err != nil:
		return fmt.Errorf("create gateway volume %s: %w", gw, err)
	}
	d.st.Volumes[name] = v
	return d.save()
}

// Remove deletes a volume that no container uses; a volume the plugin
// adopted is only forgotten.
func (d *Driver) Remove(ctx context.Context, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.st.Volumes[name]
	if !ok {
		return fmt.Errorf("%w: %s", ErrNoVolume, name)
	}
	if n := v.refs(); n > 0 || v.Attachment != nil {
		return fmt.Errorf("volume %s is in use (mounted %d times on this host, by mount IDs %s): stop the containers using it first", name, n, strings.Join(v.mountIDs(), ", "))
	}
	if !v.Adopted {
		if l, err := d.cfg.Gateway.Attachments(ctx, v.Gateway); err == nil && len(l) > 0 {
			return fmt.Errorf("volume %s is in use on host %q (attached over %s since %s)", name, l[0].Host, l[0].Protocol, l[0].Since.UTC().Format(time.RFC3339))
		}
		err := d.cfg.Gateway.RemoveVolume(ctx, v.Gateway, false)
		switch {
		case errors.Is(err, wire.ErrNotFound):
		case errors.Is(err, wire.ErrBusy):
			return fmt.Errorf("volume %s is in use: %w", name, err)
		case err != nil:
			return fmt.Errorf("remove gateway volume %s: %w", v.Gateway, err)
		}
	}
	delete(d.st.Volumes, name)
	os.Remove(d.mountpoint(name))
	return d.save()
}

// lookup finds a volume for Mount, adopting a gateway volume of that name
// (made on another host) should Docker mount one it never created here.
func (d *Driver) lookup(ctx context.Context, name string) (*volumeState, error) {
	if v, ok := d.st.Volumes[name]; ok {
		return v, nil
	}
	gw, err := GatewayName(name)
	if err != nil {
		return nil, err
	}
	in, err := d.cfg.Gateway.Volume(ctx, gw)
	if errors.Is(err, wire.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNoVolume, name)
	}
	if err != nil {
		return nil, err
	}
	for other, v := range d.st.Volumes {
		if v.Gateway == gw {
			return nil, fmt.Errorf("gateway volume %s is Docker volume %q here", gw, other)
		}
	}
	v := &volumeState{Gateway: gw, FSType: "ext4", Adopted: true, Created: in.Created, Mounts: map[string]int{}}
	d.st.Volumes[name] = v
	return v, d.save()
}

// Mount attaches, formats if empty, and mounts a volume on its first
// Mount; later ones count.
func (d *Driver) Mount(ctx context.Context, name, id string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.lookup(ctx, name)
	if err != nil {
		return "", err
	}
	mp := d.mountpoint(name)
	delete(d.unused, name) // a container is starting: restart the stale-check period
	if v.Attachment != nil && v.Broken == "" {
		if err := d.cfg.Attacher.Healthy(ctx, v.Attachment); err != nil {
			v.Broken = err.Error()
			d.log.Error("mounted volume lost its data path; containers using it get I/O errors until they stop", "volume", name, "err", err)
		}
	}
	if v.Attachment != nil {
		if v.Broken != "" {
			return "", fmt.Errorf("volume %s is broken on this host (%s): stop the containers using it (mount IDs %s) so it can be attached afresh", name, v.Broken, strings.Join(v.mountIDs(), ", "))
		}
		v.addRef(id)
		return mp, d.save()
	}
	if err := d.attach(ctx, name, v); err != nil {
		return "", err
	}
	v.addRef(id)
	if err := d.save(); err != nil {
		return "", err
	}
	return mp, nil
}

// attach takes the gateway attachment, attaches, checks the file system,
// formats an empty volume and mounts it; on failure it undoes what it did.
func (d *Driver) attach(ctx context.Context, name string, v *volumeState) (err error) {
	in, err := d.cfg.Gateway.Volume(ctx, v.Gateway)
	if err != nil {
		return fmt.Errorf("gateway volume %s: %w", v.Gateway, err)
	}
	spec := AttachSpec{Gateway: v.Gateway, ReadOnly: v.ReadOnly, HostID: d.cfg.HostID}
	if d.cfg.Attacher.Method() == MethodISCSI {
		if in.Attach.ISCSI == nil {
			return fmt.Errorf("the gateway serves no iSCSI listener, which the iscsi attach method needs")
		}
		spec.ISCSITarget = in.Attach.ISCSI.Target
		spec.ISCSIPortal = d.cfg.Endpoints.ISCSIPortal(in.Attach.ISCSI.Portal)
		// The target's CHAP users (the volume's own or the gateway's
		// default); a gateway too old to say has them in Access alone.
		spec.CHAPUser, spec.MutualUser = in.Attach.ISCSI.CHAPUser, in.Attach.ISCSI.MutualUser
		if spec.CHAPUser == "" && in.Access != nil {
			spec.CHAPUser, spec.MutualUser = in.Access.CHAPUser, in.Access.MutualUser
		}
	} else {
		if in.Attach.NBD == nil {
			return fmt.Errorf("the gateway serves no NBD listener, which the %s attach method needs", d.cfg.Attacher.Method())
		}
		if spec.NBDURL, err = d.cfg.Endpoints.NBDURL(in.Attach.NBD.URL); err != nil {
			return err
		}
	}
	if err := d.takeAttachment(ctx, v, false); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			d.cfg.Gateway.Detach(context.WithoutCancel(ctx), v.Gateway, d.cfg.HostID)
		}
	}()
	a, err := d.cfg.Attacher.Attach(ctx, spec)
	if err != nil {
		return fmt.Errorf("attach %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			d.cfg.Attacher.Detach(context.WithoutCancel(ctx), a)
		}
	}()
	have, err := fsType(ctx, a.Device)
	if err != nil {
		return err
	}
	switch {
	case have == "" && v.ReadOnly:
		return fmt.Errorf("volume %s has no file system and is read-only, so none can be made", name)
	case have == "":
		d.log.Info("volume is empty; making a file system", "volume", name, "fstype", v.FSType, "device", a.Device)
		// The volume is thin and reads as zeroes: no discard pass.
		args := []string{"-q", "-K", a.Device}
		if v.FSType == "ext4" {
			args = []string{"-q", "-E", "nodiscard,lazy_itable_init=1", a.Device}
		}
		if _, err := run(ctx, "mkfs."+v.FSType, args...); err != nil {
			return err
		}
	case have != v.FSType:
		return fmt.Errorf("volume %s holds a %s file system, not %s (fstype=%s): Ferry never reformats a volume; create the Docker volume with -o fstype=%s to use it", name, have, v.FSType, v.FSType, have)
	}
	mp := d.mountpoint(name)
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return err
	}
	margs := []string{"-t", v.FSType}
	if v.ReadOnly {
		margs = append(margs, "-o", "ro")
	}
	if _, err := run(ctx, "mount", append(margs, a.Device, mp)...); err != nil {
		return err
	}
	v.Attachment = a
	v.Broken = ""
	d.log.Info("volume mounted", "volume", name, "gateway", v.Gateway, "method", a.Method, "device", a.Device, "mountpoint", mp)
	return nil
}

// takeAttachment records this host's hold on the volume at the gateway;
// right after a gateway start it waits out the reclaim grace.
func (d *Driver) takeAttachment(ctx context.Context, v *volumeState, reclaim bool) error {
	req := wire.AttachRequest{Protocol: d.cfg.Attacher.Method(), ReadOnly: v.ReadOnly, Reclaim: reclaim}
	deadline := time.Now().Add(wire.AttachGrace + 5*time.Second)
	for {
		_, err := d.cfg.Gateway.Attach(ctx, v.Gateway, d.cfg.HostID, req)
		var ae *client.APIError
		if err != nil && errors.As(err, &ae) && ae.Status == 503 && time.Now().Before(deadline) {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(500 * time.Millisecond):
				continue
			}
		}
		if err != nil {
			return fmt.Errorf("cannot attach volume %s here (host %s): %w", v.Gateway, d.cfg.HostID, err)
		}
		return nil
	}
}

// Unmount drops one Mount; the last unmounts and detaches.
func (d *Driver) Unmount(ctx context.Context, name, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.st.Volumes[name]
	if !ok {
		return fmt.Errorf("%w: %s", ErrNoVolume, name)
	}
	if !v.dropRef(id) {
		d.log.Warn("unmount of a mount ID with no outstanding mount; ignored", "volume", name, "id", id)
		return nil
	}
	if v.refs() > 0 {
		return d.save()
	}
	if err := d.detach(ctx, name, v); err != nil {
		d.save()
		return err
	}
	return d.save()
}

// detach unmounts the file system, detaches the device and releases the
// gateway attachment.
func (d *Driver) detach(ctx context.Context, name string, v *volumeState) error {
	if v.Attachment == nil {
		return nil
	}
	if err := unmount(d.mountpoint(name)); err != nil {
		return err
	}
	if err := d.cfg.Attacher.Detach(ctx, v.Attachment); err != nil {
		return fmt.Errorf("detach %s: %w", name, err)
	}
	v.Attachment = nil
	v.Broken = ""
	if err := d.cfg.Gateway.Detach(ctx, v.Gateway, d.cfg.HostID); err != nil && !errors.Is(err, wire.ErrNotFound) {
		d.log.Warn("release gateway attachment (it lapses on its own)", "volume", name, "err", err)
	}
	d.log.Info("volume unmounted and detached", "volume", name)
	return nil
}

// Path returns the mount point of a mounted volume, "" otherwise.
func (d *Driver) Path(ctx context.Context, name string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.st.Volumes[name]
	if !ok {
		return "", fmt.Errorf("%w: %s", ErrNoVolume, name)
	}
	if v.Attachment == nil {
		return "", nil
	}
	return d.mountpoint(name), nil
}

// Get describes a volume, with the gateway's view in Status.
func (d *Driver) Get(ctx context.Context, name string) (VolumeInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	// Only what this host knows: Docker asks Get before Create and skips
	// Create (and its options) for a volume Get finds.
	v, ok := d.st.Volumes[name]
	if !ok {
		return VolumeInfo{}, fmt.Errorf("%w: %s", ErrNoVolume, name)
	}
	vi := VolumeInfo{Name: name, CreatedAt: v.Created.Format(time.RFC3339)}
	if v.Attachment != nil {
		vi.Mountpoint = d.mountpoint(name)
	}
	status := map[string]any{
		"gateway_volume": v.Gateway,
		"fstype":         v.FSType,
		"readonly":       v.ReadOnly,
		"attach_method":  d.cfg.Attacher.Method(),
		"host":           d.cfg.HostID,
		"mounts":         v.refs(),
	}
	if v.Adopted {
		status["adopted"] = true
	}
	if v.Attachment != nil {
		status["device"] = v.Attachment.Device
	}
	if v.Broken != "" {
		status["broken"] = v.Broken
	}
	in, err := d.cfg.Gateway.Volume(ctx, v.Gateway)
	if err != nil {
		status["gateway_error"] = err.Error()
	} else {
		status["id"] = in.ID
		status["size"] = size.Format(in.Size)
		status["size_bytes"] = in.Size
		status["store"] = "local"
		if in.Tier != nil {
			status["store"] = in.Tier.Store
		}
		if in.Attach.NBD != nil {
			status["nbd_url"] = in.Attach.NBD.URL
		}
	}
	if l, err := d.cfg.Gateway.Attachments(ctx, v.Gateway); err == nil {
		holders := []string{}
		for _, a := range l {
			holders = append(holders, a.Host)
		}
		status["attached_on"] = holders
	}
	vi.Status = status
	return vi, nil
}

// List lists the volumes this plugin knows, by Docker name.
func (d *Driver) List(ctx context.Context) []VolumeInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]VolumeInfo, 0, len(d.st.Volumes))
	for name, v := range d.st.Volumes {
		vi := VolumeInfo{Name: name}
		if v.Attachment != nil {
			vi.Mountpoint = d.mountpoint(name)
		}
		out = append(out, vi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// renewLoop renews the gateway attachments of attached volumes, and
// sweeps stale mount counts.
func (d *Driver) renewLoop() {
	defer close(d.renewDone)
	t := time.NewTicker(wire.AttachRenew)
	defer t.Stop()
	for {
		select {
		case <-d.stopRenew:
			return
		case <-t.C:
		}
		// Under the lock, so a volume detached meanwhile is not renewed
		// (which would keep another host out until the lease lapsed).
		d.mu.Lock()
		for _, v := range d.st.Volumes {
			if v.Attachment == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), wire.AttachRenew)
			_, err := d.cfg.Gateway.Attach(ctx, v.Gateway, d.cfg.HostID, wire.AttachRequest{Protocol: d.cfg.Attacher.Method(), ReadOnly: v.ReadOnly, Reclaim: true})
			cancel()
			if err != nil {
				d.log.Error("renew gateway attachment", "gateway_volume", v.Gateway, "err", err)
			}
		}
		if d.cfg.StaleCheck > 0 {
			d.sweepStale(time.Now())
		}
		d.mu.Unlock()
	}
}
