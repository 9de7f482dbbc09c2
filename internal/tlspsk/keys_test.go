package tlspsk

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

func unhex(s string) []byte {
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		panic(err)
	}
	return b
}

// TestRFC8448Binder checks the PSK part of the key schedule against RFC
// 8448 §4 ("Resumed 0-RTT Handshake"): early secret, binder key, binder
// finished key and binder, and the client early traffic secret. The RFC's
// PSK is a resumption PSK ("res binder"); an external PSK differs only in
// the label ("ext binder", RFC 8446 §7.1), which binderKey uses.
func TestRFC8448Binder(t *testing.T) {
	psk := unhex("4e cd 0e b6 ec 3b 4d 87 f5 d6 02 8f 92 2c a4 c5 85 1a 27 7f d4 13 11 c9 e6 2d 2c 94 92 e1 c4 f3")
	early := earlySecret(psk)
	check := func(name string, got []byte, want string) {
		t.Helper()
		if !bytes.Equal(got, unhex(want)) {
			t.Errorf("%s = %x, want %s", name, got, want)
		}
	}
	check("early secret", early, "9b 21 88 e9 b2 fc 6d 64 d7 1d c3 29 90 0e 20 bb 41 91 50 00 f6 78 aa 83 9c bb 79 7c b7 d8 33 2c")
	bk := deriveSecret(early, "res binder", emptyHash[:])
	check("binder key", bk, "69 fe 13 1a 3b ba d5 d6 3c 64 ee bc c3 0e 39 5b 9d 81 07 72 6a 13 d0 74 e3 89 db c8 a4 e4 72 56")
	check("binder finished key", expandLabel(bk, "finished", nil, hashLen), "55 88 67 3e 72 cb 59 c8 7d 22 0c af fe 94 f2 de a9 a3 b1 60 9f 7d 50 e9 0a 48 22 7d b9 ed 7e aa")
	binderHash := unhex("63 22 4b 2e 45 73 f2 d3 45 4c a8 4b 9d 00 9a 04 f6 be 9e 05 71 1a 83 96 47 3a ef a0 1e 92 4a 14")
	check("binder", finishedMAC(bk, binderHash), "3a dd 4f b2 d8 fd f8 22 a0 ca 3c f7 67 8e f5 e8 8d ae 99 01 41 c5 92 4d 57 bb 6f a3 1b 9e 5f 9d")
	chHash := unhex("08 ad 0f a0 5d 7c 72 33 b1 77 5b a2 ff 9f 4c 5b 8b 59 27 6b 7f 22 7f 13 a9 76 24 5f 5d 96 09 13")
	check("client early traffic secret", deriveSecret(early, "c e traffic", chHash), "3f bb e6 a6 0d eb 66 c3 0a 32 79 5a ba 0e ff 7e aa 10 10 55 86 e7 be 5c 09 67 8d 63 b6 ca ab 62")
	if bytes.Equal(binderKey(early), bk) {
		t.Error("the external binder key must differ from the resumption one")
	}
}

// TestACVPKeySchedule checks the PSK + (EC)DHE schedule through the
// application traffic secrets against NIST's ACVP TLS 1.3 KDF vector
// (TLS-v1.3-KDF-RFC8446, the one Go's crypto/tls tests with). The
// "random" values stand in for the messages: they are hashed in sequence
// as the transcript.
func TestACVPKeySchedule(t *testing.T) {
	psk := unhex("56288B726C73829F7A3E47B103837C8139ACF552E7530C7A710B35ED41191698")
	dhe := unhex("EFFE9EC26AA29FD750DFA6A10B944D74071595B27EE88887D5E11C84590B5CC3")
	transcript := sha256.New()
	transcript.Write(unhex("E9137679E582BA7C1DB41CF725F86C6D09C8C05F297BAD9A65B552EAF524FDE4"))
	early := earlySecret(psk)
	if got, want := deriveSecret(early, "c e traffic", transcript.Sum(nil)), unhex("3272189698C3594D18F58EFA3F12B638A249515099BE7A2FA9836BABE74F0111"); !bytes.Equal(got, want) {
		t.Errorf("client early traffic secret %x, want %x", got, want)
	}
	hs := handshakeSecret(early, dhe)
	transcript.Write(unhex("23ECCFD030790748C8F8D8A656FD98D717F1B62AF3712F97211D2070B499F98A"))
	for _, c := range []struct{ label, want string }{
		{"c hs traffic", "B32306C3CE9932C460A1FE6C0F060593974842036B96FA45049B7352E71C2AD2"},
		{"s hs traffic", "22787F8CA269D34BC549AC8BA19F2040938A3AA370D7CC9D60F720882B88D01B"},
	} {
		if got := deriveSecret(hs, c.label, transcript.Sum(nil)); !bytes.Equal(got, unhex(c.want)) {
			t.Errorf("%s = %x, want %s", c.label, got, c.want)
		}
	}
	ms := masterSecret(hs)
	transcript.Write(unhex("C750EDA6696CD101B142BD79E00E6AC8C5F2C0ABC78DD64F4D991326659E9299"))
	for _, c := range []struct{ label, want string }{
		{"c ap traffic", "47D7EA08397B5871154B0FE85584BCC30A87C69E84D69B56007C5B21F76493BA"},
		{"s ap traffic", "EFBDB0C873C0480DA57307083839A8984BE25B9A8545E4FCA029940FE2800565"},
	} {
		if got := deriveSecret(ms, c.label, transcript.Sum(nil)); !bytes.Equal(got, unhex(c.want)) {
			t.Errorf("%s = %x, want %s", c.label, got, c.want)
		}
	}
}
