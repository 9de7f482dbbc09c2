package docker

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/ferry-io/ferry/internal/bootid"
)

// reconcile makes what is mounted and attached on this host agree with
// the state after a start (a restart, a crash, a reboot):
//
//   - after a reboot (another boot id) nothing is mounted, whatever the
//     counts say: every count is dropped;
//   - a volume with mounts whose data path still works (mount point
//     mounted, loop device backed by its FUSE file, helper alive) is kept,
//     and its gateway attachment reclaimed;
//   - a volume with mounts whose data path died is marked broken: the
//     containers holding it get I/O errors, new Mounts are refused, and the
//     last Unmount cleans it up;
//   - everything else of ours is taken down: file systems mounted under the
//     mount root, loop devices backed by files under the FUSE root, FUSE
//     mounts there. Nothing stays attached with nothing using it.
func (d *Driver) reconcile(ctx context.Context) error {
	if d.st.BootID != "" && d.st.BootID != bootid.Get() {
		d.log.Info("host rebooted since the state was written: forgetting mount counts")
		for _, v := range d.st.Volumes {
			v.Mounts = map[string]int{}
			v.Attachment = nil
			v.Broken = ""
		}
	}
	mounts, err := readMounts()
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	mounted := map[string]mountEntry{}
	for _, m := range mounts {
		mounted[m.Point] = m
	}
	keepMount := map[string]bool{}
	keepLoop := map[string]bool{}
	keepFUSE := map[string]bool{}
	for name, v := range d.st.Volumes {
		mp := d.mountpoint(name)
		if v.refs() == 0 {
			if v.Attachment != nil {
				d.log.Info("reconcile: volume attached with no mounts; detaching", "volume", name)
			}
			continue // taken down below, with everything not kept
		}
		if v.Attachment == nil {
			// Counted but never attached (a crash inside Mount, before
			// the state was saved with the attachment): Docker was told
			// it failed.
			d.log.Warn("reconcile: mount counts without an attachment; dropping them", "volume", name, "ids", v.mountIDs())
			v.Mounts = map[string]int{}
			continue
		}
		m, ok := mounted[mp]
		if !ok {
			d.log.Warn("reconcile: volume counted as mounted is not; dropping its counts", "volume", name, "mountpoint", mp)
			v.Mounts = map[string]int{}
			continue
		}
		keepMount[mp] = true
		keepLoop[v.Attachment.Device] = true
		keepFUSE[v.Attachment.FUSEDir] = true
		if err := d.cfg.Attacher.Healthy(ctx, v.Attachment); err != nil {
			v.Broken = err.Error()
			d.log.Error("reconcile: mounted volume lost its data path; containers using it get I/O errors until they stop", "volume", name, "device", m.Source, "err", err)
			continue
		}
		if err := d.takeAttachment(ctx, v, true); err != nil {
			d.log.Error("reconcile: reclaim gateway attachment", "volume", name, "err", err)
		}
		d.log.Info("reconcile: volume still in use; kept", "volume", name, "mounts", v.refs(), "device", v.Attachment.Device)
	}
	// Take down what is ours and not kept: file systems, then loop
	// devices, then FUSE mounts (the helpers exit when theirs goes).
	fuseRoot := d.fuseRoot()
	for _, m := range mounts {
		if under(m.Point, d.cfg.MountRoot) && !keepMount[m.Point] {
			d.log.Info("reconcile: unmounting unused volume", "mountpoint", m.Point)
			if err := unmount(m.Point); err != nil {
				d.log.Error("reconcile", "err", err)
			}
		}
	}
	loops, err := listLoops(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	for _, l := range loops {
		if fuseRoot != "" && under(l.BackFile, fuseRoot) && !keepLoop[l.Name] {
			d.log.Info("reconcile: detaching unused loop device", "device", l.Name, "file", l.BackFile)
			if _, err := run(ctx, "losetup", "-d", l.Name); err != nil {
				d.log.Error("reconcile", "err", err)
			}
		}
	}
	for _, m := range mounts {
		if fuseRoot != "" && under(m.Point, fuseRoot) && !keepFUSE[m.Point] {
			d.log.Info("reconcile: unmounting unused FUSE file system", "dir", m.Point)
			if err := unmount(m.Point); err != nil {
				d.log.Error("reconcile", "err", err)
			}
		}
	}
	for name, v := range d.st.Volumes {
		if v.refs() == 0 && v.Attachment != nil {
			if err := d.cfg.Attacher.Detach(ctx, v.Attachment); err != nil {
				d.log.Error("reconcile: detach", "volume", name, "err", err)
			}
			v.Attachment = nil
			v.Broken = ""
			d.cfg.Gateway.Detach(ctx, v.Gateway, d.cfg.HostID)
		}
	}
	return d.save()
}

// fuseRoot is where the FUSE attacher mounts, or "" for other attachers.
func (d *Driver) fuseRoot() string {
	if f, ok := d.cfg.Attacher.(*FUSEAttacher); ok {
		return f.Root
	}
	return ""
}

// under reports whether path is strictly inside dir.
func under(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != "." && !strings.HasPrefix(rel, "..")
}
