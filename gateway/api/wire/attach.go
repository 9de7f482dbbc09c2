package wire

import "time"

// AttachRequest is the body of PUT /v1/volumes/{name}/attachments/{host}:
// a host says it is attaching (or still has attached) a volume. An
// attachment is a lease: it expires TTLSeconds after the last PUT unless
// renewed, so a crashed host's hold ends on its own; DELETE ends it at
// once.
type AttachRequest struct {
	// Protocol is how the host reaches the volume ("fuse", "nbd", "iscsi").
	Protocol string `json:"protocol"`
	// ReadOnly attachments may share a volume with other read-only ones; a
	// read-write one excludes every other host.
	ReadOnly bool `json:"read_only,omitempty"`
	// TTLSeconds is the lease's length; 0 means DefaultAttachTTL.
	TTLSeconds int `json:"ttl_seconds,omitempty"`
	// Reclaim says the host held this attachment before the gateway
	// restarted. Right after a start the gateway accepts only reclaims
	// (for AttachGrace), so a second host cannot slip in before the
	// holder re-asserts what the restart forgot.
	Reclaim bool `json:"reclaim,omitempty"`
}

// Attachment is one host's hold on a volume.
type Attachment struct {
	Host     string    `json:"host"`
	Protocol string    `json:"protocol"`
	ReadOnly bool      `json:"read_only,omitempty"`
	Since    time.Time `json:"since"`
	Expires  time.Time `json:"expires"`
	// Connected is set when the lease has expired but is kept because the
	// volume still has client connections open (anyone's: the gateway
	// cannot tell which are the holder's): a holder whose manager is down
	// (a restarting ferry-kvm or Docker plugin) keeps its volume while
	// what it attached (a running VM, a mounted device) still reaches it.
	// The lease lapses once every connection to the volume has closed;
	// `ferry volume detach --force` ends it at once.
	Connected bool `json:"connected,omitempty"`
}

// Attachment lease timing: holders renew well within the TTL; the grace
// after a gateway start covers a renewal interval with margin.
const (
	DefaultAttachTTL = 20 * time.Second
	AttachRenew      = 2 * time.Second
	AttachGrace      = 6 * time.Second
)
