package docker

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultStaleCheck is how long a mounted volume must stay unused by any
// container before its leftover mount counts are dropped.
const DefaultStaleCheck = 30 * time.Second

// devOf returns the MAJOR:MINOR of the file system mounted at mp.
func devOf(mp string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(mp, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d:%d", unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev))), nil
}

// devicesInUse returns the devices (MAJOR:MINOR) some mount in any mount
// namespace holds (a container's bind mount, `docker cp`), leaving out
// the plugin's own mount points (own) in its own namespace. Each
// namespace is read once.
func devicesInUse(own map[string]bool) (map[string]bool, error) {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return nil, err
	}
	pids, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	seen := map[string]bool{}
	for _, p := range pids {
		ns, err := os.Readlink(p + "/ns/mnt")
		if err != nil || seen[ns] {
			continue // gone, or a namespace already read
		}
		seen[ns] = true
		readMountDevices(p+"/mountinfo", used, ns == self, own)
	}
	return used, nil
}

// readMountDevices adds the devices a mountinfo file lists to used,
// leaving out the mount points in own when ownNS. A process gone while
// read adds what was read.
func readMountDevices(path string, used map[string]bool, ownNS bool, own map[string]bool) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		if ownNS && own[unescapeMount(fields[4])] {
			continue
		}
		used[fields[2]] = true
	}
}

// sweepStale drops the mount counts of volumes no container has used for
// the stale-check period, and detaches them. Docker repeats no Unmount
// that failed (the plugin was down when a container stopped), so without
// this such a volume would stay attached for good. A Mount restarts the
// period, so a container being started is never pulled from. Called with
// mu held.
func (d *Driver) sweepStale(now time.Time) {
	own := map[string]bool{}
	for name, v := range d.st.Volumes {
		if v.refs() > 0 && v.Attachment != nil {
			own[d.mountpoint(name)] = true
		}
	}
	if len(own) == 0 {
		clear(d.unused)
		return
	}
	inUse, err := devicesInUse(own)
	if err != nil {
		d.log.Warn("check which volumes are in use", "err", err)
		return // when in doubt, keep
	}
	for name, v := range d.st.Volumes {
		if v.refs() == 0 || v.Attachment == nil {
			delete(d.unused, name)
			continue
		}
		dev, err := devOf(d.mountpoint(name))
		if err != nil || inUse[dev] {
			delete(d.unused, name) // in use, or when in doubt
			continue
		}
		since, ok := d.unused[name]
		if !ok {
			d.unused[name] = now
			continue
		}
		if now.Sub(since) < d.cfg.StaleCheck {
			continue
		}
		d.log.Warn("no container has used the volume for the stale-check period; dropping its leftover mount counts (Docker's Unmount for them never arrived) and detaching",
			"volume", name, "ids", v.mountIDs(), "unused_for", now.Sub(since).Round(time.Second))
		v.Mounts = map[string]int{}
		delete(d.unused, name)
		if err := d.detach(context.Background(), name, v); err != nil {
			d.log.Error("detach unused volume", "volume", name, "err", err)
		}
		if err := d.save(); err != nil {
			d.log.Error("save state", "err", err)
		}
	}
}
