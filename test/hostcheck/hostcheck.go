// Package hostcheck re-checks, on the KMS host's side of the proxy, every
// PDU that arrived there against the few shapes a KMS-only policy may let
// through: a KMS v1.0 bind or alter_context offering only NDR 2.0, NDR64 or
// bind-time feature negotiation, and an opnum-0 request whose reassembled
// stub is a RequestActivation that decodes as a KMS V4, V5 or V6 request, in
// the byte order the PDU declares, with no auth trailer on anything.
//
//	if err := hostcheck.Check(pdu); err != nil { … }  // one PDU on its own
//	c := hostcheck.NewConn(nil)                       // one per host connection
//	for _, pdu := range received { if err := c.Check(pdu); err != nil { … } }
//
// It is deliberately independent of the proxy: it reads the PDU with its
// own small, strict, bounds-checked reader (encoding/binary in the byte
// order of drep[0]) and never calls rpcparse, so a bug in the proxy's parser
// cannot hide itself by agreeing with the check. Only the byte-order-free
// KMS message inside the stub is handed to rpcparse/kms (MAC, decryption,
// field ranges).
//
// Check looks at one PDU on its own; a Conn follows one connection (first
// PDU a bind, one byte order, fragments of a call consistent and
// reassembled, requests only on offered context ids). The recording host
// fixture runs a Conn on every connection of every test.
package hostcheck

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// Violation classes. Every error of this package wraps exactly one of them
// (inside an *Error); match with errors.Is.
var (
	ErrHeader    = errors.New("bad common header")                      // rpc_vers, minor, drep, short header
	ErrLength    = errors.New("bad frag_length")                        // ≠ PDU size, below the type's fixed body
	ErrAuth      = errors.New("auth trailer present")                   // auth_length ≠ 0
	ErrType      = errors.New("PDU type never allowed to the host")     // anything but bind, alter_context, request
	ErrContexts  = errors.New("bad presentation context list")          // count, n_transfer_syn, duplicate ids, truncation
	ErrAbstract  = errors.New("abstract syntax is not KMS v1.0")        // another interface or version
	ErrTransfer  = errors.New("transfer syntax not allowed")            // not NDR 2.0 / NDR64 / BTFN
	ErrTrailing  = errors.New("bytes after the last counted context")   // frag_length past the list
	ErrObject    = errors.New("request carries an object UUID")         // PFC_OBJECT_UUID
	ErrOpnum     = errors.New("opnum other than RequestActivation (0)") // on a KMS context
	ErrStub      = errors.New("RequestActivation NDR stub malformed")   // sizes, max count, pad, length
	ErrKMS       = errors.New("KMS request does not decode")            // version, size, MAC, padding, fields
	ErrSequence  = errors.New("PDU out of sequence on the connection")  // first not bind, second bind, drep change, fragments, unknown context
	ErrUnframed  = errors.New("bytes that do not frame as a PDU")       // for recorders: a partial or bad header reached the host
	ErrFragments = errors.New("fragmented call needs a Conn")           // Check on a request that is not first+last
)

// Error is one violation: the PDU's shape (its type name or "header"), the
// byte offset in the PDU where it was found (-1 for a stub reassembled from
// fragments or a whole connection), the class and details.
type Error struct {
	Shape  string
	Offset int
	Err    error // one of the Err* classes
	Detail string
	Cause  error // underlying error (e.g. a *kms.DecodeError), may be nil
}

func (e *Error) Error() string {
	s := fmt.Sprintf("hostcheck: %s: %v", e.Shape, e.Err)
	if e.Offset >= 0 {
		s += fmt.Sprintf(" at offset %d", e.Offset)
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Cause != nil {
		s += ": " + e.Cause.Error()
	}
	return s
}

// Unwrap returns the class and, if any, the cause, so errors.Is matches
// both ErrKMS and kms.ErrMAC.
func (e *Error) Unwrap() []error {
	if e.Cause != nil {
		return []error{e.Err, e.Cause}
	}
	return []error{e.Err}
}

func violation(shape string, off int, class error, format string, args ...any) *Error {
	return &Error{Shape: shape, Offset: off, Err: class, Detail: fmt.Sprintf(format, args...)}
}

// UUID is a UUID in its canonical (string) byte order.
type UUID [16]byte

// ParseUUID reads the 8-4-4-4-12 hex form.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("hostcheck: bad UUID %q", s)
	}
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		return u, fmt.Errorf("hostcheck: bad UUID %q", s)
	}
	copy(u[:], b)
	return u, nil
}

// MustUUID is ParseUUID for constants.
func MustUUID(s string) UUID {
	u, err := ParseUUID(s)
	if err != nil {
		panic(err)
	}
	return u
}

func (u UUID) String() string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Wire returns u as it travels in a PDU of the given byte order: the first
// three fields (u32, u16, u16) in that order, the last eight bytes as is.
func (u UUID) Wire(bo binary.ByteOrder) [16]byte {
	var w [16]byte
	bo.PutUint32(w[0:], binary.BigEndian.Uint32(u[0:]))
	bo.PutUint16(w[4:], binary.BigEndian.Uint16(u[4:]))
	bo.PutUint16(w[6:], binary.BigEndian.Uint16(u[6:]))
	copy(w[8:], u[8:])
	return w
}

// Syntax is an interface or transfer syntax identifier. On the wire its
// version is C706's u32 if_version in the PDU's byte order, the major
// version in the low 16 bits and the minor in the high 16 (as the DCE
// runtime, Samba and Wireshark read it): in a little-endian PDU that is
// u16 major then u16 minor, in a big-endian one u16 minor then u16 major.
type Syntax struct {
	UUID         UUID
	Major, Minor uint16
}

func (s Syntax) String() string { return fmt.Sprintf("%v v%d.%d", s.UUID, s.Major, s.Minor) }

// The syntaxes a KMS-only host may see.
var (
	KMS   = Syntax{MustUUID("51c82175-844e-4750-b0d8-ec255555bc06"), 1, 0}
	NDR20 = Syntax{MustUUID("8a885d04-1ceb-11c9-9fe8-08002b104860"), 2, 0}
	NDR64 = Syntax{MustUUID("71710533-beba-4937-8319-b5dbef9ccc36"), 1, 0}
	// BTFN is bind-time feature negotiation: only the first eight bytes of
	// the UUID are fixed, the last eight are the feature bitmask.
	BTFN = Syntax{MustUUID("6cb71c2c-9812-4540-0000-000000000000"), 1, 0}
)

// Options widen the allowed shapes for a test whose policy deliberately
// lets more than KMS through. The zero value is the KMS-only policy.
type Options struct {
	// MaxContexts bounds n_context_elem of a bind or alter_context (the
	// policy's limits.max_contexts); 0 means 8, the default.
	MaxContexts int
	// ExtraInterfaces are abstract syntaxes besides KMS v1.0 the policy
	// allows. A Conn accepts requests on their context ids with any opnum
	// and stub; Check cannot know a request's interface and holds every
	// request to the KMS rules.
	ExtraInterfaces []Syntax
	// AllowAuth accepts auth trailers (with their padding) on every PDU and
	// auth3 PDUs: for policies with ntlm, anonymous, kerberos or negotiate.
	AllowAuth bool
}

func (o *Options) maxContexts() int {
	if o.MaxContexts <= 0 {
		return 8
	}
	return o.MaxContexts
}

// PDU types (C706 12.6.4).
const (
	ptypeRequest      = 0
	ptypeBind         = 11
	ptypeAlterContext = 14
	ptypeAuth3        = 16
)

var ptypeNames = map[uint8]string{
	0: "request", 1: "ping", 2: "response", 3: "fault", 4: "working", 5: "nocall",
	6: "reject", 7: "ack", 8: "cl_cancel", 9: "fack", 10: "cancel_ack", 11: "bind",
	12: "bind_ack", 13: "bind_nak", 14: "alter_context", 15: "alter_context_resp",
	16: "auth3", 17: "shutdown", 18: "co_cancel", 19: "orphaned",
}

func ptypeName(t uint8) string {
	if n, ok := ptypeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("ptype %d", t)
}

// Flags of the common header.
const (
	flagFirst  = 0x01
	flagLast   = 0x02
	flagObject = 0x80
)

const (
	headerLen  = 16
	bindFixed  = 12 // max_xmit, max_recv, assoc_group, n_context_elem, 3 reserved
	reqFixed   = 8  // alloc_hint, p_cont_id, opnum
	auth3Fixed = 4  // pad
	secTrailer = 8  // auth_type, auth_level, auth_pad_length, reserved, auth_context_id
	syntaxLen  = 20 // UUID + version
	maxStub    = 1024
)

// header is what the common header says, read in the PDU's byte order.
type header struct {
	bo        binary.ByteOrder
	big       bool
	ptype     uint8
	flags     uint8
	authLen   int
	callID    uint32
	bodyEnd   int // where the body ends: frag_length, less the trailer and its padding
	shapeName string
}

// reader is a bounds-checked cursor over one PDU. A read past end records
// the first shortfall and returns zeros; callers check err.
type reader struct {
	b   []byte
	off int
	end int
	bo  binary.ByteOrder
	err *Error
	sh  string
}

func (r *reader) take(n int, field string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || r.end-r.off < n {
		r.err = violation(r.sh, r.off, ErrContexts, "%s: needs %d bytes, %d left before the body ends", field, n, r.end-r.off)
		return nil
	}
	b := r.b[r.off : r.off+n]
	r.off += n
	return b
}

func (r *reader) u8(field string) uint8 {
	if b := r.take(1, field); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u16(field string) uint16 {
	if b := r.take(2, field); b != nil {
		return r.bo.Uint16(b)
	}
	return 0
}

func (r *reader) u32(field string) uint32 {
	if b := r.take(4, field); b != nil {
		return r.bo.Uint32(b)
	}
	return 0
}

func (r *reader) syntax(field string) (Syntax, [16]byte) {
	b := r.take(syntaxLen, field)
	if b == nil {
		return Syntax{}, [16]byte{}
	}
	var s Syntax
	binary.BigEndian.PutUint32(s.UUID[0:], r.bo.Uint32(b[0:]))
	binary.BigEndian.PutUint16(s.UUID[4:], r.bo.Uint16(b[4:]))
	binary.BigEndian.PutUint16(s.UUID[6:], r.bo.Uint16(b[6:]))
	copy(s.UUID[8:], b[8:16])
	v := r.bo.Uint32(b[16:])
	s.Major, s.Minor = uint16(v), uint16(v>>16)
	return s, [16]byte(b[:16])
}

// readHeader checks the common header and the lengths every PDU shares.
func readHeader(pdu []byte, o *Options) (header, *Error) {
	var h header
	if len(pdu) < headerLen {
		return h, violation("header", len(pdu), ErrLength, "%d bytes, shorter than the 16-byte common header", len(pdu))
	}
	if pdu[0] != 5 || pdu[1] > 1 {
		return h, violation("header", 0, ErrHeader, "rpc_vers %d.%d, want 5.0 or 5.1", pdu[0], pdu[1])
	}
	switch d := pdu[4]; {
	case d == 0x10:
		h.bo = binary.LittleEndian
	case d == 0x00:
		h.bo, h.big = binary.BigEndian, true
	default:
		return h, violation("header", 4, ErrHeader, "drep[0] %#02x: integer order must be 0x10 (little) or 0x00 (big) with ASCII characters", d)
	}
	if pdu[5] != 0 {
		return h, violation("header", 5, ErrHeader, "drep[1] %#02x: floating point must be IEEE (0)", pdu[5])
	}
	h.ptype, h.flags = pdu[2], pdu[3]
	h.shapeName = ptypeName(h.ptype)
	fragLen := int(h.bo.Uint16(pdu[8:]))
	h.authLen = int(h.bo.Uint16(pdu[10:]))
	h.callID = h.bo.Uint32(pdu[12:])
	if fragLen != len(pdu) {
		return h, violation(h.shapeName, 8, ErrLength, "frag_length %d but the PDU is %d bytes", fragLen, len(pdu))
	}
	var fixed int
	switch h.ptype {
	case ptypeBind, ptypeAlterContext:
		fixed = bindFixed
	case ptypeRequest:
		fixed = reqFixed
	case ptypeAuth3:
		if !o.AllowAuth {
			return h, violation(h.shapeName, 2, ErrType, "auth3 on a KMS association (no authentication is ever negotiated)")
		}
		fixed = auth3Fixed
	default:
		return h, violation(h.shapeName, 2, ErrType, "%s (ptype %d) must never reach the host", h.shapeName, h.ptype)
	}
	if fragLen < headerLen+fixed {
		return h, violation(h.shapeName, 8, ErrLength, "frag_length %d below %d, the header plus the %s's fixed body", fragLen, headerLen+fixed, h.shapeName)
	}
	h.bodyEnd = fragLen
	if h.authLen != 0 {
		if !o.AllowAuth {
			return h, violation(h.shapeName, 10, ErrAuth, "auth_length %d: no PDU to a KMS host carries a sec_trailer", h.authLen)
		}
		end := fragLen - h.authLen - secTrailer
		if end < headerLen+fixed {
			return h, violation(h.shapeName, 10, ErrLength, "auth_length %d does not fit a %d-byte fragment with its trailer", h.authLen, fragLen)
		}
		pad := int(pdu[end+2])
		if end-pad < headerLen+fixed {
			return h, violation(h.shapeName, end+2, ErrLength, "auth_pad_length %d reaches into the fixed body", pad)
		}
		h.bodyEnd = end - pad
	} else if h.ptype == ptypeAuth3 {
		return h, violation(h.shapeName, 10, ErrAuth, "auth3 without an auth trailer")
	}
	return h, nil
}

// context is one presentation context of a bind or alter_context.
type context struct {
	id           uint16
	abstract     Syntax
	allowed      bool // abstract and every transfer syntax allowed
	kms          bool // abstract syntax is KMS v1.0 (else one of Options.ExtraInterfaces)
	ndr20, ndr64 bool // transfer syntaxes offered
}

// readBind checks a bind or alter_context body. It returns the contexts it
// could read (whether allowed or not, so a Conn can name them when a
// request uses one) and the first violation.
func readBind(pdu []byte, h header, o *Options) ([]context, *Error) {
	r := &reader{b: pdu, off: headerLen, end: h.bodyEnd, bo: h.bo, sh: h.shapeName}
	r.u16("max_xmit_frag")
	r.u16("max_recv_frag")
	r.u32("assoc_group_id")
	n := int(r.u8("n_context_elem"))
	r.take(3, "reserved")
	if r.err != nil {
		return nil, r.err
	}
	var bad *Error
	if n == 0 || n > o.maxContexts() {
		bad = violation(h.shapeName, headerLen+8, ErrContexts, "n_context_elem %d, want 1..%d", n, o.maxContexts())
	}
	ctxs := make([]context, 0, n)
	for i := 0; i < n; i++ {
		at := r.off
		c := context{id: r.u16("p_cont_id")}
		nts := int(r.u8("n_transfer_syn"))
		r.u8("reserved")
		c.abstract, _ = r.syntax("abstract_syntax")
		if r.err != nil {
			r.err.Detail = fmt.Sprintf("context %d of %d: %s", i, n, r.err.Detail)
			return ctxs, first(bad, r.err)
		}
		for _, p := range ctxs {
			if p.id == c.id {
				bad = first(bad, violation(h.shapeName, at, ErrContexts, "context id %d twice", c.id))
			}
		}
		switch {
		case c.abstract == KMS:
			c.kms, c.allowed = true, true
		case extra(o, c.abstract):
			c.allowed = true
		default:
			bad = first(bad, violation(h.shapeName, at+4, ErrAbstract, "context %d (id %d) asks for %v", i, c.id, c.abstract))
		}
		if nts == 0 {
			c.allowed = false
			bad = first(bad, violation(h.shapeName, at+2, ErrContexts, "context %d (id %d) has n_transfer_syn 0", i, c.id))
		}
		for j := 0; j < nts; j++ {
			toff := r.off
			ts, wire := r.syntax("transfer_syntax")
			if r.err != nil {
				r.err.Detail = fmt.Sprintf("context %d of %d, transfer syntax %d of %d: %s", i, n, j, nts, r.err.Detail)
				return ctxs, first(bad, r.err)
			}
			switch {
			case ts == NDR20:
				c.ndr20 = true
			case ts == NDR64:
				c.ndr64 = true
			case isBTFN(ts, wire, h.bo):
			default:
				c.allowed = false
				bad = first(bad, violation(h.shapeName, toff, ErrTransfer, "context %d (id %d) offers %v", i, c.id, ts))
			}
		}
		ctxs = append(ctxs, c)
	}
	if r.off != h.bodyEnd {
		bad = first(bad, violation(h.shapeName, r.off, ErrTrailing, "%d uncounted bytes after context %d", h.bodyEnd-r.off, n-1))
	}
	return ctxs, bad
}

func first(a, b *Error) *Error {
	if a != nil {
		return a
	}
	return b
}

func extra(o *Options, s Syntax) bool {
	for _, e := range o.ExtraInterfaces {
		if e == s {
			return true
		}
	}
	return false
}

// isBTFN: the first eight UUID bytes (in wire order) are those of
// 6cb71c2c-9812-4540 in the PDU's byte order, version 1.0; the last eight
// are the feature bitmask and may be anything.
func isBTFN(ts Syntax, wire [16]byte, bo binary.ByteOrder) bool {
	want := BTFN.UUID.Wire(bo)
	return [8]byte(wire[:8]) == [8]byte(want[:8]) && ts.Major == 1 && ts.Minor == 0
}

// request is what a request's body says.
type request struct {
	ctxID uint16
	opnum uint16
	stub  []byte
}

func readRequest(pdu []byte, h header) (request, *Error) {
	r := &reader{b: pdu, off: headerLen, end: h.bodyEnd, bo: h.bo, sh: h.shapeName}
	r.u32("alloc_hint")
	q := request{ctxID: r.u16("p_cont_id"), opnum: r.u16("opnum")}
	if r.err != nil {
		return q, r.err
	}
	if h.flags&flagObject != 0 {
		return q, violation(h.shapeName, 3, ErrObject, "flags %#02x have PFC_OBJECT_UUID", h.flags)
	}
	q.stub = pdu[r.off:h.bodyEnd]
	return q, nil
}

// checkStub holds a reassembled RequestActivation stub to the NDR layouts
// allowed for its context, in byte order bo, then checks the KMS request
// inside. stubOff is the stub's offset in the PDU for error positions.
func checkStub(stub []byte, bo binary.ByteOrder, ndr20, ndr64 bool, stubOff int) *Error {
	var errs []string
	if ndr20 {
		blob, why := ndrBlob(stub, bo, false)
		if why == "" {
			return checkBlob(blob, stubOff+8)
		}
		errs = append(errs, "as NDR 2.0: "+why)
	}
	if ndr64 {
		blob, why := ndrBlob(stub, bo, true)
		if why == "" {
			return checkBlob(blob, stubOff+16)
		}
		errs = append(errs, "as NDR64: "+why)
	}
	if !ndr20 && !ndr64 {
		errs = append(errs, "its context offered neither NDR 2.0 nor NDR64")
	}
	order := "little-endian"
	if bo == binary.BigEndian {
		order = "big-endian"
	}
	return violation("request", stubOff, ErrStub, "%d-byte %s stub: %s", len(stub), order, strings.Join(errs, "; "))
}

// ndrBlob reads [in] int requestSize, [in, size_is(requestSize)] unsigned
// char *request (a reference pointer: no referent id): NDR 2.0 is u32 size,
// u32 max_count, bytes; NDR64 is u32 size, 4 zero bytes aligning the u64
// max_count, bytes. Size, max count and the bytes left must all agree.
func ndrBlob(stub []byte, bo binary.ByteOrder, ndr64 bool) ([]byte, string) {
	hdr := 8
	if ndr64 {
		hdr = 16
	}
	if len(stub) < hdr {
		return nil, fmt.Sprintf("shorter than the %d-byte size and max count", hdr)
	}
	size := uint64(bo.Uint32(stub))
	var count uint64
	if ndr64 {
		if pad := bo.Uint32(stub[4:]); pad != 0 {
			return nil, fmt.Sprintf("alignment pad after requestSize is %#x, not 0", pad)
		}
		count = bo.Uint64(stub[8:])
	} else {
		count = uint64(bo.Uint32(stub[4:]))
	}
	switch {
	case size != count:
		return nil, fmt.Sprintf("requestSize %d ≠ max_count %d", size, count)
	case size != uint64(len(stub)-hdr):
		return nil, fmt.Sprintf("requestSize %d but %d bytes follow", size, len(stub)-hdr)
	}
	return stub[hdr:], ""
}

// checkBlob checks the KMS request message (always little-endian, whatever
// the PDU's drep): version 4.0, 5.0 or 6.0 with that version's size, then
// the full decode (V4 MAC, V5/V6 decryption and field ranges).
func checkBlob(blob []byte, off int) *Error {
	if len(blob) < 4 {
		return violation("request", off, ErrKMS, "%d-byte KMS request has no version", len(blob))
	}
	minor, major := binary.LittleEndian.Uint16(blob), binary.LittleEndian.Uint16(blob[2:])
	want := map[uint16]int{4: kms.RequestV4Len, 5: kms.RequestV6Len, 6: kms.RequestV6Len}[major]
	if minor != 0 || want == 0 {
		return violation("request", off, ErrKMS, "KMS version %d.%d, want 4.0, 5.0 or 6.0", major, minor)
	}
	if len(blob) != want {
		return violation("request", off, ErrKMS, "KMS V%d request of %d bytes, want %d", major, len(blob), want)
	}
	var r kms.Request
	if err := kms.DecodeRequest(blob, &r); err != nil {
		e := violation("request", off, ErrKMS, "KMS V%d request", major)
		e.Cause = err
		return e
	}
	return nil
}

// Check checks one PDU on its own against the KMS-only shapes. A request
// must be a whole call (first and last fragment, else ErrFragments): its
// stub must decode under NDR 2.0 or NDR64 in the PDU's byte order.
// Fragments of a call, the first-PDU rule, byte-order changes and context
// ids need a Conn.
func Check(pdu []byte) error { return CheckWith(pdu, nil) }

// CheckWith is Check with the shapes widened by o (nil for none).
func CheckWith(pdu []byte, o *Options) error {
	if o == nil {
		o = &Options{}
	}
	h, err := readHeader(pdu, o)
	if err != nil {
		return err
	}
	switch h.ptype {
	case ptypeBind, ptypeAlterContext:
		if _, err := readBind(pdu, h, o); err != nil {
			return err
		}
	case ptypeRequest:
		q, err := readRequest(pdu, h)
		if err != nil {
			return err
		}
		if q.opnum != 0 {
			return violation(h.shapeName, 22, ErrOpnum, "opnum %d", q.opnum)
		}
		if h.flags&(flagFirst|flagLast) != flagFirst|flagLast {
			return violation(h.shapeName, 3, ErrFragments, "flags %#02x: one fragment of a call", h.flags)
		}
		if err := checkStub(q.stub, h.bo, true, true, headerLen+reqFixed); err != nil {
			return err
		}
	}
	return nil
}
