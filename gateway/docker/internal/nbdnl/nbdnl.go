// Package nbdnl configures the Linux kernel's NBD client (drivers/block/nbd.c)
// over generic netlink, family "nbd" (include/uapi/linux/nbd-netlink.h):
// CONNECT a device to sockets the caller negotiated, RECONFIGURE it with a
// new socket after its link died, DISCONNECT it, ask its STATUS, and
// watch the "nbd_mc_group" multicast group for LINK_DEAD.
//
// Contract (Linux 4.12 and later; the backend identifier needs 5.15, and
// older kernels ignore it):
//   - Connect needs CAP_SYS_ADMIN; the sockets must have finished the NBD
//     handshake. The kernel takes its own reference to each socket, so the
//     caller may close its descriptors once Connect or Reconfigure returns.
//   - Timeouts are whole seconds (the kernel multiplies by HZ). With an I/O
//     timeout set, a request that times out on the only connection marks
//     the link dead and is requeued, not failed; with a dead-connection
//     timeout, new I/O waits that long for a Reconfigure before failing.
//   - Reconfigure replaces a socket the kernel marked dead; when none is
//     dead the kernel drops the new socket and still reports success, so
//     call it only after LINK_DEAD. It must repeat the backend identifier
//     given at Connect, if any.
//   - Status reports a device as connected while it has a configuration,
//     whether or not its link is alive.
//
// The encoders and decoders are separate from the socket so that their
// byte layout is tested without a kernel.
package nbdnl

import (
	"errors"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
)

// Names from nbd-netlink.h.
const (
	FamilyName = "nbd"
	GroupName  = "nbd_mc_group"
	Version    = 1
)

// Commands (enum NBD_CMD_*).
const (
	CmdConnect     = 1
	CmdDisconnect  = 2
	CmdReconfigure = 3
	CmdLinkDead    = 4
	CmdStatus      = 5
)

// Attributes (enum NBD_ATTR_*).
const (
	AttrIndex             = 1 // u32
	AttrSizeBytes         = 2 // u64
	AttrBlockSizeBytes    = 3 // u64
	AttrTimeout           = 4 // u64, seconds
	AttrServerFlags       = 5 // u64, the handshake's transmission flags
	AttrClientFlags       = 6 // u64, NBD_CFLAG_*
	AttrSockets           = 7 // nested: SockItem{SockFD}
	AttrDeadConnTimeout   = 8 // u64, seconds
	AttrDeviceList        = 9 // nested: DeviceItem{DeviceIndex, DeviceConnected}
	AttrBackendIdentifier = 10
)

// Nested attributes.
const (
	SockItem        = 1 // NBD_SOCK_ITEM
	SockFD          = 1 // NBD_SOCK_FD, u32
	DeviceItem      = 1 // NBD_DEVICE_ITEM
	DeviceIndex     = 1 // NBD_DEVICE_INDEX, u32
	DeviceConnected = 2 // NBD_DEVICE_CONNECTED, u8
)

// Transmission flags (linux/nbd.h NBD_FLAG_*) the kernel reads from
// AttrServerFlags.
const (
	FlagHasFlags  = 1 << 0
	FlagReadOnly  = 1 << 1
	FlagSendFlush = 1 << 2
	FlagSendFUA   = 1 << 3
	FlagSendTrim  = 1 << 5
)

// Client flags (NBD_CFLAG_*).
const (
	CFlagDestroyOnDisconnect = 1 << 0
	CFlagDisconnectOnClose   = 1 << 1
)

// Config is a CONNECT request.
type Config struct {
	// Index is the device (/dev/nbdIndex) to use; negative lets the
	// kernel pick a free one (or make one), which the reply names.
	Index int
	// Size is the export's size in bytes (required).
	Size uint64
	// BlockSize is the logical block size: a power of two from 512 to the
	// page size; 0 leaves the kernel's default (1024).
	BlockSize uint64
	// ServerFlags are the handshake's transmission flags.
	ServerFlags uint16
	// ClientFlags are CFlag* bits.
	ClientFlags uint64
	// Timeout is the I/O timeout (0: none); DeadConnTimeout how long I/O
	// waits for a reconnect (0: not at all). Rounded up to seconds.
	Timeout, DeadConnTimeout time.Duration
	// Backend, when set, names the device's backend (sysfs
	// /sys/block/nbdN/backend, 5.15+).
	Backend string
	// Sockets are the connected sockets' descriptors (at least one).
	Sockets []int
}

func seconds(d time.Duration) uint64 {
	return uint64((d + time.Second - 1) / time.Second)
}

func encodeSockets(ae *netlink.AttributeEncoder, fds []int) {
	ae.Nested(AttrSockets, func(nae *netlink.AttributeEncoder) error {
		for _, fd := range fds {
			nae.Nested(SockItem, func(s *netlink.AttributeEncoder) error {
				s.Uint32(SockFD, uint32(fd))
				return nil
			})
		}
		return nil
	})
}

// EncodeConnect encodes a CONNECT request's attributes.
func EncodeConnect(c Config) ([]byte, error) {
	if len(c.Sockets) == 0 {
		return nil, errors.New("nbd connect: no socket")
	}
	if c.Size == 0 {
		return nil, errors.New("nbd connect: no size")
	}
	ae := netlink.NewAttributeEncoder()
	if c.Index >= 0 {
		ae.Uint32(AttrIndex, uint32(c.Index))
	}
	ae.Uint64(AttrSizeBytes, c.Size)
	if c.BlockSize != 0 {
		ae.Uint64(AttrBlockSizeBytes, c.BlockSize)
	}
	ae.Uint64(AttrServerFlags, uint64(c.ServerFlags))
	if c.ClientFlags != 0 {
		ae.Uint64(AttrClientFlags, c.ClientFlags)
	}
	if c.Timeout > 0 {
		ae.Uint64(AttrTimeout, seconds(c.Timeout))
	}
	if c.DeadConnTimeout > 0 {
		ae.Uint64(AttrDeadConnTimeout, seconds(c.DeadConnTimeout))
	}
	if c.Backend != "" {
		ae.String(AttrBackendIdentifier, c.Backend)
	}
	encodeSockets(ae, c.Sockets)
	return ae.Encode()
}

// EncodeReconfigure encodes a RECONFIGURE request giving device index
// the sockets fds in place of dead ones. A device connected with a
// backend identifier is reconfigured only by a request naming the same
// one (5.15+: -EINVAL "must specify backend" otherwise).
func EncodeReconfigure(index int, backend string, fds ...int) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(AttrIndex, uint32(index))
	if backend != "" {
		ae.String(AttrBackendIdentifier, backend)
	}
	encodeSockets(ae, fds)
	return ae.Encode()
}

// EncodeIndex encodes a request naming only a device (DISCONNECT, and
// STATUS of one device); a negative index encodes nothing (STATUS of all).
func EncodeIndex(index int) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	if index >= 0 {
		ae.Uint32(AttrIndex, uint32(index))
	}
	return ae.Encode()
}

// DecodeIndex reads NBD_ATTR_INDEX from a CONNECT reply or a LINK_DEAD
// event.
func DecodeIndex(b []byte) (int, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return 0, err
	}
	index := -1
	for ad.Next() {
		if ad.Type() == AttrIndex {
			index = int(ad.Uint32())
		}
	}
	if err := ad.Err(); err != nil {
		return 0, err
	}
	if index < 0 {
		return 0, errors.New("nbd: message has no device index")
	}
	return index, nil
}

// Device is one device in a STATUS reply.
type Device struct {
	Index     int
	Connected bool
}

// DecodeStatus reads a STATUS reply's device list.
func DecodeStatus(b []byte) ([]Device, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	var out []Device
	for ad.Next() {
		if ad.Type() != AttrDeviceList {
			continue
		}
		ad.Nested(func(list *netlink.AttributeDecoder) error {
			for list.Next() {
				if list.Type() != DeviceItem {
					continue
				}
				d := Device{Index: -1}
				list.Nested(func(item *netlink.AttributeDecoder) error {
					for item.Next() {
						switch item.Type() {
						case DeviceIndex:
							d.Index = int(item.Uint32())
						case DeviceConnected:
							d.Connected = item.Uint8() != 0
						}
					}
					return nil
				})
				if d.Index < 0 {
					return fmt.Errorf("nbd status: device item without index")
				}
				out = append(out, d)
			}
			return nil
		})
	}
	if err := ad.Err(); err != nil {
		return nil, fmt.Errorf("nbd status: %w", err)
	}
	return out, nil
}
