// Package replay evaluates a policy against recorded traffic without
// sending anything: the dry run behind `kmsproxy replay`, so a policy
// change can be tried on yesterday's capture before it is deployed.
//
//	cfg, _ := config.Load("kmsproxy.yaml")
//	recs, _ := capture.ReadFile("dmz.pcapng", capture.Options{})
//	sum, err := replay.Run(recs, cfg, replay.Options{}, func(d *replay.Decision) error {
//		return enc.Encode(d)
//	})
//
// Each TCP stream of the capture is simulated as one proxy session: the
// client address is checked at "accept" (DESIGN rule 1), the first PDU
// must be a bind, binds and alter_contexts go through DecideBind, the
// host's bind_ack and alter_context_resp decide which contexts are live,
// requests go through DecideRequest and, for KMS opnum 0, the decoded
// activation request through DecideKMS, with the framing and sequencing
// rules (2–7) of the session. Every PDU gets one Decision. Once the proxy
// would have closed the connection, the stream's remaining PDUs are
// "unreached": they never happened on a proxied connection.
//
// It does not simulate connection counts, activation rate limits or
// timeouts (a capture's timing is not the client's), and it evaluates the
// policy of one config file: the shadow policy, when the config names one,
// is compared the way the proxy does and reported beside the live verdict.
package replay

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/proxy"
	"github.com/kmsproxy/kmsproxy/proxy/capture"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// Verdicts of a Decision.
const (
	VerdictAllow     = "allow"     // a client PDU the proxy would forward (or hold, for a fragment)
	VerdictDeny      = "deny"      // refused by policy: bind_nak / fault / close
	VerdictViolation = "violation" // broke framing or sequencing: closed without an answer
	VerdictInfo      = "info"      // a host PDU the proxy would relay
	VerdictUnreached = "unreached" // after the proxy would have closed the connection
)

// Stages say which check produced a Decision.
const (
	StageConnection = "connection"
	StageFraming    = "framing"
	StageSequence   = "sequence"
	StageBind       = "bind"
	StageRequest    = "request"
	StageKMS        = "kms"
	StageAuth3      = "auth3"
	StageCancel     = "cancel"
	StageHost       = "host"
)

// ReasonConnectionClosed explains an unreached PDU.
const ReasonConnectionClosed = "connection-closed"

// ErrNoSource: a capture without addresses (the hex format) needs Options.Source.
var ErrNoSource = errors.New("replay: capture has no client address; give one with --source")

// Options tune a replay.
type Options struct {
	// Source, when valid, replaces every stream's client address (hex
	// captures carry none).
	Source netip.Addr
}

// Decision is the proxy's verdict on one captured PDU.
type Decision struct {
	Type      string   `json:"type"` // "decision"
	Stream    int      `json:"stream"`
	Direction string   `json:"direction"`
	Frame     int      `json:"frame,omitempty"`
	Line      int      `json:"line,omitempty"`
	Client    string   `json:"client"`
	Server    string   `json:"server,omitempty"`
	Zone      string   `json:"zone"`
	PType     string   `json:"ptype,omitempty"`
	CallID    *uint32  `json:"call_id,omitempty"`
	Verdict   string   `json:"verdict"`
	Stage     string   `json:"stage"`
	Rule      string   `json:"rule,omitempty"`
	Reason    string   `json:"reason,omitempty"`
	Interface string   `json:"interface,omitempty"`  // first context's (bind) or the call's interface
	Contexts  []string `json:"interfaces,omitempty"` // every context's interface (bind, alter_context)
	ContextID *uint16  `json:"context_id,omitempty"`
	Opnum     *uint16  `json:"opnum,omitempty"`
	Accepted  []uint16 `json:"accepted_contexts,omitempty"` // bind_ack, alter_context_resp
	Status    string   `json:"status,omitempty"`            // fault status, bind_nak reason
	KMS       *KMS     `json:"kms,omitempty"`
	Shadow    *Shadow  `json:"shadow,omitempty"` // only where the shadow policy differs
	Error     string   `json:"error,omitempty"`
}

// KMS holds the decoded activation facts of a request or its reply.
type KMS struct {
	Version       uint16 `json:"version,omitempty"`
	Application   string `json:"application,omitempty"`
	ApplicationID string `json:"application_id,omitempty"`
	SKU           string `json:"sku,omitempty"`
	Workstation   string `json:"workstation,omitempty"`
	CMID          string `json:"client_machine_id,omitempty"`
	Status        string `json:"status,omitempty"` // reply HRESULT
	CurrentCount  uint32 `json:"current_count,omitempty"`
	Error         string `json:"error,omitempty"`
}

// Shadow is what the candidate policy would have decided, where it differs.
type Shadow struct {
	Verdict string `json:"verdict"`
	Rule    string `json:"rule,omitempty"`
	Reason  string `json:"reason"`
}

// Summary counts the decisions of a replay.
type Summary struct {
	Type     string                    `json:"type"` // "summary"
	Streams  int                       `json:"streams"`
	PDUs     int                       `json:"pdus"`
	Verdicts map[string]int            `json:"verdicts"`
	Reasons  map[string]map[string]int `json:"reasons"` // verdict → reason → count
	Shadow   int                       `json:"shadow_differences"`
}

func (s *Summary) add(d *Decision) {
	s.PDUs++
	s.Verdicts[d.Verdict]++
	if d.Reason != "" {
		m := s.Reasons[d.Verdict]
		if m == nil {
			m = map[string]int{}
			s.Reasons[d.Verdict] = m
		}
		m[d.Reason]++
	}
	if d.Shadow != nil {
		s.Shadow++
	}
}

// Run replays recs (in capture order) under cfg's policy and limits,
// calling emit once per record. It loads cfg's shadow policy when one is
// configured. An emit error stops the run and is returned.
func Run(recs []capture.Record, cfg *config.Config, opt Options, emit func(*Decision) error) (*Summary, error) {
	rt, err := proxy.NewRuntime(cfg)
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	e := &engine{live: rt.Policy, shadow: rt.Shadow, lim: cfg.Limits, opt: opt,
		streams: map[int]*stream{}, recs: recs, done: make([]bool, len(recs))}
	sum := &Summary{Type: "summary", Verdicts: map[string]int{}, Reasons: map[string]map[string]int{}}
	for i := range recs {
		if !e.opt.Source.IsValid() && !clientAddr(&recs[i]).Addr().IsValid() {
			return nil, ErrNoSource
		}
	}
	e.emit = func(d *Decision) error {
		sum.add(d)
		return emit(d)
	}
	for i := range recs {
		if e.done[i] {
			continue
		}
		if err := e.step(i); err != nil {
			return nil, err
		}
	}
	sum.Streams = len(e.streams)
	return sum, nil
}

func clientAddr(r *capture.Record) netip.AddrPort {
	if r.Direction == capture.ServerToClient {
		return r.Dst
	}
	return r.Src
}

func serverAddr(r *capture.Record) netip.AddrPort {
	if r.Direction == capture.ServerToClient {
		return r.Src
	}
	return r.Dst
}

type liveContext struct {
	id    uint16
	iface rpcparse.SyntaxID
	ndr64 bool
}

type call struct {
	id       uint32
	ctxID    uint16
	opnum    uint16
	ndr64    bool
	kms      *kms.Request // decoded activation request, for the reply
	respStub []byte
	// respBigEndian is the host's byte order, from its first fragment.
	respBigEndian bool
}

type assembly struct {
	active  bool
	callID  uint32
	ctxID   uint16
	opnum   uint16
	ctx     liveContext
	rule    acl.Decision
	stub    []byte
	stubLen int
}

// stream is one simulated session: the state session.go keeps.
type stream struct {
	src, dst  netip.AddrPort
	zone      string
	started   bool
	closed    bool
	bound     bool
	drep      rpcparse.DataRep
	negAuth   proxy.NegotiatedAuth
	auth      rpcparse.AuthClass
	pending   []liveContext // offered, not yet answered (ndr64 unknown)
	pendType  rpcparse.PType
	pendCall  uint32
	pendValid bool
	live      []liveContext
	calls     []call
	asm       assembly
}

type engine struct {
	live, shadow *acl.Policy
	lim          config.Limits
	opt          Options
	streams      map[int]*stream
	recs         []capture.Record
	done         []bool
	emit         func(*Decision) error
}

func (e *engine) stream(r *capture.Record) *stream {
	st := e.streams[r.Stream]
	if st == nil {
		st = &stream{src: clientAddr(r), dst: serverAddr(r)}
		if e.opt.Source.IsValid() {
			st.src = netip.AddrPortFrom(e.opt.Source, st.src.Port())
		}
		st.zone = e.live.Zone(st.src.Addr())
		e.streams[r.Stream] = st
	}
	return st
}

func (e *engine) step(i int) error {
	e.done[i] = true
	r := &e.recs[i]
	st := e.stream(r)
	d := &Decision{Type: "decision", Stream: r.Stream, Direction: r.Direction.String(), Frame: r.Frame, Line: r.Line,
		Client: st.src.String(), Zone: st.zone}
	if st.dst.IsValid() {
		d.Server = st.dst.String()
	}
	var p rpcparse.PDU
	if r.Err == nil && len(r.Bytes) >= rpcparse.HeaderLen {
		// Header facts for the record even when the body will not parse.
		cid := rawCallID(r.Bytes)
		d.PType, d.CallID = rpcparse.PType(r.Bytes[2]).String(), &cid
	}
	switch {
	case st.closed:
		d.Verdict, d.Stage, d.Reason = VerdictUnreached, StageConnection, ReasonConnectionClosed
	case !st.started:
		st.started = true
		if a := e.live.AdmitSource(st.src.Addr()); !a.Allowed() {
			// Rule 1: closed at accept, before any byte is read.
			d.Verdict, d.Stage, d.Rule, d.Reason = VerdictDeny, StageConnection, a.Rule, a.Reason
			st.closed = true
			break
		}
		fallthrough
	default:
		if r.Direction == capture.ServerToClient {
			e.host(st, r, &p, d)
		} else {
			if err := e.client(st, i, r, &p, d); err != nil {
				return err
			}
		}
	}
	if d.Verdict == VerdictDeny || d.Verdict == VerdictViolation {
		st.closed = true
	}
	return e.emit(d)
}

func rawCallID(b []byte) uint32 {
	if b[4]>>4 == 0 { // big-endian data representation
		return uint32(b[12])<<24 | uint32(b[13])<<16 | uint32(b[14])<<8 | uint32(b[15])
	}
	return uint32(b[12]) | uint32(b[13])<<8 | uint32(b[14])<<16 | uint32(b[15])<<24
}

func (d *Decision) set(verdict, stage string, dec acl.Decision) {
	d.Verdict, d.Stage, d.Rule, d.Reason = verdict, stage, dec.Rule, dec.Reason
}

func (d *Decision) violation(stage, reason string, err error) {
	d.Verdict, d.Stage, d.Reason = VerdictViolation, stage, reason
	if err != nil {
		d.Error = err.Error()
	}
}

func deny(reason string) acl.Decision {
	return acl.Decision{Verdict: acl.Deny, RuleIndex: -1, Reason: reason}
}

func verdictOf(d acl.Decision) string {
	if d.Allowed() {
		return VerdictAllow
	}
	return VerdictDeny
}

// compare records the shadow decision where it differs from the live one.
func compare(d *Decision, live, shadow acl.Decision) {
	if live.Verdict != shadow.Verdict {
		d.Shadow = &Shadow{Verdict: verdictOf(shadow), Rule: shadow.Rule, Reason: shadow.Reason}
	}
}

// ---- client side (rules 2–6) ----

func (e *engine) client(st *stream, i int, r *capture.Record, p *rpcparse.PDU, d *Decision) error {
	if r.Err != nil {
		e.recordError(r, d, "client")
		return nil
	}
	if err := p.Parse(r.Bytes, e.lim.MaxFragment); err != nil {
		d.violation(StageFraming, rpcparse.Reason(err), err)
		return nil
	}
	switch {
	case !p.Type.FromClient():
		d.violation(StageSequence, proxy.ReasonWrongDirection, nil)
		return nil
	case !st.bound && p.Type != rpcparse.PTypeBind:
		d.violation(StageSequence, proxy.ReasonFirstPDUNotBind, nil)
		return nil
	}
	if st.bound && st.pendValid {
		// The proxy holds a pipelined PDU until the host has answered the
		// pending bind: play the host's answer first, if the capture has it.
		if err := e.drainHost(st, i, r.Stream); err != nil {
			return err
		}
		if st.closed {
			d.Verdict, d.Stage, d.Reason = VerdictUnreached, StageConnection, ReasonConnectionClosed
			return nil
		}
		if st.pendValid {
			d.violation(StageSequence, proxy.ReasonBindPending, nil)
			return nil
		}
	}
	if st.bound && p.Type != rpcparse.PTypeBind {
		if reason := proxy.LaterPDUReason(st.drep, st.negAuth, p); reason != "" {
			d.violation(StageSequence, reason, nil)
			return nil
		}
	}
	switch p.Type {
	case rpcparse.PTypeBind:
		if st.bound {
			d.violation(StageSequence, proxy.ReasonSecondBind, nil)
			return nil
		}
		st.drep, st.negAuth = p.DataRep, proxy.NegotiatedBy(p)
		e.bind(st, p, d)
	case rpcparse.PTypeAlterContext:
		e.bind(st, p, d)
	case rpcparse.PTypeRequest:
		e.request(st, p, d)
	case rpcparse.PTypeAuth3:
		e.auth3(st, p, d)
	case rpcparse.PTypeCoCancel, rpcparse.PTypeOrphaned:
		d.Verdict, d.Stage, d.Reason = VerdictAllow, StageCancel, acl.ReasonAllowed
		if st.asm.active && p.CallID == st.asm.callID {
			st.asm = assembly{} // the held call ends here; the host never sees it
		}
	default:
		d.violation(StageSequence, proxy.ReasonWrongDirection, nil)
	}
	return nil
}

// auth3 completes the handshake: its auth class (an NTLM NULL session
// shows only here) must be allowed for every context bound or pending.
func (e *engine) auth3(st *stream, p *rpcparse.PDU, d *Decision) {
	if st.asm.active {
		d.violation(StageSequence, proxy.ReasonCallInterleaved, nil)
		return
	}
	class := rpcparse.ClassifyAuth(p)
	ifaces := make([]rpcparse.SyntaxID, 0, len(st.live)+len(st.pending))
	for _, c := range st.live {
		ifaces = append(ifaces, c.iface)
	}
	for _, c := range st.pending {
		ifaces = append(ifaces, c.iface)
	}
	for _, iface := range ifaces {
		if dec := e.live.DecideAuth(st.src.Addr(), iface, class); !dec.Allowed() {
			d.Interface = ifaceName(iface)
			d.set(VerdictDeny, StageAuth3, dec)
			return
		}
	}
	st.auth = class
	d.Verdict, d.Stage, d.Reason = VerdictAllow, StageAuth3, acl.ReasonAllowed
}

// drainHost plays the stream's host records after index i until the
// pending bind is answered or the capture has no more of them.
func (e *engine) drainHost(st *stream, i, streamID int) error {
	for j := i + 1; j < len(e.recs) && st.pendValid && !st.closed; j++ {
		if e.done[j] || e.recs[j].Stream != streamID || e.recs[j].Direction != capture.ServerToClient {
			continue
		}
		if err := e.step(j); err != nil {
			return err
		}
	}
	return nil
}

func (e *engine) recordError(r *capture.Record, d *Decision, dir string) {
	var pe *rpcparse.ParseError
	if errors.As(r.Err, &pe) {
		d.violation(StageFraming, rpcparse.Reason(r.Err), r.Err)
		return
	}
	// A stream that ends inside a PDU or lost bytes: the proxy sees the
	// connection end mid-PDU and closes; nothing is forwarded.
	d.Verdict, d.Stage, d.Reason, d.Error = VerdictUnreached, StageFraming, dir+"-eof-mid-pdu", r.Err.Error()
}

func ifaceName(s rpcparse.SyntaxID) string {
	if n := rpcparse.InterfaceName(s.UUID); n != "" {
		return n
	}
	return s.UUID.String() + "/" + strconv.Itoa(int(s.Major)) + "." + strconv.Itoa(int(s.Minor))
}

func (e *engine) bind(st *stream, p *rpcparse.PDU, d *Decision) {
	for it := p.Bind.Contexts(); it.Next(); {
		d.Contexts = append(d.Contexts, ifaceName(it.Context().Abstract))
	}
	if len(d.Contexts) > 0 {
		d.Interface = d.Contexts[0]
	}
	if st.asm.active {
		d.violation(StageSequence, proxy.ReasonCallInterleaved, nil)
		return
	}
	dec := e.live.DecideBind(st.src.Addr(), p)
	if e.shadow != nil {
		compare(d, dec, e.shadow.DecideBind(st.src.Addr(), p))
	}
	d.set(verdictOf(dec), StageBind, dec)
	if !dec.Allowed() {
		return
	}
	st.pending = st.pending[:0]
	for it := p.Bind.Contexts(); it.Next(); {
		c := it.Context()
		st.pending = append(st.pending, liveContext{id: c.ID, iface: c.Abstract})
	}
	st.pendType, st.pendCall, st.pendValid = p.Type, p.CallID, true
	if p.Type == rpcparse.PTypeBind || p.HasAuth {
		st.auth = rpcparse.ClassifyAuth(p)
	}
	st.bound = true
}

func (st *stream) liveContext(id uint16) (liveContext, bool) {
	for _, c := range st.live {
		if c.id == id {
			return c, true
		}
	}
	return liveContext{}, false
}

func (st *stream) findCall(id uint32) int {
	for i := range st.calls {
		if st.calls[i].id == id {
			return i
		}
	}
	return -1
}

// maxOutstandingCalls mirrors the session's bound on unanswered calls.
const maxOutstandingCalls = 32

func (e *engine) request(st *stream, p *rpcparse.PDU, d *Decision) {
	r := &p.Request
	ctxID, opnum := r.ContextID, r.Opnum
	d.ContextID, d.Opnum = &ctxID, &opnum
	if c, ok := st.liveContext(r.ContextID); ok {
		d.Interface = ifaceName(c.iface)
	}
	first := p.Flags&rpcparse.FlagFirstFrag != 0
	last := p.Flags&rpcparse.FlagLastFrag != 0
	if r.HasObject {
		d.set(VerdictDeny, StageRequest, deny(proxy.ReasonObjectUUID))
		return
	}
	if st.asm.active {
		switch {
		case first || p.CallID != st.asm.callID:
			d.violation(StageSequence, proxy.ReasonCallInterleaved, nil)
			return
		case r.ContextID != st.asm.ctxID || r.Opnum != st.asm.opnum:
			d.violation(StageSequence, proxy.ReasonFragmentMismatch, nil)
			return
		}
	} else {
		if !first {
			d.violation(StageSequence, proxy.ReasonFirstFragMissing, nil)
			return
		}
		ctx, ok := st.liveContext(r.ContextID)
		if st.findCall(p.CallID) >= 0 || len(st.calls) >= maxOutstandingCalls {
			d.violation(StageSequence, proxy.ReasonCallInterleaved, nil)
			return
		}
		if !ok {
			d.set(VerdictDeny, StageRequest, deny(proxy.ReasonContextNotLive))
			return
		}
		dec := e.live.DecideRequest(st.src.Addr(), ctx.iface, st.auth, r.Opnum)
		if e.shadow != nil {
			compare(d, dec, e.shadow.DecideRequest(st.src.Addr(), ctx.iface, st.auth, r.Opnum))
		}
		if !dec.Allowed() {
			d.set(VerdictDeny, StageRequest, dec)
			return
		}
		st.asm = assembly{active: true, callID: p.CallID, ctxID: r.ContextID, opnum: r.Opnum, ctx: ctx, rule: dec,
			stub: st.asm.stub[:0]}
	}
	st.asm.stubLen += len(r.Stub)
	if st.asm.stubLen > e.lim.MaxCallBytes {
		d.set(VerdictDeny, StageRequest, deny(proxy.ReasonCallTooLarge))
		return
	}
	st.asm.stub = append(st.asm.stub, r.Stub...)
	if !last {
		d.set(VerdictAllow, StageRequest, st.asm.rule)
		d.Reason = "fragment-held"
		return
	}
	c := call{id: p.CallID, ctxID: st.asm.ctxID, opnum: st.asm.opnum, ndr64: st.asm.ctx.ndr64}
	dec := st.asm.rule
	stage := StageRequest
	if st.asm.ctx.iface.UUID == rpcparse.KMSInterfaceUUID && c.opnum == 0 {
		stage = StageKMS
		dec = e.kms(st, p, d, &c)
	}
	d.set(verdictOf(dec), stage, dec)
	if dec.Allowed() {
		st.calls = append(st.calls, c)
	}
	st.asm = assembly{stub: st.asm.stub[:0]}
}

// kms decodes an activation request and decides it under the allowing
// rule's kms: block, as the proxy's inspectCall does.
func (e *engine) kms(st *stream, p *rpcparse.PDU, d *Decision, c *call) acl.Decision {
	req := new(kms.Request)
	facts := acl.KMSFacts{}
	blob, err := kms.ParseRequestStub(st.asm.stub, kms.Encoding{NDR64: c.ndr64, BigEndian: st.drep.BigEndian()})
	if err == nil {
		err = kms.DecodeRequest(blob, req)
	}
	facts.Version = req.MajorVersion
	k := &KMS{Version: req.MajorVersion}
	if err != nil {
		facts.Malformed = true
		k.Error = kms.Reason(err)
		d.Error = err.Error()
	} else {
		facts.Application = req.ApplicationID
		k.Application = kms.ApplicationName(req.ApplicationID)
		k.ApplicationID = req.ApplicationID.String()
		k.SKU = kms.SKUName(req.SKUID)
		if k.SKU == "" {
			k.SKU = req.SKUID.String()
		}
		k.Workstation = req.Workstation()
		k.CMID = req.CMID.String()
		c.kms = req
	}
	d.KMS = k
	dec := e.live.DecideKMS(st.asm.rule.RuleIndex, facts)
	if e.shadow != nil && d.Shadow == nil {
		// As the proxy: the shadow's own request decision picks its rule; a
		// difference already reported at the request level is not repeated.
		sr := e.shadow.DecideRequest(st.src.Addr(), st.asm.ctx.iface, st.auth, p.Request.Opnum)
		if sr.Allowed() {
			compare(d, dec, e.shadow.DecideKMS(sr.RuleIndex, facts))
		}
	}
	return dec
}

// ---- host side (rules 5 and 7) ----

func (e *engine) host(st *stream, r *capture.Record, p *rpcparse.PDU, d *Decision) {
	if r.Err != nil {
		e.recordError(r, d, "host")
		if d.Verdict == VerdictViolation {
			d.Stage = StageHost
		}
		return
	}
	if err := p.Parse(r.Bytes, 0); err != nil {
		d.violation(StageHost, rpcparse.Reason(err), err)
		return
	}
	d.Verdict, d.Stage = VerdictInfo, StageHost
	if !p.Type.FromServer() {
		d.violation(StageHost, proxy.ReasonHostWrongDirection, nil)
		return
	}
	switch p.Type {
	case rpcparse.PTypeBindAck, rpcparse.PTypeAlterContextResp:
		want := rpcparse.PTypeBind
		if p.Type == rpcparse.PTypeAlterContextResp {
			want = rpcparse.PTypeAlterContext
		}
		if !st.pendValid || st.pendType != want || p.CallID != st.pendCall {
			d.violation(StageHost, proxy.ReasonUnexpectedResponse, nil)
			return
		}
		if int(p.BindAck.NumResults) != len(st.pending) {
			d.violation(StageHost, proxy.ReasonResultCount, nil)
			return
		}
		for i, item := range st.pending {
			res := p.BindAck.Result(i)
			if res.Result != rpcparse.ResultAcceptance {
				continue
			}
			d.Accepted = append(d.Accepted, item.id)
			lc := liveContext{id: item.id, iface: item.iface, ndr64: rpcparse.ClassifyTransfer(res.Transfer) == rpcparse.TransferNDR64}
			replaced := false
			for j := range st.live {
				if st.live[j].id == item.id {
					st.live[j], replaced = lc, true
				}
			}
			if !replaced {
				st.live = append(st.live, lc)
			}
		}
		if d.Accepted == nil {
			d.Accepted = []uint16{}
		}
		st.pendValid, st.pending = false, nil
	case rpcparse.PTypeBindNak:
		if !st.pendValid || st.pendType != rpcparse.PTypeBind || p.CallID != st.pendCall {
			d.violation(StageHost, proxy.ReasonUnexpectedResponse, nil)
			return
		}
		d.Status = "bind_nak reason " + strconv.Itoa(int(p.BindNak.Reason))
		st.pendValid, st.pending = false, nil
	case rpcparse.PTypeResponse, rpcparse.PTypeFault:
		i := st.findCall(p.CallID)
		if i < 0 {
			if p.Type == rpcparse.PTypeFault && st.pendValid && p.CallID == st.pendCall {
				st.pendValid, st.pending = false, nil // the host refused an alter_context
				d.Status = faultStatus(p)
				return
			}
			d.violation(StageHost, proxy.ReasonUnexpectedResponse, nil)
			return
		}
		c := &st.calls[i]
		ctxID, opnum := c.ctxID, c.opnum
		d.ContextID, d.Opnum = &ctxID, &opnum
		if lc, ok := st.liveContext(c.ctxID); ok {
			d.Interface = ifaceName(lc.iface)
		}
		if p.Type == rpcparse.PTypeFault {
			d.Status = faultStatus(p)
		} else if c.kms != nil && len(c.respStub)+len(p.Response.Stub) <= e.lim.MaxCallBytes {
			if p.Flags&rpcparse.FlagFirstFrag != 0 {
				c.respBigEndian = p.DataRep.BigEndian()
			}
			c.respStub = append(c.respStub, p.Response.Stub...)
		}
		if p.Type == rpcparse.PTypeFault || p.Flags&rpcparse.FlagLastFrag != 0 {
			if c.kms != nil && p.Type == rpcparse.PTypeResponse {
				d.KMS = kmsReply(c)
			}
			st.calls = append(st.calls[:i], st.calls[i+1:]...)
		}
	}
}

func faultStatus(p *rpcparse.PDU) string {
	return fmt.Sprintf("fault 0x%08x", p.Fault.Status)
}

func kmsReply(c *call) *KMS {
	blob, hr, err := kms.ParseResponseStub(c.respStub, kms.Encoding{NDR64: c.ndr64, BigEndian: c.respBigEndian})
	if err != nil {
		return &KMS{Error: kms.Reason(err)}
	}
	k := &KMS{Version: c.kms.MajorVersion, Status: fmt.Sprintf("0x%08x", hr)}
	if n := kms.HRESULTName(hr); n != "" {
		k.Status += " " + n
	}
	if hr != 0 {
		return k
	}
	var resp kms.Response
	if err := kms.DecodeResponse(blob, c.kms, &resp); err != nil {
		k.Error = kms.Reason(err)
		return k
	}
	k.CurrentCount = resp.CurrentCount
	return k
}
