package tlspsk

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"
)

// Config configures a Server.
type Config struct {
	// Key returns the pre-shared key of identity (the PSK "username"),
	// false when there is none. It is called from the handshake's
	// goroutine and must be safe for concurrent use.
	Key func(identity string) ([]byte, bool)
}

// Conn is the server side of a TLS 1.3 PSK session over a net.Conn. Read
// and Write may be called concurrently with each other (not each with
// itself); Close with either.
//
// Lock order: hsMu, then inMu, then outMu.
type Conn struct {
	nc  net.Conn
	cfg *Config

	hsMu     sync.Mutex
	hsDone   bool
	hsErr    error
	identity string

	inMu      sync.Mutex
	br        *bufio.Reader
	in        halfConn
	rbuf      []byte // one record: header and body
	pending   []byte // decrypted application data not yet read
	hsBuf     []byte // handshake bytes not yet forming a whole message
	readErr   error
	earlyData bool // the client offered 0-RTT: skip records that fail to decrypt (§4.2.10)

	outMu    sync.Mutex
	out      halfConn
	wbuf     []byte
	writeErr error
}

var _ net.Conn = (*Conn)(nil)

// Server returns the server side of a TLS 1.3 PSK session on nc. The
// handshake runs on the first Handshake, Read or Write.
func Server(nc net.Conn, cfg *Config) *Conn {
	return &Conn{nc: nc, cfg: cfg, br: bufio.NewReaderSize(nc, recordHeaderLen+maxCiphertext),
		rbuf: make([]byte, recordHeaderLen+maxCiphertext)}
}

// Identity is the PSK identity the client authenticated with; empty
// before the handshake has completed.
func (c *Conn) Identity() string {
	c.hsMu.Lock()
	defer c.hsMu.Unlock()
	if !c.hsDone || c.hsErr != nil {
		return ""
	}
	return c.identity
}

// Handshake runs the server handshake if it has not run yet. Cancelling
// ctx aborts it (it sets a past deadline on the connection); the
// connection's own deadlines apply too. A failed handshake has sent the
// client a fatal alert when the failure was a protocol error.
func (c *Conn) Handshake(ctx context.Context) error {
	c.hsMu.Lock()
	defer c.hsMu.Unlock()
	if c.hsDone {
		return c.hsErr
	}
	stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(time.Unix(1, 0)) })
	c.inMu.Lock()
	c.outMu.Lock()
	err := c.serverHandshake()
	c.outMu.Unlock()
	c.inMu.Unlock()
	if !stop() {
		// ctx fired: the connection's deadline is in the past even if the
		// handshake finished first, so it fails either way.
		if err == nil {
			err = fmt.Errorf("tlspsk: handshake: %w", context.Cause(ctx))
		} else {
			err = fmt.Errorf("%w (%w)", err, context.Cause(ctx))
		}
	}
	if err != nil {
		c.fail(err)
	}
	c.hsDone, c.hsErr = true, err
	return err
}

// fail sends the fatal alert err calls for, if any, and makes every later
// read and write fail.
func (c *Conn) fail(err error) {
	var ae *alertError
	if errors.As(err, &ae) {
		c.outMu.Lock()
		if c.writeErr == nil {
			c.writeRecordLocked(recordAlert, []byte{2, ae.alert})
		}
		c.outMu.Unlock()
	}
	c.outMu.Lock()
	if c.writeErr == nil {
		c.writeErr = err
	}
	c.outMu.Unlock()
}

// serverHandshake is RFC 8446 §2.2's PSK handshake with (EC)DHE, server
// side, without 0-RTT, with one HelloRetryRequest (§4.1.4) when the
// client's first ClientHello has no usable key share. Called with inMu
// and outMu held.
func (c *Conn) serverHandshake() error {
	raw, ch, err := c.readClientHello(true)
	if err != nil {
		return err
	}
	st, err := checkClientHello(ch)
	if err != nil {
		return err
	}
	selected, early, err := c.verifyBinder(ch, raw, nil)
	if err != nil {
		return err
	}
	transcript := sha256.New()
	share, peer, err := pickKeyShare(ch.keyShares)
	if err != nil {
		return err
	}
	sentCCS := false
	if peer == nil {
		// §4.1.4: ask for a share of a group we support. The transcript
		// starts with message_hash(ClientHello1) (§4.4.1).
		group, ok := pickGroup(ch.groups)
		if !ok {
			return alertf(alertHandshakeFailure, "client supports neither x25519 nor secp256r1")
		}
		h1 := sha256.Sum256(raw)
		prefix := append([]byte{typeMessageHash, 0, 0, hashLen}, h1[:]...)
		var exts []byte
		exts = appendExt(exts, extSupportedVersions, []byte{versionTLS13 >> 8, versionTLS13 & 0xff})
		exts = appendExt(exts, extKeyShare, []byte{byte(group >> 8), byte(group)})
		hrr := serverHello(helloRetryRequestRandom[:], ch.sessionID, st.id, exts)
		prefix = append(prefix, hrr...)
		c.wbuf = c.out.seal(c.wbuf[:0], recordHandshake, hrr)
		if len(ch.sessionID) > 0 {
			c.wbuf = c.out.seal(c.wbuf, recordChangeCipherSpec, []byte{1}) // §D.4
			sentCCS = true
		}
		if _, err := c.nc.Write(c.wbuf); err != nil {
			return fmt.Errorf("tlspsk: write HelloRetryRequest: %w", err)
		}
		// The client's 0-RTT records, if any, precede its second hello
		// and are skipped (§4.2.10).
		c.earlyData = ch.earlyData
		raw2, ch2, err := c.readClientHello(false)
		if err != nil {
			return err
		}
		c.earlyData = false
		// §4.1.2: the second hello keeps what the first offered, with one
		// share of the group asked for and without early_data.
		if ch2.earlyData || !bytes.Equal(ch2.sessionID, ch.sessionID) {
			return alertf(alertIllegalParameter, "second ClientHello changed what it may not")
		}
		if len(ch2.keyShares) != 1 || ch2.keyShares[0].group != group {
			return alertf(alertIllegalParameter, "second ClientHello lacks the requested key share")
		}
		st2, err := checkClientHello(ch2)
		if err != nil {
			return err
		}
		if st2 != st {
			return alertf(alertIllegalParameter, "second ClientHello changed the cipher suite")
		}
		if selected, early, err = c.verifyBinder(ch2, raw2, prefix); err != nil {
			return err
		}
		if share, peer, err = pickKeyShare(ch2.keyShares); err != nil {
			return err
		}
		transcript.Write(prefix)
		raw, ch = raw2, ch2
	}
	transcript.Write(raw)

	// (EC)DHE (§7.4).
	priv, err := share.GenerateKey(rand.Reader)
	if err != nil {
		return alertf(alertInternalError, "key share: %v", err)
	}
	dhe, err := priv.ECDH(peer)
	if err != nil {
		return alertf(alertIllegalParameter, "key share: %v", err)
	}

	// ServerHello (§4.1.3).
	var random [32]byte
	if _, err := rand.Read(random[:]); err != nil {
		return alertf(alertInternalError, "random: %v", err)
	}
	var exts []byte
	exts = appendExt(exts, extSupportedVersions, []byte{versionTLS13 >> 8, versionTLS13 & 0xff})
	pub := priv.PublicKey().Bytes()
	ks := []byte{byte(groupOf(share) >> 8), byte(groupOf(share)), byte(len(pub) >> 8), byte(len(pub))}
	exts = appendExt(exts, extKeyShare, append(ks, pub...))
	exts = appendExt(exts, extPreSharedKey, []byte{byte(selected >> 8), byte(selected)})
	sh := serverHello(random[:], ch.sessionID, st.id, exts)
	transcript.Write(sh)
	c.wbuf = c.out.seal(c.wbuf[:0], recordHandshake, sh)
	if len(ch.sessionID) > 0 && !sentCCS {
		// Middlebox compatibility mode (§D.4): a dummy change_cipher_spec.
		c.wbuf = c.out.seal(c.wbuf, recordChangeCipherSpec, []byte{1})
	}

	// Handshake traffic keys (§7.1).
	hs := handshakeSecret(early, dhe)
	cHS := deriveSecret(hs, "c hs traffic", transcript.Sum(nil))
	sHS := deriveSecret(hs, "s hs traffic", transcript.Sum(nil))
	if err := c.out.setSecret(st, sHS); err != nil {
		return alertf(alertInternalError, "keys: %v", err)
	}
	// EncryptedExtensions (§4.3.1, none) and server Finished (§4.4.4) in one record.
	ee := handshakeMessage(typeEncryptedExtensions, []byte{0, 0})
	transcript.Write(ee)
	fin := handshakeMessage(typeFinished, finishedMAC(sHS, transcript.Sum(nil)))
	transcript.Write(fin)
	c.wbuf = c.out.seal(c.wbuf, recordHandshake, append(ee, fin...))
	if _, err := c.nc.Write(c.wbuf); err != nil {
		return fmt.Errorf("tlspsk: write ServerHello: %w", err)
	}

	// Application traffic secrets cover the transcript through the server
	// Finished (§7.1); the client's Finished is checked against it too.
	// The server writes under its application keys from here on (§2: a
	// client reads them after our Finished), alerts included.
	ms := masterSecret(hs)
	cAP := deriveSecret(ms, "c ap traffic", transcript.Sum(nil))
	sAP := deriveSecret(ms, "s ap traffic", transcript.Sum(nil))
	wantFin := finishedMAC(cHS, transcript.Sum(nil))
	if err := c.out.setSecret(st, sAP); err != nil {
		return alertf(alertInternalError, "keys: %v", err)
	}

	if err := c.in.setSecret(st, cHS); err != nil {
		return alertf(alertInternalError, "keys: %v", err)
	}
	c.earlyData = ch.earlyData
	msg, err := c.readHandshakeMessage(false)
	if err != nil {
		return err
	}
	if msg[0] != typeFinished {
		return alertf(alertUnexpectedMessage, "expected the client's Finished, got handshake message type %d", msg[0])
	}
	if len(c.hsBuf) != 0 {
		return alertf(alertUnexpectedMessage, "data after the client's Finished in its record") // §5.1
	}
	if !hmac.Equal(msg[4:], wantFin) {
		return alertf(alertDecryptError, "client Finished does not verify")
	}
	if err := c.in.setSecret(st, cAP); err != nil {
		return alertf(alertInternalError, "keys: %v", err)
	}
	c.identity = string(ch.psks[selected].identity)
	return nil
}

// readClientHello reads and parses a ClientHello, which must end its
// record (§5.1: a key change or a HelloRetryRequest follows it).
func (c *Conn) readClientHello(first bool) ([]byte, *clientHello, error) {
	raw, err := c.readHandshakeMessage(first)
	if err != nil {
		return nil, nil, err
	}
	if raw[0] != typeClientHello {
		return nil, nil, alertf(alertUnexpectedMessage, "handshake message type %d where a ClientHello belongs", raw[0])
	}
	if len(c.hsBuf) != 0 {
		return nil, nil, alertf(alertUnexpectedMessage, "data after the ClientHello in its record")
	}
	ch, err := parseClientHello(raw)
	return raw, ch, err
}

// checkClientHello checks what this server requires of a ClientHello
// and picks the cipher suite.
func checkClientHello(ch *clientHello) (*suite, error) {
	// §4.2.1: TLS 1.3 only.
	if !slices.Contains(ch.versions, versionTLS13) {
		return nil, alertf(alertProtocolVersion, "client does not offer TLS 1.3")
	}
	if ch.psks == nil {
		return nil, alertf(alertHandshakeFailure, "client offers no pre-shared key (this server authenticates with PSKs only)")
	}
	if ch.pskModes == nil {
		return nil, alertf(alertMissingExtension, "pre_shared_key without psk_key_exchange_modes") // §4.2.9
	}
	if !slices.Contains(ch.pskModes, pskModeDHEKE) {
		return nil, alertf(alertHandshakeFailure, "client offers only psk_ke; psk_dhe_ke (forward secrecy) is required")
	}
	for i := range suites {
		if slices.Contains(ch.cipherSuites, suites[i].id) {
			return &suites[i], nil
		}
	}
	return nil, alertf(alertHandshakeFailure, "no common cipher suite (TLS_AES_128_GCM_SHA256 or TLS_CHACHA20_POLY1305_SHA256)")
}

// verifyBinder selects the first offered identity the key lookup knows
// and verifies its binder (§4.2.11.2) over prefix (the transcript before
// this hello: empty, or message_hash and HelloRetryRequest) and the
// hello up to its binders. It returns the identity's index and the early
// secret.
func (c *Conn) verifyBinder(ch *clientHello, raw, prefix []byte) (int, []byte, error) {
	for i, id := range ch.psks {
		psk, ok := c.cfg.Key(string(id.identity))
		if !ok || len(psk) == 0 {
			continue
		}
		early := earlySecret(psk)
		h := sha256.New()
		h.Write(prefix)
		h.Write(raw[:ch.bindersAt])
		if !hmac.Equal(finishedMAC(binderKey(early), h.Sum(nil)), id.binder) {
			return 0, nil, alertf(alertDecryptError, "PSK binder of identity %q does not verify: wrong key", id.identity)
		}
		return i, early, nil
	}
	return 0, nil, alertf(alertUnknownPSKIdentity, "no offered PSK identity is known (%d offered)", len(ch.psks))
}

// helloRetryRequestRandom marks a ServerHello as a HelloRetryRequest
// (§4.1.3): SHA-256 of "HelloRetryRequest".
var helloRetryRequestRandom = sha256.Sum256([]byte("HelloRetryRequest"))

// serverHello builds a ServerHello (or HelloRetryRequest) message.
func serverHello(random, sessionID []byte, suiteID uint16, exts []byte) []byte {
	body := []byte{3, 3}
	body = append(body, random...)
	body = append(body, byte(len(sessionID)))
	body = append(body, sessionID...)
	body = append(body, byte(suiteID>>8), byte(suiteID), 0)
	body = append(body, byte(len(exts)>>8), byte(len(exts)))
	body = append(body, exts...)
	return handshakeMessage(typeServerHello, body)
}

// pickGroup picks x25519, else secp256r1, among the client's supported
// groups, for a HelloRetryRequest.
func pickGroup(groups []uint16) (uint16, bool) {
	for _, g := range []uint16{groupX25519, groupSecp256r1} {
		if slices.Contains(groups, g) {
			return g, true
		}
	}
	return 0, false
}

// pickKeyShare picks x25519, else secp256r1, among the client's shares;
// a nil key without error means neither is there.
func pickKeyShare(shares []keyShare) (ecdh.Curve, *ecdh.PublicKey, error) {
	for _, want := range []struct {
		group uint16
		curve ecdh.Curve
	}{{groupX25519, ecdh.X25519()}, {groupSecp256r1, ecdh.P256()}} {
		for _, ks := range shares {
			if ks.group != want.group {
				continue
			}
			pub, err := want.curve.NewPublicKey(ks.data)
			if err != nil {
				return nil, nil, alertf(alertIllegalParameter, "key share for group %#04x: %v", ks.group, err)
			}
			return want.curve, pub, nil
		}
	}
	return nil, nil, nil
}

func groupOf(c ecdh.Curve) uint16 {
	if c == ecdh.X25519() {
		return groupX25519
	}
	return groupSecp256r1
}

func appendExt(b []byte, typ uint16, data []byte) []byte {
	b = append(b, byte(typ>>8), byte(typ), byte(len(data)>>8), byte(len(data)))
	return append(b, data...)
}

func handshakeMessage(typ uint8, body []byte) []byte {
	m := []byte{typ, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}
	return append(m, body...)
}

// maxHandshakeMessage bounds a handshake message the server accepts (a
// ClientHello is at most a few KiB).
const maxHandshakeMessage = 1 << 16

// maxSkippedEarlyData bounds the 0-RTT bytes skipped (§4.2.10).
const maxSkippedEarlyData = 1 << 16

// readHandshakeMessage returns the next whole handshake message (header
// included), reading records as needed. During the handshake it drops the
// middlebox change_cipher_spec (§5) and skips undecryptable early data
// (§4.2.10). Called with inMu held.
func (c *Conn) readHandshakeMessage(first bool) ([]byte, error) {
	skipped := 0
	for {
		if len(c.hsBuf) >= 4 {
			n := int(c.hsBuf[1])<<16 | int(c.hsBuf[2])<<8 | int(c.hsBuf[3])
			if n > maxHandshakeMessage {
				return nil, alertf(alertIllegalParameter, "handshake message of %d bytes", n)
			}
			if len(c.hsBuf) >= 4+n {
				msg := slices.Clone(c.hsBuf[:4+n])
				c.hsBuf = c.hsBuf[4+n:]
				return msg, nil
			}
		}
		hdr, body, err := readRecord(c.br, c.rbuf, c.in.aead != nil)
		if err != nil {
			return nil, err
		}
		if hdr[0] == recordChangeCipherSpec && !c.hsDone {
			// §5: one byte 0x01 between the first ClientHello and the Finished is dropped.
			if first || len(body) != 1 || body[0] != 1 {
				return nil, alertf(alertUnexpectedMessage, "change_cipher_spec record")
			}
			continue
		}
		if hdr[0] == recordAlert && c.in.aead != nil && !c.hsDone {
			// A client that failed on our ServerHello alerts in plaintext.
			return nil, peerAlert(body)
		}
		if hdr[0] == recordApplicationData && c.in.aead == nil && c.earlyData && skipped+len(body) <= maxSkippedEarlyData {
			skipped += len(body) // 0-RTT data before a second ClientHello (§4.2.10)
			continue
		}
		typ, data, err := c.in.open(hdr, body)
		if err != nil {
			if c.earlyData && skipped+len(body) <= maxSkippedEarlyData {
				skipped += len(body)
				continue
			}
			return nil, err
		}
		switch typ {
		case recordHandshake:
			if len(data) == 0 {
				return nil, alertf(alertUnexpectedMessage, "empty handshake record") // §5.1
			}
			c.hsBuf = append(c.hsBuf, data...)
		case recordAlert:
			return nil, peerAlert(data)
		default:
			return nil, alertf(alertUnexpectedMessage, "record of type %d during a handshake message", typ)
		}
		c.earlyData = false // early data ends before the first protected handshake record
	}
}

// peerAlert reads an alert record (§6).
func peerAlert(data []byte) error {
	if len(data) != 2 {
		return alertf(alertDecodeError, "alert record of %d bytes", len(data))
	}
	if data[1] == alertCloseNotify {
		return io.EOF
	}
	return &PeerAlertError{Alert: data[1]}
}

// Read reads application data.
func (c *Conn) Read(b []byte) (int, error) {
	if err := c.Handshake(context.Background()); err != nil {
		return 0, err
	}
	if len(b) == 0 {
		return 0, nil // after the handshake, as crypto/tls does
	}
	c.inMu.Lock()
	defer c.inMu.Unlock()
	for len(c.pending) == 0 {
		if c.readErr != nil {
			return 0, c.readErr
		}
		if err := c.readRecordLocked(); err != nil {
			c.readErr = err
			if errors.As(err, new(*alertError)) {
				c.fail(err)
			}
		}
	}
	n := copy(b, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// readRecordLocked reads one record after the handshake. Called with inMu held.
func (c *Conn) readRecordLocked() error {
	hdr, body, err := readRecord(c.br, c.rbuf, true)
	if err != nil {
		return err
	}
	typ, data, err := c.in.open(hdr, body)
	if err != nil {
		return err
	}
	if typ != recordHandshake && len(c.hsBuf) != 0 {
		return alertf(alertUnexpectedMessage, "record of type %d inside a fragmented handshake message", typ) // §5.1
	}
	switch typ {
	case recordApplicationData:
		c.pending = data
		return nil
	case recordAlert:
		return peerAlert(data)
	case recordHandshake:
		if len(data) == 0 {
			return alertf(alertUnexpectedMessage, "empty handshake record")
		}
		c.hsBuf = append(c.hsBuf, data...)
		for len(c.hsBuf) >= 4 {
			n := int(c.hsBuf[1])<<16 | int(c.hsBuf[2])<<8 | int(c.hsBuf[3])
			if n > maxHandshakeMessage {
				return alertf(alertIllegalParameter, "handshake message of %d bytes", n)
			}
			if len(c.hsBuf) < 4+n {
				return nil
			}
			msg := c.hsBuf[:4+n]
			c.hsBuf = c.hsBuf[4+n:]
			if err := c.postHandshake(msg); err != nil {
				return err
			}
		}
		return nil
	default:
		return alertf(alertUnexpectedMessage, "record of type %d after the handshake", typ)
	}
}

// postHandshake handles a handshake message after the handshake: only
// KeyUpdate (§4.6.3) may come from a client.
func (c *Conn) postHandshake(msg []byte) error {
	if msg[0] != typeKeyUpdate {
		return alertf(alertUnexpectedMessage, "post-handshake message type %d", msg[0])
	}
	if len(msg) != 5 || msg[4] > 1 {
		return alertf(alertDecodeError, "malformed KeyUpdate")
	}
	if len(c.hsBuf) != 0 {
		return alertf(alertUnexpectedMessage, "data after KeyUpdate in its record") // §5.1
	}
	if err := c.in.setSecret(c.in.suite, nextTrafficSecret(c.in.secret)); err != nil {
		return alertf(alertInternalError, "key update: %v", err)
	}
	if msg[4] == 1 { // update_requested: answer with our own update
		c.outMu.Lock()
		defer c.outMu.Unlock()
		return c.keyUpdateLocked()
	}
	return nil
}

// keyUpdateLocked sends KeyUpdate(update_not_requested) and switches to
// the next write keys. Called with outMu held.
func (c *Conn) keyUpdateLocked() error {
	if c.writeErr != nil {
		return c.writeErr
	}
	if err := c.writeRecordLocked(recordHandshake, handshakeMessage(typeKeyUpdate, []byte{0})); err != nil {
		return err
	}
	if err := c.out.setSecret(c.out.suite, nextTrafficSecret(c.out.secret)); err != nil {
		c.writeErr = err
		return err
	}
	return nil
}

// writeRecordLocked sends one record. Called with outMu held.
func (c *Conn) writeRecordLocked(typ uint8, data []byte) error {
	c.wbuf = c.out.seal(c.wbuf[:0], typ, data)
	if _, err := c.nc.Write(c.wbuf); err != nil {
		c.writeErr = err
		return err
	}
	return nil
}

// writeBatch is how many bytes of records Write hands the socket at once.
const writeBatch = 16 * maxPlaintext

// Write writes application data in records of at most 2^14 bytes.
func (c *Conn) Write(b []byte) (int, error) {
	if err := c.Handshake(context.Background()); err != nil {
		return 0, err
	}
	c.outMu.Lock()
	defer c.outMu.Unlock()
	n := 0
	for len(b) > 0 {
		if c.writeErr != nil {
			return n, c.writeErr
		}
		c.wbuf = c.wbuf[:0]
		batch := 0
		for len(b) > 0 && batch < writeBatch {
			if c.out.seq >= keyUpdateAfter {
				break
			}
			m := min(len(b), maxPlaintext)
			c.wbuf = c.out.seal(c.wbuf, recordApplicationData, b[:m])
			b, batch = b[m:], batch+m
		}
		if _, err := c.nc.Write(c.wbuf); err != nil {
			c.writeErr = err
			return n, err
		}
		n += batch
		if c.out.seq >= keyUpdateAfter {
			if err := c.keyUpdateLocked(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// CloseWrite sends close_notify (§6.1) and leaves the socket open.
func (c *Conn) CloseWrite() error {
	c.hsMu.Lock()
	done := c.hsDone && c.hsErr == nil
	c.hsMu.Unlock()
	if !done {
		return errors.New("tlspsk: CloseWrite before the handshake completed")
	}
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.writeErr != nil {
		return c.writeErr
	}
	err := c.writeRecordLocked(recordAlert, []byte{1, alertCloseNotify})
	c.writeErr = net.ErrClosed
	return err
}

// Close sends close_notify if the session is up and closes the socket.
func (c *Conn) Close() error {
	if c.hsMu.TryLock() {
		done := c.hsDone && c.hsErr == nil
		c.hsMu.Unlock()
		if done && c.outMu.TryLock() {
			if c.writeErr == nil {
				c.nc.SetWriteDeadline(time.Now().Add(time.Second))
				c.writeRecordLocked(recordAlert, []byte{1, alertCloseNotify})
				c.writeErr = net.ErrClosed
			}
			c.outMu.Unlock()
		}
	}
	return c.nc.Close()
}

func (c *Conn) LocalAddr() net.Addr                { return c.nc.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr               { return c.nc.RemoteAddr() }
func (c *Conn) SetDeadline(t time.Time) error      { return c.nc.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.nc.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.nc.SetWriteDeadline(t) }

// NetConn returns the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.nc }
