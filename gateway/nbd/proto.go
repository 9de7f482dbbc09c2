package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/pojntfx/go-nbd/pkg/protocol"

	"github.com/ferry-io/ferry/backends/device"
	"github.com/ferry-io/ferry/internal/splicepipe"
)

// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md).
// go-nbd's protocol package defines the handshake magics, the option and
// reply numbers of its minimal server and the transmission magics; Ferry
// takes those from it and adds what that package lacks.
const (
	magicNBD        = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	magicOption     = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	magicOptReply   = protocol.NEGOTIATION_MAGIC_REPLY
	magicRequest    = protocol.TRANSMISSION_MAGIC_REQUEST
	magicReply      = protocol.TRANSMISSION_MAGIC_REPLY
	magicStructured = uint32(0x668e33ef)

	// Handshake flags (server) and client flags.
	flagFixedNewstyle = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	flagNoZeroes      = uint16(1 << 1)
	clientFixed       = uint32(1 << 0)
	clientNoZeroes    = uint32(1 << 1)

	// Options.
	optExportName      = uint32(1)
	optAbort           = protocol.NEGOTIATION_ID_OPTION_ABORT
	optList            = protocol.NEGOTIATION_ID_OPTION_LIST
	optStartTLS        = uint32(5)
	optInfo            = protocol.NEGOTIATION_ID_OPTION_INFO
	optGo              = protocol.NEGOTIATION_ID_OPTION_GO
	optStructuredReply = uint32(8)
	optListMetaContext = uint32(9)
	optSetMetaContext  = uint32(10)

	// Option replies.
	repAck          = protocol.NEGOTIATION_TYPE_REPLY_ACK
	repServer       = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	repInfo         = protocol.NEGOTIATION_TYPE_REPLY_INFO
	repMetaContext  = uint32(4)
	repErrUnsup     = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	repErrPolicy    = uint32(2 | 1<<31)
	repErrInvalid   = uint32(3 | 1<<31)
	repErrTLSReqd   = uint32(5 | 1<<31)
	repErrUnknown   = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	repErrShutdown  = uint32(7 | 1<<31)
	repErrBlockSize = uint32(8 | 1<<31)
	repErrTooBig    = uint32(9 | 1<<31)

	// NBD_OPT_INFO / NBD_OPT_GO information types.
	infoExport      = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	infoName        = protocol.NEGOTIATION_TYPE_INFO_NAME
	infoDescription = protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION
	infoBlockSize   = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE

	// Transmission flags.
	tfHasFlags    = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	tfReadOnly    = uint16(1 << 1)
	tfSendFlush   = uint16(1 << 2)
	tfSendFUA     = uint16(1 << 3)
	tfSendTrim    = uint16(1 << 5)
	tfSendZeroes  = uint16(1 << 6)
	tfSendDF      = uint16(1 << 7)
	tfMultiConn   = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
	tfSendCache   = uint16(1 << 10)
	tfSendFastZ   = uint16(1 << 11)
	transmitFlags = tfHasFlags | tfSendFlush | tfSendFUA | tfSendTrim | tfSendZeroes | tfSendDF | tfMultiConn | tfSendCache

	// Commands.
	cmdRead        = protocol.TRANSMISSION_TYPE_REQUEST_READ
	cmdWrite       = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	cmdDisc        = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	cmdFlush       = uint16(3)
	cmdTrim        = uint16(4)
	cmdCache       = uint16(5)
	cmdWriteZeroes = uint16(6)
	cmdBlockStatus = uint16(7)
	numCommands    = 8

	// Command flags.
	cmdFlagFUA      = uint16(1 << 0)
	cmdFlagNoHole   = uint16(1 << 1)
	cmdFlagDF       = uint16(1 << 2)
	cmdFlagReqOne   = uint16(1 << 3)
	cmdFlagFastZero = uint16(1 << 4)
	cmdFlagsKnown   = cmdFlagFUA | cmdFlagNoHole | cmdFlagDF | cmdFlagReqOne | cmdFlagFastZero

	// Structured reply types and flags.
	replyFlagDone          = uint16(1 << 0)
	replyTypeNone          = uint16(0)
	replyTypeOffsetData    = uint16(1)
	replyTypeBlockStatus   = uint16(5)
	replyTypeError         = uint16(1<<15 | 1)
	replyTypeErrorOffset   = uint16(1<<15 | 2)
	stateHole              = uint32(1 << 0)
	stateZero              = uint32(1 << 1)
	metaContextAllocation  = "base:allocation"
	metaContextAllocID     = uint32(1)
	requestHeaderSize      = 28
	simpleReplyHeaderSize  = 16
	structuredHeaderSize   = 20
	optionHeaderSize       = 16
	maxOptionLength        = 64 << 10
	maxNameLength          = 4096
	minBlockSize           = 1
	preferredBlockSize     = 4096
	maxPayload             = 32 << 20
	maxBlockStatusExtents  = 1 << 16
	maxDiscardOptionLength = 1 << 20
)

// NBD errno values sent in replies.
const (
	errPerm     = protocol.TRANSMISSION_ERROR_EPERM
	errIO       = uint32(5)
	errNoMem    = uint32(12)
	errInval    = protocol.TRANSMISSION_ERROR_EINVAL
	errNoSpc    = uint32(28)
	errOverflow = uint32(75)
	errNotSup   = uint32(95)
	errShutdown = uint32(108)
)

// request is one decoded transmission request header.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32

	// batched is not on the wire: the request runs in a batch whose
	// replies are flushed together.
	batched bool
	// pipe is not on the wire: a WRITE whose payload waits in a pipe
	// instead of a buffer.
	pipe *splicepipe.Pipe
	// dispatched is not on the wire: a READ an executor runs
	// (conn.dispatch).
	dispatched bool
	// view is not on the wire: a READ that next left without a buffer,
	// to be answered from a view of the device if it lends one
	// (conn.sendView).
	view bool
	// written is not on the wire: a WRITE whose payload next already
	// wrote from its pipe (conn.writeNow), with werr the device's answer.
	written bool
	werr    error
}

var errBadMagic = errors.New("bad request magic")

// decodeRequest parses a 28-byte request header. Only a bad magic is an
// error: it means the stream cannot be resynchronised. Unknown commands and
// flags are the handler's to refuse with an errno.
func decodeRequest(b []byte) (request, error) {
	if len(b) < requestHeaderSize {
		return request{}, fmt.Errorf("short request header (%d bytes)", len(b))
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != magicRequest {
		return request{}, fmt.Errorf("%w %#08x", errBadMagic, m)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		handle: binary.BigEndian.Uint64(b[8:16]),
		offset: binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// encodeRequest is decodeRequest's inverse, for tests and fuzz seeds.
func encodeRequest(r request) []byte {
	b := make([]byte, requestHeaderSize)
	binary.BigEndian.PutUint32(b[0:4], magicRequest)
	binary.BigEndian.PutUint16(b[4:6], r.flags)
	binary.BigEndian.PutUint16(b[6:8], r.typ)
	binary.BigEndian.PutUint64(b[8:16], r.handle)
	binary.BigEndian.PutUint64(b[16:24], r.offset)
	binary.BigEndian.PutUint32(b[24:28], r.length)
	return b
}

var commandNames = [numCommands]string{"read", "write", "disc", "flush", "trim", "cache", "write_zeroes", "block_status"}

func commandName(typ uint16) string {
	if int(typ) < len(commandNames) {
		return commandNames[typ]
	}
	return "unknown"
}

// flagsFor is the transmission flags of an export of dev: read-only
// devices (snapshots) say so.
func flagsFor(dev device.Device) uint16 {
	if device.IsReadOnly(dev) {
		return transmitFlags | tfReadOnly
	}
	return transmitFlags
}
