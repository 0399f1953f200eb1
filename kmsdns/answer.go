package kmsdns

import (
	"errors"
	"net/netip"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/kmsproxy/kmsproxy/event"
)

// RCodeBadVersion is EDNS0's BADVERS (RFC 6891 §9), an extended RCODE:
// its low 4 bits go in the header, the rest in the OPT record.
const RCodeBadVersion dnsmessage.RCode = 16

// Size limits of RFC 1035 and RFC 6891.
const (
	minUDPSize = 512   // the answer a client without EDNS0 can take
	maxTCPSize = 65535 // the two-byte length prefix
)

// Result is what Answer made of one query: the response to send and the
// facts its event and metrics carry. It is the one place the servers act
// on; nothing else decides.
type Result struct {
	// Response is the message to send (without a TCP length prefix);
	// nil means send nothing (a message that is itself a response, or
	// too short to have a header).
	Response []byte
	ID       uint16
	// Question is the query's question as received (its case kept);
	// HasQuestion is false when it did not parse.
	Question    dnsmessage.Question
	HasQuestion bool
	RCode       dnsmessage.RCode // extended: BADVERS is 16
	// Reason is "" for an answer from the zones (event dns-query),
	// otherwise the dns-refused reason.
	Reason    string
	Zone      string // the dns zone the name is in, "" for none
	Truncated bool

	wire []byte // buf as Answer extended it: the prefix, then Response
}

// query is what the parse found, before any decision.
type query struct {
	h        dnsmessage.Header
	q        dnsmessage.Question
	hasQ     bool
	formErr  bool
	edns     bool
	ednsSize int
	ednsVer  uint8
	dnssecOK bool
}

// parseQuery reads the header, the one question and the OPT record. Every
// loop is bounded by the message's length: a record takes at least 11
// bytes, and nothing is sized from a count the sender wrote.
func parseQuery(msg []byte) (query, bool) {
	var p dnsmessage.Parser
	var qr query
	h, err := p.Start(msg)
	if err != nil {
		return qr, false
	}
	qr.h = h
	q, err := p.Question()
	if err != nil {
		qr.formErr = true // no question, or one that does not parse
		return qr, true
	}
	qr.q, qr.hasQ = q, true
	if _, err := p.Question(); !errors.Is(err, dnsmessage.ErrSectionDone) {
		qr.formErr = true // more than one question (or garbage after it)
		return qr, true
	}
	if p.SkipAllAnswers() != nil || p.SkipAllAuthorities() != nil {
		qr.formErr = true
		return qr, true
	}
	for {
		rh, err := p.AdditionalHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil {
			qr.formErr = true
			return qr, true
		}
		if rh.Type == dnsmessage.TypeOPT {
			if qr.edns || rh.Name.Length != 1 { // one OPT, owned by the root (RFC 6891 §6.1.1)
				qr.formErr = true
				return qr, true
			}
			qr.edns = true
			qr.ednsSize = int(rh.Class)
			qr.ednsVer = uint8(rh.TTL >> 16)
			qr.dnssecOK = rh.DNSSECAllowed()
		}
		if p.SkipAdditional() != nil {
			qr.formErr = true
			return qr, true
		}
	}
	return qr, true
}

// Answer answers one query from src, appending the response to buf
// (which may hold a prefix, such as TCP's length: Result.Response leaves
// it out). udp caps the response at the client's EDNS0 size (512 without
// EDNS0) and the configured maximum, truncating with TC set when it does
// not fit. The decision order is the threat order: a message that is a
// response is never answered, a source outside dns.allow_from learns
// nothing, then the query is checked, then the zones answer.
func (r *Responder) Answer(msg []byte, src netip.Addr, udp bool, buf []byte) Result {
	qr, ok := parseQuery(msg)
	if !ok {
		return Result{Reason: event.ReasonDNSMalformed}
	}
	res := Result{ID: qr.h.ID, Question: qr.q, HasQuestion: qr.hasQ}
	if qr.h.Response {
		res.Reason = event.ReasonDNSResponse
		return res
	}
	limit := maxTCPSize
	if udp {
		limit = minUDPSize
		if qr.edns && qr.ednsSize > minUDPSize {
			limit = min(qr.ednsSize, r.maxUDP)
		}
	}
	a := answer{r: r, qr: &qr, limit: limit, start: len(buf)}

	switch {
	case !r.allowed(src):
		a.refuse(&res, dnsmessage.RCodeRefused, event.ReasonDNSSourceNotAllowed)
	case qr.formErr:
		a.refuse(&res, dnsmessage.RCodeFormatError, event.ReasonDNSMalformed)
	case qr.h.OpCode != 0:
		a.refuse(&res, dnsmessage.RCodeNotImplemented, event.ReasonDNSNotImplemented)
	case qr.edns && qr.ednsVer != 0:
		a.refuse(&res, RCodeBadVersion, event.ReasonDNSBadVersion)
	default:
		r.answerQuestion(&a, &res)
	}
	if res.Response == nil && res.Reason != event.ReasonDNSResponse {
		res.wire, res.Truncated = a.build(buf, res.RCode)
		if res.wire != nil {
			res.Response = res.wire[a.start:]
		}
	}
	return res
}

// answerQuestion decides an allowed, well-formed QUERY.
func (r *Responder) answerQuestion(a *answer, res *Result) {
	q := a.qr.q
	var name dnsmessage.Name
	lowerName(&name, &q.Name)
	z := r.zoneOf(&name)
	switch {
	case q.Class != dnsmessage.ClassINET || z == nil:
		a.refuse(res, dnsmessage.RCodeRefused, event.ReasonDNSNotAuthoritative)
		return
	case q.Type == dnsmessage.TypeAXFR || q.Type == typeIXFR:
		res.Zone = z.label
		a.refuse(res, dnsmessage.RCodeRefused, event.ReasonDNSZoneTransfer)
		return
	}
	res.Zone = z.label
	a.z, a.aa = z, true
	if !z.exists(&name) {
		a.negative = true
		res.RCode = dnsmessage.RCodeNameError
		return
	}
	a.set = z.rrset(&name, q.Type)
	if a.set == setNone {
		a.negative = true // NODATA: NOERROR, no answer, the SOA in authority
	}
	res.RCode = dnsmessage.RCodeSuccess
}

// typeIXFR is RFC 1995's incremental transfer (dnsmessage names AXFR only).
const typeIXFR dnsmessage.Type = 251

// answer is one response under construction.
type answer struct {
	r        *Responder
	qr       *query
	z        *zone
	limit    int
	start    int
	aa       bool
	set      rrset
	negative bool // the SOA goes in authority (NXDOMAIN, NODATA)
}

func (a *answer) refuse(res *Result, rc dnsmessage.RCode, reason string) {
	res.RCode, res.Reason = rc, reason
}

// build packs the response, dropping the additional section and then
// the answer (setting TC) until it fits the limit (RFC 2181 §9: TC only
// when the answer itself does not fit).
func (a *answer) build(buf []byte, rc dnsmessage.RCode) ([]byte, bool) {
	for _, level := range [...]int{full, noGlue, truncated} {
		out, err := a.pack(buf, rc, level)
		if err != nil {
			continue // a name that will not pack: try less
		}
		if len(out)-a.start <= a.limit || level == truncated {
			return out, level == truncated
		}
	}
	// Nothing packed (never seen: every name came from the parser or
	// config); SERVFAIL with no question is always packable.
	h := dnsmessage.Header{ID: a.qr.h.ID, Response: true, OpCode: a.qr.h.OpCode, RCode: dnsmessage.RCodeServerFailure}
	b := dnsmessage.NewBuilder(buf[:a.start], h)
	out, err := b.Finish()
	if err != nil {
		return nil, false
	}
	return out, false
}

const (
	full = iota
	noGlue
	truncated
)

func (a *answer) pack(buf []byte, rc dnsmessage.RCode, level int) ([]byte, error) {
	qr := a.qr
	h := dnsmessage.Header{
		ID: qr.h.ID, Response: true, OpCode: qr.h.OpCode, Authoritative: a.aa,
		RecursionDesired: qr.h.RecursionDesired, Truncated: level == truncated,
		RCode: rc & 0xF,
	}
	b := dnsmessage.NewBuilder(buf[:a.start], h)
	b.EnableCompression()
	if qr.hasQ {
		if err := b.StartQuestions(); err != nil {
			return nil, err
		}
		if err := b.Question(qr.q); err != nil {
			return nil, err
		}
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	if a.z != nil && level != truncated {
		if err := a.z.appendAnswer(&b, &qr.q.Name, a.set); err != nil {
			return nil, err
		}
		if err := b.StartAuthorities(); err != nil {
			return nil, err
		}
		if a.negative {
			if err := a.z.appendSOA(&b, a.z.negTTL); err != nil {
				return nil, err
			}
		}
	}
	if err := b.StartAdditionals(); err != nil {
		return nil, err
	}
	if a.z != nil && level == full {
		if err := a.z.appendGlue(&b, a.set); err != nil {
			return nil, err
		}
	}
	if qr.edns {
		var oh dnsmessage.ResourceHeader
		oh.SetEDNS0(a.r.maxUDP, rc, qr.dnssecOK) // the DO bit is copied (RFC 3225 §3)
		if err := b.OPTResource(oh, dnsmessage.OPTResource{}); err != nil {
			return nil, err
		}
	}
	return b.Finish()
}
