package tlspsk

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// testClient is a minimal TLS 1.3 PSK client for the tests, with knobs to
// misbehave. It shares the key schedule with the server, which the RFC
// test vectors and the GnuTLS interop tests check independently.
type testClient struct {
	identities []string // offered in order; key is the PSK of the first one the test means
	key        []byte
	modes      []byte
	groups     []uint16             // key shares sent
	supported  []uint16             // supported_groups; default x25519, secp256r1
	hrr        bool                 // set when the server sent a HelloRetryRequest
	hrrTweak   func(tc *testClient) // applied before the second hello
	suites     []uint16
	versions   []uint16
	sessionID  bool
	badBinder  bool
	badFinish  bool
	earlyData  bool
	fragment   int // split the ClientHello into records of this many bytes
	ccs        bool
	trailing   []byte   // bytes after the ClientHello in its last record
	early      [][]byte // raw records sent right after the ClientHello

	nc     net.Conn
	br     *bufio.Reader
	in     halfConn
	out    halfConn
	suite  *suite
	hsData []byte
}

func newTestClient(key []byte, identity string) *testClient {
	return &testClient{identities: []string{identity}, key: key, modes: []byte{pskModeDHEKE},
		groups: []uint16{groupX25519}, suites: []uint16{suiteAES128GCMSHA256}, versions: []uint16{versionTLS13}}
}

// hello builds the ClientHello, binders computed with tc.key for every identity.
func (tc *testClient) hello(privs map[uint16]*ecdh.PrivateKey, prefix []byte) []byte {
	var exts []byte
	vs := []byte{byte(2 * len(tc.versions))}
	for _, v := range tc.versions {
		vs = append(vs, byte(v>>8), byte(v))
	}
	exts = appendExt(exts, extSupportedVersions, vs)
	sg := tc.supported
	if sg == nil {
		sg = []uint16{groupX25519, groupSecp256r1}
	}
	gs := []byte{byte(2 * len(sg) >> 8), byte(2 * len(sg))}
	for _, g := range sg {
		gs = append(gs, byte(g>>8), byte(g))
	}
	exts = appendExt(exts, extSupportedGroups, gs)
	if tc.modes != nil {
		exts = appendExt(exts, extPSKKeyExchangeModes, append([]byte{byte(len(tc.modes))}, tc.modes...))
	}
	var ks []byte
	for _, g := range tc.groups {
		curve := ecdh.X25519()
		if g == groupSecp256r1 {
			curve = ecdh.P256()
		}
		priv, _ := curve.GenerateKey(rand.Reader)
		privs[g] = priv
		pub := priv.PublicKey().Bytes()
		ks = append(ks, byte(g>>8), byte(g), byte(len(pub)>>8), byte(len(pub)))
		ks = append(ks, pub...)
	}
	exts = appendExt(exts, extKeyShare, append([]byte{byte(len(ks) >> 8), byte(len(ks))}, ks...))
	if tc.earlyData {
		exts = appendExt(exts, extEarlyData, nil)
	}
	var ids []byte
	for _, id := range tc.identities {
		ids = append(ids, byte(len(id)>>8), byte(len(id)))
		ids = append(ids, id...)
		ids = append(ids, 0, 0, 0, 0)
	}
	bindersLen := len(tc.identities) * 33
	pskBody := append([]byte{byte(len(ids) >> 8), byte(len(ids))}, ids...)
	pskBody = append(pskBody, byte(bindersLen>>8), byte(bindersLen))
	pskBody = append(pskBody, make([]byte, bindersLen)...)
	exts = appendExt(exts, extPreSharedKey, pskBody)

	body := []byte{3, 3}
	body = append(body, make([]byte, 32)...)
	if tc.sessionID {
		body = append(body, 32)
		body = append(body, bytes.Repeat([]byte{7}, 32)...)
	} else {
		body = append(body, 0)
	}
	body = append(body, byte(2*len(tc.suites)>>8), byte(2*len(tc.suites)))
	for _, s := range tc.suites {
		body = append(body, byte(s>>8), byte(s))
	}
	body = append(body, 1, 0)
	body = append(body, byte(len(exts)>>8), byte(len(exts)))
	body = append(body, exts...)
	msg := handshakeMessage(typeClientHello, body)

	// Fill in the binders (§4.2.11.2).
	at := len(msg) - bindersLen
	th := sha256.New()
	th.Write(prefix)
	th.Write(msg[:at-2])
	binder := finishedMAC(binderKey(earlySecret(tc.key)), th.Sum(nil))
	if tc.badBinder {
		binder[0] ^= 1
	}
	for i := range tc.identities {
		msg[at+33*i] = 32
		copy(msg[at+33*i+1:], binder)
	}
	return msg
}

// handshake runs the client side on nc.
func (tc *testClient) handshake(nc net.Conn) error {
	tc.nc, tc.br = nc, bufio.NewReader(nc)
	privs := map[uint16]*ecdh.PrivateKey{}
	ch := tc.hello(privs, nil)
	frag := tc.fragment
	if frag <= 0 {
		frag = maxPlaintext
	}
	var w []byte
	for rest := ch; len(rest) > 0; {
		n := min(frag, len(rest))
		chunk := rest[:n]
		rest = rest[n:]
		if len(rest) == 0 && tc.trailing != nil {
			chunk = append(append([]byte{}, chunk...), tc.trailing...)
		}
		w = tc.out.seal(w, recordHandshake, chunk)
	}
	for _, r := range tc.early {
		w = append(w, r...)
	}
	if _, err := nc.Write(w); err != nil {
		return err
	}
	transcript := sha256.New()
	sh, err := tc.readHandshake()
	if err != nil {
		return err
	}
	if len(sh) > 38 && bytes.Equal(sh[6:38], helloRetryRequestRandom[:]) {
		// HelloRetryRequest: its key_share names the group (a test parser:
		// the extension is the last one the server writes).
		tc.hrr = true
		g := uint16(sh[len(sh)-2])<<8 | uint16(sh[len(sh)-1])
		tc.groups, tc.earlyData, tc.early = []uint16{g}, false, nil
		if tc.hrrTweak != nil {
			tc.hrrTweak(tc)
		}
		h1 := sha256.Sum256(ch)
		prefix := append(append([]byte{typeMessageHash, 0, 0, hashLen}, h1[:]...), sh...)
		ch = tc.hello(privs, prefix)
		if _, err := nc.Write(tc.out.seal(nil, recordHandshake, ch)); err != nil {
			return err
		}
		transcript.Write(prefix)
		if sh, err = tc.readHandshake(); err != nil {
			return err
		}
	}
	transcript.Write(ch)
	transcript.Write(sh)
	// ServerHello: find the suite and the key share (a test parser).
	r := &reader{b: sh[4:]}
	r.u16()
	r.bytes(32)
	r.vec8()
	suiteID := uint16(r.u16())
	r.u8()
	exts := r.vec16()
	var peer keyShare
	selected := -1
	for !exts.empty() {
		typ := exts.u16()
		body := exts.vec16()
		switch typ {
		case extKeyShare:
			peer.group = uint16(body.u16())
			peer.data = body.vec16().b
		case extPreSharedKey:
			selected = body.u16()
		}
	}
	if r.bad || exts.bad || selected < 0 {
		return fmt.Errorf("bad ServerHello")
	}
	for i := range suites {
		if suites[i].id == suiteID {
			tc.suite = &suites[i]
		}
	}
	priv := privs[peer.group]
	pub, err := priv.Curve().NewPublicKey(peer.data)
	if err != nil {
		return err
	}
	dhe, _ := priv.ECDH(pub)
	hs := handshakeSecret(earlySecret(tc.key), dhe)
	cHS := deriveSecret(hs, "c hs traffic", transcript.Sum(nil))
	sHS := deriveSecret(hs, "s hs traffic", transcript.Sum(nil))
	tc.in.setSecret(tc.suite, sHS)
	ee, err := tc.readHandshake()
	if err != nil {
		return err
	}
	transcript.Write(ee)
	fin, err := tc.readHandshake()
	if err != nil {
		return err
	}
	if !bytes.Equal(fin[4:], finishedMAC(sHS, transcript.Sum(nil))) {
		return fmt.Errorf("server Finished does not verify")
	}
	transcript.Write(fin)
	ms := masterSecret(hs)
	cAP := deriveSecret(ms, "c ap traffic", transcript.Sum(nil))
	sAP := deriveSecret(ms, "s ap traffic", transcript.Sum(nil))
	w = w[:0]
	if tc.ccs {
		w = tc.out.seal(w, recordChangeCipherSpec, []byte{1})
	}
	tc.out.setSecret(tc.suite, cHS)
	cfin := finishedMAC(cHS, transcript.Sum(nil))
	if tc.badFinish {
		cfin[31] ^= 1
	}
	w = tc.out.seal(w, recordHandshake, handshakeMessage(typeFinished, cfin))
	if _, err := nc.Write(w); err != nil {
		return err
	}
	tc.in.setSecret(tc.suite, sAP)
	tc.out.setSecret(tc.suite, cAP)
	return nil
}

// readRecord returns the next record's type and content.
func (tc *testClient) readRecord() (uint8, []byte, error) {
	buf := make([]byte, recordHeaderLen+maxCiphertext)
	for {
		hdr, body, err := readRecord(tc.br, buf, tc.in.aead != nil)
		if err != nil {
			return 0, nil, err
		}
		if hdr[0] == recordChangeCipherSpec {
			continue
		}
		if hdr[0] == recordAlert && tc.in.aead != nil {
			return recordAlert, body, nil
		}
		typ, data, err := tc.in.open(hdr, body)
		if err != nil {
			return 0, nil, err
		}
		return typ, bytes.Clone(data), nil
	}
}

// readHandshake returns the next handshake message; an alert is an error.
func (tc *testClient) readHandshake() ([]byte, error) {
	for {
		if len(tc.hsData) >= 4 {
			n := int(tc.hsData[1])<<16 | int(tc.hsData[2])<<8 | int(tc.hsData[3])
			if len(tc.hsData) >= 4+n {
				m := tc.hsData[:4+n]
				tc.hsData = tc.hsData[4+n:]
				return m, nil
			}
		}
		typ, data, err := tc.readRecord()
		if err != nil {
			return nil, err
		}
		switch typ {
		case recordHandshake:
			tc.hsData = append(tc.hsData, data...)
		case recordAlert:
			return nil, &PeerAlertError{Alert: data[1]}
		default:
			return nil, fmt.Errorf("record type %d", typ)
		}
	}
}

func (tc *testClient) send(typ uint8, data []byte) {
	if _, err := tc.nc.Write(tc.out.seal(nil, typ, data)); err != nil {
		panic(err)
	}
}

// readApp reads application data, following the server's KeyUpdates.
func (tc *testClient) readApp(n int) ([]byte, error) {
	var got []byte
	for len(got) < n {
		typ, data, err := tc.readRecord()
		if err != nil {
			return got, err
		}
		switch typ {
		case recordApplicationData:
			got = append(got, data...)
		case recordHandshake:
			if data[0] != typeKeyUpdate {
				return got, fmt.Errorf("handshake message %d", data[0])
			}
			tc.in.setSecret(tc.suite, nextTrafficSecret(tc.in.secret))
		case recordAlert:
			return got, &PeerAlertError{Alert: data[1]}
		}
	}
	return got, nil
}

// testServer accepts one connection with cfg and echoes what it reads.
// Its handshake error (or nil) arrives on the returned channel.
func testServer(t *testing.T, keys Keys) (addr string, errc chan error, ids chan string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	errc, ids = make(chan error, 1), make(chan string, 1)
	go func() {
		nc, err := l.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(time.Minute))
		c := Server(nc, &Config{Key: keys.Lookup})
		err = c.Handshake(context.Background())
		errc <- err
		if err != nil {
			return
		}
		ids <- c.Identity()
		io.Copy(c, c)
		c.Close()
	}()
	return l.Addr().String(), errc, ids
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(time.Minute))
	t.Cleanup(func() { nc.Close() })
	return nc
}

// wantAlert checks that the client got alert and the server an error
// naming it.
func wantAlert(t *testing.T, clientErr error, errc chan error, alert uint8) {
	t.Helper()
	var pa *PeerAlertError
	if !errors.As(clientErr, &pa) || pa.Alert != alert {
		t.Errorf("client: %v, want alert %s", clientErr, alertName(alert))
	}
	serr := <-errc
	var ae *alertError
	if !errors.As(serr, &ae) || ae.alert != alert {
		t.Errorf("server: %v, want alert %s", serr, alertName(alert))
	}
}
