package rpcparse

// Encoders. AppendPDU re-encodes a parsed PDU byte for byte (Parse followed
// by AppendPDU is the identity on every fragment Parse accepts, which the
// fuzz targets assert). The Append* builders make the PDUs the proxy sends
// itself (bind_nak, fault) and the ones tests and the probe need, from
// typed values, in either byte order.

// AuthSpec is an auth verifier to append to a built PDU.
type AuthSpec struct {
	Type        AuthType
	Level       AuthLevel
	ContextID   uint32
	Credentials []byte
}

// ContextSpec is one presentation context of a bind to build.
type ContextSpec struct {
	ID        uint16
	Abstract  SyntaxID
	Transfers []SyntaxID
}

// BindSpec is the body of a bind or alter_context to build.
type BindSpec struct {
	MaxXmitFrag uint16
	MaxRecvFrag uint16
	AssocGroup  uint32
	Contexts    []ContextSpec
}

// ResultSpec aliases Result for building bind_acks.
type ResultSpec = Result

// BindAckSpec is the body of a bind_ack or alter_context_resp to build.
type BindAckSpec struct {
	MaxXmitFrag uint16
	MaxRecvFrag uint16
	AssocGroup  uint32
	SecAddr     []byte // include the trailing NUL
	Results     []Result
}

// PDUHead carries the header fields a builder takes from the caller; the
// version is 5.0 and the lengths are computed.
type PDUHead struct {
	Type    PType
	Flags   uint8
	DataRep DataRep
	CallID  uint32
}

// AppendPDU re-encodes p from its parsed fields and byte slices, recomputing
// frag_length and auth_length.
func AppendPDU(dst []byte, p *PDU) []byte {
	start := len(dst)
	dst = AppendHeader(dst, &p.Header)
	big := p.BigEndian()
	switch p.Type {
	case PTypeBind, PTypeAlterContext:
		b := &p.Bind
		dst = appendU16(dst, b.MaxXmitFrag, big)
		dst = appendU16(dst, b.MaxRecvFrag, big)
		dst = appendU32(dst, b.AssocGroup, big)
		dst = append(dst, b.NumContexts, b.Reserved)
		dst = appendU16(dst, b.Reserved2, big)
		dst = append(dst, b.Items...)
		dst = append(dst, b.Extra...)
	case PTypeBindAck, PTypeAlterContextResp:
		a := &p.BindAck
		dst = appendU16(dst, a.MaxXmitFrag, big)
		dst = appendU16(dst, a.MaxRecvFrag, big)
		dst = appendU32(dst, a.AssocGroup, big)
		dst = appendU16(dst, uint16(len(a.SecAddr)), big)
		dst = append(dst, a.SecAddr...)
		dst = append(dst, a.SecAddrPad...)
		dst = append(dst, a.NumResults, a.Reserved)
		dst = appendU16(dst, a.Reserved2, big)
		dst = append(dst, a.Results...)
		dst = append(dst, a.Extra...)
	case PTypeBindNak:
		dst = appendU16(dst, p.BindNak.Reason, big)
		dst = append(dst, p.BindNak.Versions...)
		dst = append(dst, p.BindNak.Extra...)
	case PTypeRequest:
		r := &p.Request
		dst = appendU32(dst, r.AllocHint, big)
		dst = appendU16(dst, r.ContextID, big)
		dst = appendU16(dst, r.Opnum, big)
		if r.HasObject {
			dst = appendUUID(dst, r.Object, big)
		}
		dst = append(dst, r.Stub...)
	case PTypeResponse:
		r := &p.Response
		dst = appendU32(dst, r.AllocHint, big)
		dst = appendU16(dst, r.ContextID, big)
		dst = append(dst, r.CancelCount, r.Reserved)
		dst = append(dst, r.Stub...)
	case PTypeFault:
		f := &p.Fault
		dst = appendU32(dst, f.AllocHint, big)
		dst = appendU16(dst, f.ContextID, big)
		dst = append(dst, f.CancelCount, f.Reserved)
		dst = appendU32(dst, f.Status, big)
		dst = appendU32(dst, f.Reserved2, big)
		dst = append(dst, f.Stub...)
	default:
		dst = append(dst, p.Body...)
	}
	authLen := 0
	if p.HasAuth {
		dst = append(dst, p.AuthPad...)
		a := &p.Auth
		dst = append(dst, byte(a.Type), byte(a.Level), a.PadLength, a.Reserved)
		dst = appendU32(dst, a.ContextID, big)
		dst = append(dst, a.Credentials...)
		authLen = len(a.Credentials)
	}
	finish(dst[start:], authLen, big)
	return dst
}

// AppendBind builds a bind (h.Type PTypeBind) or alter_context.
func AppendBind(dst []byte, h PDUHead, s BindSpec, auth *AuthSpec) []byte {
	start := len(dst)
	big := h.DataRep.BigEndian()
	dst = appendHead(dst, h)
	dst = appendU16(dst, s.MaxXmitFrag, big)
	dst = appendU16(dst, s.MaxRecvFrag, big)
	dst = appendU32(dst, s.AssocGroup, big)
	dst = append(dst, byte(len(s.Contexts)), 0, 0, 0)
	for _, c := range s.Contexts {
		dst = appendU16(dst, c.ID, big)
		dst = append(dst, byte(len(c.Transfers)), 0)
		dst = appendSyntax(dst, c.Abstract, big)
		for _, t := range c.Transfers {
			dst = appendSyntax(dst, t, big)
		}
	}
	return appendAuth(dst, start, auth, big)
}

// AppendBindAck builds a bind_ack (h.Type PTypeBindAck) or alter_context_resp.
func AppendBindAck(dst []byte, h PDUHead, s BindAckSpec) []byte {
	start := len(dst)
	big := h.DataRep.BigEndian()
	dst = appendHead(dst, h)
	dst = appendU16(dst, s.MaxXmitFrag, big)
	dst = appendU16(dst, s.MaxRecvFrag, big)
	dst = appendU32(dst, s.AssocGroup, big)
	dst = appendU16(dst, uint16(len(s.SecAddr)), big)
	dst = append(dst, s.SecAddr...)
	for (len(dst)-start)%4 != 0 {
		dst = append(dst, 0)
	}
	dst = append(dst, byte(len(s.Results)), 0, 0, 0)
	for _, r := range s.Results {
		dst = appendU16(dst, r.Result, big)
		dst = appendU16(dst, r.Reason, big)
		dst = appendSyntax(dst, r.Transfer, big)
	}
	return appendAuth(dst, start, nil, big)
}

// AppendBindNak builds a bind_nak with reason and the one supported protocol
// version 5.0, the form Windows sends.
func AppendBindNak(dst []byte, drep DataRep, callID uint32, reason uint16) []byte {
	start := len(dst)
	big := drep.BigEndian()
	dst = appendHead(dst, PDUHead{Type: PTypeBindNak, Flags: FlagFirstFrag | FlagLastFrag, DataRep: drep, CallID: callID})
	dst = appendU16(dst, reason, big)
	dst = append(dst, 1, 5, 0, 0) // one version: 5.0, then a pad byte to 4-byte alignment
	return appendAuth(dst, start, nil, big)
}

// AppendFault builds a single-fragment fault with status for callID on
// context ctxID. didNotExecute tells the client the call never ran.
func AppendFault(dst []byte, drep DataRep, callID uint32, ctxID uint16, status uint32, didNotExecute bool) []byte {
	start := len(dst)
	big := drep.BigEndian()
	flags := FlagFirstFrag | FlagLastFrag
	if didNotExecute {
		flags |= FlagDidNotExecute
	}
	dst = appendHead(dst, PDUHead{Type: PTypeFault, Flags: flags, DataRep: drep, CallID: callID})
	dst = appendU32(dst, 0, big) // alloc_hint
	dst = appendU16(dst, ctxID, big)
	dst = append(dst, 0, 0)
	dst = appendU32(dst, status, big)
	dst = appendU32(dst, 0, big)
	return appendAuth(dst, start, nil, big)
}

// AppendRequest builds one request fragment. object, when non-nil, sets
// PFC_OBJECT_UUID. alloc_hint is the stub length.
func AppendRequest(dst []byte, h PDUHead, ctxID, opnum uint16, object *UUID, stub []byte, auth *AuthSpec) []byte {
	start := len(dst)
	big := h.DataRep.BigEndian()
	h.Type = PTypeRequest
	if object != nil {
		h.Flags |= FlagObjectUUID
	}
	dst = appendHead(dst, h)
	dst = appendU32(dst, uint32(len(stub)), big)
	dst = appendU16(dst, ctxID, big)
	dst = appendU16(dst, opnum, big)
	if object != nil {
		dst = appendUUID(dst, *object, big)
	}
	dst = append(dst, stub...)
	return appendAuth(dst, start, auth, big)
}

// AppendResponse builds one response fragment.
func AppendResponse(dst []byte, h PDUHead, ctxID uint16, allocHint uint32, stub []byte) []byte {
	start := len(dst)
	big := h.DataRep.BigEndian()
	h.Type = PTypeResponse
	dst = appendHead(dst, h)
	dst = appendU32(dst, allocHint, big)
	dst = appendU16(dst, ctxID, big)
	dst = append(dst, 0, 0)
	dst = append(dst, stub...)
	return appendAuth(dst, start, nil, big)
}

// AppendSimple builds a PDU with only an optional fixed body: auth3 (body is
// its 4-byte pad), shutdown, co_cancel, orphaned.
func AppendSimple(dst []byte, h PDUHead, body []byte, auth *AuthSpec) []byte {
	start := len(dst)
	big := h.DataRep.BigEndian()
	dst = appendHead(dst, h)
	dst = append(dst, body...)
	return appendAuth(dst, start, auth, big)
}

func appendHead(dst []byte, h PDUHead) []byte {
	hd := Header{Version: 5, Type: h.Type, Flags: h.Flags, DataRep: h.DataRep, CallID: h.CallID}
	return AppendHeader(dst, &hd)
}

// appendAuth pads the body to 4 bytes, appends the verifier and fixes the
// header lengths of the PDU that starts at dst[start].
func appendAuth(dst []byte, start int, auth *AuthSpec, big bool) []byte {
	if auth == nil {
		finish(dst[start:], 0, big)
		return dst
	}
	pad := (4 - (len(dst)-start)%4) % 4
	for i := 0; i < pad; i++ {
		dst = append(dst, 0)
	}
	dst = append(dst, byte(auth.Type), byte(auth.Level), byte(pad), 0)
	dst = appendU32(dst, auth.ContextID, big)
	dst = append(dst, auth.Credentials...)
	finish(dst[start:], len(auth.Credentials), big)
	return dst
}

func finish(pdu []byte, authLen int, big bool) {
	order(big).PutUint16(pdu[8:10], uint16(len(pdu)))
	order(big).PutUint16(pdu[10:12], uint16(authLen))
}

func appendU16(dst []byte, v uint16, big bool) []byte {
	if big {
		return append(dst, byte(v>>8), byte(v))
	}
	return append(dst, byte(v), byte(v>>8))
}

func appendU32(dst []byte, v uint32, big bool) []byte {
	if big {
		return append(dst, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	return append(dst, byte(v), byte(v>>8), byte(v>>16), byte(v>>24))
}

func appendUUID(dst []byte, u UUID, big bool) []byte {
	var b [16]byte
	u.PutWire(b[:], big)
	return append(dst, b[:]...)
}

func appendSyntax(dst []byte, s SyntaxID, big bool) []byte {
	dst = appendUUID(dst, s.UUID, big)
	return appendU32(dst, uint32(s.Major)|uint32(s.Minor)<<16, big)
}
