package volume

import "github.com/ferry-io/ferry/gateway/api/wire"

// The manager speaks the admin API's types (package wire, which imports
// only the standard library, so clients of the API link no backend).
type (
	// Info describes a volume for the API and CLI.
	Info = wire.Volume
	// Client describes one client connection to a volume.
	Client         = wire.Client
	AccessView     = wire.AccessView
	AccessUpdate   = wire.AccessUpdate
	TierInfo       = wire.TierInfo
	PoolDir        = wire.PoolDir
	PoolInfo       = wire.PoolInfo
	CacheInfo      = wire.CacheInfo
	StoreConfig    = wire.StoreConfig
	StoreView      = wire.StoreView
	StoreHealth    = wire.StoreHealth
	ExportLocation = wire.ExportLocation
	MigrateRequest = wire.MigrateRequest
	MigrationInfo  = wire.MigrationInfo
)

// Sentinel errors callers branch on; the API carries them as codes.
var (
	ErrNotFound = wire.ErrNotFound
	ErrExists   = wire.ErrExists
	ErrBusy     = wire.ErrBusy
	ErrInvalid  = wire.ErrInvalid
	ErrDenied   = wire.ErrDenied
)

// Protocols a Client attaches over.
const (
	ProtoNBD   = wire.ProtoNBD
	ProtoISCSI = wire.ProtoISCSI
)
