package iscsi

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ferry-io/ferry/gateway/volume"
)

// Login status class and detail (RFC 7143 §11.13.5).
const (
	loginOK             = 0x0000
	loginInitiatorError = 0x0200
	loginAuthFailed     = 0x0201
	loginForbidden      = 0x0202
	loginNotFound       = 0x0203
	loginBadVersion     = 0x0205
	loginMissingParam   = 0x0207
	loginTargetError    = 0x0300
)

// Stages (RFC 7143 §11.12.3).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// loginError ends a login with a status.
type loginError struct {
	status uint16
	msg    string
}

func (e *loginError) Error() string {
	return fmt.Sprintf("login refused (status %04x): %s", e.status, e.msg)
}

// Limits Ferry declares or accepts.
const (
	ourMaxRecvData = 256 << 10
	ourMaxBurst    = 16 << 20
	ourFirstBurst  = 256 << 10
	loginMaxData   = 64 << 10
)

// login runs the login phase on c; on success the connection is in the
// full-feature phase of a normal or discovery session.
func (c *conn) login(ctx context.Context) error {
	var (
		text     []byte // keys gathered over PDUs with the C bit
		authDone bool
		chap     *chapState
		acc      Access
		first    = true
		stage    = -1
		isid     [6]byte
		sentTPGT bool
	)
	for {
		p, err := readPDU(c.br, loginMaxData, nil)
		if err != nil {
			return err
		}
		if p.opcode() != opLogin {
			return fmt.Errorf("%w: opcode %#x during login", errPDU, p.opcode())
		}
		flags := p.h[1]
		transit, cont := flags&0x80 != 0, flags&0x40 != 0
		csg, nsg := int(flags>>2&3), int(flags&3)
		if first {
			copy(isid[:], p.h[8:14])
			c.isid = isid
			c.itt = p.itt()
			c.cid = uint16(p.h[20])<<8 | uint16(p.h[21])
			c.expCmdSN.Store(p.u32(24))
			if p.h[3] > 0 { // Version-min
				return c.loginReject(p, loginBadVersion, "unsupported version")
			}
			if tsih := uint16(p.h[14])<<8 | uint16(p.h[15]); tsih != 0 {
				return c.loginReject(p, loginInitiatorError, "session reinstatement/extra connections are not supported")
			}
		}
		if transit && cont {
			return c.loginReject(p, loginInitiatorError, "T and C bits both set")
		}
		if stage >= 0 && csg != stage && !(csg > stage) {
			return c.loginReject(p, loginInitiatorError, "login stage went backwards")
		}
		stage = csg
		text = append(text, p.data...)
		if cont {
			// More keys follow: acknowledge with an empty response.
			if err := c.loginRespond(p, isid, flags&0x0c, nil, loginOK); err != nil {
				return err
			}
			continue
		}
		keys := parseKV(text)
		text = nil
		var resp kv
		if first {
			first = false
			if err := c.loginFirst(ctx, keys, &acc); err != nil {
				var le *loginError
				if errors.As(err, &le) {
					c.s.m.logins.WithLabelValues("refused").Inc()
					c.s.log.Warn("iSCSI login refused", "remote", c.remote, "initiator", c.initiator, "target", c.targetName, "reason", le.msg)
					return c.loginReject(p, le.status, le.msg)
				}
				return err
			}
		}
		if !c.discovery && !sentTPGT {
			resp.add("TargetPortalGroupTag", "1")
			sentTPGT = true
		}
		needCHAP := acc.CHAPUser != "" && !c.discovery
		switch csg {
		case stageSecurity:
			st, err := c.security(keys, &resp, needCHAP, &chap, acc, &authDone)
			if err != nil {
				c.s.m.logins.WithLabelValues("auth_failed").Inc()
				c.s.log.Warn("iSCSI login refused", "remote", c.remote, "initiator", c.initiator, "target", c.targetName, "reason", err.Error())
				return c.loginReject(p, st, err.Error())
			}
		case stageOperational:
			if needCHAP && !authDone {
				return c.loginReject(p, loginAuthFailed, "authentication required")
			}
			if !needCHAP {
				authDone = true
			}
		default:
			return c.loginReject(p, loginInitiatorError, "bad login stage")
		}
		c.negotiate(keys, &resp, csg)
		ok := transit && authDone && (nsg == stageOperational || nsg == stageFullFeature) && nsg > csg
		var outFlags byte = byte(csg) << 2
		if ok {
			outFlags |= 0x80 | byte(nsg)
		}
		if ok && nsg == stageFullFeature {
			c.tsih = c.s.nextTSIH()
		}
		if err := c.loginRespond(p, isid, outFlags, resp.encode(), loginOK); err != nil {
			return err
		}
		if ok && nsg == stageFullFeature {
			c.s.m.logins.WithLabelValues("ok").Inc()
			return nil
		}
	}
}

// loginFirst checks the keys every first login request carries and the
// initiator's right to the target.
func (c *conn) loginFirst(ctx context.Context, keys kv, acc *Access) error {
	var ok bool
	if c.initiator, ok = keys.get("InitiatorName"); !ok || c.initiator == "" {
		return &loginError{loginMissingParam, "no InitiatorName"}
	}
	st, _ := keys.get("SessionType")
	switch st {
	case "", "Normal":
	case "Discovery":
		c.discovery = true
		return nil
	default:
		return &loginError{loginInitiatorError, "bad SessionType " + st}
	}
	c.targetName, ok = keys.get("TargetName")
	if !ok {
		return &loginError{loginMissingParam, "no TargetName"}
	}
	vol, ok := c.s.volumeOf(c.targetName)
	if !ok {
		return &loginError{loginNotFound, "no such target"}
	}
	a, err := c.s.access(ctx, vol)
	if errors.Is(err, volume.ErrDenied) {
		return &loginError{loginForbidden, err.Error()}
	}
	if err != nil {
		return &loginError{loginNotFound, "no such target"}
	}
	if !a.allows(c.initiator) {
		return &loginError{loginForbidden, "initiator not allowed"}
	}
	att, err := c.s.exports.Attach(ctx, vol, c.client())
	if errors.Is(err, volume.ErrDenied) {
		return &loginError{loginForbidden, err.Error()}
	}
	if err != nil {
		return &loginError{loginNotFound, "no such target"}
	}
	c.att = att
	*acc = a
	return nil
}

// security handles the security negotiation stage's keys.
func (c *conn) security(keys kv, resp *kv, needCHAP bool, chap **chapState, acc Access, done *bool) (uint16, error) {
	if methods, ok := keys.get("AuthMethod"); ok {
		offered := strings.Split(methods, ",")
		has := func(m string) bool {
			for _, o := range offered {
				if o == m {
					return true
				}
			}
			return false
		}
		switch {
		case needCHAP && has("CHAP"):
			resp.add("AuthMethod", "CHAP")
		case needCHAP:
			return loginAuthFailed, errors.New("CHAP required, initiator did not offer it")
		case has("None"):
			resp.add("AuthMethod", "None")
			*done = true
		default:
			return loginAuthFailed, errors.New("no acceptable AuthMethod")
		}
	} else if !needCHAP {
		*done = true
	}
	if !needCHAP {
		return 0, nil
	}
	if a, ok := keys.get("CHAP_A"); ok {
		algs := strings.Split(a, ",")
		md5ok := false
		for _, x := range algs {
			md5ok = md5ok || x == "5"
		}
		if !md5ok {
			return loginAuthFailed, errors.New("CHAP_A without MD5")
		}
		*chap = newChap()
		(*chap).offer(resp)
		return 0, nil
	}
	name, hasN := keys.get("CHAP_N")
	r, hasR := keys.get("CHAP_R")
	if !hasN && !hasR {
		return 0, nil
	}
	if *chap == nil || !hasN || !hasR {
		return loginAuthFailed, errors.New("CHAP exchange out of order")
	}
	if name != acc.CHAPUser || !(*chap).verify(r, acc.CHAPSecret) {
		return loginAuthFailed, errors.New("CHAP authentication failed")
	}
	// Mutual CHAP: the initiator challenges the target.
	if is, ok := keys.get("CHAP_I"); ok {
		cs, _ := keys.get("CHAP_C")
		id, err := strconv.Atoi(is)
		chal, okc := decodeBinary(cs)
		if err != nil || id < 0 || id > 255 || !okc || len(chal) == 0 {
			return loginAuthFailed, errors.New("bad mutual CHAP challenge")
		}
		if acc.MutualUser == "" {
			return loginAuthFailed, errors.New("mutual CHAP asked for but not configured")
		}
		if string(chal) == string((*chap).challenge) {
			return loginAuthFailed, errors.New("mutual CHAP challenge reflects the target's")
		}
		resp.add("CHAP_N", acc.MutualUser)
		resp.add("CHAP_R", encodeHex(chapResponse(byte(id), acc.MutualSecret, chal)))
	}
	*done = true
	return 0, nil
}

// negotiate answers operational keys (RFC 7143 §13).
func (c *conn) negotiate(keys kv, resp *kv, stage int) {
	for _, p := range keys {
		k, v := p[0], p[1]
		switch k {
		case "InitiatorName", "TargetName", "SessionType", "InitiatorAlias", "AuthMethod",
			"CHAP_A", "CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C":
			// Declarative or handled elsewhere.
		case "HeaderDigest", "DataDigest":
			// The first of the initiator's choices Ferry has (RFC 7143
			// §13.1, §6.2.1); none of them: Reject, and the initiator
			// ends the login.
			choice := "Reject"
			for o := range strings.SplitSeq(v, ",") {
				if o == "CRC32C" || o == "None" {
					choice = o
					break
				}
			}
			resp.add(k, choice)
			if k == "HeaderDigest" {
				c.loginDig.header = choice == "CRC32C"
			} else {
				c.loginDig.data = choice == "CRC32C"
			}
		case "MaxRecvDataSegmentLength":
			if n, ok := numValue(v); ok && n >= 512 {
				c.maxSendData = int(min(n, 1<<24-1))
			}
		case "MaxBurstLength", "FirstBurstLength":
			// Both are the lower of the two sides' values.
			dst, ours := &c.maxBurst, ourMaxBurst
			if k == "FirstBurstLength" {
				dst, ours = &c.firstBurst, ourFirstBurst
			}
			if n, ok := numValue(v); ok && n >= 512 {
				*dst = int(min(n, uint32(ours)))
				resp.add(k, strconv.Itoa(*dst))
			} else {
				resp.add(k, "Reject")
			}
		case "InitialR2T":
			c.initialR2T = v != "No"
			resp.add(k, yesNo(c.initialR2T))
		case "ImmediateData":
			c.immediateData = v == "Yes"
			resp.add(k, yesNo(c.immediateData))
		case "MaxOutstandingR2T", "MaxConnections":
			resp.add(k, "1")
		case "DataPDUInOrder", "DataSequenceInOrder":
			resp.add(k, "Yes")
		case "ErrorRecoveryLevel":
			resp.add(k, "0")
		case "DefaultTime2Wait":
			if n, ok := numValue(v); ok {
				resp.add(k, strconv.Itoa(int(max(n, 2))))
			}
		case "DefaultTime2Retain":
			if n, ok := numValue(v); ok {
				resp.add(k, strconv.Itoa(int(min(n, 20))))
			}
		case "IFMarker", "OFMarker":
			resp.add(k, "No")
		case "TargetAlias", "TargetAddress", "TargetPortalGroupTag":
			resp.add(k, "Irrelevant")
		default:
			resp.add(k, "NotUnderstood")
		}
	}
	if stage == stageOperational && !c.declaredMRDSL {
		resp.add("MaxRecvDataSegmentLength", strconv.Itoa(ourMaxRecvData))
		c.declaredMRDSL = true
	}
	c.firstBurst = min(c.firstBurst, c.maxBurst)
}

func yesNo(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

func (c *conn) loginRespond(req *pdu, isid [6]byte, flags byte, data []byte, status uint16) error {
	p := &pdu{data: data}
	p.h[0] = opLoginRsp
	p.h[1] = flags
	copy(p.h[8:14], isid[:])
	p.h[14], p.h[15] = byte(c.tsih>>8), byte(c.tsih)
	p.put32(16, req.itt())
	c.wmu.Lock()
	defer c.wmu.Unlock()
	p.put32(24, c.statSN)
	if status == loginOK {
		c.statSN++
	}
	exp := c.expCmdSN.Load()
	p.put32(28, exp)
	p.put32(32, exp+cmdWindow-1)
	p.h[36], p.h[37] = byte(status>>8), byte(status)
	c.wbuf = p.encode(c.wbuf[:0])
	_, err := c.nc.Write(c.wbuf)
	return err
}

func (c *conn) loginReject(req *pdu, status uint16, msg string) error {
	c.loginRespond(req, [6]byte(req.h[8:14]), req.h[1]&0x0c, nil, status)
	return &loginError{status, msg}
}
