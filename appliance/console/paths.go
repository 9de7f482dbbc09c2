package console

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
)

// Paths are the files the appliance reads and writes.
type Paths struct {
	// Data is the gateway's data directory, the data disk's mount point.
	Data string
	// State holds the appliance's own state on the data disk.
	State string
	// TokenFile is the gateway's API token.
	TokenFile string
	// API is the gateway's admin API address as seen from the appliance.
	API string
	// RunNetwork is where networkd reads runtime .network files.
	RunNetwork string
}

// DefaultPaths are the appliance's paths (appliance/rootfs).
func DefaultPaths() Paths {
	return Paths{
		Data:       "/var/lib/ferry",
		State:      "/var/lib/ferry/appliance",
		TokenFile:  "/var/lib/ferry/api-token",
		API:        "127.0.0.1:9809",
		RunNetwork: "/run/systemd/network",
	}
}

// Files in Paths.State.
const (
	CertFile      = "nbd.crt"
	KeyFile       = "nbd.key"
	ISCSIEnvFile  = "iscsi.env"
	ServeEnvFile  = "serve.env"
	NetworkDir    = "network"
	StaticNetwork = "10-ferry-static.network"
	SeedIDFile    = "nocloud-instance-id"
)

func (p Paths) cert() string     { return filepath.Join(p.State, CertFile) }
func (p Paths) key() string      { return filepath.Join(p.State, KeyFile) }
func (p Paths) iscsiEnv() string { return filepath.Join(p.State, ISCSIEnvFile) }
func (p Paths) network() string  { return filepath.Join(p.State, NetworkDir) }

// System performs the appliance's actions on the machine.
type System interface {
	// RestartGateway restarts ferry.service and waits for it to be ready.
	RestartGateway(ctx context.Context) error
	// ReloadNetwork makes networkd read its .network files again and
	// reconfigure every link.
	ReloadNetwork(ctx context.Context) error
	// PowerOff shuts the machine down.
	PowerOff(ctx context.Context) error
	// GatewayState is ferry.service's state ("active", "failed", ...).
	GatewayState(ctx context.Context) string
}

// Systemd is the System of the appliance: systemctl and networkctl.
type Systemd struct{}

var _ System = Systemd{}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %v: %w: %s", name, args, err, out)
	}
	return nil
}

// RestartGateway runs systemctl restart ferry.service (which returns once
// the gateway reported READY=1).
func (Systemd) RestartGateway(ctx context.Context) error {
	return run(ctx, "systemctl", "restart", "ferry.service")
}

// ReloadNetwork runs networkctl reload and reconfigures every link.
func (Systemd) ReloadNetwork(ctx context.Context) error {
	if err := run(ctx, "networkctl", "reload"); err != nil {
		return err
	}
	ifs, err := etherInterfaces()
	if err != nil {
		return err
	}
	if len(ifs) == 0 {
		return nil
	}
	return run(ctx, "networkctl", append([]string{"reconfigure"}, ifs...)...)
}

// PowerOff runs systemctl poweroff.
func (Systemd) PowerOff(ctx context.Context) error { return run(ctx, "systemctl", "poweroff") }

// GatewayState is systemctl is-active ferry.service.
func (Systemd) GatewayState(ctx context.Context) string {
	out, _ := exec.CommandContext(ctx, "systemctl", "is-active", "ferry.service").Output()
	if s := string(out); len(s) > 0 {
		return s[:len(s)-1]
	}
	return "unknown"
}
