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
	// Gateway is the API address of the gateway serving the disk when it
	// is not this host's (a migration between gateways left it on the
	// source's); "" is this host's gateway.
	Gateway string `json:"gateway,omitempty"`
	// GatewayToken is Gateway's API token, when it requires one (a
	// secret: the record is mode 0600).
	GatewayToken string `json:"gateway_token,omitempty"`
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
// -incoming URI of a migration destination; paused (-S) keeps the guest
// stopped until `cont`, also after an incoming migration completed.
// tls (nil: none) is the NBD disks' TLS.
func qemuArgs(spec wire.VMSpec, dir string, disks []nbdDisk, reconnect time.Duration, accel, incoming string, paused bool, tls *NBDTLS) ([]string, error) {
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
	if tls.enabled() {
		a = append(a, "-object", tls.object())
	}
	for i, d := range disks {
		for _, bd := range []map[string]any{nbdNode(i, d, reconnect, tls), rawNode(i, nbdNodeName(i))} {
			b, err := json.Marshal(bd)
			if err != nil {
				return nil, err
			}
			a = append(a, "-blockdev", string(b))
		}
		a = append(a, "-device", fmt.Sprintf("virtio-blk-pci,drive=%s,id=vd%d,write-cache=on,discard=on", diskNodeName(i), i))
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
	if paused {
		a = append(a, "-S")
	}
	return a, nil
}

// Block nodes: disk i is a raw node "diskI" (the device's drive) whose
// file child is the NBD node "diskI-nbd". The raw layer lets a migration
// between two gateways switch the file child to another gateway's export
// (blockdev-reopen) while the device stays attached; "diskI-hold" is the
// placeholder child while the volume moves (see Manager.ParkIncoming).
func diskNodeName(i int) string { return fmt.Sprintf("disk%d", i) }
func nbdNodeName(i int) string  { return fmt.Sprintf("disk%d-nbd", i) }
func holdNodeName(i int) string { return fmt.Sprintf("disk%d-hold", i) }

// cacheOpts: cache=none, flushes passed through.
func cacheOpts() map[string]any { return map[string]any{"direct": true, "no-flush": false} }

// nbdNode is disk i's NBD node, for -blockdev or blockdev-add; with tls
// it negotiates TLS with the credentials object qemuArgs defined.
func nbdNode(i int, d nbdDisk, reconnect time.Duration, tls *NBDTLS) map[string]any {
	n := map[string]any{
		"driver":    "nbd",
		"node-name": nbdNodeName(i),
		"server":    map[string]any{"type": "inet", "host": d.Host, "port": d.Port},
		"export":    d.Export,
		// Requests wait this long for a reconnection before they fail:
		// a gateway restart is a stall in the guest, not an I/O error.
		"reconnect-delay": int(reconnect / time.Second),
		"cache":           cacheOpts(),
		"discard":         "unmap",
	}
	if tls.enabled() {
		n["tls-creds"] = nbdTLSID
		if tls.X509Dir != "" && tls.Hostname != "" {
			n["tls-hostname"] = tls.Hostname
		}
	}
	return n
}

// rawNode is disk i's raw node over the node named file, for -blockdev
// and blockdev-reopen (which resets options it is not given).
func rawNode(i int, file string) map[string]any {
	return map[string]any{"driver": "raw", "node-name": diskNodeName(i), "file": file, "cache": cacheOpts(), "discard": "unmap"}
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
