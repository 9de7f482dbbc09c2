package kvm

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferry-io/ferry/kvm/wire"
)

// nbdDisk is a disk's resolved NBD export.
type nbdDisk struct {
	Volume string `json:"volume"`
	Host   string `json:"host"`
	Port   string `json:"port"`
	Export string `json:"export"`
}

func (d nbdDisk) url() string { return "nbd://" + net.JoinHostPort(d.Host, d.Port) + "/" + d.Export }

// parseNBDURL splits nbd://HOST:PORT/EXPORT.
func parseNBDURL(vol, s string) (nbdDisk, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "nbd" {
		return nbdDisk{}, fmt.Errorf("volume %s: the gateway gave no usable NBD address (%q); is its NBD listener on?", vol, s)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		host, port = u.Host, "10809"
	}
	return nbdDisk{Volume: vol, Host: host, Port: port, Export: strings.TrimPrefix(u.Path, "/")}, nil
}

// qemuArgs builds QEMU's command line for a VM. incoming, when set, is the
// -incoming URI of a migration destination.
func qemuArgs(spec wire.VMSpec, dir string, disks []nbdDisk, reconnect time.Duration, accel, incoming string) ([]string, error) {
	a := []string{
		"-name", spec.Name,
		"-machine", "pc",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-m", fmt.Sprintf("%dM", spec.MemoryMiB),
		"-smp", fmt.Sprint(spec.CPUs),
		"-qmp", "unix:" + filepath.Join(dir, "qmp.sock") + ",server=on,wait=off",
		"-chardev", "socket,id=serial0,path=" + filepath.Join(dir, "console.sock") + ",server=on,wait=off,logfile=" + filepath.Join(dir, "serial.log") + ",logappend=on",
		"-serial", "chardev:serial0",
		"-pidfile", filepath.Join(dir, "qemu.pid"),
	}
	switch accel {
	case wire.AccelKVM:
		a = append(a, "-accel", "kvm")
	case wire.AccelTCG:
		a = append(a, "-accel", "tcg")
	default: // auto: KVM when it works, else TCG
		a = append(a, "-accel", "kvm", "-accel", "tcg")
	}
	for i, d := range disks {
		node := fmt.Sprintf("disk%d", i)
		bd := map[string]any{
			"driver":    "nbd",
			"node-name": node,
			"server":    map[string]any{"type": "inet", "host": d.Host, "port": d.Port},
			"export":    d.Export,
			// Requests wait this long for a reconnection before they fail:
			// a gateway restart is a stall in the guest, not an I/O error.
			"reconnect-delay": int(reconnect / time.Second),
			"cache":           map[string]any{"direct": true, "no-flush": false},
			"discard":         "unmap",
		}
		b, err := json.Marshal(bd)
		if err != nil {
			return nil, err
		}
		a = append(a, "-blockdev", string(b), "-device", fmt.Sprintf("virtio-blk-pci,drive=%s,id=vd%d,write-cache=on,discard=on", node, i))
	}
	if spec.CDROM != "" {
		a = append(a, "-drive", "file="+spec.CDROM+",media=cdrom,readonly=on,if=ide")
	}
	if spec.Kernel != "" {
		a = append(a, "-kernel", spec.Kernel)
		if spec.Initrd != "" {
			a = append(a, "-initrd", spec.Initrd)
		}
		if spec.Append != "" {
			a = append(a, "-append", spec.Append)
		}
	}
	switch net := spec.Net; {
	case net == "" || net == "none":
	case net == "user":
		a = append(a, "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,romfile=")
	case strings.HasPrefix(net, "tap:"):
		a = append(a, "-netdev", "tap,id=net0,ifname="+strings.TrimPrefix(net, "tap:")+",script=no,downscript=no", "-device", "virtio-net-pci,netdev=net0,romfile=")
	case strings.HasPrefix(net, "bridge:"):
		a = append(a, "-netdev", "bridge,id=net0,br="+strings.TrimPrefix(net, "bridge:"), "-device", "virtio-net-pci,netdev=net0,romfile=")
	default:
		return nil, fmt.Errorf("--net %q: want user, tap:IF, bridge:BR or none", net)
	}
	if incoming != "" {
		a = append(a, "-incoming", incoming)
	}
	return a, nil
}

// validNet checks a --net value.
func validNet(n string) bool {
	switch {
	case n == "" || n == "none" || n == "user":
		return true
	case strings.HasPrefix(n, "tap:") && len(n) > 4, strings.HasPrefix(n, "bridge:") && len(n) > 7:
		return true
	}
	return false
}

// resolveAccel turns auto into kvm when /dev/kvm opens, else tcg.
func resolveAccel(a string) string {
	if a != wire.AccelAuto && a != "" {
		return a
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return wire.AccelTCG
	}
	f.Close()
	return wire.AccelAuto
}
