// Package wire holds the admin API's request and reply types and its
// error sentinels. It imports only the standard library, so that the CLI,
// the Docker volume plugin and ferry-kvm can talk to a gateway (through
// package client) without linking any backend. The gateway's own packages
// use these types as theirs (package volume aliases them).
package wire

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// Sentinel errors callers branch on with errors.Is. A reply's Code names
// one; the client maps it back. Their words name no kind of thing, as
// they are wrapped for volumes, snapshots, stores and VMs alike: the
// message that wraps one says what was not found, or exists, or is busy.
var (
	// ErrNotFound: nothing (no volume, snapshot, store) has that name.
	ErrNotFound = errors.New("not found")
	// ErrExists: something of that name exists already.
	ErrExists = errors.New("already exists")
	// ErrBusy: it is in use (connected clients, a running VM, a move).
	ErrBusy = errors.New("in use")
	// ErrInvalid: a request argument (name, size) is not acceptable.
	ErrInvalid = errors.New("invalid argument")
	// ErrDenied: the volume's access rules do not admit this client.
	ErrDenied = errors.New("access denied")
	// ErrUnauthenticated: the API needs a bearer token and the request
	// carried none, or a wrong one.
	ErrUnauthenticated = errors.New("API token missing or wrong")
)

// Error codes of ErrorResponse, one per sentinel.
const (
	CodeNotFound = "not_found"
	CodeExists   = "exists"
	CodeBusy     = "busy"
	CodeInvalid  = "invalid"
	CodeDenied   = "denied"
	// CodeUnauthenticated comes with HTTP 401.
	CodeUnauthenticated = "unauthenticated"
)

var codes = []struct {
	code string
	err  error
}{
	{CodeNotFound, ErrNotFound}, {CodeExists, ErrExists}, {CodeBusy, ErrBusy},
	{CodeInvalid, ErrInvalid}, {CodeDenied, ErrDenied},
	{CodeUnauthenticated, ErrUnauthenticated},
}

// CodeOf returns the code of the sentinel err wraps, or "".
func CodeOf(err error) string {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return ""
}

// ErrOf returns the sentinel a code names, or nil.
func ErrOf(code string) error {
	for _, c := range codes {
		if c.code == code {
			return c.err
		}
	}
	return nil
}

// MinTokenLen is the shortest API token accepted.
const MinTokenLen = 20

// ParseToken checks an API token read from a file or the environment: one
// line of at least MinTokenLen printable ASCII characters without spaces.
// Surrounding white space (a final newline) is dropped.
func ParseToken(b []byte) (string, error) {
	t := strings.TrimSpace(string(b))
	if len(t) < MinTokenLen {
		return "", fmt.Errorf("the API token is %d characters; at least %d are needed", len(t), MinTokenLen)
	}
	for _, r := range t {
		if r <= ' ' || r > '~' {
			return "", errors.New("the API token must be printable ASCII without spaces")
		}
	}
	return t, nil
}

// ReadTokenFile reads an API token from a file (a daemon's api-token
// file, or a copy of it) and checks it with ParseToken.
func ReadTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("API token file: %w", err)
	}
	t, err := ParseToken(b)
	if err != nil {
		return "", fmt.Errorf("API token file %s: %w", path, err)
	}
	return t, nil
}

// ErrorResponse is the body of every error reply.
type ErrorResponse struct {
	Error string `json:"error"`
	// Code names the sentinel the error wraps (CodeNotFound, ...); empty
	// for other errors.
	Code string `json:"code,omitempty"`
}

// Protocols a Client can attach over.
const (
	ProtoNBD   = "nbd"
	ProtoISCSI = "iscsi"
)

// Client describes one client connection to a volume: who attaches, over
// what, and since when.
type Client struct {
	// Protocol is ProtoNBD or ProtoISCSI.
	Protocol string `json:"protocol"`
	// Remote is the client's address, host:port.
	Remote string `json:"remote"`
	// Initiator is an iSCSI client's initiator name.
	Initiator string `json:"initiator,omitempty"`
	// TLSIdentity is an NBD client's verified TLS certificate's subject
	// common name.
	TLSIdentity string `json:"tls_identity,omitempty"`
	// Export is what the client opened when it is not the volume itself:
	// a snapshot, VOLUME@SNAPSHOT.
	Export string `json:"export,omitempty"`
	// Since is when the client attached.
	Since time.Time `json:"since"`
}

// Volume describes a volume.
type Volume struct {
	Name        string    `json:"name"`
	ID          string    `json:"id"`
	Size        int64     `json:"size"`
	Backend     string    `json:"backend"`
	Allocated   int64     `json:"allocated"`
	Connections []Client  `json:"connections"`
	Created     time.Time `json:"created"`
	// Access shows access control without secrets; nil when unset.
	Access *AccessView `json:"access,omitempty"`
	// Tier is set for S3-backed volumes.
	Tier *TierInfo `json:"tier,omitempty"`
	// WritesHeldBy is the boot id (/proc/sys/kernel/random/boot_id) of the
	// kernel that holds the volume's acknowledged writes until a flush:
	// they outlive the gateway's process and are lost only with that
	// kernel. Empty when the gateway cannot promise it (S3-backed
	// volumes): a write not yet flushed may then be lost with the process.
	// A client on the same kernel need not keep its own copy of unflushed
	// writes (the Docker plugin's FUSE path).
	WritesHeldBy string `json:"writes_held_by,omitempty"`
}

// VolumeInfo is a volume as the API shows it: the volume and how to
// reach it.
type VolumeInfo struct {
	Volume
	Attach AttachInfo `json:"attach"`
	// Attachments are the hosts that hold the volume (Docker plugins):
	// see PUT /v1/volumes/{name}/attachments/{host}.
	Attachments []Attachment `json:"attachments,omitempty"`
}

// AttachInfo says how clients reach a volume over each protocol served.
type AttachInfo struct {
	NBD   *NBDAttach   `json:"nbd,omitempty"`
	ISCSI *ISCSIAttach `json:"iscsi,omitempty"`
}

// NBDAttach is a volume's NBD export.
type NBDAttach struct {
	// URL is nbd://HOST:PORT/NAME, as qemu and libnbd take it.
	URL string `json:"url"`
}

// ISCSIAttach is a volume's iSCSI target.
type ISCSIAttach struct {
	Target string `json:"target"`
	Portal string `json:"portal"`
	// URL is iscsi://PORTAL/TARGET/0, as qemu and libiscsi take it.
	URL string `json:"url"`
	// CHAPUser, when set, is the CHAP user a login to the target must
	// authenticate as, and MutualUser the name the target answers mutual
	// CHAP with: the volume's own, or the gateway's default for a volume
	// without its own (Access shows only the volume's).
	CHAPUser   string `json:"chap_user,omitempty"`
	MutualUser string `json:"mutual_chap_user,omitempty"`
}

// AccessView is a volume's access control without secrets.
type AccessView struct {
	CHAPUser        string   `json:"chap_user,omitempty"`
	MutualUser      string   `json:"mutual_chap_user,omitempty"`
	AllowInitiators []string `json:"allow_initiators,omitempty"`
	AllowAddresses  []string `json:"allow_addresses,omitempty"`
	// AllowTLSIdentities are the NBD client certificate names admitted.
	AllowTLSIdentities []string `json:"allow_tls_identities,omitempty"`
	// ISCSIWithoutCHAP: served over iSCSI without CHAP even when the
	// iSCSI listener is off loopback (where CHAP is otherwise required).
	ISCSIWithoutCHAP bool `json:"iscsi_without_chap,omitempty"`
}

// AccessUpdate changes a volume's access control. Nil fields are left as
// they are; ClearCHAP removes CHAP settings and ClearAllow both
// allow-lists, before the rest is applied.
type AccessUpdate struct {
	CHAPUser        *string  `json:"chap_user,omitempty"`
	CHAPSecret      *string  `json:"chap_secret,omitempty"`
	MutualUser      *string  `json:"mutual_chap_user,omitempty"`
	MutualSecret    *string  `json:"mutual_chap_secret,omitempty"`
	AllowInitiators []string `json:"allow_initiators,omitempty"`
	AllowAddresses  []string `json:"allow_addresses,omitempty"`
	ClearCHAP       bool     `json:"clear_chap,omitempty"`
	ClearAllow      bool     `json:"clear_allow,omitempty"`
	// AllowTLSIdentities adds NBD client certificate names (ClearAllow
	// clears them with the other lists).
	AllowTLSIdentities []string `json:"allow_tls_identities,omitempty"`
	// ISCSIWithoutCHAP sets or clears the volume's opt-out of the CHAP
	// that an iSCSI listener off loopback requires.
	ISCSIWithoutCHAP *bool `json:"iscsi_without_chap,omitempty"`
}

// Empty reports whether u changes nothing.
func (u *AccessUpdate) Empty() bool {
	return u == nil || (u.CHAPUser == nil && u.CHAPSecret == nil && u.MutualUser == nil &&
		u.MutualSecret == nil && len(u.AllowInitiators) == 0 && len(u.AllowAddresses) == 0 && !u.ClearCHAP && !u.ClearAllow && u.ISCSIWithoutCHAP == nil && len(u.AllowTLSIdentities) == 0)
}

// TierInfo is an S3-backed volume's cache and recovery-point state.
type TierInfo struct {
	Store          string    `json:"store"`
	ChunkSize      int64     `json:"chunk_size"`
	CachedBytes    int64     `json:"cached_bytes"`
	DirtyBytes     int64     `json:"dirty_bytes"`
	StoredChunks   int       `json:"stored_chunks"`
	LastCheckpoint time.Time `json:"last_checkpoint,omitzero"`
	// RPOSeconds is the age of the newest recovery point (0 if none).
	RPOSeconds  float64 `json:"rpo_seconds"`
	UploadError string  `json:"upload_error,omitempty"`
	// Lease is this gateway's writer lease on the volume; nil on a store
	// without conditional puts.
	Lease *LeaseInfo `json:"lease,omitempty"`
	// Hydration is the background fill of the cache after an adoption;
	// nil when none ran.
	Hydration *HydrationInfo `json:"hydration,omitempty"`
	// Migration is the volume's move to another store (ferry volume
	// migrate): running, or how the last one ended; nil when none ran.
	Migration *MigrationInfo `json:"migration,omitempty"`
}

// MigrateRequest is the body of POST /v1/volumes/{name}/migrate.
type MigrateRequest struct {
	// ToStore is the store the volume moves to.
	ToStore string `json:"to_store"`
	// Rate bounds the copy, in bytes a second (0: no bound).
	Rate int64 `json:"rate,omitempty"`
	// DeleteSource deletes the volume's objects in its old store once it
	// switched (default: they stay, with the writer lease released).
	DeleteSource bool `json:"delete_source,omitempty"`
}

// MigrationInfo is a move of a volume to another store.
type MigrationInfo struct {
	// State is "starting" (taking the destination's writer lease),
	// "copying" (the volume serves and uploads to From while its objects
	// are copied), "switching" (uploads held: the last copy and the
	// switch), "finishing" (switched: releasing the old store), "done",
	// "failed" (the volume stays on From; Error says why) or "cancelled".
	State        string `json:"state"`
	From         string `json:"from"`
	To           string `json:"to"`
	DeleteSource bool   `json:"delete_source,omitempty"`
	// TotalBytes is the volume's objects in From at the latest pass;
	// DoneBytes what of them To holds.
	TotalBytes  int64     `json:"total_bytes"`
	DoneBytes   int64     `json:"done_bytes"`
	CopiedBytes int64     `json:"copied_bytes"`
	Percent     float64   `json:"percent"`
	BytesPerSec float64   `json:"bytes_per_second"`
	ETASeconds  float64   `json:"eta_seconds,omitempty"`
	Passes      int       `json:"passes"`
	Started     time.Time `json:"started,omitzero"`
	Ended       time.Time `json:"ended,omitzero"`
	Error       string    `json:"error,omitempty"`
}

// HydrationInfo is a hydration's progress.
type HydrationInfo struct {
	// State is "running", "done", "cache-full" (stopped: the cache budget
	// is full) or "stopped".
	State string `json:"state"`
	// TotalBytes is the volume's data in the store; DoneBytes what of it
	// is cached.
	TotalBytes  int64   `json:"total_bytes"`
	DoneBytes   int64   `json:"done_bytes"`
	Percent     float64 `json:"percent"`
	BytesPerSec float64 `json:"bytes_per_second"`
	ETASeconds  float64 `json:"eta_seconds,omitempty"`
	Error       string  `json:"error,omitempty"`
}

// LeaseInfo is a volume's writer lease.
type LeaseInfo struct {
	// State is "held", "suspended" (not renewed in time: writes refused
	// until it is) or "lost" (another gateway writes the volume: writes
	// refused for good).
	State      string    `json:"state"`
	Generation uint64    `json:"generation"`
	Holder     string    `json:"holder"`
	HolderName string    `json:"holder_name,omitempty"`
	Expires    time.Time `json:"expires,omitzero"`
	Released   bool      `json:"released,omitempty"`
	Error      string    `json:"error,omitempty"`
}

// BucketVolume is a volume as its store holds it, for GET
// /v1/stores/{name}/volumes: whichever gateway serves it, if any.
type BucketVolume struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Size      int64     `json:"size"`
	ChunkSize int64     `json:"chunk_size"`
	Created   time.Time `json:"created"`
	// RecoveryPoint is the newest recovery point's number and time.
	RecoveryPoint        uint64    `json:"recovery_point,omitempty"`
	RecoveryPointCreated time.Time `json:"recovery_point_created,omitzero"`
	// Lease is the writer lease as the store holds it (nil: none).
	Lease *LeaseInfo `json:"lease,omitempty"`
	// Local names the volume on this gateway when it serves it.
	Local string `json:"local,omitempty"`
}

// AdoptRequest is the body of POST /v1/adopt: serve a volume a store
// holds, taking its writer lease.
type AdoptRequest struct {
	Store string `json:"store"`
	// Volume is the volume's id, or its name in the store.
	Volume string `json:"volume"`
	// Name is the local name (default: the name in the store).
	Name string `json:"name,omitempty"`
	// Force takes a lease that expired without a release.
	Force bool `json:"force,omitempty"`
	// Steal takes a live lease: its holder is fenced and loses what it
	// had not uploaded.
	Steal bool `json:"steal,omitempty"`
	// Hydrate is "all" (default: fill the cache with the volume's data in
	// the background) or "none" (fetch only what is read).
	Hydrate string `json:"hydrate,omitempty"`
	// HydrateRate bounds hydration, in bytes a second (0: no bound).
	HydrateRate int64 `json:"hydrate_rate,omitempty"`
}

// AdoptResponse answers POST /v1/adopt.
type AdoptResponse struct {
	Volume VolumeInfo `json:"volume"`
	// RecoveryPoint is the point the volume was adopted at: what it reads
	// until written. Its age bounds what an unplanned move lost.
	RecoveryPoint        uint64    `json:"recovery_point"`
	RecoveryPointCreated time.Time `json:"recovery_point_created,omitzero"`
	AgeSeconds           float64   `json:"age_seconds"`
	// Generation is the writer generation this gateway took.
	Generation uint64 `json:"generation"`
	// Previous is the lease as it was before.
	Previous *LeaseInfo `json:"previous,omitempty"`
}

// PoolDir describes one directory of the local pool.
type PoolDir struct {
	Path  string `json:"path"`
	Total int64  `json:"total"`
	Free  int64  `json:"free"`
	// FS is the file system the directory is on ("xfs", "ext4", ...).
	FS string `json:"fs,omitempty"`
	// Reflink: files there can share blocks, so local volumes there have
	// snapshots and clones.
	Reflink bool `json:"reflink"`
}

// PoolInfo describes the local pool.
type PoolInfo struct {
	Dirs []PoolDir `json:"dirs"`
	// Cache is the local cache shared by S3-backed volumes.
	Cache       CacheInfo `json:"cache"`
	Volumes     int       `json:"volumes"`
	Provisioned int64     `json:"provisioned"`
	Allocated   int64     `json:"allocated"`
}

// CacheInfo is the shared cache of S3-backed volumes.
type CacheInfo struct {
	Budget int64 `json:"budget"`
	Used   int64 `json:"used"`
	Dirty  int64 `json:"dirty"`
}

// StoreConfig is an S3 store the gateway may put volumes in (the body of
// POST /v1/stores). The secret key is never returned or logged.
type StoreConfig struct {
	Name      string `json:"name"`
	Endpoint  string `json:"endpoint"`
	Bucket    string `json:"bucket"`
	Prefix    string `json:"prefix,omitempty"`
	Region    string `json:"region,omitempty"`
	AccessKey string `json:"access_key"`
	SecretKey string `json:"secret_key"`
	// Conditional is set by the gateway: whether the server honours
	// conditional puts (If-Match), which volumes need to move between
	// gateways. Unset in requests.
	Conditional *bool `json:"conditional,omitempty"`
}

// StoreView is a store as the API shows it: no credentials.
type StoreView struct {
	Name     string `json:"name"`
	Endpoint string `json:"endpoint"`
	Bucket   string `json:"bucket"`
	Prefix   string `json:"prefix,omitempty"`
	Region   string `json:"region,omitempty"`
	Volumes  int    `json:"volumes"`
	// Movable: the server honours conditional puts, so volumes in this
	// store have a writer lease and can move between gateways.
	Movable bool `json:"movable"`
	// Objects and Bytes are filled by GET /v1/stores/{name} (they need a
	// listing).
	Objects int64  `json:"objects,omitempty"`
	Bytes   int64  `json:"bytes,omitempty"`
	Error   string `json:"error,omitempty"`
}

// StoreHealth is a store with whether it answered a probe.
type StoreHealth struct {
	StoreView
	Reachable bool `json:"reachable"`
	// Checked is when the probe ran.
	Checked time.Time `json:"checked"`
}

// ExportLocation tells `ferry volume export --from-s3` where a volume's
// objects are, without credentials.
type ExportLocation struct {
	Store    StoreView `json:"store"`
	Prefix   string    `json:"prefix"` // full key prefix of the volume's objects
	VolumeID string    `json:"volume_id"`
}

// CreateRequest is the body of POST /v1/volumes.
type CreateRequest struct {
	Name   string        `json:"name"`
	Size   int64         `json:"size"`
	Access *AccessUpdate `json:"access,omitempty"`
	// Store makes an S3-backed volume in that store.
	Store     string `json:"store,omitempty"`
	ChunkSize int64  `json:"chunk_size,omitempty"`
}

// UpdateRequest is the body of PATCH /v1/volumes/{name}: a new size (grow
// only) and/or access-control changes.
type UpdateRequest struct {
	Size   *int64        `json:"size,omitempty"`
	Access *AccessUpdate `json:"access,omitempty"`
}

// CheckpointResponse answers POST /v1/volumes/{name}/checkpoint.
type CheckpointResponse struct {
	Sequence uint64    `json:"sequence"`
	Created  time.Time `json:"created"`
	// Chunks is how many chunks its map holds (-1: not known, while the
	// volume still reads its map from the store after an adoption).
	Chunks int `json:"chunks"`
}

// Listener protocols.
const (
	ListenerNBD   = "nbd"
	ListenerISCSI = "iscsi"
	ListenerAPI   = "api"
)

// Listener is one address the gateway serves a protocol on.
type Listener struct {
	Protocol string `json:"protocol"`
	// Address is host:port as bound.
	Address string `json:"address"`
	// Loopback is set when only this machine can reach the address.
	Loopback bool `json:"loopback"`
	// Protection says, in words, what guards the listener.
	Protection string `json:"protection"`
}

// Build says which Ferry a gateway runs.
type Build struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"go_version"`
}

// Status is the gateway's overview, GET /v1/status.
type Status struct {
	Build
	Started       time.Time  `json:"started"`
	UptimeSeconds float64    `json:"uptime_seconds"`
	Listeners     []Listener `json:"listeners"`
	Pool          PoolInfo   `json:"pool"`
	// Stores are the S3 stores with whether they answered just now.
	Stores  []StoreHealth `json:"stores"`
	Volumes []VolumeInfo  `json:"volumes"`
	// Ready is what /readyz answers: every store reachable.
	Ready bool `json:"ready"`
}

// Readiness is the body of GET /readyz.
type Readiness struct {
	Ready  bool          `json:"ready"`
	Stores []StoreHealth `json:"stores"`
}

// Snapshot describes one snapshot of a volume.
type Snapshot struct {
	Name   string `json:"name"`
	Volume string `json:"volume"`
	// Export is VOLUME@SNAPSHOT, the read-only export's name (NBD) and,
	// as BASE:VOLUME:SNAPSHOT, its iSCSI target.
	Export  string    `json:"export"`
	Created time.Time `json:"created"`
	Size    int64     `json:"size"`
	// RecoveryPoint is the recovery point the snapshot keeps (S3-backed
	// volumes only).
	RecoveryPoint uint64 `json:"recovery_point,omitempty"`
	// ExclusiveBytes is what only this snapshot keeps alive: objects in
	// the store (S3-backed volumes), or blocks its file shares with no
	// other file (local volumes); removing it frees them.
	ExclusiveBytes int64 `json:"exclusive_bytes"`
}

// SnapshotRequest is the body of POST /v1/volumes/{name}/snapshots.
type SnapshotRequest struct {
	Name string `json:"name"`
}

// CloneRequest is the body of POST /v1/clones.
type CloneRequest struct {
	// Source is VOLUME@SNAPSHOT.
	Source string `json:"source"`
	Name   string `json:"name"`
}
