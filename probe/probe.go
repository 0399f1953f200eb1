// Package probe audits a KMS endpoint from the client side: what a DMZ
// host can reach through it. It is the self-test behind `kmsproxy probe`.
//
//	rep := probe.Run(ctx, "kms-proxy.dmz.example:1688", probe.Options{Timeout: 5 * time.Second})
//	rep.WriteTable(os.Stdout)
//	if !rep.OK() { … rep.GotThrough(), rep.KMSAccepted() … }
//
// Each check runs on its own connection. A KMS bind (the bind a Windows 10
// client sends) must be accepted; binds to the interfaces an attacker
// enumerates (SAMR, LSARPC, SRVSVC, EPM, NETLOGON, DRSUAPI), a KMS bind
// beside SAMR, a KMS bind carrying an NTLM NULL session, and a forbidden
// opnum on a good KMS context must be refused. "Refused" is a bind_nak, a
// bind_ack that accepts none of the offered forbidden contexts, a fault, or
// the connection ending (or staying silent) without an answer.
//
// It never sends an activation request (opnum 0): probing counts nothing
// on the KMS host. It cannot tell the proxy's refusals from the host's: a
// KMS host that itself refuses SAMR passes, which is the truth from the
// client's side.
//
// Discover is the same audit reached the way a client reaches it: it
// resolves _vlmcs._tcp.<domain> (the SRV record KMS clients look up under
// their DNS suffix) through the system resolver or a given one, resolves
// each target's A and AAAA, and runs every check against each address.
// It fails when the record is missing, a target does not resolve, an
// address does not answer as a kmsproxy does (KMS refused, or something
// else let through: a KMS host reached directly, not the proxy), or, with
// DiscoverOptions.Expect, the record names other addresses.
//
//	d := probe.Discover(ctx, "dmz.example.com", probe.DiscoverOptions{Expect: []netip.AddrPort{proxy}})
//	d.WriteTable(os.Stdout) // priority, weight, port, target, addresses; then each probe
package probe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// DefaultTimeout bounds each check's dial and each answer it waits for.
const DefaultTimeout = 5 * time.Second

// Options tune a probe run.
type Options struct {
	// Timeout bounds the dial and each wait for an answer; 0 means DefaultTimeout.
	Timeout time.Duration
	// Dial connects to the target; nil uses net.Dialer (from Source, if set).
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Source is the local IP to dial from ("" lets the system choose).
	Source string
}

// Expectation is what a correct deployment does with a check.
type Expectation string

const (
	ExpectAccept Expectation = "accept"
	ExpectRefuse Expectation = "refuse"
)

// Outcome is what the endpoint did.
type Outcome string

const (
	Accepted Outcome = "accepted"  // a bind_ack accepting the context in question, or a response
	Refused  Outcome = "refused"   // bind_nak, every context in question rejected, or a fault
	Closed   Outcome = "closed"    // the connection ended without an answer
	NoAnswer Outcome = "no-answer" // nothing within the timeout
	Error    Outcome = "error"     // could not connect or send: nothing was tested
	Skipped  Outcome = "skipped"   // a precondition (the KMS bind) failed
)

// Result is one check's verdict.
type Result struct {
	Check    string      `json:"check"`
	Expected Expectation `json:"expected"`
	Outcome  Outcome     `json:"outcome"`
	Seen     string      `json:"seen"` // what came back, for people
	Pass     bool        `json:"pass"`
}

// Report is a whole probe run.
type Report struct {
	Target  string   `json:"target"`
	Results []Result `json:"checks"`
}

// OK reports whether every check passed: nothing that must be refused got
// through, the KMS bind was accepted and every check could run.
func (r *Report) OK() bool {
	for _, c := range r.Results {
		if !c.Pass && c.Outcome != Skipped {
			return false
		}
	}
	return true
}

// GotThrough lists the checks that should have been refused and were not.
func (r *Report) GotThrough() []string {
	var out []string
	for _, c := range r.Results {
		if c.Expected == ExpectRefuse && c.Outcome == Accepted {
			out = append(out, c.Check)
		}
	}
	return out
}

// KMSAccepted reports whether the KMS bind was accepted.
func (r *Report) KMSAccepted() bool {
	for _, c := range r.Results {
		if c.Check == CheckKMSBind {
			return c.Outcome == Accepted
		}
	}
	return false
}

// Failed lists the checks that could not run (dial or send errors).
func (r *Report) Failed() []string {
	var out []string
	for _, c := range r.Results {
		if c.Outcome == Error {
			out = append(out, c.Check)
		}
	}
	return out
}

// Check names.
const (
	CheckKMSBind        = "kms-bind"
	CheckKMSBesideSAMR  = "kms+samr-bind"
	CheckNTLMNull       = "kms-ntlm-null-session"
	CheckForbiddenOpnum = "kms-forbidden-opnum"
)

// EnumeratedInterfaces are the interfaces whose binds must be refused.
var EnumeratedInterfaces = []string{"samr", "lsarpc", "srvsvc", "epm", "netlogon", "drsuapi"}

// Run runs every check against addr, in order, each on its own connection.
func Run(ctx context.Context, addr string, opt Options) *Report {
	if ctx == nil {
		ctx = context.Background()
	}
	if opt.Timeout <= 0 {
		opt.Timeout = DefaultTimeout
	}
	if opt.Dial == nil {
		d := &net.Dialer{}
		if opt.Source != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(opt.Source)}
		}
		opt.Dial = d.DialContext
	}
	p := &prober{ctx: ctx, addr: addr, opt: opt}
	rep := &Report{Target: addr}
	rep.Results = append(rep.Results, p.kmsBind())
	for _, name := range EnumeratedInterfaces {
		rep.Results = append(rep.Results, p.forbiddenBind(name+"-bind", nil, ctxSpec(0, mustIface(name), ndr20)))
	}
	rep.Results = append(rep.Results,
		p.forbiddenBind(CheckKMSBesideSAMR, []uint16{1}, ctxSpec(0, kmsIface, ndr20), ctxSpec(1, mustIface("samr"), ndr20)),
		p.forbiddenBind(CheckNTLMNull, nil, ctxSpec(0, kmsIface, ndr20)),
		p.forbiddenOpnum(),
	)
	return rep
}

var (
	kmsIface = rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: 1}
	ndr20    = rpcparse.SyntaxID{UUID: rpcparse.NDR20UUID, Major: 2}
	ndr64    = rpcparse.SyntaxID{UUID: rpcparse.NDR64UUID, Major: 1}
	// btfn offers bind-time feature negotiation with bits 0x3 (MS-RPCE 3.3.1.5.3).
	btfn = rpcparse.SyntaxID{UUID: rpcparse.MustUUID("6cb71c2c-9812-4540-0300-000000000000"), Major: 1}
)

func mustIface(name string) rpcparse.SyntaxID {
	it, ok := rpcparse.InterfaceByName(name)
	if !ok {
		panic("probe: unknown interface " + name)
	}
	return rpcparse.SyntaxID{UUID: it.UUID, Major: it.Major, Minor: it.Minor}
}

func ctxSpec(id uint16, abstract rpcparse.SyntaxID, transfers ...rpcparse.SyntaxID) rpcparse.ContextSpec {
	return rpcparse.ContextSpec{ID: id, Abstract: abstract, Transfers: transfers}
}

// WindowsKMSBind is the bind a Windows 10 KMS client opens with: KMS over
// NDR 2.0, NDR64 and bind-time feature negotiation, call id 2.
func WindowsKMSBind() []byte {
	return rpcparse.AppendBind(nil,
		rpcparse.PDUHead{Type: rpcparse.PTypeBind, Flags: rpcparse.FlagFirstFrag | rpcparse.FlagLastFrag | rpcparse.FlagConcMpx,
			DataRep: rpcparse.LittleEndianDataRep, CallID: 2},
		rpcparse.BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Contexts: []rpcparse.ContextSpec{
			ctxSpec(0, kmsIface, ndr20), ctxSpec(1, kmsIface, ndr64), ctxSpec(2, kmsIface, btfn),
		}}, nil)
}

// NTLMNullSessionNegotiate is an NTLMSSP NEGOTIATE_MESSAGE (MS-NLMP
// 2.2.1.1) asking for an anonymous session: what a NULL-session client
// sends first.
func NTLMNullSessionNegotiate() []byte {
	b := make([]byte, 32)
	copy(b, "NTLMSSP\x00")
	binary.LittleEndian.PutUint32(b[8:], rpcparse.NTLMNegotiate)
	// UNICODE | REQUEST_TARGET | NTLM | ANONYMOUS | ALWAYS_SIGN | EXTENDED_SESSIONSECURITY
	binary.LittleEndian.PutUint32(b[12:], 0x00000001|0x00000004|0x00000200|0x00000800|0x00008000|0x00080000)
	return b
}

type prober struct {
	ctx  context.Context
	addr string
	opt  Options
}

// conn is one check's connection.
type conn struct {
	c       net.Conn
	fr      *rpcparse.Framer
	timeout time.Duration
	pdu     rpcparse.PDU
}

func (p *prober) dial() (*conn, error) {
	ctx, cancel := context.WithTimeout(p.ctx, p.opt.Timeout)
	defer cancel()
	c, err := p.opt.Dial(ctx, "tcp", p.addr)
	if err != nil {
		return nil, err // a *net.OpError already names the address
	}
	return &conn{c: c, fr: rpcparse.NewFramer(c, rpcparse.MaxFragmentLimit), timeout: p.opt.Timeout}, nil
}

// exchange sends one PDU and reads the answer. A nil PDU with a nil error
// never happens: an ended or silent connection is an Outcome.
func (c *conn) exchange(pdu []byte) (*rpcparse.PDU, Outcome, string) {
	c.c.SetWriteDeadline(time.Now().Add(c.timeout))
	if _, err := c.c.Write(pdu); err != nil {
		// The endpoint may close before reading anything (a source it does
		// not admit): that is a refusal from the client's side.
		return nil, Closed, "connection closed before the request was sent (" + shortErr(err) + ")"
	}
	c.c.SetReadDeadline(time.Now().Add(c.timeout))
	frag, err := c.fr.Next()
	if err != nil {
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			return nil, NoAnswer, fmt.Sprintf("no answer within %v", c.timeout)
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), isConnReset(err):
			return nil, Closed, "connection closed without an answer"
		}
		return nil, Closed, "connection failed without an answer (" + shortErr(err) + ")"
	}
	if err := c.pdu.Parse(frag, 0); err != nil {
		return nil, Closed, "unparseable answer: " + err.Error()
	}
	return &c.pdu, "", ""
}

func isConnReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe)
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}

func (c *conn) close() { c.c.Close() }

// kmsBind: the Windows bind must come back with at least one accepted context.
func (p *prober) kmsBind() Result {
	r := Result{Check: CheckKMSBind, Expected: ExpectAccept}
	c, err := p.dial()
	if err != nil {
		return r.with(Error, err.Error())
	}
	defer c.close()
	ans, out, seen := c.exchange(WindowsKMSBind())
	if ans == nil {
		return r.with(out, seen)
	}
	out, seen, _ = bindOutcome(ans, nil)
	return r.with(out, seen)
}

// forbiddenBind sends a bind whose contexts (those with ids in watch, or
// all when watch is nil) must not be accepted. The NTLM check adds its
// auth trailer.
func (p *prober) forbiddenBind(name string, watch []uint16, ctxs ...rpcparse.ContextSpec) Result {
	r := Result{Check: name, Expected: ExpectRefuse}
	var auth *rpcparse.AuthSpec
	if name == CheckNTLMNull {
		auth = &rpcparse.AuthSpec{Type: rpcparse.AuthTypeNTLM, Level: 2 /* connect */, ContextID: 0, Credentials: NTLMNullSessionNegotiate()}
	}
	pdu := rpcparse.AppendBind(nil,
		rpcparse.PDUHead{Type: rpcparse.PTypeBind, Flags: rpcparse.FlagFirstFrag | rpcparse.FlagLastFrag, DataRep: rpcparse.LittleEndianDataRep, CallID: 1},
		rpcparse.BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Contexts: ctxs}, auth)
	c, err := p.dial()
	if err != nil {
		return r.with(Error, err.Error())
	}
	defer c.close()
	ans, out, seen := c.exchange(pdu)
	if ans == nil {
		return r.with(out, seen)
	}
	out, seen, _ = bindOutcome(ans, watch)
	return r.with(out, seen)
}

// forbiddenOpnum binds KMS as Windows does, then calls opnum 1 (KMS has
// only opnum 0) on the first accepted context. A response means the call
// reached and ran on the host.
func (p *prober) forbiddenOpnum() Result {
	r := Result{Check: CheckForbiddenOpnum, Expected: ExpectRefuse}
	c, err := p.dial()
	if err != nil {
		return r.with(Error, err.Error())
	}
	defer c.close()
	ans, out, seen := c.exchange(WindowsKMSBind())
	if ans == nil {
		return r.with(Skipped, "KMS bind not accepted: "+seen)
	}
	out, seen, ctxID := bindOutcome(ans, nil)
	if out != Accepted {
		return r.with(Skipped, "KMS bind not accepted: "+seen)
	}
	req := rpcparse.AppendRequest(nil,
		rpcparse.PDUHead{Flags: rpcparse.FlagFirstFrag | rpcparse.FlagLastFrag, DataRep: rpcparse.LittleEndianDataRep, CallID: 3},
		ctxID, 1, nil, make([]byte, 8), nil)
	ans, out, seen = c.exchange(req)
	if ans == nil {
		return r.with(out, seen)
	}
	switch ans.Type {
	case rpcparse.PTypeResponse:
		return r.with(Accepted, fmt.Sprintf("response to opnum 1 on ctx %d: the call ran on the host", ctxID))
	case rpcparse.PTypeFault:
		return r.with(Refused, "fault "+statusText(ans.Fault.Status))
	}
	return r.with(Refused, "answered with "+ans.Type.String())
}

func (r Result) with(o Outcome, seen string) Result {
	r.Outcome, r.Seen = o, seen
	switch r.Expected {
	case ExpectAccept:
		r.Pass = o == Accepted
	case ExpectRefuse:
		r.Pass = o == Refused || o == Closed || o == NoAnswer
	}
	return r
}

// bindOutcome reads a bind answer. With watch nil, any accepted context is
// Accepted; otherwise only an accepted context whose id is in watch is.
// It returns the first such accepted context id.
func bindOutcome(p *rpcparse.PDU, watch []uint16) (Outcome, string, uint16) {
	switch p.Type {
	case rpcparse.PTypeBindNak:
		return Refused, fmt.Sprintf("bind_nak reason %d (%s)", p.BindNak.Reason, nakReasonName(p.BindNak.Reason)), 0
	case rpcparse.PTypeFault:
		return Refused, "fault " + statusText(p.Fault.Status), 0
	case rpcparse.PTypeBindAck:
	default:
		return Refused, "answered with " + p.Type.String(), 0
	}
	// Context ids come from the bind; results are in bind order, and the
	// checks number their contexts 0, 1, 2 in order.
	n := int(p.BindAck.NumResults)
	var accepted []string
	var first uint16
	found := false
	for i := 0; i < n; i++ {
		res := p.BindAck.Result(i)
		if res.Result != rpcparse.ResultAcceptance {
			continue
		}
		id := uint16(i)
		if watch != nil && !contains(watch, id) {
			continue
		}
		accepted = append(accepted, fmt.Sprintf("ctx %d (%s)", id, rpcparse.ClassifyTransfer(res.Transfer)))
		if !found {
			first, found = id, true
		}
	}
	if found {
		return Accepted, "bind_ack accepting " + strings.Join(accepted, ", "), first
	}
	if watch != nil {
		return Refused, fmt.Sprintf("bind_ack rejecting the forbidden context (%d results)", n), 0
	}
	return Refused, fmt.Sprintf("bind_ack rejecting all %d contexts", n), 0
}

func contains(s []uint16, v uint16) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func nakReasonName(r uint16) string {
	names := [...]string{"not specified", "temporary congestion", "local limit exceeded", "called paddr unknown",
		"protocol version not supported", "default context not supported", "user data not readable",
		"no psap available", "authentication type not recognized", "invalid checksum"}
	if int(r) < len(names) {
		return names[r]
	}
	return "unknown"
}

func statusText(st uint32) string {
	name := ""
	switch st {
	case rpcparse.StatusOpRangeError:
		name = " nca_s_op_rng_error"
	case rpcparse.StatusUnknownIf:
		name = " nca_s_unk_if"
	case rpcparse.StatusProtoError:
		name = " nca_proto_error"
	case rpcparse.StatusAccessDenied:
		name = " access denied"
	case rpcparse.StatusServerTooBusy:
		name = " server too busy"
	}
	return fmt.Sprintf("0x%08x%s", st, name)
}
