package nbdnl

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// ErrNoFamily: the kernel has no "nbd" generic netlink family (the nbd
// module is not loaded, or the kernel predates 4.12).
var ErrNoFamily = errors.New("no nbd generic netlink family (modprobe nbd)")

// Conn is a generic netlink socket to the nbd family. Requests are
// serialised; it is safe for concurrent use.
type Conn struct {
	c   *genetlink.Conn
	fam genetlink.Family
}

// Dial opens a socket and looks the family up.
func Dial() (*Conn, error) {
	c, err := genetlink.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("generic netlink: %w", err)
	}
	fam, err := c.GetFamily(FamilyName)
	if err != nil {
		c.Close()
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNoFamily
		}
		return nil, fmt.Errorf("generic netlink family %q: %w", FamilyName, err)
	}
	return &Conn{c: c, fam: fam}, nil
}

// Close closes the socket.
func (c *Conn) Close() error { return c.c.Close() }

// do sends one request and returns the replies. Commands that answer
// with a message (CONNECT, STATUS) are sent without NLM_F_ACK, so that the
// reply is the one datagram read (an error still comes back as one);
// the others ask for the acknowledgement.
func (c *Conn) do(ctx context.Context, cmd uint8, attrs []byte, ack bool) ([]genetlink.Message, error) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(30 * time.Second)
	}
	if err := c.c.SetDeadline(dl); err != nil {
		return nil, err
	}
	flags := netlink.Request
	if ack {
		flags |= netlink.Acknowledge
	}
	msgs, err := c.c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: Version},
		Data:   attrs,
	}, c.fam.ID, flags)
	if err != nil {
		return nil, err
	}
	return msgs, nil
}

// Connect configures a device with cfg and returns its index.
func (c *Conn) Connect(ctx context.Context, cfg Config) (int, error) {
	b, err := EncodeConnect(cfg)
	if err != nil {
		return 0, err
	}
	msgs, err := c.do(ctx, CmdConnect, b, false)
	if err != nil {
		return 0, fmt.Errorf("nbd connect: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Command == CmdConnect {
			return DecodeIndex(m.Data)
		}
	}
	return 0, errors.New("nbd connect: no reply naming the device")
}

// Reconfigure gives device index the sockets fds in place of dead ones;
// backend is the identifier given at Connect ("" if none).
func (c *Conn) Reconfigure(ctx context.Context, index int, backend string, fds ...int) error {
	b, err := EncodeReconfigure(index, backend, fds...)
	if err != nil {
		return err
	}
	if _, err := c.do(ctx, CmdReconfigure, b, true); err != nil {
		return fmt.Errorf("nbd reconfigure nbd%d: %w", index, err)
	}
	return nil
}

// Disconnect disconnects device index (a device not connected is fine).
func (c *Conn) Disconnect(ctx context.Context, index int) error {
	b, err := EncodeIndex(index)
	if err != nil {
		return err
	}
	if _, err := c.do(ctx, CmdDisconnect, b, true); err != nil {
		return fmt.Errorf("nbd disconnect nbd%d: %w", index, err)
	}
	return nil
}

// Status returns the state of device index, or of every device when
// index is negative. A device that does not exist is not listed.
func (c *Conn) Status(ctx context.Context, index int) ([]Device, error) {
	b, err := EncodeIndex(index)
	if err != nil {
		return nil, err
	}
	msgs, err := c.do(ctx, CmdStatus, b, false)
	if err != nil {
		return nil, fmt.Errorf("nbd status: %w", err)
	}
	var out []Device
	for _, m := range msgs {
		if m.Header.Command != CmdStatus {
			continue
		}
		ds, err := DecodeStatus(m.Data)
		if err != nil {
			return nil, err
		}
		out = append(out, ds...)
	}
	return out, nil
}

// Watcher receives the family's multicast events on a socket of its own.
type Watcher struct {
	c *genetlink.Conn
}

// WatchLinkDead joins the "nbd_mc_group" multicast group.
func (c *Conn) WatchLinkDead() (*Watcher, error) {
	var grp uint32
	for _, g := range c.fam.Groups {
		if g.Name == GroupName {
			grp = g.ID
		}
	}
	if grp == 0 {
		return nil, fmt.Errorf("nbd family has no multicast group %q", GroupName)
	}
	w, err := genetlink.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("generic netlink: %w", err)
	}
	if err := w.JoinGroup(grp); err != nil {
		w.Close()
		return nil, fmt.Errorf("join %s: %w", GroupName, err)
	}
	return &Watcher{c: w}, nil
}

// Next waits for LINK_DEAD events and returns the indexes of the devices
// whose link died. An error other than ctx's may mean events were lost
// (the socket's buffer overflowed): the caller should check its devices.
func (w *Watcher) Next(ctx context.Context) ([]int, error) {
	if err := w.c.SetReadDeadline(time.Time{}); err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { w.c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	for {
		msgs, _, err := w.c.Receive()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			return nil, fmt.Errorf("nbd events: %w", err)
		}
		var dead []int
		for _, m := range msgs {
			if m.Header.Command != CmdLinkDead {
				continue
			}
			i, err := DecodeIndex(m.Data)
			if err != nil {
				return nil, err
			}
			dead = append(dead, i)
		}
		if len(dead) > 0 {
			return dead, nil
		}
	}
}

// Close leaves the group.
func (w *Watcher) Close() error { return w.c.Close() }
