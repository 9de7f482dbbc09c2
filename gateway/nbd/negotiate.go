package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"

	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/tlspsk"
)

// errAbort ends negotiation without an error worth logging.
var errAbort = errors.New("client aborted negotiation")

// handshake runs fixed-newstyle negotiation until the client picks an export
// (NBD_OPT_GO or NBD_OPT_EXPORT_NAME), and returns the attachment.
func (c *conn) handshake(ctx context.Context) (*volume.Attachment, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:8], magicNBD)
	binary.BigEndian.PutUint64(hello[8:16], magicOption)
	binary.BigEndian.PutUint16(hello[16:18], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.rw.Write(hello[:]); err != nil {
		return nil, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return nil, fmt.Errorf("client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^(clientFixed|clientNoZeroes) != 0 {
		return nil, fmt.Errorf("unknown client flags %#x", flags)
	}
	c.noZeroes = flags&clientNoZeroes != 0

	for {
		var h [optionHeaderSize]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return nil, fmt.Errorf("option header: %w", err)
		}
		if m := binary.BigEndian.Uint64(h[0:8]); m != magicOption {
			return nil, fmt.Errorf("bad option magic %#x", m)
		}
		opt := binary.BigEndian.Uint32(h[8:12])
		n := binary.BigEndian.Uint32(h[12:16])
		if n > maxOptionLength {
			if opt == optExportName || n > maxDiscardOptionLength {
				return nil, fmt.Errorf("option %d: data length %d too large", opt, n)
			}
			if _, err := io.CopyN(io.Discard, c.br, int64(n)); err != nil {
				return nil, err
			}
			if err := c.optReply(opt, repErrTooBig, []byte("option data too large")); err != nil {
				return nil, err
			}
			continue
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return nil, fmt.Errorf("option %d data: %w", opt, err)
		}
		att, err := c.option(ctx, opt, data)
		if err != nil || att != nil {
			return att, err
		}
	}
}

// option handles one option. It returns an attachment when the client has
// entered transmission, an error when the connection must close.
func (c *conn) option(ctx context.Context, opt uint32, data []byte) (*volume.Attachment, error) {
	if c.s.cfg.RequireTLS && c.tls == nil && opt != optStartTLS && opt != optAbort {
		if opt == optExportName {
			// No reply can refuse NBD_OPT_EXPORT_NAME: close.
			return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME before STARTTLS on a server that requires TLS")
		}
		return nil, c.optReply(opt, repErrTLSReqd, []byte("this server requires TLS: negotiate NBD_OPT_STARTTLS first"))
	}
	switch opt {
	case optExportName:
		att, err := c.s.exports.Attach(ctx, string(data), c.client())
		if err != nil {
			// The protocol has no way to refuse NBD_OPT_EXPORT_NAME but to
			// close the connection.
			return nil, fmt.Errorf("export %q: %w", data, err)
		}
		reply := make([]byte, 10, 134)
		binary.BigEndian.PutUint64(reply[0:8], uint64(att.Dev.Size()))
		binary.BigEndian.PutUint16(reply[8:10], flagsFor(att.Dev))
		if !c.noZeroes {
			reply = reply[:134]
		}
		if _, err := c.rw.Write(reply); err != nil {
			att.Detach()
			return nil, err
		}
		c.metaAlloc = c.metaAlloc && c.metaExport == att.Name
		return att, nil

	case optAbort:
		c.optReply(opt, repAck, nil)
		return nil, errAbort

	case optList:
		if len(data) != 0 {
			return nil, c.optReply(opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
		}
		names, err := c.s.exports.List(ctx, c.client())
		if err != nil {
			return nil, c.optReply(opt, repErrShutdown, []byte("export list unavailable"))
		}
		for _, name := range names {
			b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
			if err := c.optReply(opt, repServer, append(b, name...)); err != nil {
				return nil, err
			}
		}
		return nil, c.optReply(opt, repAck, nil)

	case optStartTLS:
		return nil, c.startTLS(ctx, opt, data)

	case optStructuredReply:
		if len(data) != 0 {
			return nil, c.optReply(opt, repErrInvalid, []byte("NBD_OPT_STRUCTURED_REPLY takes no data"))
		}
		c.structured = true
		return nil, c.optReply(opt, repAck, nil)

	case optInfo, optGo:
		return c.infoOrGo(ctx, opt, data)

	case optListMetaContext, optSetMetaContext:
		return nil, c.metaContext(ctx, opt, data)

	default:
		return nil, c.optReply(opt, repErrUnsup, fmt.Appendf(nil, "option %d not supported", opt))
	}
}

// infoOrGo handles NBD_OPT_INFO and NBD_OPT_GO.
func (c *conn) infoOrGo(ctx context.Context, opt uint32, data []byte) (*volume.Attachment, error) {
	name, rest, ok := readString32(data)
	if !ok || len(rest) < 2 {
		return nil, c.optReply(opt, repErrInvalid, []byte("malformed export name"))
	}
	nInfo := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*nInfo {
		return nil, c.optReply(opt, repErrInvalid, []byte("malformed information request list"))
	}
	var wantName, wantDesc bool
	for i := range nInfo {
		switch binary.BigEndian.Uint16(rest[2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}

	var att *volume.Attachment
	var size int64
	var id string
	var flags uint16
	if opt == optGo {
		a, err := c.s.exports.Attach(ctx, name, c.client())
		if err != nil {
			return nil, c.exportError(opt, name, err)
		}
		att, size, id, flags = a, a.Dev.Size(), a.ID, flagsFor(a.Dev)
	} else {
		// NBD_OPT_INFO: look without holding the volume.
		a, err := c.s.exports.Attach(ctx, name, c.client())
		if err != nil {
			return nil, c.exportError(opt, name, err)
		}
		size, id, flags = a.Dev.Size(), a.ID, flagsFor(a.Dev)
		a.Detach()
	}

	fail := func(err error) (*volume.Attachment, error) {
		if att != nil {
			att.Detach()
		}
		return nil, err
	}
	exp := make([]byte, 12)
	binary.BigEndian.PutUint16(exp[0:2], infoExport)
	binary.BigEndian.PutUint64(exp[2:10], uint64(size))
	binary.BigEndian.PutUint16(exp[10:12], flags)
	if err := c.optReply(opt, repInfo, exp); err != nil {
		return fail(err)
	}
	bs := make([]byte, 14)
	binary.BigEndian.PutUint16(bs[0:2], infoBlockSize)
	binary.BigEndian.PutUint32(bs[2:6], minBlockSize)
	binary.BigEndian.PutUint32(bs[6:10], preferredBlockSize)
	binary.BigEndian.PutUint32(bs[10:14], maxPayload)
	if err := c.optReply(opt, repInfo, bs); err != nil {
		return fail(err)
	}
	if wantName {
		b := binary.BigEndian.AppendUint16(nil, infoName)
		if err := c.optReply(opt, repInfo, append(b, name...)); err != nil {
			return fail(err)
		}
	}
	if wantDesc {
		b := binary.BigEndian.AppendUint16(nil, infoDescription)
		desc := "Ferry volume " + name
		if id != "" {
			desc += " (id " + id + ")"
		}
		if err := c.optReply(opt, repInfo, append(b, desc...)); err != nil {
			return fail(err)
		}
	}
	if err := c.optReply(opt, repAck, nil); err != nil {
		return fail(err)
	}
	if att != nil {
		// Meta contexts negotiated for another export do not carry over.
		c.metaAlloc = c.metaAlloc && c.metaExport == name
	}
	return att, nil
}

// client describes this connection to the volume manager.
func (c *conn) client() volume.Client {
	return volume.Client{Protocol: volume.ProtoNBD, Remote: c.remote, TLSIdentity: c.tlsID}
}

// tlsConn is a TLS session: crypto/tls's or tlspsk's.
type tlsConn interface {
	net.Conn
	CloseWrite() error
}

// startTLS handles NBD_OPT_STARTTLS: acknowledge, then run a TLS server
// handshake on the socket; option haggling goes on inside the session.
// With both certificates and PSKs configured, the ClientHello decides:
// one offering a pre-shared key gets the PSK server.
func (c *conn) startTLS(ctx context.Context, opt uint32, data []byte) error {
	switch {
	case c.s.cfg.TLS == nil && c.s.cfg.PSK == nil:
		return c.optReply(opt, repErrUnsup, []byte("TLS is not configured on this server"))
	case c.tls != nil:
		return c.optReply(opt, repErrInvalid, []byte("TLS is already negotiated"))
	case len(data) != 0:
		return c.optReply(opt, repErrInvalid, []byte("NBD_OPT_STARTTLS takes no data"))
	}
	if err := c.optReply(opt, repAck, nil); err != nil {
		return err
	}
	if c.br.Buffered() != 0 {
		// The client must wait for the reply before its TLS hello;
		// plaintext read ahead would be injected into the session.
		return fmt.Errorf("client sent data after NBD_OPT_STARTTLS before its reply")
	}
	nc, usePSK := c.nc, c.s.cfg.PSK != nil
	if c.s.cfg.PSK != nil && c.s.cfg.TLS != nil {
		var err error
		if nc, usePSK, err = tlspsk.PeekClientHello(c.nc); err != nil {
			return err
		}
	}
	var tc tlsConn
	kind := "x509"
	if usePSK {
		pc := tlspsk.Server(nc, c.s.cfg.PSK)
		if err := pc.Handshake(ctx); err != nil {
			return fmt.Errorf("TLS-PSK handshake: %w", err)
		}
		tc, c.tlsID, kind = pc, pc.Identity(), "psk"
	} else {
		xc := tls.Server(nc, c.s.cfg.TLS)
		if err := xc.HandshakeContext(ctx); err != nil {
			return fmt.Errorf("TLS handshake: %w", err)
		}
		if certs := xc.ConnectionState().PeerCertificates; len(certs) > 0 {
			c.tlsID = certs[0].Subject.CommonName
		}
		tc = xc
	}
	c.src = &cappedReader{r: tc}
	c.tls, c.rw, c.br = tc, tc, bufio.NewReaderSize(c.src, ioBufferSize)
	// Negotiated state from before TLS is void (the protocol says so).
	c.structured, c.metaAlloc, c.metaExport = false, false, ""
	c.log = c.log.With("tls", kind, "tls_identity", c.tlsID)
	return nil
}

func (c *conn) exportError(opt uint32, name string, err error) error {
	if errors.Is(err, volume.ErrNotFound) {
		return c.optReply(opt, repErrUnknown, fmt.Appendf(nil, "no export named %q", name))
	}
	if errors.Is(err, volume.ErrDenied) {
		// The reason stays in the gateway's log: it names the rules.
		return c.optReply(opt, repErrPolicy, fmt.Appendf(nil, "export %q: access denied by the volume's access rules", name))
	}
	c.log.Warn("attach failed", "export", name, "err", err)
	return c.optReply(opt, repErrShutdown, fmt.Appendf(nil, "export %q unavailable", name))
}

// metaContext handles NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
// Ferry has one context, base:allocation.
func (c *conn) metaContext(ctx context.Context, opt uint32, data []byte) error {
	if opt == optSetMetaContext && !c.structured {
		return c.optReply(opt, repErrInvalid, []byte("negotiate structured replies first"))
	}
	name, rest, ok := readString32(data)
	if !ok || len(rest) < 4 {
		return c.optReply(opt, repErrInvalid, []byte("malformed meta context request"))
	}
	n := binary.BigEndian.Uint32(rest[0:4])
	rest = rest[4:]
	var queries []string
	for range n {
		var q string
		if q, rest, ok = readString32(rest); !ok {
			return c.optReply(opt, repErrInvalid, []byte("malformed meta context query"))
		}
		queries = append(queries, q)
	}
	if len(rest) != 0 {
		return c.optReply(opt, repErrInvalid, []byte("trailing data in meta context request"))
	}
	names, err := c.s.exports.List(ctx, c.client())
	if err != nil {
		return c.optReply(opt, repErrShutdown, []byte("export list unavailable"))
	}
	if !slices.Contains(names, name) {
		return c.optReply(opt, repErrUnknown, fmt.Appendf(nil, "no export named %q", name))
	}

	match := false
	if opt == optListMetaContext && len(queries) == 0 {
		match = true
	}
	for _, q := range queries {
		if q == metaContextAllocation || (opt == optListMetaContext && q == "base:") {
			match = true
		}
	}
	if opt == optSetMetaContext {
		c.metaAlloc, c.metaExport = match, name
	}
	if match {
		id := uint32(0)
		if opt == optSetMetaContext {
			id = metaContextAllocID
		}
		b := binary.BigEndian.AppendUint32(nil, id)
		if err := c.optReply(opt, repMetaContext, append(b, metaContextAllocation...)); err != nil {
			return err
		}
	}
	return c.optReply(opt, repAck, nil)
}

// optReply sends one option reply.
func (c *conn) optReply(opt, typ uint32, data []byte) error {
	b := make([]byte, 20, 20+len(data))
	binary.BigEndian.PutUint64(b[0:8], magicOptReply)
	binary.BigEndian.PutUint32(b[8:12], opt)
	binary.BigEndian.PutUint32(b[12:16], typ)
	binary.BigEndian.PutUint32(b[16:20], uint32(len(data)))
	_, err := c.rw.Write(append(b, data...))
	return err
}

// readString32 reads a string with a 32-bit big-endian length prefix.
func readString32(b []byte) (s string, rest []byte, ok bool) {
	if len(b) < 4 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(b[0:4])
	if n > maxNameLength || uint64(n) > uint64(len(b)-4) {
		return "", nil, false
	}
	return string(b[4 : 4+n]), b[4+n:], true
}
