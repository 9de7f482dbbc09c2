// Package qmp is a small client for QEMU's machine protocol (QMP) over a
// unix socket: it negotiates capabilities, runs one command at a time and
// hands asynchronous events to a callback. QEMU serves one QMP client per
// socket, so a VM's owner keeps one Conn and shares it.
//
// Contract: Execute returns the command's "return" value decoded into out
// (when out is non-nil), an *Error for a QMP error reply, and ErrClosed
// (wrapped) once the connection is gone, which for a VM's own socket means
// QEMU exited or closed it. Done is closed when the connection ends.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// ErrClosed: the QMP connection is gone (QEMU exited, or Close was called).
var ErrClosed = errors.New("qmp connection closed")

// Error is a QMP error reply.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return e.Class + ": " + e.Desc }

// Event is an asynchronous QMP event.
type Event struct {
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

type message struct {
	Event  string          `json:"event"`
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	ID     json.RawMessage `json:"id"`
	QMP    json.RawMessage `json:"QMP"`
	Data   json.RawMessage `json:"data"`
}

// Conn is one QMP connection; safe for concurrent use (commands are
// serialised).
type Conn struct {
	c       net.Conn
	onEvent func(Event)

	cmdMu   sync.Mutex // one command in flight
	wmu     sync.Mutex
	replies chan message
	done    chan struct{}
	err     error
}

// Dial connects to the QMP socket at path and enters command mode.
// onEvent, if not nil, is called (from the reading goroutine, so it must
// not call Execute) for every event.
func Dial(ctx context.Context, path string, onEvent func(Event)) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp dial %s: %w", path, err)
	}
	c := &Conn{c: nc, onEvent: onEvent, replies: make(chan message, 1), done: make(chan struct{})}
	r := bufio.NewReader(nc)
	if dl, ok := ctx.Deadline(); ok {
		nc.SetReadDeadline(dl)
	}
	line, err := r.ReadBytes('\n')
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	var greet message
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		nc.Close()
		return nil, fmt.Errorf("qmp greeting: not QMP: %q", line)
	}
	nc.SetReadDeadline(time.Time{})
	go c.read(r)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

func (c *Conn) read(r *bufio.Reader) {
	defer close(c.done)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			c.err = err
			return
		}
		var m message
		if err := json.Unmarshal(line, &m); err != nil {
			continue
		}
		if m.Event != "" {
			if c.onEvent != nil {
				c.onEvent(Event{Event: m.Event, Data: m.Data})
			}
			continue
		}
		select {
		case c.replies <- m:
		default: // a reply nobody waits for (its caller gave up)
		}
	}
}

// Done is closed when the connection ends.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Close ends the connection.
func (c *Conn) Close() error { return c.c.Close() }

// Execute runs command with args (nil for none) and decodes its return
// value into out (nil to ignore it).
func (c *Conn) Execute(ctx context.Context, command string, args any, out any) error {
	c.cmdMu.Lock()
	defer c.cmdMu.Unlock()
	// Drop a stale reply of a command whose caller gave up.
	select {
	case <-c.replies:
	default:
	}
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	_, err = c.c.Write(append(b, '\n'))
	c.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("qmp %s: %w: %w", command, ErrClosed, err)
	}
	select {
	case m := <-c.replies:
		if m.Error != nil {
			return fmt.Errorf("qmp %s: %w", command, m.Error)
		}
		if out != nil && m.Return != nil {
			if err := json.Unmarshal(m.Return, out); err != nil {
				return fmt.Errorf("qmp %s: decode reply: %w", command, err)
			}
		}
		return nil
	case <-c.done:
		return fmt.Errorf("qmp %s: %w", command, ErrClosed)
	case <-ctx.Done():
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}
