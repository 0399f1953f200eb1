package rpcparse

// SyntaxID is a presentation syntax identifier: an interface or transfer
// syntax UUID with its version. On the wire the version is one u32 whose low
// 16 bits are the major version (C706 p_syntax_id_t).
type SyntaxID struct {
	UUID  UUID
	Major uint16
	Minor uint16
}

const syntaxIDLen = 20

func readSyntax(b []byte, big bool) SyntaxID {
	v := u32(b[16:20], big)
	return SyntaxID{UUID: UUIDFromWire(b, big), Major: uint16(v), Minor: uint16(v >> 16)}
}

// AuthVerifier is the sec_trailer and credentials that close a PDU when
// auth_length is non-zero (C706 13.2.6.1, MS-RPCE 2.2.2.11).
type AuthVerifier struct {
	Type        AuthType
	Level       AuthLevel
	PadLength   uint8
	Reserved    uint8
	ContextID   uint32
	Credentials []byte // auth_length bytes; valid until the buffer is reused
}

// PDU is one parsed connection-oriented fragment. Parse fills it in place;
// every byte slice points into the fragment passed to Parse and is valid
// only until that buffer is reused. A PDU can be reused across calls, which
// is how the hot path stays allocation-free.
type PDU struct {
	Header

	// Body is everything between the common header and the auth padding:
	// the fixed fields of the PDU type followed by its variable part.
	Body []byte
	// AuthPad is the auth padding before the sec_trailer (auth_pad_length bytes).
	AuthPad []byte
	HasAuth bool
	Auth    AuthVerifier

	// Exactly one of these is meaningful, chosen by Header.Type.
	Bind     Bind     // bind, alter_context
	BindAck  BindAck  // bind_ack, alter_context_resp
	BindNak  BindNak  // bind_nak
	Request  Request  // request
	Response Response // response
	Fault    Fault    // fault
	// Auth3 and the header-only types (shutdown, co_cancel, orphaned) keep
	// their body bytes in Body.
}

// fixedBody is the size of each connection-oriented type's fixed fields
// after the common header; ParseHeader rejects shorter fragments.
var fixedBody = [256]int{
	PTypeRequest:          8,
	PTypeResponse:         8,
	PTypeFault:            16,
	PTypeBind:             12,
	PTypeBindAck:          16, // assumes a zero-length secondary address, the shortest possible
	PTypeBindNak:          2,
	PTypeAlterContext:     12,
	PTypeAlterContextResp: 16,
}

type bodyParser func(p *PDU) error

// bodyParsers is indexed by PType; nil entries are types with no body
// structure to check beyond the header. Types that are not
// connection-oriented never get here: ParseHeader refuses them.
var bodyParsers [256]bodyParser

func init() {
	bodyParsers[PTypeRequest] = parseRequest
	bodyParsers[PTypeResponse] = parseResponse
	bodyParsers[PTypeFault] = parseFault
	bodyParsers[PTypeBind] = parseBind
	bodyParsers[PTypeAlterContext] = parseBind
	bodyParsers[PTypeBindAck] = parseBindAck
	bodyParsers[PTypeAlterContextResp] = parseBindAck
	bodyParsers[PTypeBindNak] = parseBindNak
}

// Parse decodes one whole fragment: frag must be exactly frag_length bytes
// (a Framer returns such slices). maxFrag bounds frag_length; 0 means the
// wire maximum. On error p holds whatever was decoded before the failure.
func (p *PDU) Parse(frag []byte, maxFrag int) error {
	h, err := ParseHeader(frag, maxFrag)
	p.Header = h
	// Nothing from a previous PDU survives a failed parse.
	p.Body, p.AuthPad, p.HasAuth, p.Auth = nil, nil, false, AuthVerifier{}
	if err != nil {
		return err
	}
	if int(h.FragLength) != len(frag) {
		if int(h.FragLength) > len(frag) {
			return perr(h.Type, 8, "frag_length", ErrTruncated)
		}
		return perr(h.Type, 8, "frag_length", ErrTrailingData)
	}
	// Every slice handed out is capped at its own end, so a caller's append
	// can never write over the auth trailer or the next PDU in the buffer.
	end := len(frag)
	frag = frag[:end:end]
	if h.AuthLength > 0 {
		tr := end - int(h.AuthLength) - authTrailerLen
		bo := order(h.BigEndian())
		p.HasAuth = true
		p.Auth = AuthVerifier{
			Type:        AuthType(frag[tr]),
			Level:       AuthLevel(frag[tr+1]),
			PadLength:   frag[tr+2],
			Reserved:    frag[tr+3],
			ContextID:   bo.Uint32(frag[tr+4 : tr+8]),
			Credentials: frag[tr+8 : end],
		}
		padStart := tr - int(p.Auth.PadLength)
		if padStart < HeaderLen+fixedBody[h.Type] {
			return perr(h.Type, tr+2, "auth_pad_length", ErrAuthPadding)
		}
		p.AuthPad = frag[padStart:tr:tr]
		end = padStart
	}
	p.Body = frag[HeaderLen:end:end]
	if parse := bodyParsers[h.Type]; parse != nil {
		return parse(p)
	}
	return nil
}

// ---- request / response / fault ----

// Request is a request PDU's body (C706 12.6.4.9).
type Request struct {
	AllocHint uint32
	ContextID uint16
	Opnum     uint16
	HasObject bool // PFC_OBJECT_UUID set
	Object    UUID
	Stub      []byte
}

func parseRequest(p *PDU) error {
	b, big := p.Body, p.BigEndian()
	bo := order(big)
	r := &p.Request
	*r = Request{
		AllocHint: bo.Uint32(b[0:4]),
		ContextID: bo.Uint16(b[4:6]),
		Opnum:     bo.Uint16(b[6:8]),
		HasObject: p.Flags&FlagObjectUUID != 0,
	}
	stub := 8
	if r.HasObject {
		if len(b) < 24 {
			return perr(p.Type, HeaderLen+8, "object", ErrTruncated)
		}
		r.Object = UUIDFromWire(b[8:24], big)
		stub = 24
	}
	r.Stub = b[stub:]
	return nil
}

// Response is a response PDU's body (C706 12.6.4.10).
type Response struct {
	AllocHint   uint32
	ContextID   uint16
	CancelCount uint8
	Reserved    uint8
	Stub        []byte
}

func parseResponse(p *PDU) error {
	b := p.Body
	bo := order(p.BigEndian())
	p.Response = Response{
		AllocHint:   bo.Uint32(b[0:4]),
		ContextID:   bo.Uint16(b[4:6]),
		CancelCount: b[6],
		Reserved:    b[7],
		Stub:        b[8:],
	}
	return nil
}

// Fault is a fault PDU's body (C706 12.6.4.7).
type Fault struct {
	AllocHint   uint32
	ContextID   uint16
	CancelCount uint8
	Reserved    uint8
	Status      uint32
	Reserved2   uint32
	Stub        []byte
}

// Fault status codes the proxy uses (C706 appendix E, MS-RPCE 2.2.2.10).
const (
	StatusOpRangeError  uint32 = 0x1c010002 // nca_s_op_rng_error
	StatusUnknownIf     uint32 = 0x1c010003 // nca_s_unk_if
	StatusProtoError    uint32 = 0x1c01000b // nca_proto_error
	StatusAccessDenied  uint32 = 0x00000005 // ERROR_ACCESS_DENIED
	StatusServerTooBusy uint32 = 0x000006bb // RPC_S_SERVER_TOO_BUSY
	StatusCallFailed    uint32 = 0x000006be // RPC_S_CALL_FAILED: the host went away mid-call
)

func parseFault(p *PDU) error {
	b := p.Body
	bo := order(p.BigEndian())
	p.Fault = Fault{
		AllocHint:   bo.Uint32(b[0:4]),
		ContextID:   bo.Uint16(b[4:6]),
		CancelCount: b[6],
		Reserved:    b[7],
		Status:      bo.Uint32(b[8:12]),
		Reserved2:   bo.Uint32(b[12:16]),
		Stub:        b[16:],
	}
	return nil
}

// ---- bind / alter_context ----

// Bind is the body of a bind or alter_context PDU (C706 12.6.4.3). Context
// items stay in wire form in Items and are walked with Contexts; Parse has
// already checked that every item and transfer syntax is in bounds.
type Bind struct {
	MaxXmitFrag uint16
	MaxRecvFrag uint16
	AssocGroup  uint32
	NumContexts uint8
	Reserved    uint8
	Reserved2   uint16
	Items       []byte // the context items, exactly
	Extra       []byte // bytes after the last item (should be empty)
	bigEndian   bool
}

// ContextElem is one presentation context item of a bind.
type ContextElem struct {
	ID          uint16
	NumTransfer uint8
	Reserved    uint8
	Abstract    SyntaxID
	transfers   []byte
	bigEndian   bool
}

// Transfer returns transfer syntax i (0 <= i < NumTransfer).
// Out of range it returns the zero SyntaxID.
func (c *ContextElem) Transfer(i int) SyntaxID {
	if i < 0 || (i+1)*syntaxIDLen > len(c.transfers) {
		return SyntaxID{}
	}
	return readSyntax(c.transfers[i*syntaxIDLen:], c.bigEndian)
}

const contextHeadLen = 4 + syntaxIDLen // p_cont_id, n_transfer_syn, reserved, abstract_syntax

// ContextIter walks a bind's context items without allocating.
type ContextIter struct {
	b         []byte
	bigEndian bool
	cur       ContextElem
}

// Contexts returns an iterator over the bind's items.
func (b *Bind) Contexts() ContextIter { return ContextIter{b: b.Items, bigEndian: b.bigEndian} }

// Next advances to the next item; it returns false at the end.
func (it *ContextIter) Next() bool {
	if len(it.b) < contextHeadLen {
		return false
	}
	n := int(it.b[2])
	size := contextHeadLen + n*syntaxIDLen
	if len(it.b) < size {
		// Only items a successful parse checked are whole; anything else
		// (the Items of a PDU whose parse failed) ends the walk.
		it.b = nil
		return false
	}
	it.cur = ContextElem{
		ID:          u16(it.b[0:2], it.bigEndian),
		NumTransfer: it.b[2],
		Reserved:    it.b[3],
		Abstract:    readSyntax(it.b[4:], it.bigEndian),
		transfers:   it.b[contextHeadLen:size],
		bigEndian:   it.bigEndian,
	}
	it.b = it.b[size:]
	return true
}

// Context returns the current item.
func (it *ContextIter) Context() *ContextElem { return &it.cur }

func parseBind(p *PDU) error {
	b, big := p.Body, p.BigEndian()
	bo := order(big)
	bd := &p.Bind
	*bd = Bind{
		MaxXmitFrag: bo.Uint16(b[0:2]),
		MaxRecvFrag: bo.Uint16(b[2:4]),
		AssocGroup:  bo.Uint32(b[4:8]),
		NumContexts: b[8],
		Reserved:    b[9],
		Reserved2:   bo.Uint16(b[10:12]),
		bigEndian:   big,
	}
	if bd.NumContexts == 0 {
		return perr(p.Type, HeaderLen+8, "n_context_elem", ErrContextCount)
	}
	off := 12
	for i := 0; i < int(bd.NumContexts); i++ {
		if len(b)-off < contextHeadLen {
			// n_context_elem claims more items than the fragment holds.
			return perr(p.Type, HeaderLen+8, "n_context_elem", ErrContextCount)
		}
		n := int(b[off+2])
		if n == 0 {
			return perr(p.Type, HeaderLen+off+2, "n_transfer_syn", ErrTransferCount)
		}
		size := contextHeadLen + n*syntaxIDLen
		if len(b)-off < size {
			return perr(p.Type, HeaderLen+off+2, "n_transfer_syn", ErrTransferCount)
		}
		off += size
	}
	bd.Items = b[12:off:off]
	bd.Extra = b[off:]
	return nil
}

// ---- bind_ack / alter_context_resp ----

// Result is one presentation result of a bind_ack (C706 p_result_t).
type Result struct {
	Result   uint16 // 0 acceptance, 1 user rejection, 2 provider rejection, 3 negotiate_ack (MS-RPCE)
	Reason   uint16 // provider reason, or the accepted feature bits for negotiate_ack
	Transfer SyntaxID
}

// Presentation result values.
const (
	ResultAcceptance        uint16 = 0
	ResultUserRejection     uint16 = 1
	ResultProviderRejection uint16 = 2
	ResultNegotiateAck      uint16 = 3
)

// Provider rejection reasons (C706 12.6.3.1, p_provider_reason_t).
const (
	ProviderReasonNotSpecified     uint16 = 0
	ProviderReasonAbstractSyntax   uint16 = 1 // abstract syntax not supported
	ProviderReasonTransferSyntaxes uint16 = 2 // proposed transfer syntaxes not supported
	ProviderReasonLocalLimit       uint16 = 3 // local limit exceeded
)

const resultLen = 4 + syntaxIDLen

// BindAck is the body of a bind_ack or alter_context_resp (C706 12.6.4.4).
type BindAck struct {
	MaxXmitFrag uint16
	MaxRecvFrag uint16
	AssocGroup  uint32
	SecAddr     []byte // port_spec including its NUL, exactly sec_addr.length bytes
	SecAddrPad  []byte // alignment padding after the secondary address (not always zero)
	NumResults  uint8
	Reserved    uint8
	Reserved2   uint16
	Results     []byte // NumResults wire results, exactly
	Extra       []byte
	bigEndian   bool
}

// Result returns result i (0 <= i < NumResults). Out of range, or on a
// bind_ack whose parse failed (NumResults read, results not), it returns
// the zero Result rather than panic: hostile input reaches every accessor.
func (a *BindAck) Result(i int) Result {
	if i < 0 || (i+1)*resultLen > len(a.Results) {
		return Result{}
	}
	b := a.Results[i*resultLen:]
	bo := order(a.bigEndian)
	return Result{Result: bo.Uint16(b[0:2]), Reason: bo.Uint16(b[2:4]), Transfer: readSyntax(b[4:], a.bigEndian)}
}

func parseBindAck(p *PDU) error {
	b, big := p.Body, p.BigEndian()
	bo := order(big)
	a := &p.BindAck
	*a = BindAck{
		MaxXmitFrag: bo.Uint16(b[0:2]),
		MaxRecvFrag: bo.Uint16(b[2:4]),
		AssocGroup:  bo.Uint32(b[4:8]),
		bigEndian:   big,
	}
	n := int(bo.Uint16(b[8:10]))
	off := 10
	if len(b)-off < n {
		return perr(p.Type, HeaderLen+8, "sec_addr.length", ErrSecondaryAddr)
	}
	a.SecAddr = b[off : off+n : off+n]
	off += n
	// The result list is 4-byte aligned relative to the PDU start.
	aligned := (HeaderLen+off+3)&^3 - HeaderLen
	if aligned+4 > len(b) {
		return perr(p.Type, HeaderLen+off, "p_result_list", ErrTruncated)
	}
	a.SecAddrPad = b[off:aligned:aligned]
	off = aligned
	a.NumResults, a.Reserved, a.Reserved2 = b[off], b[off+1], bo.Uint16(b[off+2:off+4])
	off += 4
	size := int(a.NumResults) * resultLen
	if len(b)-off < size {
		return perr(p.Type, HeaderLen+off, "p_results", ErrResultCount)
	}
	a.Results = b[off : off+size : off+size]
	a.Extra = b[off+size:]
	return nil
}

// ---- bind_nak ----

// BindNak is the body of a bind_nak (C706 12.6.4.5).
type BindNak struct {
	Reason   uint16
	Versions []byte // n_protocols, then (major, minor) pairs, when present
	Extra    []byte // anything after the version list (MS-RPCE signature and error info)
}

// Bind_nak reject reasons (C706 p_reject_reason_t).
const (
	NakReasonNotSpecified          uint16 = 0
	NakTemporaryCongestion         uint16 = 1
	NakLocalLimitExceeded          uint16 = 2
	NakCalledPaddrUnknown          uint16 = 3
	NakProtocolVersionNotSupported uint16 = 4
	NakDefaultContextNotSupported  uint16 = 5
	NakUserDataNotReadable         uint16 = 6
	NakNoPsapAvailable             uint16 = 7
	NakAuthenticationTypeNotRecog  uint16 = 8
	NakInvalidChecksum             uint16 = 9
)

// NumVersions returns how many protocol versions the nak lists.
func (n *BindNak) NumVersions() int {
	if len(n.Versions) == 0 {
		return 0
	}
	return int(n.Versions[0])
}

// Version returns supported version i as (major, minor); out of range,
// (0, 0).
func (n *BindNak) Version(i int) (major, minor uint8) {
	if i < 0 || 3+2*i > len(n.Versions) {
		return 0, 0
	}
	return n.Versions[1+2*i], n.Versions[2+2*i]
}

func parseBindNak(p *PDU) error {
	b := p.Body
	nk := &p.BindNak
	*nk = BindNak{Reason: order(p.BigEndian()).Uint16(b[0:2])}
	rest := b[2:]
	if len(rest) == 0 {
		return nil
	}
	n := int(rest[0])
	if len(rest) < 1+2*n {
		return perr(p.Type, HeaderLen+2, "n_protocols", ErrTruncated)
	}
	nk.Versions = rest[: 1+2*n : 1+2*n]
	nk.Extra = rest[1+2*n:]
	return nil
}
