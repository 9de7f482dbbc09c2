package tlspsk

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
)

// Handshake message types (RFC 8446 §4).
const (
	typeClientHello         = 1
	typeServerHello         = 2
	typeNewSessionTicket    = 4
	typeEndOfEarlyData      = 5
	typeEncryptedExtensions = 8
	typeFinished            = 20
	typeKeyUpdate           = 24
	typeMessageHash         = 254
)

// Extension types (§4.2).
const (
	extSupportedGroups     = 10
	extPreSharedKey        = 41
	extEarlyData           = 42
	extSupportedVersions   = 43
	extPSKKeyExchangeModes = 45
	extKeyShare            = 51
)

// Named groups (§4.2.7) and PSK key exchange modes (§4.2.9).
const (
	groupSecp256r1 = 0x0017
	groupX25519    = 0x001d

	pskModeKE    = 0
	pskModeDHEKE = 1

	versionTLS13 = 0x0304
)

// keyShare is one KeyShareEntry (§4.2.8).
type keyShare struct {
	group uint16
	data  []byte
}

// pskIdentity is one offered PskIdentity with its binder (§4.2.11).
type pskIdentity struct {
	identity []byte
	binder   []byte
}

// clientHello is a parsed ClientHello (§4.1.2). Byte slices alias raw.
type clientHello struct {
	raw          []byte // the whole handshake message, header included
	sessionID    []byte
	cipherSuites []uint16
	versions     []uint16 // supported_versions
	pskModes     []byte   // psk_key_exchange_modes; nil if absent
	keyShares    []keyShare
	groups       []uint16      // supported_groups
	psks         []pskIdentity // pre_shared_key; nil if absent
	// bindersAt is the offset in raw where the binders list begins: the
	// binders are computed over raw[:bindersAt] (§4.2.11.2).
	bindersAt int
	earlyData bool
}

// errDecode is a ClientHello that does not parse: decode_error.
var errDecode = errors.New("malformed ClientHello")

// reader reads TLS presentation-language vectors (§3) without ever
// reading past its end: a failed read empties it and sets bad.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) bytes(n int) []byte {
	if r.bad || n < 0 || n > len(r.b) {
		r.bad, r.b = true, nil
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() int {
	b := r.bytes(1)
	if b == nil {
		return 0
	}
	return int(b[0])
}

func (r *reader) u16() int {
	b := r.bytes(2)
	if b == nil {
		return 0
	}
	return int(b[0])<<8 | int(b[1])
}

func (r *reader) u24() int {
	b := r.bytes(3)
	if b == nil {
		return 0
	}
	return int(b[0])<<16 | int(b[1])<<8 | int(b[2])
}

// vec8, vec16 read a vector with a 1- or 2-byte length prefix.
func (r *reader) vec8() *reader  { return &reader{b: r.bytes(r.u8()), bad: r.bad} }
func (r *reader) vec16() *reader { return &reader{b: r.bytes(r.u16()), bad: r.bad} }

func (r *reader) empty() bool { return len(r.b) == 0 }

// parseClientHello parses a ClientHello handshake message (header
// included). Errors wrap an alertError naming the alert to send.
func parseClientHello(raw []byte) (*clientHello, error) {
	ch := &clientHello{raw: raw}
	r := &reader{b: raw}
	if r.u8() != typeClientHello || r.u24() != len(raw)-4 {
		return nil, alertf(alertDecodeError, "%w: bad handshake header", errDecode)
	}
	r.u16()     // legacy_version: ignored when supported_versions is present (§4.2.1)
	r.bytes(32) // random
	sid := r.vec8()
	ch.sessionID = sid.b
	if len(sid.b) > 32 {
		return nil, alertf(alertIllegalParameter, "%w: legacy_session_id longer than 32 bytes", errDecode)
	}
	cs := r.vec16()
	if len(cs.b)%2 != 0 || len(cs.b) == 0 {
		return nil, alertf(alertDecodeError, "%w: cipher_suites", errDecode)
	}
	for !cs.empty() {
		ch.cipherSuites = append(ch.cipherSuites, uint16(cs.u16()))
	}
	comp := r.vec8()
	if r.bad {
		return nil, alertf(alertDecodeError, "%w: truncated", errDecode)
	}
	if len(comp.b) != 1 || comp.b[0] != 0 {
		// §4.1.2: TLS 1.3 ClientHellos carry exactly the null method.
		return nil, alertf(alertIllegalParameter, "legacy_compression_methods is not [null]")
	}
	extsLen := r.u16()
	extsStart := len(raw) - len(r.b)
	exts := &reader{b: r.bytes(extsLen), bad: r.bad}
	if r.bad || !r.empty() {
		return nil, alertf(alertDecodeError, "%w: extensions length", errDecode)
	}
	seen := map[int]bool{}
	for !exts.empty() {
		typ := exts.u16()
		body := exts.vec16()
		// bodyAt is the offset of the extension's body in raw.
		bodyAt := extsStart + (extsLen - len(exts.b)) - len(body.b)
		if exts.bad {
			return nil, alertf(alertDecodeError, "%w: extension %d truncated", errDecode, typ)
		}
		if seen[typ] {
			return nil, alertf(alertIllegalParameter, "extension %d appears twice", typ) // §4.2
		}
		seen[typ] = true
		if ch.psks != nil {
			return nil, alertf(alertIllegalParameter, "pre_shared_key is not the last extension") // §4.2.11
		}
		var err error
		switch typ {
		case extSupportedVersions:
			err = ch.parseVersions(body)
		case extPSKKeyExchangeModes:
			m := body.vec8()
			if body.bad || !body.empty() || len(m.b) == 0 {
				err = errDecode
			}
			ch.pskModes = m.b
		case extKeyShare:
			err = ch.parseKeyShares(body)
		case extSupportedGroups:
			g := body.vec16()
			if body.bad || !body.empty() || len(g.b)%2 != 0 {
				err = errDecode
			}
			for !g.empty() {
				ch.groups = append(ch.groups, uint16(g.u16()))
			}
		case extEarlyData:
			ch.earlyData = true
		case extPreSharedKey:
			err = ch.parsePSK(body, bodyAt)
		}
		if err != nil {
			return nil, alertf(alertDecodeError, "%w: extension %d", errDecode, typ)
		}
	}
	return ch, nil
}

func (ch *clientHello) parseVersions(body *reader) error {
	v := body.vec8()
	if body.bad || !body.empty() || len(v.b)%2 != 0 || len(v.b) == 0 {
		return errDecode
	}
	for !v.empty() {
		ch.versions = append(ch.versions, uint16(v.u16()))
	}
	return nil
}

func (ch *clientHello) parseKeyShares(body *reader) error {
	ks := body.vec16()
	if body.bad || !body.empty() {
		return errDecode
	}
	for !ks.empty() {
		g := ks.u16()
		d := ks.vec16()
		if ks.bad || len(d.b) == 0 {
			return errDecode
		}
		ch.keyShares = append(ch.keyShares, keyShare{group: uint16(g), data: d.b})
	}
	return nil
}

// parsePSK parses OfferedPsks (§4.2.11); at is body's offset in raw.
func (ch *clientHello) parsePSK(body *reader, at int) error {
	start := len(body.b)
	ids := body.vec16()
	ch.bindersAt = at + (start - len(body.b))
	binders := body.vec16()
	if body.bad || !body.empty() || ids.empty() || binders.empty() {
		return errDecode
	}
	var psks []pskIdentity
	for !ids.empty() {
		id := ids.vec16()
		ids.u16()
		ids.u16() // obfuscated_ticket_age: meaningless for external PSKs
		if ids.bad || len(id.b) == 0 {
			return errDecode
		}
		psks = append(psks, pskIdentity{identity: id.b})
	}
	for i := 0; !binders.empty(); i++ {
		b := binders.vec8()
		if binders.bad || len(b.b) < 32 || i >= len(psks) {
			return errDecode
		}
		psks[i].binder = b.b
		if binders.empty() && i != len(psks)-1 {
			return errDecode // one binder per identity
		}
	}
	ch.psks = psks
	return nil
}

// HasPreSharedKey reports whether record, the first TLS record a client
// sent (header included), holds a ClientHello offering a pre-shared key.
// A server that serves both certificates (crypto/tls) and PSKs (this
// package) routes a connection on it. It never fails: anything it cannot
// read is "no".
func HasPreSharedKey(record []byte) bool {
	if len(record) < 5+4 || record[0] != recordHandshake {
		return false
	}
	msg := record[5:]
	n := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
	if msg[0] != typeClientHello || n+4 > len(msg) {
		return false
	}
	ch, err := parseClientHello(msg[:n+4])
	return err == nil && ch.psks != nil
}

// alertError is a protocol error answered with a fatal alert.
type alertError struct {
	alert uint8
	msg   string
	err   error
}

func (e *alertError) Error() string {
	return fmt.Sprintf("tlspsk: %s (alert %s)", e.msg, alertName(e.alert))
}

func (e *alertError) Unwrap() error { return e.err }

func alertf(alert uint8, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &alertError{alert: alert, msg: err.Error(), err: errors.Unwrap(err)}
}

// PeekClientHello reads the first TLS record a client sends on nc and
// reports whether it holds a ClientHello offering a pre-shared key (see
// HasPreSharedKey). The returned connection replays the record before
// reading on from nc, so either this package or crypto/tls can serve it.
func PeekClientHello(nc net.Conn) (net.Conn, bool, error) {
	rec := make([]byte, recordHeaderLen, recordHeaderLen+maxPlaintext)
	if _, err := io.ReadFull(nc, rec); err != nil {
		return nil, false, fmt.Errorf("tlspsk: read ClientHello: %w", err)
	}
	n := int(rec[3])<<8 | int(rec[4])
	if n <= maxPlaintext {
		rec = rec[:recordHeaderLen+n]
		if _, err := io.ReadFull(nc, rec[recordHeaderLen:]); err != nil {
			return nil, false, fmt.Errorf("tlspsk: read ClientHello: %w", err)
		}
	}
	return &replayConn{Conn: nc, r: io.MultiReader(bytes.NewReader(rec), nc)}, HasPreSharedKey(rec), nil
}

// replayConn reads r (peeked bytes, then the connection) and otherwise is
// its Conn.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(b []byte) (int, error) { return c.r.Read(b) }
