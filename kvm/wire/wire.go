// Package wire holds the request and reply types of ferry-kvm's HTTP API
// (the daemon that runs QEMU VMs on Ferry volumes). It imports only the
// standard library and the gateway's wire package, whose sentinel errors
// and error body it shares: a ferry-kvm error reply is a
// gateway wire.ErrorResponse, and package client maps its code back to
// gateway wire.ErrNotFound, ErrExists, ErrBusy, ErrInvalid.
package wire

import "time"

// VM states. A VM moves between them only in kvm.VM.transition.
const (
	StateStopped   = "stopped"   // no QEMU process
	StateStarting  = "starting"  // QEMU launched, not yet running
	StateRunning   = "running"   // QEMU runs the guest
	StateStopping  = "stopping"  // powerdown asked, waiting for QEMU to exit
	StateMigrating = "migrating" // running here, live migration in progress
	StateIncoming  = "incoming"  // QEMU waits for a migration from another host
	StateCrashed   = "crashed"   // QEMU exited on its own
)

// Network modes of VMSpec.Net: "user", "tap:IF", "bridge:BR", "none".

// Accelerators.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// Disk is one VM disk: a Ferry volume QEMU attaches itself over NBD.
type Disk struct {
	Volume string `json:"volume"`
	// Created says ferry-kvm created the volume (--disk new:...).
	Created bool `json:"created,omitempty"`
}

// VMSpec is what a VM is made of; it travels with a migration.
type VMSpec struct {
	Name      string `json:"name"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int64  `json:"memory_mib"`
	Disks     []Disk `json:"disks"`
	CDROM     string `json:"cdrom,omitempty"`
	Kernel    string `json:"kernel,omitempty"`
	Initrd    string `json:"initrd,omitempty"`
	Append    string `json:"append,omitempty"`
	Net       string `json:"net"`
	Accel     string `json:"accel"`
	Autostart bool   `json:"autostart,omitempty"`
}

// NewDisk asks CreateRequest to create a volume for a disk.
type NewDisk struct {
	Name  string `json:"name"`
	Size  int64  `json:"size"`
	Store string `json:"store,omitempty"`
}

// CreateRequest is the body of POST /v1/vms. Disks names existing
// volumes; NewDisks are created on the gateway first (and appended).
type CreateRequest struct {
	VMSpec
	NewDisks []NewDisk `json:"new_disks,omitempty"`
}

// DiskInfo is a disk as VMInfo shows it.
type DiskInfo struct {
	Volume string `json:"volume"`
	Device string `json:"device"` // QEMU device id
	// Attach says how QEMU reaches it, e.g. "nbd nbd://127.0.0.1:10809/vol (reconnect-delay 60s, cache=none, discard=unmap)".
	Attach string `json:"attach"`
	// Holder is the gateway attachment's host name ("HOSTID:VM").
	Holder  string `json:"holder"`
	Created bool   `json:"created,omitempty"`
}

// Migration reports a VM's last or current live migration.
type Migration struct {
	To     string `json:"to"`
	Status string `json:"status"` // setup, active, pre-switchover, device, completed, failed, cancelled
	Error  string `json:"error,omitempty"`
	// RAM figures from QEMU's query-migrate.
	TransferredBytes int64   `json:"transferred_bytes"`
	RemainingBytes   int64   `json:"remaining_bytes"`
	TotalBytes       int64   `json:"total_bytes"`
	DirtyPagesRate   int64   `json:"dirty_pages_rate"` // pages/s
	MbpsRate         float64 `json:"mbps"`
	// DowntimeMS is QEMU's measured downtime (guest paused), including the
	// attachment hand-over; TotalMS the whole migration.
	DowntimeMS int64 `json:"downtime_ms,omitempty"`
	// Handover says how the volumes moved in a migration between two
	// gateways (released on the source's, adopted on the destination's),
	// or why one stayed on the source's gateway.
	Handover string `json:"handover,omitempty"`
	// DestinationHolder is the destination's name for the VM's
	// attachments, to which the source moves them at the switchover: a
	// source daemon restarted during the migration takes them back from
	// it.
	DestinationHolder string    `json:"destination_holder,omitempty"`
	TotalMS           int64     `json:"total_ms,omitempty"`
	Started           time.Time `json:"started"`
	Finished          time.Time `json:"finished,omitzero"`
}

// Done says the migration ended (either way).
func (m *Migration) Done() bool {
	return m.Status == "completed" || m.Status == "failed" || m.Status == "cancelled"
}

// VMInfo is a VM as the API shows it.
type VMInfo struct {
	VMSpec
	State string `json:"state"`
	PID   int    `json:"pid,omitempty"`
	// Started is when QEMU started running the guest here.
	Started       time.Time  `json:"started,omitzero"`
	UptimeSeconds float64    `json:"uptime_seconds,omitempty"`
	Disks         []DiskInfo `json:"disk_info"`
	// LastError explains a crashed or failed state (QEMU's last stderr
	// lines).
	LastError string     `json:"last_error,omitempty"`
	Migration *Migration `json:"migration,omitempty"`
	Host      string     `json:"host"` // the ferry-kvm host id
}

// StopRequest is the body of POST /v1/vms/{name}/stop.
type StopRequest struct {
	// Force quits QEMU at once instead of an ACPI powerdown.
	Force bool `json:"force,omitempty"`
	// TimeoutSeconds bounds the wait for the guest to power off before
	// QEMU is quit; 0 means the daemon's default.
	TimeoutSeconds int `json:"timeout_seconds,omitempty"`
}

// MigrateRequest is the body of POST /v1/vms/{name}/migrate.
type MigrateRequest struct {
	// To is the destination ferry-kvm's API address.
	To string `json:"to"`
	// ToToken is the destination daemon's API token, which the source
	// sends with its requests to it; empty when the destination needs
	// none. It is never stored or logged.
	ToToken string `json:"to_token,omitempty"`
	// MaxBandwidth caps the migration stream in bytes/s (0: 10 GiB/s,
	// kvm.DefaultMigrationBandwidth).
	MaxBandwidth int64 `json:"max_bandwidth,omitempty"`
}

// IncomingRequest is the body of POST /v1/incoming: the source asks the
// destination to start QEMU waiting for the VM.
type IncomingRequest struct {
	Spec VMSpec `json:"spec"`
	// SourceHost is the source's host id (for the destination's records).
	SourceHost string `json:"source_host"`
	// Disks are the VM's disks as the source's gateway serves them. A
	// destination whose gateway does not serve them (another gateway on
	// the same bucket) opens them there and takes them over after the
	// switchover: park, the source's release, adopt, done. Empty from an
	// older source: the destination resolves the disks on its gateway.
	Disks []SourceDisk `json:"disks,omitempty"`
	// SourceGateway is the source's gateway API address: a disk left on
	// the source's gateway keeps its attachment renewed there.
	SourceGateway string `json:"source_gateway,omitempty"`
	// SourceAPI is the source ferry-kvm's API address: a destination
	// left waiting for the hand-over after the migration completed asks
	// it whether it still drives the hand-over, and finishes it itself
	// when it does not answer or does not know the VM.
	SourceAPI string `json:"source_api,omitempty"`
	// SourceToken is the source ferry-kvm's API token and
	// SourceGatewayToken its gateway's, when they require one: the
	// destination needs them for the calls above. Secrets: kept in the
	// VM's state file (mode 0600), never logged.
	SourceToken        string `json:"source_token,omitempty"`
	SourceGatewayToken string `json:"source_gateway_token,omitempty"`
}

// StoreRef names an S3 store by where it is: the same on every gateway
// that added it, whatever name each gave it.
type StoreRef struct {
	Endpoint string `json:"endpoint"`
	Bucket   string `json:"bucket"`
	Prefix   string `json:"prefix,omitempty"`
}

// SourceDisk is a disk as the source's gateway serves it.
type SourceDisk struct {
	Volume string `json:"volume"`
	ID     string `json:"id"`
	Size   int64  `json:"size"`
	// NBDURL is its export on the source's gateway.
	NBDURL string `json:"nbd_url"`
	// Store is the volume's S3 store; nil for a local volume, which
	// cannot move to another gateway.
	Store *StoreRef `json:"store,omitempty"`
}

// IncomingAdoptRequest is the body of POST /v1/incoming/{name}/adopt:
// the source's gateway released these volumes; the destination's gateway
// adopts them and the destination attaches them.
type IncomingAdoptRequest struct {
	Volumes []string `json:"volumes"`
}

// IncomingAdoptReply answers POST /v1/incoming/{name}/adopt.
type IncomingAdoptReply struct {
	// Adopted maps each volume adopted to its NBD URL on the
	// destination's gateway.
	Adopted map[string]string `json:"adopted"`
	// Errors maps each volume not adopted to why.
	Errors map[string]string `json:"errors,omitempty"`
}

// DiskServer is where a disk is served after a migration between
// gateways.
type DiskServer struct {
	Volume string `json:"volume"`
	NBDURL string `json:"nbd_url"`
	// Gateway is the API address of the gateway that serves it when it
	// is not the destination's own ("").
	Gateway string `json:"gateway,omitempty"`
	// GatewayToken is Gateway's API token, when it requires one.
	GatewayToken string `json:"gateway_token,omitempty"`
}

// IncomingDoneRequest is the body of POST /v1/incoming/{name}/done.
type IncomingDoneRequest struct {
	// Disks (a migration between gateways only) say where each disk is
	// served now: the destination switches its disks there and resumes
	// the guest.
	Disks []DiskServer `json:"disks,omitempty"`
	// Note is kept as the VM's last error on the destination: why a disk
	// stayed on the source's gateway.
	Note string `json:"note,omitempty"`
}

// IncomingReply answers POST /v1/incoming.
type IncomingReply struct {
	// URI is where the source sends the migration stream (tcp:HOST:PORT).
	URI string `json:"uri"`
	// Holder is the attachment host name the destination will hold the
	// VM's volumes under.
	Holder string `json:"holder"`
	// CrossGateway: the destination uses another gateway than the
	// source's; its QEMU opened the source gateway's exports and stays
	// paused after the switchover until the volumes are handed over.
	CrossGateway bool `json:"cross_gateway,omitempty"`
}
