package iscsi

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"strconv"
	"strings"
)

// CHAP (RFC 1994 with MD5, as iSCSI uses it: RFC 7143 §12.1.3).

// chapResponse is MD5(id || secret || challenge).
func chapResponse(id byte, secret string, challenge []byte) []byte {
	h := md5.New()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return h.Sum(nil)
}

// decodeBinary decodes an iSCSI binary value: 0x-prefixed hex or
// 0b-prefixed base64.
func decodeBinary(v string) ([]byte, bool) {
	switch {
	case len(v) > 2 && strings.EqualFold(v[:2], "0x"):
		b, err := hex.DecodeString(v[2:])
		return b, err == nil
	case len(v) > 2 && strings.EqualFold(v[:2], "0b"):
		b, err := base64.StdEncoding.DecodeString(v[2:])
		return b, err == nil
	}
	return nil, false
}

func encodeHex(b []byte) string { return "0x" + hex.EncodeToString(b) }

// chapState is the target's side of one CHAP exchange.
type chapState struct {
	id        byte
	challenge []byte
}

func newChap() *chapState {
	c := &chapState{challenge: make([]byte, 16)}
	var id [1]byte
	rand.Read(id[:])
	rand.Read(c.challenge)
	c.id = id[0]
	return c
}

func (c *chapState) offer(resp *kv) {
	resp.add("CHAP_A", "5")
	resp.add("CHAP_I", strconv.Itoa(int(c.id)))
	resp.add("CHAP_C", encodeHex(c.challenge))
}

// verify checks the initiator's CHAP_R for secret.
func (c *chapState) verify(r string, secret string) bool {
	got, ok := decodeBinary(r)
	if !ok {
		return false
	}
	want := chapResponse(c.id, secret, c.challenge)
	return subtle.ConstantTimeCompare(got, want) == 1
}
