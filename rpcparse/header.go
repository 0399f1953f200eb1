package rpcparse

import "encoding/binary"

// PType is the DCE/RPC packet type (C706 12.6.4.1).
type PType uint8

// Packet types. 1 and 4..10 belong to the connectionless protocol and are
// never valid on a TCP association.
const (
	PTypeRequest          PType = 0
	PTypePing             PType = 1
	PTypeResponse         PType = 2
	PTypeFault            PType = 3
	PTypeWorking          PType = 4
	PTypeNocall           PType = 5
	PTypeReject           PType = 6
	PTypeAck              PType = 7
	PTypeClCancel         PType = 8
	PTypeFack             PType = 9
	PTypeCancelAck        PType = 10
	PTypeBind             PType = 11
	PTypeBindAck          PType = 12
	PTypeBindNak          PType = 13
	PTypeAlterContext     PType = 14
	PTypeAlterContextResp PType = 15
	PTypeAuth3            PType = 16
	PTypeShutdown         PType = 17
	PTypeCoCancel         PType = 18
	PTypeOrphaned         PType = 19
)

var ptypeNames = [...]string{
	"request", "ping", "response", "fault", "working", "nocall", "reject", "ack",
	"cl_cancel", "fack", "cancel_ack", "bind", "bind_ack", "bind_nak", "alter_context",
	"alter_context_resp", "auth3", "shutdown", "co_cancel", "orphaned",
}

// String returns the C706 name, or "ptype_N" for values outside the table.
// Known names do not allocate.
func (t PType) String() string {
	if int(t) < len(ptypeNames) {
		return ptypeNames[t]
	}
	return "ptype_" + itoa(int(t))
}

// ConnectionOriented reports whether t is a connection-oriented PDU type.
func (t PType) ConnectionOriented() bool {
	return t == PTypeRequest || t == PTypeResponse || t == PTypeFault || (t >= PTypeBind && t <= PTypeOrphaned)
}

// FromClient reports whether a client may send t on an association (DESIGN rule 3).
func (t PType) FromClient() bool {
	switch t {
	case PTypeBind, PTypeAlterContext, PTypeRequest, PTypeAuth3, PTypeCoCancel, PTypeOrphaned:
		return true
	}
	return false
}

// FromServer reports whether a server may send t on an association (DESIGN rule 7).
func (t PType) FromServer() bool {
	switch t {
	case PTypeBindAck, PTypeBindNak, PTypeAlterContextResp, PTypeResponse, PTypeFault, PTypeShutdown:
		return true
	}
	return false
}

// pfc_flags (C706 12.6.3.1).
const (
	FlagFirstFrag     uint8 = 0x01
	FlagLastFrag      uint8 = 0x02
	FlagPendingCancel uint8 = 0x04 // in bind/bind_ack: PFC_SUPPORT_HEADER_SIGN (MS-RPCE)
	FlagReserved1     uint8 = 0x08
	FlagConcMpx       uint8 = 0x10
	FlagDidNotExecute uint8 = 0x20
	FlagMaybe         uint8 = 0x40
	FlagObjectUUID    uint8 = 0x80
)

// HeaderLen is the size of the connection-oriented common header.
const HeaderLen = 16

// authTrailerLen is the fixed part of the auth verifier (sec_trailer).
const authTrailerLen = 8

// MaxFragmentLimit is the largest frag_length the wire format can express.
const MaxFragmentLimit = 65535

// DataRep is the 4-byte NDR format label (C706 14.2.5).
type DataRep [4]byte

// BigEndian reports whether integers are big-endian (high nibble of byte 0 is 0).
func (d DataRep) BigEndian() bool { return d[0]>>4 == 0 }

// Character returns 0 for ASCII, 1 for EBCDIC.
func (d DataRep) Character() uint8 { return d[0] & 0x0f }

// Float returns 0 IEEE, 1 VAX, 2 Cray, 3 IBM.
func (d DataRep) Float() uint8 { return d[1] }

// LittleEndianDataRep is what Windows and every KMS client sends.
var LittleEndianDataRep = DataRep{0x10, 0, 0, 0}

// BigEndianDataRep is the big-endian, ASCII, IEEE label.
var BigEndianDataRep = DataRep{0x00, 0, 0, 0}

// Header is the connection-oriented common header.
type Header struct {
	Version      uint8
	MinorVersion uint8
	Type         PType
	Flags        uint8
	DataRep      DataRep
	FragLength   uint16
	AuthLength   uint16
	CallID       uint32
}

// BigEndian reports the integer byte order the PDU declares.
func (h *Header) BigEndian() bool { return h.DataRep.BigEndian() }

// ParseHeader decodes and validates the common header in b (at least 16
// bytes) against DESIGN rule 2: version 5.0/5.1, an ASCII/IEEE data
// representation of either integer order, HeaderLen <= frag_length <=
// maxFrag, and auth_length that fits with its 8-byte trailer. The body is
// not examined, so a framer can call this before reading the body.
func ParseHeader(b []byte, maxFrag int) (Header, error) {
	var h Header
	if len(b) < HeaderLen {
		return h, perr(0, len(b), "common header", ErrTruncated)
	}
	h.Version, h.MinorVersion, h.Type, h.Flags = b[0], b[1], PType(b[2]), b[3]
	copy(h.DataRep[:], b[4:8])
	big := h.DataRep.BigEndian()
	h.FragLength = u16(b[8:10], big)
	h.AuthLength = u16(b[10:12], big)
	h.CallID = u32(b[12:16], big)
	if h.Version != 5 {
		return h, perr(h.Type, 0, "rpc_vers", ErrVersion)
	}
	if h.MinorVersion > 1 {
		return h, perr(h.Type, 1, "rpc_vers_minor", ErrVersion)
	}
	if d0 := h.DataRep[0]; d0&0x0f != 0 || (d0>>4 != 0 && d0>>4 != 1) {
		return h, perr(h.Type, 4, "drep[0]", ErrDataRep)
	}
	if h.DataRep[1] != 0 {
		return h, perr(h.Type, 5, "drep[1]", ErrDataRep)
	}
	if !h.Type.ConnectionOriented() {
		return h, perr(h.Type, 2, "PTYPE", ErrPType)
	}
	if maxFrag <= 0 || maxFrag > MaxFragmentLimit {
		maxFrag = MaxFragmentLimit
	}
	if int(h.FragLength) > maxFrag {
		return h, perr(h.Type, 8, "frag_length", ErrFragTooLarge)
	}
	if int(h.FragLength) < HeaderLen+fixedBody[h.Type] {
		return h, perr(h.Type, 8, "frag_length", ErrFragLength)
	}
	if h.AuthLength != 0 && int(h.AuthLength)+authTrailerLen > int(h.FragLength)-HeaderLen-fixedBody[h.Type] {
		return h, perr(h.Type, 10, "auth_length", ErrAuthLength)
	}
	return h, nil
}

// AppendHeader appends h in the byte order h.DataRep declares.
func AppendHeader(dst []byte, h *Header) []byte {
	var b [HeaderLen]byte
	b[0], b[1], b[2], b[3] = h.Version, h.MinorVersion, byte(h.Type), h.Flags
	copy(b[4:8], h.DataRep[:])
	bo := order(h.DataRep.BigEndian())
	bo.PutUint16(b[8:10], h.FragLength)
	bo.PutUint16(b[10:12], h.AuthLength)
	bo.PutUint32(b[12:16], h.CallID)
	return append(dst, b[:]...)
}

// PeekFragLength returns frag_length from the first 10 bytes of b using the
// byte order its drep declares, without validating anything else.
func PeekFragLength(b []byte) (int, bool) {
	if len(b) < 10 {
		return 0, false
	}
	if b[4]>>4 == 0 {
		return int(binary.BigEndian.Uint16(b[8:10])), true
	}
	return int(binary.LittleEndian.Uint16(b[8:10])), true
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	neg := n < 0
	if neg {
		n = -n
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}
