package tlspsk

import (
	"bufio"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"io"
)

// Record content types (RFC 8446 §5.1).
const (
	recordChangeCipherSpec = 20
	recordAlert            = 21
	recordHandshake        = 22
	recordApplicationData  = 23
)

const (
	recordHeaderLen = 5
	// maxPlaintext is the largest record payload (§5.1).
	maxPlaintext = 1 << 14
	// maxCiphertext is the largest encrypted record body (§5.2).
	maxCiphertext = maxPlaintext + 256
	// keyUpdateAfter is how many records one write key protects before
	// the server updates it: §5.5 allows AES-GCM 2^24.5 full records.
	keyUpdateAfter = 1 << 24
)

// Alert descriptions (§6).
const (
	alertCloseNotify        = 0
	alertUnexpectedMessage  = 10
	alertBadRecordMAC       = 20
	alertRecordOverflow     = 22
	alertHandshakeFailure   = 40
	alertIllegalParameter   = 47
	alertDecodeError        = 50
	alertDecryptError       = 51
	alertProtocolVersion    = 70
	alertInternalError      = 80
	alertMissingExtension   = 109
	alertUnknownPSKIdentity = 115
)

func alertName(a uint8) string {
	switch a {
	case alertCloseNotify:
		return "close_notify"
	case alertUnexpectedMessage:
		return "unexpected_message"
	case alertBadRecordMAC:
		return "bad_record_mac"
	case alertRecordOverflow:
		return "record_overflow"
	case alertHandshakeFailure:
		return "handshake_failure"
	case alertIllegalParameter:
		return "illegal_parameter"
	case alertDecodeError:
		return "decode_error"
	case alertDecryptError:
		return "decrypt_error"
	case alertProtocolVersion:
		return "protocol_version"
	case alertInternalError:
		return "internal_error"
	case alertMissingExtension:
		return "missing_extension"
	case alertUnknownPSKIdentity:
		return "unknown_psk_identity"
	}
	return fmt.Sprintf("%d", a)
}

// PeerAlertError is a fatal alert the client sent.
type PeerAlertError struct{ Alert uint8 }

func (e *PeerAlertError) Error() string {
	return "tlspsk: client sent alert " + alertName(e.Alert)
}

// halfConn is one direction's record protection (§5.2, §5.3). A nil aead
// means plaintext records.
type halfConn struct {
	suite  *suite
	secret []byte
	aead   cipher.AEAD
	iv     [12]byte
	seq    uint64
}

// setSecret installs the traffic keys of secret (§7.3) and resets the
// sequence number.
func (h *halfConn) setSecret(s *suite, secret []byte) error {
	aead, err := s.aead(expandLabel(secret, "key", nil, s.keyLen))
	if err != nil {
		return err
	}
	h.suite, h.secret, h.aead, h.seq = s, secret, aead, 0
	copy(h.iv[:], expandLabel(secret, "iv", nil, len(h.iv)))
	return nil
}

// nonce is the per-record nonce: the IV XOR the padded sequence number (§5.3).
func (h *halfConn) nonce() []byte {
	n := h.iv
	for i := range 8 {
		n[4+i] ^= byte(h.seq >> (56 - 8*i))
	}
	return n[:]
}

// seal appends to dst one record of typ holding data (at most maxPlaintext).
func (h *halfConn) seal(dst []byte, typ uint8, data []byte) []byte {
	if h.aead == nil {
		dst = append(dst, typ, 3, 3, byte(len(data)>>8), byte(len(data)))
		return append(dst, data...)
	}
	n := len(data) + 1 + h.aead.Overhead()
	hdr := []byte{recordApplicationData, 3, 3, byte(n >> 8), byte(n)}
	dst = append(dst, hdr...)
	// TLSInnerPlaintext: content, type, no padding.
	start := len(dst)
	dst = append(dst, data...)
	dst = append(dst, typ)
	dst = h.aead.Seal(dst[:start], h.nonce(), dst[start:], hdr)
	h.seq++
	return dst
}

// open decrypts one record body in place and returns its true content
// type and content (§5.2, §5.4).
func (h *halfConn) open(hdr, body []byte) (uint8, []byte, error) {
	if h.aead == nil {
		return hdr[0], body, nil
	}
	if hdr[0] != recordApplicationData {
		return 0, nil, alertf(alertUnexpectedMessage, "plaintext record of type %d after keys changed", hdr[0])
	}
	pt, err := h.aead.Open(body[:0], h.nonce(), body, hdr)
	if err != nil {
		return 0, nil, alertf(alertBadRecordMAC, "record authentication failed")
	}
	h.seq++
	if len(pt) > maxPlaintext+1 {
		return 0, nil, alertf(alertRecordOverflow, "decrypted record of %d bytes", len(pt))
	}
	// Strip the zero padding; the last non-zero byte is the type.
	i := len(pt) - 1
	for i >= 0 && pt[i] == 0 {
		i--
	}
	if i < 0 {
		return 0, nil, alertf(alertUnexpectedMessage, "record with no content type")
	}
	return pt[i], pt[:i], nil
}

// readRecord reads one record into buf (which must hold a header and
// maxCiphertext bytes) and returns its header and body.
func readRecord(br *bufio.Reader, buf []byte, encrypted bool) (hdr, body []byte, err error) {
	hdr = buf[:recordHeaderLen]
	if _, err := io.ReadFull(br, hdr); err != nil {
		return nil, nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[3:5]))
	limit := maxPlaintext
	if encrypted && hdr[0] == recordApplicationData {
		limit = maxCiphertext
	}
	if n > limit {
		return nil, nil, alertf(alertRecordOverflow, "record of %d bytes (type %d)", n, hdr[0])
	}
	if hdr[1] != 3 {
		return nil, nil, alertf(alertDecodeError, "record version %#x%02x is not TLS", hdr[1], hdr[2])
	}
	body = buf[recordHeaderLen : recordHeaderLen+n]
	if _, err := io.ReadFull(br, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, nil, err
	}
	return hdr, body, nil
}
