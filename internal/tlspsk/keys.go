package tlspsk

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"

	"golang.org/x/crypto/chacha20poly1305"
)

// hashLen is the length of SHA-256, the hash of every suite offered.
const hashLen = sha256.Size

// Cipher suites (RFC 8446 §B.4).
const (
	suiteAES128GCMSHA256        uint16 = 0x1301
	suiteChaCha20Poly1305SHA256 uint16 = 0x1303
)

// suite is a TLS 1.3 cipher suite with SHA-256 as its hash.
type suite struct {
	id     uint16
	keyLen int
	aead   func(key []byte) (cipher.AEAD, error)
}

// suites in the server's order of preference.
var suites = []suite{
	{id: suiteAES128GCMSHA256, keyLen: 16, aead: func(key []byte) (cipher.AEAD, error) {
		b, err := aes.NewCipher(key)
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(b)
	}},
	{id: suiteChaCha20Poly1305SHA256, keyLen: chacha20poly1305.KeySize, aead: chacha20poly1305.New},
}

// emptyHash is Transcript-Hash of no messages.
var emptyHash = sha256.Sum256(nil)

// expandLabel is HKDF-Expand-Label (RFC 8446 §7.1).
func expandLabel(secret []byte, label string, context []byte, length int) []byte {
	info := make([]byte, 0, 4+6+len(label)+len(context))
	info = binary.BigEndian.AppendUint16(info, uint16(length))
	info = append(info, byte(6+len(label)))
	info = append(info, "tls13 "...)
	info = append(info, label...)
	info = append(info, byte(len(context)))
	info = append(info, context...)
	out, err := hkdf.Expand(sha256.New, secret, string(info), length)
	if err != nil {
		// Only a length beyond 255*hashLen fails; every caller asks less.
		panic("tlspsk: HKDF-Expand-Label: " + err.Error())
	}
	return out
}

// deriveSecret is Derive-Secret (§7.1) given the transcript hash.
func deriveSecret(secret []byte, label string, transcriptHash []byte) []byte {
	return expandLabel(secret, label, transcriptHash, hashLen)
}

// extract is HKDF-Extract(salt, ikm) (§7.1).
func extract(salt, ikm []byte) []byte {
	prk, err := hkdf.Extract(sha256.New, ikm, salt)
	if err != nil {
		panic("tlspsk: HKDF-Extract: " + err.Error())
	}
	return prk
}

// earlySecret is HKDF-Extract(0, PSK) (§7.1).
func earlySecret(psk []byte) []byte {
	return extract(make([]byte, hashLen), psk)
}

// handshakeSecret is HKDF-Extract(Derive-Secret(early, "derived", ""), (EC)DHE).
func handshakeSecret(early, dhe []byte) []byte {
	return extract(deriveSecret(early, "derived", emptyHash[:]), dhe)
}

// masterSecret is HKDF-Extract(Derive-Secret(handshake, "derived", ""), 0).
func masterSecret(hs []byte) []byte {
	return extract(deriveSecret(hs, "derived", emptyHash[:]), make([]byte, hashLen))
}

// finishedMAC is the Finished verify_data (§4.4.4), also the PSK binder
// (§4.2.11.2): HMAC(HKDF-Expand-Label(base, "finished", "", Hash.length),
// transcriptHash).
func finishedMAC(base, transcriptHash []byte) []byte {
	h := hmac.New(sha256.New, expandLabel(base, "finished", nil, hashLen))
	h.Write(transcriptHash)
	return h.Sum(nil)
}

// binderKey is the binder key of an external PSK (§7.1, "ext binder").
func binderKey(early []byte) []byte {
	return deriveSecret(early, "ext binder", emptyHash[:])
}

// nextTrafficSecret is application_traffic_secret_N+1 (§7.2).
func nextTrafficSecret(secret []byte) []byte {
	return expandLabel(secret, "traffic upd", nil, hashLen)
}
