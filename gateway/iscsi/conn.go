package iscsi

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-io/ferry/gateway/volume"
	"github.com/ferry-io/ferry/internal/bufpool"
)

// cmdWindow is how many commands an initiator may have queued.
const cmdWindow = 64

// maxTransfer bounds one command's data.
const maxTransfer = 64 << 20

type conn struct {
	s      *Server
	nc     net.Conn
	remote string
	br     *bufio.Reader

	wmu    sync.Mutex // guards statSN, the fields below and writes
	statSN uint32
	wbuf   []byte // login responses
	// Full feature phase: responses go through bw; whoever writes while
	// no other response waits for wmu flushes, so a burst of completions
	// costs one write(2). hdrs and wv gather a command's Data-In PDUs
	// into one writev.
	bw     *bufio.Writer
	queued atomic.Int32 // responses waiting for wmu
	werr   error        // first response write error
	hdrs   []byte
	wv     net.Buffers
	wvArr  [][]byte

	expCmdSN atomic.Uint32
	itt      uint32
	cid      uint16
	tsih     uint16

	// Negotiated. dig is in force from the full feature phase on; login
	// negotiates it into loginDig.
	dig, loginDig                     digests
	maxSendData, maxBurst, firstBurst int
	initialR2T, immediateData         bool
	declaredMRDSL                     bool

	initiator, targetName string
	isid                  [6]byte
	discovery             bool
	att                   *volume.Attachment
	lu                    *lu

	tasks   map[uint32]*task // write commands waiting for data; reader only
	nextTTT uint32
	running sync.WaitGroup
	sem     chan struct{}
	closing atomic.Bool
	// Commands run on workers the connection keeps: a command goes to an
	// idle one through work, or to a new one while fewer than cmdWindow
	// exist, so a command costs no goroutine (nor its allocation).
	work    chan *task
	workers int // reader only
}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{
		s: s, nc: nc, remote: nc.RemoteAddr().String(), br: bufio.NewReaderSize(nc, 64<<10),
		bw:          bufio.NewWriterSize(nc, 64<<10),
		maxSendData: 8192, maxBurst: 262144, firstBurst: 65536, initialR2T: true, immediateData: true,
		tasks: map[uint32]*task{}, sem: make(chan struct{}, cmdWindow), work: make(chan *task),
	}
}

// Drain makes the connection end once its commands in flight are
// answered.
func (c *conn) Drain() {
	c.closing.Store(true)
	c.nc.SetReadDeadline(time.Now())
}

// Close ends the connection at once.
func (c *conn) Close() { c.nc.Close() }

// Serve runs the connection to its end.
func (c *conn) Serve(ctx context.Context) {
	defer c.nc.Close()
	c.nc.SetDeadline(time.Now().Add(c.s.cfg.LoginTimeout))
	if err := c.login(ctx); err != nil {
		if !errors.Is(err, io.EOF) {
			c.s.log.Debug("iSCSI login ended", "remote", c.remote, "err", err)
		}
		if c.att != nil {
			c.att.Detach()
		}
		return
	}
	c.nc.SetDeadline(time.Time{})
	c.dig = c.loginDig
	if c.att != nil {
		defer c.att.Detach()
		nexus := nexusName(c.initiator, c.isid)
		u := c.s.unit(c.att.Name, c.att.Dev)
		u.login(nexus)
		defer u.logout(nexus)
		c.lu = newLU(c.att, u, nexus)
		c.s.log.Info("iSCSI session", "remote", c.remote, "initiator", c.initiator, "target", c.targetName)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.att != nil {
		go func() {
			select {
			case <-c.att.Revoked():
				c.nc.Close()
			case <-cctx.Done():
			}
		}()
	}
	err := c.fullFeature(cctx)
	c.running.Wait()
	close(c.work) // idle workers end
	if err != nil && !errors.Is(err, io.EOF) && !c.closing.Load() {
		c.s.log.Debug("iSCSI connection ended", "remote", c.remote, "err", err)
	}
}

func (c *conn) fullFeature(ctx context.Context) error {
	// One PDU is read at a time into p; its data segment comes from the
	// buffer pool and goes back once handled, unless a command took it
	// (and cleared p.data).
	p := new(pdu)
	for {
		*p = pdu{}
		if err := p.readFrom(c.br, ourMaxRecvData, c.dig, bufpool.Get); err != nil {
			switch {
			case errors.Is(err, errPDU):
				c.reject(p, 0x04) // protocol error
			case errors.Is(err, errHeaderDigest):
				c.s.m.headerDigest.Inc()
				c.s.log.Warn("iSCSI header digest error; connection closed", "remote", c.remote, "initiator", c.initiator)
			case errors.Is(err, errDataDigest):
				// RFC 7143 §7.8: rejected and discarded; a Data-Out's
				// command then fails (dataOut), any other PDU is as if
				// never sent.
				c.s.m.dataDigest.Inc()
				c.s.log.Warn("iSCSI data digest error; PDU rejected", "remote", c.remote, "initiator", c.initiator, "opcode", p.opcode())
				c.reject(p, 0x02)
				if p.opcode() == opDataOut {
					err = c.dataOut(ctx, p, true)
				} else {
					err = nil
				}
				bufpool.Put(p.data)
				if err == nil {
					continue
				}
			}
			return err
		}
		done, err := c.handle(ctx, p)
		bufpool.Put(p.data)
		if done || err != nil {
			return err
		}
	}
}

// handle answers one PDU of the full feature phase; done: the session
// logged out.
func (c *conn) handle(ctx context.Context, p *pdu) (done bool, err error) {
	switch p.opcode() {
	case opNopOut:
		if p.itt() != reservedTag {
			c.nopIn(p)
		}
	case opSCSICmd:
		if c.lu == nil {
			c.reject(p, 0x04)
			return false, nil
		}
		if !c.acceptCmdSN(p) {
			return false, nil
		}
		return false, c.scsiCommand(ctx, p)
	case opDataOut:
		return false, c.dataOut(ctx, p, false)
	case opTaskReq:
		c.acceptCmdSN(p)
		c.taskMgmt(p)
	case opText:
		c.acceptCmdSN(p)
		c.text(p)
	case opLogout:
		c.acceptCmdSN(p)
		c.running.Wait()
		c.logout(p)
		return true, nil
	default:
		c.reject(p, 0x05) // command not supported
	}
	return false, nil
}

// acceptCmdSN checks a command's CmdSN against the window and advances
// ExpCmdSN; commands outside the window are dropped (RFC 7143 §3.2.2.1).
func (c *conn) acceptCmdSN(p *pdu) bool {
	sn := p.u32(24)
	exp := c.expCmdSN.Load()
	if p.immediate() {
		return true
	}
	if int32(sn-exp) < 0 || int32(sn-exp) >= cmdWindow {
		c.s.log.Debug("iSCSI command outside the CmdSN window dropped", "remote", c.remote, "cmdsn", sn, "exp", exp)
		return false
	}
	c.expCmdSN.Store(sn + 1)
	return true
}

// send writes one response PDU, stamping StatSN (advancing it when
// status is true), ExpCmdSN and MaxCmdSN.
func (c *conn) send(p *pdu, status bool) error {
	c.queued.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	last := c.queued.Add(-1) == 0
	if c.werr != nil {
		return c.werr
	}
	p.setDataLen(len(p.data))
	c.hdrs = append(c.hdrs[:0], p.h[:]...)
	c.stamp(c.hdrs, status)
	pad := zeroPad[:(4-len(p.data)%4)%4]
	if c.dig == (digests{}) {
		c.wvArr = append(c.wvArr[:0], c.hdrs, p.data, pad)
	} else {
		c.hdrs = slices.Grow(c.hdrs, 8)[:bhsLen+8]
		c.wvArr = c.appendDigested(c.wvArr[:0], c.hdrs[:bhsLen], p.data, pad, c.hdrs[bhsLen:])
	}
	return c.write(len(p.data), last)
}

// appendDigested appends one PDU's buffers to wv with the digests in
// force: its header, the header's digest, its data and padding, their
// digest (none for no data). d holds the two digests (8 bytes).
func (c *conn) appendDigested(wv [][]byte, hdr, data, pad, d []byte) [][]byte {
	wv = append(wv, hdr)
	if c.dig.header {
		putDigest(d[:4], hdr)
		wv = append(wv, d[:4])
	}
	wv = append(wv, data, pad)
	if c.dig.data && len(data) > 0 {
		putDigest(d[4:8], data, pad)
		wv = append(wv, d[4:8])
	}
	return wv
}

// stamp sets a response header's StatSN (advancing it when status is
// true), ExpCmdSN and MaxCmdSN. The caller holds wmu.
func (c *conn) stamp(h []byte, status bool) {
	binary.BigEndian.PutUint32(h[24:], c.statSN)
	if status {
		c.statSN++
	}
	exp := c.expCmdSN.Load()
	binary.BigEndian.PutUint32(h[28:], exp)
	binary.BigEndian.PutUint32(h[32:], exp+cmdWindow-1)
}

// write sends the buffers gathered in wvArr, holding dataLen bytes of
// data: small ones through the buffered writer (flushed when last), large
// ones with one writev from where they are, without copying the data.
// The caller holds wmu.
func (c *conn) write(dataLen int, last bool) error {
	var err error
	if dataLen < 64<<10 {
		for _, b := range c.wvArr {
			c.bw.Write(b)
		}
		if last {
			err = c.bw.Flush()
		}
	} else if err = c.bw.Flush(); err == nil {
		c.wv = c.wvArr
		_, err = c.wv.WriteTo(c.nc)
	}
	clear(c.wvArr)
	if err != nil {
		c.werr = err
		c.nc.Close()
	}
	return err
}

// sendDataIn sends a command's read data as Data-In PDUs of at most
// MaxRecvDataSegmentLength each, the last carrying the status (phase
// collapse), all in one write.
func (c *conn) sendDataIn(t *task, data []byte, uflags byte, resid uint32) error {
	c.queued.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	last := c.queued.Add(-1) == 0
	if c.werr != nil {
		return c.werr
	}
	n := (len(data) + c.maxSendData - 1) / c.maxSendData
	digested := c.dig != (digests{})
	size := n * bhsLen
	if digested {
		size += n * 8 // two digests per PDU, after the headers
	}
	c.hdrs = slices.Grow(c.hdrs[:0], size)[:size]
	clear(c.hdrs)
	c.wvArr = c.wvArr[:0]
	for i := range n {
		off := i * c.maxSendData
		m := min(c.maxSendData, len(data)-off)
		final := off+m == len(data)
		h := c.hdrs[i*bhsLen : (i+1)*bhsLen]
		h[0] = opDataIn
		if final {
			h[1] = 0x80 | 0x01 | uflags
			binary.BigEndian.PutUint32(h[44:], resid)
		}
		h[5], h[6], h[7] = byte(m>>16), byte(m>>8), byte(m)
		copy(h[8:16], t.lun[:])
		binary.BigEndian.PutUint32(h[16:], t.itt)
		binary.BigEndian.PutUint32(h[20:], reservedTag)
		binary.BigEndian.PutUint32(h[36:], uint32(i))
		binary.BigEndian.PutUint32(h[40:], uint32(off))
		c.stamp(h, final)
		pad := zeroPad[:(4-m%4)%4]
		if digested {
			d := c.hdrs[n*bhsLen+i*8 : n*bhsLen+(i+1)*8]
			c.wvArr = c.appendDigested(c.wvArr, h, data[off:off+m], pad, d)
			continue
		}
		c.wvArr = append(c.wvArr, h, data[off:off+m])
		if len(pad) > 0 {
			c.wvArr = append(c.wvArr, pad)
		}
	}
	return c.write(len(data), last)
}

func (c *conn) reject(bad *pdu, reason byte) {
	p := &pdu{data: append([]byte(nil), bad.h[:]...)}
	p.h[0] = opReject
	p.h[1] = 0x80
	p.h[2] = reason
	p.put32(16, reservedTag)
	c.send(p, true)
}

func (c *conn) nopIn(req *pdu) {
	p := &pdu{data: req.data}
	p.h[0] = opNopIn
	p.h[1] = 0x80
	copy(p.h[8:16], req.h[8:16])
	p.put32(16, req.itt())
	p.put32(20, reservedTag)
	c.send(p, true)
}

func (c *conn) logout(req *pdu) {
	p := &pdu{}
	p.h[0] = opLogoutRp
	p.h[1] = 0x80
	p.put32(16, req.itt())
	c.send(p, true)
}

func (c *conn) taskMgmt(req *pdu) {
	p := &pdu{}
	p.h[0] = opTaskResp
	p.h[1] = 0x80
	switch fn := req.h[1] & 0x7f; fn {
	case 1: // ABORT TASK
		// A command still waiting for its data is dropped unanswered;
		// one already running completes and answers first (commands run
		// to completion), so it no longer exists once this is answered.
		ref := req.u32(20)
		if _, ok := c.tasks[ref]; ok {
			delete(c.tasks, ref)
			p.h[2] = 0
			break
		}
		c.running.Wait()
		p.h[2] = 1 // task does not exist
	case 2, 3, 4, 5, 6: // abort task set, clear ACA, clear task set, LU reset, target warm reset
		clear(c.tasks)
		c.running.Wait()
		if fn >= 5 && c.lu != nil {
			c.lu.u.reset()
		}
		p.h[2] = 0
	default:
		p.h[2] = 5 // not supported
	}
	p.put32(16, req.itt())
	c.send(p, true)
}

// client describes this connection to the volume manager.
func (c *conn) client() volume.Client {
	return volume.Client{Protocol: volume.ProtoISCSI, Remote: c.remote, Initiator: c.initiator}
}

// text answers SendTargets.
func (c *conn) text(req *pdu) {
	keys := parseKV(req.data)
	var resp kv
	if v, ok := keys.get("SendTargets"); ok {
		names, _ := c.s.exports.List(context.Background(), c.client())
		portal := c.nc.LocalAddr().String()
		for _, n := range names {
			t := c.s.TargetName(n)
			if v != "All" && v != "" && v != t {
				continue
			}
			if !c.discovery && v == "" && t != c.targetName {
				continue
			}
			if a, err := c.s.access(context.Background(), n); err != nil || !a.allows(c.initiator) {
				continue
			}
			resp.add("TargetName", t)
			resp.add("TargetAddress", portal+",1")
		}
	}
	p := &pdu{data: resp.encode()}
	p.h[0] = opTextResp
	p.h[1] = 0x80
	p.put32(16, req.itt())
	p.put32(20, reservedTag)
	c.send(p, true)
}

// task is one SCSI command.
type task struct {
	itt     uint32
	lun     [8]byte
	cdb     [16]byte
	edtl    int
	read    bool
	buf     []byte // write data, from the buffer pool
	got     int    // write data received
	burstTo int    // end of the data the current burst (or R2T) asks for
	ttt     uint32
	r2tsn   uint32
	dataSN  uint32 // expected DataSN of the next Data-Out in this burst
	crcErr  bool   // a Data-Out failed its data digest
}

// tasks recycles tasks: a command's goes back once it is answered.
var tasks = sync.Pool{New: func() any { return new(task) }}

func (c *conn) scsiCommand(ctx context.Context, p *pdu) error {
	t := tasks.Get().(*task)
	*t = task{itt: p.itt(), edtl: int(p.u32(20)), read: p.h[1]&0x40 != 0}
	copy(t.lun[:], p.h[8:16])
	copy(t.cdb[:], p.h[32:48])
	write := p.h[1]&0x20 != 0
	if !write || t.edtl == 0 {
		c.run(ctx, t)
		return nil
	}
	if t.edtl > maxTransfer || len(p.data) > t.edtl {
		// Too big to buffer: answer now; data that follows is dropped
		// (its ITT is unknown).
		c.respond(t, result{status: statusCheck, sense: senseInvalidField})
		return nil
	}
	if len(p.data) == t.edtl {
		// All the data came as immediate data, in a buffer read for this
		// PDU alone: take it as it is.
		t.buf, t.got, p.data = p.data, t.edtl, nil
	} else {
		t.buf = bufpool.Get(t.edtl)
		t.got = copy(t.buf, p.data)
	}
	switch {
	case t.got == t.edtl:
		c.run(ctx, t)
		return nil
	case !c.initialR2T && !p.final():
		t.burstTo = min(c.firstBurst, t.edtl) // unsolicited Data-Out follows
		t.ttt = reservedTag
	default:
		c.r2t(t)
	}
	c.tasks[t.itt] = t
	return nil
}

func (c *conn) r2t(t *task) {
	c.nextTTT++
	if c.nextTTT == reservedTag {
		c.nextTTT = 1
	}
	t.ttt = c.nextTTT
	t.dataSN = 0
	n := min(c.maxBurst, t.edtl-t.got)
	t.burstTo = t.got + n
	p := &pdu{}
	p.h[0] = opR2T
	p.h[1] = 0x80
	copy(p.h[8:16], t.lun[:])
	p.put32(16, t.itt)
	p.put32(20, t.ttt)
	p.put32(36, t.r2tsn)
	p.put32(40, uint32(t.got))
	p.put32(44, uint32(n))
	t.r2tsn++
	c.send(p, false)
}

// dataOut takes one Data-Out PDU of a write command waiting for its data.
// A PDU whose data failed its digest (corrupt) counts as received but
// fails the command: once the burst's last PDU is in, it is answered with
// CHECK CONDITION, PROTOCOL SERVICE CRC ERROR (RFC 7143 §7.8), and
// nothing is written.
func (c *conn) dataOut(ctx context.Context, p *pdu, corrupt bool) error {
	t := c.tasks[p.itt()]
	if t == nil {
		return nil // a command already answered (e.g. too big)
	}
	off := int(p.u32(40))
	if off != t.got || off+len(p.data) > t.burstTo || p.u32(20) != t.ttt || p.u32(36) != t.dataSN {
		// Out of order, outside the burst, or a DataSN gap: the
		// command fails with DATA PHASE ERROR and any more data for it
		// is dropped; the session goes on.
		delete(c.tasks, t.itt)
		c.reject(p, 0x04) // protocol error
		c.respond(t, check(senseDataPhase))
		return nil
	}
	t.dataSN++
	if corrupt {
		t.crcErr = true
	} else {
		copy(t.buf[off:], p.data)
	}
	t.got = max(t.got, off+len(p.data))
	if !p.final() {
		return nil
	}
	if t.crcErr {
		delete(c.tasks, t.itt)
		c.respond(t, check(senseCRC))
		bufpool.Put(t.buf)
		*t = task{}
		tasks.Put(t)
		return nil
	}
	if t.got >= t.edtl {
		delete(c.tasks, t.itt)
		c.run(ctx, t)
		return nil
	}
	if t.got >= t.burstTo || t.ttt == reservedTag {
		c.r2t(t)
	}
	return nil
}

// run executes t on a worker and answers it.
func (c *conn) run(ctx context.Context, t *task) {
	c.sem <- struct{}{}
	c.running.Add(1)
	select {
	case c.work <- t: // an idle worker
		return
	default:
	}
	if c.workers < cmdWindow {
		c.workers++
		go c.worker(ctx, t)
		return
	}
	c.work <- t // one of them is about to be idle: the semaphore holds fewer than cmdWindow
}

// worker executes commands until the connection ends.
func (c *conn) worker(ctx context.Context, t *task) {
	for ok := true; ok; t, ok = <-c.work {
		c.exec(ctx, t)
	}
}

// exec executes and answers a command, then recycles it and its buffers.
func (c *conn) exec(ctx context.Context, t *task) {
	defer func() {
		<-c.sem
		c.running.Done()
	}()
	defer func() {
		if r := recover(); r != nil {
			c.s.m.panics.Inc()
			c.s.log.Error("SCSI command panicked; answered with an error", "remote", c.remote, "cdb", t.cdb, "panic", r)
			c.respond(t, result{status: statusCheck, sense: senseInternal})
		}
	}()
	lun := binary.BigEndian.Uint64(t.lun[:])
	res := c.lu.exec(ctx, lun, t.cdb[:], t.buf, t.edtl)
	c.respond(t, res)
	if res.pooled {
		bufpool.Put(res.data)
	}
	bufpool.Put(t.buf)
	*t = task{}
	tasks.Put(t)
}

// respond sends a command's data and status.
func (c *conn) respond(t *task, res result) {
	if res.status == statusGood {
		c.s.m.cmdGood.Inc()
	} else {
		c.s.m.cmdCheck.Inc()
	}
	data := res.data
	var resid uint32
	var uflags byte
	if t.read || res.data != nil {
		switch {
		case len(data) > t.edtl:
			resid, uflags = uint32(len(data)-t.edtl), 0x04
			data = data[:t.edtl]
		case len(data) < t.edtl:
			resid, uflags = uint32(t.edtl-len(data)), 0x02
		}
	} else if res.want > 0 && res.want != t.edtl {
		if res.want > t.edtl {
			resid, uflags = uint32(res.want-t.edtl), 0x04
		} else {
			resid, uflags = uint32(t.edtl-res.want), 0x02
		}
	}
	if res.status == statusGood && len(data) > 0 {
		c.sendDataIn(t, data, uflags, resid)
		return
	}
	p := &pdu{}
	p.h[0] = opSCSIResp
	p.h[1] = 0x80 | uflags
	p.h[3] = res.status
	if res.status == statusCheck {
		sense := res.sense.withInfo(res.info, res.hasInfo)
		p.data = make([]byte, 2+len(sense))
		binary.BigEndian.PutUint16(p.data, uint16(len(sense)))
		copy(p.data[2:], sense)
	}
	p.put32(16, t.itt)
	p.put32(44, resid)
	c.send(p, true)
}
