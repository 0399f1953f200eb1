package fuzzsession

import (
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
	"github.com/kmsproxy/kmsproxy/test/fixture"
	"github.com/kmsproxy/kmsproxy/test/kmsgen"
)

// The input format. Every field is one byte read by a modulus or a
// threshold, so any byte string is an input, every prefix of one is a
// shorter one (bytes past the end read as zero), and a mutation of one
// byte changes one decision.
//
//	input   := global op{0..12}
//	global  := bit 0 one write for every PDU, bit 1 wait for each answer,
//	           bit 2 the on_deny: drop proxy, bit 3 a source in the office zone
//	op      := kind drep flags call auth corrupt body
//	auth    := type/level byte [cred [padLen padFill]]   (cred only with a trailer)
//	corrupt := byte [arg]                                (arg only when corrupting)
//	body    := bind/alter: n ctx*n, ctx := id abstract nTransfer transfer*
//	           request: ctx opnum stub;  call: ctx opnum stub nFrag (cut override)*
//	           raw: len bytes;  auth3, co_cancel, orphaned, pause: nothing
//	stub    := sel p1 p2
const maxOps = 12

// kind is what an op sends.
type kind uint8

const (
	kBind kind = iota
	kAlter
	kRequest // one request PDU with the op's flags as written
	kCall    // a whole call cut into fragments, each maybe altered
	kAuth3
	kCancel   // co_cancel
	kOrphaned // orphaned
	kPause    // 25 ms without a PDU (the first pause of an input only): a bound session parks
	kRaw      // bytes as given
)

var kindNames = [...]string{"bind", "alter_context", "request", "call", "auth3", "co_cancel", "orphaned", "pause", "raw"}

func (k kind) String() string { return kindNames[k] }

// kindTable weights the kinds: raw bytes and pauses are rare.
var kindTable = [32]kind{
	kBind, kAlter, kRequest, kCall, kAuth3, kCancel, kOrphaned, kRequest,
	kCall, kAlter, kRequest, kCall, kBind, kAuth3, kRequest, kCall,
	kAlter, kRequest, kCall, kCancel, kOrphaned, kRequest, kCall, kAlter,
	kRequest, kCall, kBind, kRequest, kCall, kAlter, kPause, kRaw,
}

func kindByte(k kind) byte {
	for i, x := range kindTable {
		if x == k {
			return byte(i)
		}
	}
	panic("kind not in table")
}

// Data representations: 0 little-endian, 1 big-endian, then odd ones a
// client never sends (EBCDIC, VAX floats, a bad integer nibble, reserved
// bytes set).
var dreps = [...]rpcparse.DataRep{
	rpcparse.LittleEndianDataRep, rpcparse.BigEndianDataRep,
	{0x11, 0, 0, 0}, {0x10, 1, 0, 0}, {0x20, 0, 0, 0}, {0x10, 0, 0xff, 0xff},
}

func decodeDrep(b byte) int {
	if b >= 0xf8 {
		return 2 + int(b&3)
	}
	return int(b & 1)
}

func drepByte(i int) byte {
	if i < 2 {
		return byte(i)
	}
	return 0xf8 + byte(i-2)
}

var callIDs = [8]uint32{1, 2, 3, 4, 0, 0xffffffff, 0x10001, 9}

// Context ids: mostly 0..3, sometimes a large one.
func decodeCtxID(b byte) uint16 {
	if b < 0xf0 {
		return uint16(b & 3)
	}
	return uint16(b)<<8 | uint16(b)
}

func ctxIDByte(id uint16) byte {
	if id < 4 {
		return byte(id)
	}
	if byte(id) < 0xf0 || id != uint16(byte(id))<<8|uint16(byte(id)) {
		panic("context id not encodable")
	}
	return byte(id)
}

// Opnums: mostly 0.
func decodeOpnum(b byte) uint16 {
	if b < 0xe0 {
		return 0
	}
	return uint16(b - 0xe0)
}

func opnumByte(n uint16) byte {
	if n == 0 {
		return 0
	}
	return 0xe0 + byte(n)
}

// Syntaxes.
var (
	kmsUUID  = rpcparse.KMSInterfaceUUID
	samrUUID = rpcparse.MustUUID("12345778-1234-abcd-ef00-0123456789ac")
	lsaUUID  = rpcparse.MustUUID("12345778-1234-abcd-ef00-0123456789ab")
	epmUUID  = rpcparse.MustUUID("e1af8308-5d1f-11c9-91a4-08002b14a0fa")
	btfnUUID = rpcparse.MustUUID("6cb71c2c-9812-4540-0300-000000000000")

	ndr20 = rpcparse.SyntaxID{UUID: rpcparse.NDR20UUID, Major: 2}
	ndr64 = rpcparse.SyntaxID{UUID: rpcparse.NDR64UUID, Major: 1}
)

// Abstract syntaxes, by abstract byte % 8; the byte's high bits pick the
// random UUID (6) or the KMS version (7).
const (
	absKMS10 = iota
	absKMS20
	absKMS11
	absSAMR
	absLSARPC
	absEPM
	absRandom
	absKMSAny
)

func decodeAbstract(b byte) rpcparse.SyntaxID {
	switch b % 8 {
	case absKMS10:
		return rpcparse.SyntaxID{UUID: kmsUUID, Major: 1}
	case absKMS20:
		return rpcparse.SyntaxID{UUID: kmsUUID, Major: 2}
	case absKMS11:
		return rpcparse.SyntaxID{UUID: kmsUUID, Major: 1, Minor: 1}
	case absSAMR:
		return rpcparse.SyntaxID{UUID: samrUUID, Major: 1}
	case absLSARPC:
		return rpcparse.SyntaxID{UUID: lsaUUID}
	case absEPM:
		return rpcparse.SyntaxID{UUID: epmUUID, Major: 3}
	case absRandom:
		return rpcparse.SyntaxID{UUID: randomUUID(b >> 3), Major: 1}
	}
	return rpcparse.SyntaxID{UUID: kmsUUID, Major: uint16(b>>3) & 3, Minor: uint16(b >> 5)}
}

// Transfer syntaxes, by byte % 4: NDR 2.0, NDR64, bind-time feature
// negotiation (features from the high bits), unknown (NDR 2.0 at v1.0 or
// a random UUID).
const (
	trNDR20 = iota
	trNDR64
	trBTFN
	trUnknown
)

func decodeTransfer(b byte) rpcparse.SyntaxID {
	switch b % 4 {
	case trNDR20:
		return ndr20
	case trNDR64:
		return ndr64
	case trBTFN:
		u := btfnUUID
		u[8] = b >> 2
		return rpcparse.SyntaxID{UUID: u, Major: 1}
	}
	if b&4 != 0 {
		return rpcparse.SyntaxID{UUID: rpcparse.NDR20UUID, Major: 1}
	}
	return rpcparse.SyntaxID{UUID: randomUUID(b >> 3), Major: 2}
}

func randomUUID(seed byte) rpcparse.UUID {
	var u rpcparse.UUID
	r := newRand(seed)
	for i := range u {
		u[i] = r.byte()
	}
	return u
}

// rnd is a tiny deterministic generator for filler bytes.
type rnd uint32

func newRand(seed byte) *rnd { r := rnd(uint32(seed)*0x9e3779b9 | 1); return &r }

func (r *rnd) byte() byte {
	x := uint32(*r)
	x ^= x << 13
	x ^= x >> 17
	x ^= x << 5
	*r = rnd(x)
	return byte(x >> 7)
}

// Auth trailer types by auth byte & 7: three in eight carry none.
var authTypes = [8]int{-1, -1, -1, int(rpcparse.AuthTypeKRB5), int(rpcparse.AuthTypeNTLM), int(rpcparse.AuthTypeSPNEGO), int(rpcparse.AuthTypeKerberos), int(rpcparse.AuthTypeNone)}

type authSpec struct {
	typ     int // index into authTypes; 0 = no trailer
	level   uint8
	custom  bool // pad of padLen bytes of padFill, auth_pad_length padLen whatever the alignment
	cred    byte // %4: NTLM NEGOTIATE, AUTHENTICATE with no user, AUTHENTICATE as "u", filler
	padLen  byte
	padFill byte
}

func (a authSpec) present() bool { return authTypes[a.typ] >= 0 }

func (a authSpec) String() string {
	if !a.present() {
		return "no auth"
	}
	s := fmt.Sprintf("auth %s level %d cred %s", rpcparse.AuthType(authTypes[a.typ]), a.level, [...]string{"negotiate", "anonymous", "user", "filler"}[a.cred%4])
	if a.custom {
		s += fmt.Sprintf(" pad %d×%#02x", a.padLen%16, a.padFill)
	}
	return s
}

// corruption rewrites one header field of the op's first (or last) PDU
// after it is built.
type corruption struct {
	on   bool
	what byte // %8: frag_length, auth_length, ptype, version, trailing bytes, flags, truncate, drep
	last bool
	arg  byte
}

var corruptNames = [...]string{"frag_length", "auth_length", "ptype", "version", "trailing", "flags", "truncate", "drep"}

func (c corruption) String() string {
	if !c.on {
		return ""
	}
	where := "first"
	if c.last {
		where = "last"
	}
	return fmt.Sprintf(" corrupt %s(%#02x) of %s PDU", corruptNames[c.what%8], c.arg, where)
}

type ctxSpec struct {
	id        uint16
	abstract  byte
	transfers []byte
}

// stubSpec picks a request stub: sel % 8 is 0–2 a valid KMS request (p1 %
// 4 picks the blob, p1 & 4 NDR64) in the PDU's byte order, 3 the same in
// the other order, 4 one flipped byte (at p2, xor p1|1), 5 p2 % 64 random
// bytes, 6 none, 7 valid but p2 % 8 + 1 bytes short (p1 & 1) or long.
type stubSpec struct{ sel, p1, p2 byte }

const (
	stubValid    = 0
	stubOtherBO  = 3
	stubFlipped  = 4
	stubRandom   = 5
	stubEmpty    = 6
	stubResized  = 7
	blobV4       = 0
	blobV5       = 1
	blobV6       = 2
	blobOffice6  = 3
	stubNDR64Bit = 4
)

func (s stubSpec) String() string {
	v := [...]string{"V4", "V5", "V6", "office-V6"}[s.p1%4]
	enc := "NDR20"
	if s.p1&stubNDR64Bit != 0 {
		enc = "NDR64"
	}
	switch s.sel % 8 {
	case 0, 1, 2:
		return fmt.Sprintf("stub %s %s", v, enc)
	case stubOtherBO:
		return fmt.Sprintf("stub %s %s in the other byte order", v, enc)
	case stubFlipped:
		return fmt.Sprintf("stub %s %s with byte %d ^ %#02x", v, enc, s.p2, s.p1|1)
	case stubRandom:
		return fmt.Sprintf("stub %d random bytes", s.p2%64)
	case stubEmpty:
		return "no stub"
	}
	if s.p1&1 != 0 {
		return fmt.Sprintf("stub %s %s %d bytes short", v, enc, s.p2%8+1)
	}
	return fmt.Sprintf("stub %s %s %d bytes long", v, enc, s.p2%8+1)
}

// fragSpec is one fragment of a call: cut says how much of the remaining
// stub it takes (cut % (remaining+1); the last takes the rest) and the
// override bits alter it: 1 the other byte order, 2 call id + 1, 4
// context id ^ 1, 8 opnum ^ 1, 16 toggle PFC_FIRST_FRAG, 32 toggle
// PFC_LAST_FRAG, 64 a co_cancel before it, 128 an orphaned before it.
type fragSpec struct{ cut, override byte }

var overrideNames = [...]string{"other-order", "call+1", "ctx^1", "opnum^1", "first^", "last^", "cancel-before", "orphaned-before"}

type op struct {
	kind    kind
	drep    int
	flags   uint8
	call    uint8
	auth    authSpec
	corrupt corruption
	ctxs    []ctxSpec  // bind, alter_context
	ctxID   uint16     // request, call
	opnum   uint16     // request, call
	stub    stubSpec   // request, call
	frags   []fragSpec // call
	raw     []byte     // raw
}

type input struct {
	global byte
	ops    []op
}

const (
	gOneWrite = 1 << iota
	gWait
	gDrop
	gOffice
)

// src reads an input; past its end every byte is zero.
type src struct {
	b   []byte
	off int
}

func (s *src) next() byte {
	s.off++
	if s.off > len(s.b) {
		return 0
	}
	return s.b[s.off-1]
}

func (s *src) more() bool { return s.off < len(s.b) }

func decode(b []byte) input {
	s := &src{b: b}
	in := input{global: s.next()}
	for len(in.ops) < maxOps && s.more() {
		in.ops = append(in.ops, decodeOp(s))
	}
	return in
}

func decodeOp(s *src) op {
	o := op{kind: kindTable[s.next()%32], drep: decodeDrep(s.next()), flags: s.next(), call: s.next() & 7}
	a := s.next()
	o.auth = authSpec{typ: int(a & 7), level: (a >> 3) & 7, custom: a&0x40 != 0}
	if o.auth.present() {
		o.auth.cred = s.next()
		if o.auth.custom {
			o.auth.padLen, o.auth.padFill = s.next(), s.next()
		}
	}
	if c := s.next(); c >= 0xe0 {
		o.corrupt = corruption{on: true, what: c & 7, last: c&8 != 0, arg: s.next()}
	}
	switch o.kind {
	case kBind, kAlter:
		n := int(s.next())
		if n < 0xf8 {
			n %= 5
		} else {
			n = n - 0xf8 + 5
		}
		for i := 0; i < n; i++ {
			c := ctxSpec{id: decodeCtxID(s.next()), abstract: s.next()}
			nt := int(s.next() % 4)
			for j := 0; j < nt; j++ {
				c.transfers = append(c.transfers, s.next())
			}
			o.ctxs = append(o.ctxs, c)
		}
	case kRequest, kCall:
		o.ctxID, o.opnum = decodeCtxID(s.next()), decodeOpnum(s.next())
		o.stub = stubSpec{s.next(), s.next(), s.next()}
		if o.kind == kCall {
			n := 2 + int(s.next()%3)
			for i := 0; i < n; i++ {
				o.frags = append(o.frags, fragSpec{s.next(), s.next()})
			}
		}
	case kRaw:
		n := int(s.next() % 64)
		for i := 0; i < n; i++ {
			o.raw = append(o.raw, s.next())
		}
	}
	return o
}

// encode is decode's inverse, for the seeds.
func encode(in input) []byte {
	out := []byte{in.global}
	for _, o := range in.ops {
		a := byte(o.auth.typ) | o.auth.level<<3
		if o.auth.custom {
			a |= 0x40
		}
		out = append(out, kindByte(o.kind), drepByte(o.drep), o.flags, o.call, a)
		if o.auth.present() {
			out = append(out, o.auth.cred)
			if o.auth.custom {
				out = append(out, o.auth.padLen, o.auth.padFill)
			}
		}
		if o.corrupt.on {
			c := 0xe0 | o.corrupt.what&7
			if o.corrupt.last {
				c |= 8
			}
			out = append(out, c, o.corrupt.arg)
		} else {
			out = append(out, 0)
		}
		switch o.kind {
		case kBind, kAlter:
			if n := len(o.ctxs); n <= 4 {
				out = append(out, byte(n))
			} else {
				out = append(out, 0xf8+byte(n-5))
			}
			for _, c := range o.ctxs {
				out = append(out, ctxIDByte(c.id), c.abstract, byte(len(c.transfers)))
				out = append(out, c.transfers...)
			}
		case kRequest, kCall:
			out = append(out, ctxIDByte(o.ctxID), opnumByte(o.opnum), o.stub.sel, o.stub.p1, o.stub.p2)
			if o.kind == kCall {
				out = append(out, byte(len(o.frags)-2))
				for _, f := range o.frags {
					out = append(out, f.cut, f.override)
				}
			}
		case kRaw:
			out = append(out, byte(len(o.raw)))
			out = append(out, o.raw...)
		}
	}
	return out
}

// ---- building the PDUs ----

// blobs are the KMS request blobs of the captures: V4, V5, V6 (Windows
// 10) and V6 (Office 2016).
var blobs = sync.OnceValues(func() ([][]byte, error) {
	var out [][]byte
	for _, name := range []string{"win10-v4", "win10-v5", "win10-v6", "office2016-v6"} {
		c, err := fixture.LoadCapture(name)
		if err != nil {
			return nil, err
		}
		var blob []byte
		for _, b := range c.C2S {
			var p rpcparse.PDU
			if p.Parse(b, 0) != nil || p.Type != rpcparse.PTypeRequest {
				continue
			}
			for _, enc := range []kms.Encoding{{}, {NDR64: true}} {
				if x, err := kms.ParseRequestStub(p.Request.Stub, enc); err == nil {
					blob = append([]byte(nil), x...)
					break
				}
			}
			if blob != nil {
				break
			}
		}
		if blob == nil {
			return nil, fmt.Errorf("capture %s has no KMS request", name)
		}
		out = append(out, blob)
	}
	return out, nil
})

func mustBlobs(t testing.TB) [][]byte {
	t.Helper()
	b, err := blobs()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (s stubSpec) build(bl [][]byte, big bool) []byte {
	valid := func(big bool) []byte {
		return kmsgen.RequestStubIn(bl[s.p1%4], kms.Encoding{NDR64: s.p1&stubNDR64Bit != 0, BigEndian: big})
	}
	switch s.sel % 8 {
	case 0, 1, 2:
		return valid(big)
	case stubOtherBO:
		return valid(!big)
	case stubFlipped:
		b := valid(big)
		b[int(s.p2)%len(b)] ^= s.p1 | 1
		return b
	case stubRandom:
		b := make([]byte, s.p2%64)
		r := newRand(s.p1)
		for i := range b {
			b[i] = r.byte()
		}
		return b
	case stubEmpty:
		return nil
	}
	b := valid(big)
	n := int(s.p2%8) + 1
	if s.p1&1 != 0 {
		return b[:len(b)-n]
	}
	return append(b, make([]byte, n)...)
}

func (a authSpec) credentials() []byte {
	switch a.cred % 4 {
	case 0:
		return ntlmNegotiate()
	case 1:
		return ntlmAuthenticate("")
	case 2:
		return ntlmAuthenticate("u")
	}
	b := make([]byte, int(a.cred>>2)%32)
	for i := range b {
		b[i] = a.cred
	}
	return b
}

// verifier is the trailer's credentials, SPNEGO-wrapped for SPNEGO.
func (a authSpec) verifier() []byte {
	c := a.credentials()
	if rpcparse.AuthType(authTypes[a.typ]) == rpcparse.AuthTypeSPNEGO {
		c = append([]byte{0xa1, byte(len(c) + 2), 0x04, byte(len(c))}, c...)
	}
	return c
}

func ntlmNegotiate() []byte {
	b := append([]byte("NTLMSSP\x00"), 1, 0, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, 0xe2088297)
	return append(b, make([]byte, 16)...) // empty domain and workstation
}

// ntlmAuthenticate is an NTLM AUTHENTICATE for user ("" is the NULL
// session: one zero LM byte, no NT response, no user).
func ntlmAuthenticate(user string) []byte {
	var u []byte
	for _, r := range user {
		u = binary.LittleEndian.AppendUint16(u, uint16(r))
	}
	const hdr = 64
	lm := []byte{0}
	b := append([]byte("NTLMSSP\x00"), 3, 0, 0, 0)
	field := func(n, off int) {
		b = binary.LittleEndian.AppendUint16(b, uint16(n))
		b = binary.LittleEndian.AppendUint16(b, uint16(n))
		b = binary.LittleEndian.AppendUint32(b, uint32(off))
	}
	field(len(lm), hdr)          // LM
	field(0, hdr+len(lm))        // NT
	field(0, hdr+len(lm))        // domain
	field(len(u), hdr+len(lm))   // user
	field(0, hdr+len(lm)+len(u)) // workstation
	field(0, hdr+len(lm)+len(u)) // session key
	b = binary.LittleEndian.AppendUint32(b, 0xe2088a15)
	b = append(b, lm...)
	return append(b, u...)
}

// withAuth appends the op's trailer to a PDU built without one.
func (a authSpec) apply(pdu []byte, drep rpcparse.DataRep) []byte {
	if !a.present() {
		return pdu
	}
	bo := order(drep)
	var pad int
	if a.custom {
		pad = int(a.padLen % 16)
		for i := 0; i < pad; i++ {
			pdu = append(pdu, a.padFill)
		}
	} else {
		for len(pdu)%4 != 0 {
			pdu = append(pdu, 0)
			pad++
		}
	}
	cred := a.verifier()
	pdu = append(pdu, byte(authTypes[a.typ]), a.level, byte(pad), 0)
	pdu = append(pdu, 0, 0, 0, 0) // auth_context_id
	pdu = append(pdu, cred...)
	bo.PutUint16(pdu[8:], uint16(len(pdu)))
	bo.PutUint16(pdu[10:], uint16(len(cred)))
	return pdu
}

// order is how the proxy and the host read a PDU with this drep.
func order(d rpcparse.DataRep) binary.ByteOrder {
	if d.BigEndian() {
		return binary.BigEndian
	}
	return binary.LittleEndian
}

var objectUUID = rpcparse.MustUUID("00000000-0000-0000-c000-000000000046")

// sent is one PDU as written, with what it is.
type sent struct {
	what string
	b    []byte
}

// build turns an op into the PDUs it sends, with the auth trailer built by
// rpcparse's encoders where the pad is the aligned one, by hand where it
// is not.
func (o *op) build(bl [][]byte) []sent {
	drep := dreps[o.drep]
	cid := callIDs[o.call]
	head := rpcparse.PDUHead{Flags: o.flags, DataRep: drep, CallID: cid}
	var spec *rpcparse.AuthSpec
	if o.auth.present() && !o.auth.custom {
		spec = &rpcparse.AuthSpec{Type: rpcparse.AuthType(authTypes[o.auth.typ]), Level: rpcparse.AuthLevel(o.auth.level), Credentials: o.auth.verifier()}
	}
	trailer := func(pdu []byte) []byte {
		if spec != nil {
			return pdu
		}
		return o.auth.apply(pdu, drep)
	}
	var out []sent
	add := func(what string, b []byte) { out = append(out, sent{what, b}) }
	switch o.kind {
	case kBind, kAlter:
		head.Type = rpcparse.PTypeBind
		if o.kind == kAlter {
			head.Type = rpcparse.PTypeAlterContext
		}
		bs := rpcparse.BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840}
		for _, c := range o.ctxs {
			cs := rpcparse.ContextSpec{ID: c.id, Abstract: decodeAbstract(c.abstract)}
			for _, t := range c.transfers {
				cs.Transfers = append(cs.Transfers, decodeTransfer(t))
			}
			bs.Contexts = append(bs.Contexts, cs)
		}
		add("", trailer(rpcparse.AppendBind(nil, head, bs, spec)))
	case kRequest:
		var obj *rpcparse.UUID
		if o.flags&rpcparse.FlagObjectUUID != 0 {
			obj = &objectUUID
		}
		stub := o.stub.build(bl, drep.BigEndian())
		add("", trailer(rpcparse.AppendRequest(nil, head, o.ctxID, o.opnum, obj, stub, spec)))
	case kCall:
		stub := o.stub.build(bl, drep.BigEndian())
		var obj *rpcparse.UUID
		if o.flags&rpcparse.FlagObjectUUID != 0 {
			obj = &objectUUID
		}
		for i, f := range o.frags {
			n := len(stub)
			if i < len(o.frags)-1 {
				n = int(f.cut) % (len(stub) + 1)
			}
			piece := stub[:n]
			stub = stub[n:]
			h := head
			h.Flags = o.flags &^ (rpcparse.FlagFirstFrag | rpcparse.FlagLastFrag | rpcparse.FlagObjectUUID)
			if i == 0 {
				h.Flags |= rpcparse.FlagFirstFrag
			}
			if i == len(o.frags)-1 {
				h.Flags |= rpcparse.FlagLastFrag
			}
			ctx, opnum := o.ctxID, o.opnum
			v := f.override
			if v&1 != 0 {
				h.DataRep = dreps[1-o.drep%2]
			}
			if v&2 != 0 {
				h.CallID++
			}
			if v&4 != 0 {
				ctx ^= 1
			}
			if v&8 != 0 {
				opnum ^= 1
			}
			if v&16 != 0 {
				h.Flags ^= rpcparse.FlagFirstFrag
			}
			if v&32 != 0 {
				h.Flags ^= rpcparse.FlagLastFrag
			}
			if v&64 != 0 {
				add("co_cancel before fragment", rpcparse.AppendSimple(nil, rpcparse.PDUHead{Type: rpcparse.PTypeCoCancel, Flags: 3, DataRep: drep, CallID: cid}, nil, nil))
			}
			if v&128 != 0 {
				add("orphaned before fragment", rpcparse.AppendSimple(nil, rpcparse.PDUHead{Type: rpcparse.PTypeOrphaned, Flags: 3, DataRep: drep, CallID: cid}, nil, nil))
			}
			var names []string
			for bit := range 6 {
				if v&(1<<bit) != 0 {
					names = append(names, overrideNames[bit])
				}
			}
			pdu := rpcparse.AppendRequest(nil, h, ctx, opnum, obj, piece, spec)
			if spec == nil {
				pdu = o.auth.apply(pdu, h.DataRep)
			}
			add(fmt.Sprintf("fragment %d/%d, %d stub bytes %s", i+1, len(o.frags), len(piece), strings.Join(names, ",")), pdu)
		}
	case kAuth3:
		head.Type = rpcparse.PTypeAuth3
		add("", trailer(rpcparse.AppendSimple(nil, head, make([]byte, 4), spec)))
	case kCancel, kOrphaned:
		head.Type = rpcparse.PTypeCoCancel
		if o.kind == kOrphaned {
			head.Type = rpcparse.PTypeOrphaned
		}
		add("", trailer(rpcparse.AppendSimple(nil, head, nil, spec)))
	case kRaw:
		add("", append([]byte(nil), o.raw...))
	}
	if o.corrupt.on && len(out) > 0 {
		i := 0
		if o.corrupt.last {
			i = len(out) - 1
		}
		out[i].b = o.corrupt.apply(out[i].b)
	}
	return out
}

func (c corruption) apply(pdu []byte) []byte {
	if len(pdu) < 16 {
		return pdu
	}
	bo := order(rpcparse.DataRep(pdu[4:8]))
	switch c.what % 8 {
	case 0:
		bo.PutUint16(pdu[8:], uint16(len(pdu)+int(int8(c.arg))))
	case 1:
		bo.PutUint16(pdu[10:], uint16(c.arg))
	case 2:
		pdu[2] = c.arg % 21
	case 3:
		if c.arg&1 != 0 {
			pdu[0] = c.arg >> 1
		} else {
			pdu[1] = c.arg >> 1
		}
	case 4:
		for i := 0; i <= int(c.arg%16); i++ {
			pdu = append(pdu, c.arg)
		}
		bo.PutUint16(pdu[8:], uint16(len(pdu)))
	case 5:
		pdu[3] ^= c.arg
	case 6:
		pdu = pdu[:len(pdu)-min(int(c.arg%16)+1, len(pdu)-16)]
	case 7:
		pdu[4] = c.arg
	}
	return pdu
}

// String describes an op on one line (its PDUs are printed beside it).
func (o *op) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", o.kind)
	if o.kind == kPause || o.kind == kRaw {
		if o.kind == kRaw {
			fmt.Fprintf(&b, " %d bytes", len(o.raw))
		}
		return b.String()
	}
	fmt.Fprintf(&b, " drep %x flags %#02x call %d", dreps[o.drep][:2], o.flags, callIDs[o.call])
	switch o.kind {
	case kBind, kAlter:
		for _, c := range o.ctxs {
			a := decodeAbstract(c.abstract)
			fmt.Fprintf(&b, " [ctx %d %s v%d.%d:", c.id, abstractName(a), a.Major, a.Minor)
			for _, t := range c.transfers {
				fmt.Fprintf(&b, " %s", transferName(decodeTransfer(t)))
			}
			b.WriteString("]")
		}
		if len(o.ctxs) == 0 {
			b.WriteString(" no contexts")
		}
	case kRequest, kCall:
		fmt.Fprintf(&b, " ctx %d opnum %d %s", o.ctxID, o.opnum, o.stub)
		if o.kind == kCall {
			fmt.Fprintf(&b, " in %d fragments", len(o.frags))
		}
	}
	fmt.Fprintf(&b, ", %s%s", o.auth, o.corrupt)
	return b.String()
}

func abstractName(s rpcparse.SyntaxID) string {
	switch s.UUID {
	case kmsUUID:
		return "kms"
	case samrUUID:
		return "samr"
	case lsaUUID:
		return "lsarpc"
	case epmUUID:
		return "epm"
	}
	return s.UUID.String()
}

func transferName(s rpcparse.SyntaxID) string {
	k := rpcparse.ClassifyTransfer(s)
	if k == rpcparse.TransferUnknown {
		return fmt.Sprintf("%s v%d.%d", s.UUID, s.Major, s.Minor)
	}
	return k.String()
}

// describe prints an input: the global byte and each op with its PDUs.
func describe(in input, pdus [][]sent) string {
	var b strings.Builder
	fmt.Fprintf(&b, "global %#02x (one write %v, wait %v, on_deny drop %v, office zone %v)\n", in.global,
		in.global&gOneWrite != 0, in.global&gWait != 0, in.global&gDrop != 0, in.global&gOffice != 0)
	for i := range in.ops {
		fmt.Fprintf(&b, "  op %d: %s\n", i, &in.ops[i])
		for _, p := range pdus[i] {
			if p.what != "" {
				fmt.Fprintf(&b, "      %s\n", p.what)
			}
			fmt.Fprintf(&b, "      %x\n", p.b)
		}
	}
	return b.String()
}
