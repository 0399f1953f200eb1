package assoc

import (
	"net/netip"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// State is where an association stands, as the proxy sees it.
type State uint8

const (
	AwaitingBind State = iota // nothing received yet: the first PDU must be a bind
	BindSent                  // a bind forwarded, the host's answer awaited
	Bound                     // between calls
	Assembling                // fragments of one call held (store and forward)
	AlterSent                 // an alter_context forwarded, the host's answer awaited
	CallSent                  // a call forwarded, its answer awaited
	Ended                     // refused or violated: nothing more is read
)

var stateNames = [...]string{"awaiting-bind", "bind-sent", "bound", "assembling", "alter-sent", "call-sent", "ended"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "state?"
}

// Verdict is what the driver does with a Step. The zero value closes the
// connection without an answer: a forgotten assignment fails closed.
type Verdict uint8

const (
	Close   Verdict = iota // a protocol violation: log, close, nothing forwarded
	Refuse                 // a policy refusal: send Answer (on_deny reject), close
	Forward                // send Out to the host
	Hold                   // a fragment held; nothing to send yet
	Consume                // a PDU that ends here (co_cancel, orphaned)
	Relay                  // a host PDU: pass it to the client
)

var verdictNames = [...]string{"close", "refuse", "forward", "hold", "consume", "relay"}

func (v Verdict) String() string {
	if int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return "verdict?"
}

// Stage names the check that produced a Step (replay's "stage" field).
type Stage string

const (
	StageFraming  Stage = "framing"
	StageSequence Stage = "sequence"
	StageBind     Stage = "bind"
	StageRequest  Stage = "request"
	StageKMS      Stage = "kms"
	StageRate     Stage = "rate"
	StageAuth3    Stage = "auth3"
	StageCancel   Stage = "cancel"
	StageHost     Stage = "host"
)

// Env is what a step may consult besides the association: the policy in
// force when the PDU arrived, the shadow policy, limits and the source.
type Env struct {
	Policy       *acl.Policy
	Shadow       *acl.Policy // nil: none
	MaxCallBytes int
	MaxContexts  int // the config's max_contexts, for the bind_nak reason only (acl enforces it)
	Src          netip.Addr
	// RateOK is asked once per complete KMS activation call that passed
	// every other check, just before it would be forwarded. Nil: not
	// evaluated here (replay: a capture's timing is not the client's).
	RateOK func() bool
}

// Context is a presentation context the host accepted.
type Context struct {
	ID    uint16
	Iface rpcparse.SyntaxID
	NDR64 bool
}

// Call is a request forwarded to the host and not yet fully answered, or
// (in a Step) the one just forwarded or finished.
type Call struct {
	ID    uint32
	CtxID uint16
	Opnum uint16
	Iface rpcparse.SyntaxID
	NDR64 bool
	Rule  acl.Decision
	// KMS is set for RequestActivation calls: the decoded request (valid
	// when DecodeErr is nil) and, once answered, the reply.
	KMS *KMSCall
}

// KMSCall is one activation as far as it has got.
type KMSCall struct {
	Req       kms.Request
	DecodeErr error
	// Set when the answer is complete: the response stub (nil for a fault
	// or when no answer came), its byte order, and the fault status.
	RespStub      []byte
	RespBigEndian bool
	Fault         bool
	FaultStatus   uint32
}

// IsKMSActivation reports whether a call on iface with opnum is
// RequestActivation on the KMS interface.
func IsKMSActivation(iface rpcparse.SyntaxID, opnum uint16) bool {
	return iface.UUID == rpcparse.KMSInterfaceUUID && opnum == 0
}

// Step is the outcome of one PDU.
type Step struct {
	Verdict Verdict
	Stage   Stage
	Reason  string
	// Decision is the policy decision that decided (allow or deny), with
	// its rule; zero for sequence and framing steps.
	Decision acl.Decision
	// Shadow is the shadow policy's decision where it differs from the
	// live one (nil otherwise).
	Shadow *acl.Decision
	// Answer is the refusal PDU for Refuse (bind_nak or fault), in the
	// client's data representation.
	Answer []byte
	// Out is what Forward sends: the PDU as received, or the held
	// fragments of the call it completes.
	Out []byte
	// Stub is the whole stub of the call Forward completes, as checked:
	// what a terminating gateway sends on its own association.
	Stub []byte
	// Auth is the PDU's auth class (bind, alter_context, auth3).
	Auth rpcparse.AuthClass
	// Iface is the interface of the refused auth3 context or of the call;
	// HasIface says whether it is known.
	Iface    rpcparse.SyntaxID
	HasIface bool
	// Call is the call this step forwarded (Forward of a request), or the
	// call a host step finished (Relay of its last fragment or fault).
	Call *Call
	// Accepted lists the context ids a bind_ack or alter_context_resp
	// accepted.
	Accepted []uint16
	// Dial is set on the first forwarded bind: the association needs its
	// host connection now, not before.
	Dial bool
}

// Buffers supplies the call-assembly buffers, so a driver can pool them.
// Get returns an empty slice; Put takes it back once the call ended.
type Buffers interface {
	Get() *[]byte
	Put(*[]byte)
}

type plainBuffers struct{}

func (plainBuffers) Get() *[]byte { b := make([]byte, 0, 4096); return &b }
func (plainBuffers) Put(*[]byte)  {}

type pendingItem struct {
	id    uint16
	iface rpcparse.SyntaxID
}

// assembly is a multi-fragment call held until its last fragment passed.
type assembly struct {
	callID  uint32
	ctx     Context
	opnum   uint16
	rule    acl.Decision
	raw     *[]byte // whole fragments as received (nil for a one-fragment call)
	stub    *[]byte // reassembled stub
	stubLen int
}

func (a *assembly) held() int {
	if a.raw == nil {
		return 0
	}
	return len(*a.raw)
}

// Assoc is one association's protocol state. The zero value is not
// ready: use New.
type Assoc struct {
	state   State
	bufs    Buffers
	drep    rpcparse.DataRep
	negAuth NegotiatedAuth
	auth    rpcparse.AuthClass

	pending     []pendingItem // offered in the bind/alter_context awaiting the host
	pendingType rpcparse.PType
	pendingCall uint32
	live        []Context
	call        Call    // the outstanding call (state CallSent)
	kmsCall     KMSCall // its activation facts, when it is one
	asm         assembly
	respStub    []byte
	answer      []byte // scratch for refusal PDUs
	accepted    []uint16
	spent       [2]*[]byte // buffers of the call just forwarded, returned at the next step
	bound       bool       // a bind was forwarded: it dialled the host
}

// New returns an association awaiting its bind. bufs nil allocates call
// buffers plainly.
func New(bufs Buffers) *Assoc {
	if bufs == nil {
		bufs = plainBuffers{}
	}
	return &Assoc{bufs: bufs, drep: rpcparse.LittleEndianDataRep}
}

// Reset makes the association new again, keeping its buffers' capacity
// (a connection's next association, or a benchmark's next bind).
func (a *Assoc) Reset() {
	a.recycle()
	a.dropAssembly()
	*a = Assoc{bufs: a.bufs, drep: rpcparse.LittleEndianDataRep,
		pending: a.pending[:0], live: a.live[:0], respStub: a.respStub[:0], answer: a.answer[:0], accepted: a.accepted[:0]}
}

// State returns the association's state.
func (a *Assoc) State() State { return a.state }

// DataRep is the bind's data representation (little-endian before it).
func (a *Assoc) DataRep() rpcparse.DataRep { return a.drep }

// Outstanding reports whether the host owes an answer.
func (a *Assoc) Outstanding() bool {
	return a.state == BindSent || a.state == AlterSent || a.state == CallSent
}

// Idle reports whether the association is between calls (nothing held or
// owed), where a driver may park it.
func (a *Assoc) Idle() bool { return a.state == Bound }

// BindSeen reports whether a bind was forwarded: the idle timeout rather
// than the handshake timeout applies.
func (a *Assoc) BindSeen() bool { return a.bound }

// Auth is what the association's bind negotiated and its auth class
// (an auth3 may have changed it), for the events that report it.
func (a *Assoc) Auth() (NegotiatedAuth, rpcparse.AuthClass) { return a.negAuth, a.auth }

// Context returns the live context id.
func (a *Assoc) Context(id uint16) (Context, bool) {
	for _, c := range a.live {
		if c.ID == id {
			return c, true
		}
	}
	return Context{}, false
}

// ResetsIdle reports whether a client PDU of type t counts as activity.
// co_cancel and orphaned do no work: were they to reset the idle clock, a
// client sending one every few seconds would hold its association (and
// its host connection) open forever.
func ResetsIdle(t rpcparse.PType) bool {
	return t != rpcparse.PTypeCoCancel && t != rpcparse.PTypeOrphaned
}

// Release gives back the buffers the association holds: call it when the
// connection ends. The association may be used no more.
func (a *Assoc) Release() {
	a.recycle()
	a.dropAssembly()
	a.respStub, a.answer, a.accepted = nil, nil, nil
	a.state = Ended
}

// Shrink drops scratch space between calls (a parked connection keeps
// only its state).
func (a *Assoc) Shrink() {
	a.recycle()
	a.respStub, a.answer, a.accepted = nil, nil, nil
}

func (a *Assoc) dropAssembly() {
	if a.asm.raw != nil {
		a.bufs.Put(a.asm.raw)
		a.bufs.Put(a.asm.stub)
	}
	a.asm = assembly{}
}

// violation ends the association: nothing more is read from either side.
func (a *Assoc) violation(stage Stage, reason string) Step {
	a.end()
	return Step{Verdict: Close, Stage: stage, Reason: reason}
}

func (a *Assoc) end() {
	a.dropAssembly()
	a.state = Ended
}

// ---- client → host ----

// clientHandlers is the client-side transition table: per state, the PDU
// types it has an entry for. Anything else falls to clientFallback.
var clientHandlers = [...]map[rpcparse.PType]func(*Assoc, *Env, *rpcparse.PDU, []byte) Step{
	AwaitingBind: {
		rpcparse.PTypeBind: (*Assoc).onBind,
	},
	Bound: {
		rpcparse.PTypeBind:         (*Assoc).onSecondBind,
		rpcparse.PTypeAlterContext: (*Assoc).onBind,
		rpcparse.PTypeRequest:      (*Assoc).onRequest,
		rpcparse.PTypeAuth3:        (*Assoc).onAuth3,
		rpcparse.PTypeCoCancel:     (*Assoc).onCancel,
		rpcparse.PTypeOrphaned:     (*Assoc).onCancel,
	},
	Assembling: {
		rpcparse.PTypeBind:         (*Assoc).onSecondBind,
		rpcparse.PTypeAlterContext: (*Assoc).onInterleaved,
		rpcparse.PTypeRequest:      (*Assoc).onRequest,
		rpcparse.PTypeAuth3:        (*Assoc).onInterleaved,
		rpcparse.PTypeCoCancel:     (*Assoc).onCancel,
		rpcparse.PTypeOrphaned:     (*Assoc).onCancel,
	},
	BindSent:  {},
	AlterSent: {},
	CallSent:  {},
	Ended:     {},
}

// clientFallback names why a state has no entry for a client PDU.
func (a *Assoc) clientFallback(p *rpcparse.PDU) Step {
	switch {
	case !p.Type.FromClient():
		return a.violation(StageSequence, ReasonWrongDirection)
	case a.state == AwaitingBind:
		return a.violation(StageSequence, ReasonFirstPDUNotBind)
	case a.state == BindSent || a.state == AlterSent:
		return a.violation(StageSequence, ReasonBindPending)
	case a.state == CallSent:
		return a.violation(StageSequence, ReasonCallPending)
	case a.state == Ended:
		return Step{Verdict: Close, Stage: StageSequence, Reason: ReasonClosed}
	}
	return a.violation(StageSequence, ReasonWrongDirection)
}

// Client applies rules 3–6 to one client PDU that parsed (frag is its
// bytes, as received).
func (a *Assoc) Client(env *Env, p *rpcparse.PDU, frag []byte) Step {
	a.recycle()
	h := clientHandlers[a.state][p.Type]
	if h == nil {
		return a.clientFallback(p)
	}
	if p.Type != rpcparse.PTypeBind {
		// Every later PDU keeps what the bind set up.
		if reason := LaterPDUReason(a.drep, a.negAuth, p); reason != "" {
			return a.violation(StageSequence, reason)
		}
	}
	return h(a, env, p, frag)
}

func (a *Assoc) onSecondBind(*Env, *rpcparse.PDU, []byte) Step {
	return a.violation(StageSequence, ReasonSecondBind)
}

func (a *Assoc) onInterleaved(*Env, *rpcparse.PDU, []byte) Step {
	// Nothing may come between the fragments of a call.
	return a.violation(StageSequence, ReasonCallInterleaved)
}

func (a *Assoc) onBind(env *Env, p *rpcparse.PDU, frag []byte) Step {
	d := env.Policy.DecideBind(env.Src, p)
	st := Step{Stage: StageBind, Auth: rpcparse.ClassifyAuth(p)}
	if env.Shadow != nil {
		st.Shadow = differs(d, env.Shadow.DecideBind(env.Src, p))
	}
	if d.Verdict == acl.Allow && len(a.live)+int(p.Bind.NumContexts) > MaxLiveContexts {
		d = acl.Decision{Verdict: acl.Deny, RuleIndex: -1, Reason: acl.ReasonTooManyContexts}
	}
	st.Decision, st.Reason = d, d.Reason
	if d.Verdict != acl.Allow {
		st.Verdict = Refuse
		st.Answer = a.bindRefusal(p, d)
		a.end()
		return st
	}
	a.pending = a.pending[:0]
	for it := p.Bind.Contexts(); it.Next(); {
		c := it.Context()
		a.pending = append(a.pending, pendingItem{id: c.ID, iface: c.Abstract})
	}
	a.pendingType, a.pendingCall = p.Type, p.CallID
	if p.Type == rpcparse.PTypeBind {
		a.drep, a.negAuth, a.auth = p.DataRep, NegotiatedBy(p), st.Auth
		a.state = BindSent
		st.Dial = !a.bound
		a.bound = true
	} else {
		if p.HasAuth {
			a.auth = st.Auth
		}
		a.state = AlterSent
	}
	st.Verdict, st.Out = Forward, frag
	return st
}

// bindRefusal is the answer to a refused bind or alter_context.
func (a *Assoc) bindRefusal(p *rpcparse.PDU, d acl.Decision) []byte {
	if p.Type == rpcparse.PTypeBind {
		reason := rpcparse.NakReasonNotSpecified
		switch d.Reason {
		case acl.ReasonAuthNotAllowed:
			reason = rpcparse.NakAuthenticationTypeNotRecog
		case acl.ReasonTooManyContexts:
			reason = rpcparse.NakLocalLimitExceeded
		}
		a.answer = rpcparse.AppendBindNak(a.answer[:0], p.DataRep, p.CallID, reason)
		return a.answer
	}
	// alter_context has no nak: a fault on its call id ends it.
	status := rpcparse.StatusAccessDenied
	if d.Reason == acl.ReasonInterfaceNotAllowed || d.Reason == acl.ReasonNoMatchingRule {
		status = rpcparse.StatusUnknownIf
	}
	a.answer = rpcparse.AppendFault(a.answer[:0], p.DataRep, p.CallID, 0, status, true)
	return a.answer
}

// requestRefusal is the fault for a refused request.
func (a *Assoc) requestRefusal(p *rpcparse.PDU, reason string) []byte {
	status := rpcparse.StatusAccessDenied
	switch reason {
	case acl.ReasonOpnumNotAllowed:
		status = rpcparse.StatusOpRangeError
	case ReasonContextNotLive:
		status = rpcparse.StatusUnknownIf
	case ReasonRateLimited:
		status = rpcparse.StatusServerTooBusy
	}
	a.answer = rpcparse.AppendFault(a.answer[:0], p.DataRep, p.CallID, p.Request.ContextID, status, true)
	return a.answer
}

func (a *Assoc) refuseRequest(p *rpcparse.PDU, stage Stage, d acl.Decision, st Step) Step {
	st.Verdict, st.Stage, st.Decision, st.Reason = Refuse, stage, d, d.Reason
	st.Answer = a.requestRefusal(p, d.Reason)
	a.end()
	return st
}

func (a *Assoc) onAuth3(env *Env, p *rpcparse.PDU, frag []byte) Step {
	// auth3 carries NTLM's last leg, the only place a NULL session shows:
	// the association's new auth class must be allowed for every interface
	// bound, or the handshake ends here (auth3 has no answer PDU).
	class := rpcparse.ClassifyAuth(p)
	for _, c := range a.live {
		if d := env.Policy.DecideAuth(env.Src, c.Iface, class); d.Verdict != acl.Allow {
			a.end()
			return Step{Verdict: Refuse, Stage: StageAuth3, Decision: d, Reason: d.Reason, Auth: class, Iface: c.Iface, HasIface: true}
		}
	}
	a.auth = class
	return Step{Verdict: Forward, Stage: StageAuth3, Reason: acl.ReasonAllowed, Auth: class, Out: frag}
}

func (a *Assoc) onCancel(_ *Env, p *rpcparse.PDU, _ []byte) Step {
	// A cancel or orphan for the call held here ends that call without the
	// host ever seeing it. Any other names nothing at the host (every
	// forwarded call was answered before this PDU was read): consumed.
	if a.state == Assembling && p.CallID == a.asm.callID {
		a.dropAssembly()
		a.state = Bound
	}
	return Step{Verdict: Consume, Stage: StageCancel, Reason: ReasonCancelled}
}

// onRequest checks one request fragment (rule 6) and forwards the call
// once its last fragment passed.
func (a *Assoc) onRequest(env *Env, p *rpcparse.PDU, frag []byte) Step {
	r := &p.Request
	first := p.Flags&rpcparse.FlagFirstFrag != 0
	last := p.Flags&rpcparse.FlagLastFrag != 0
	st := Step{Stage: StageRequest}
	if c, ok := a.Context(r.ContextID); ok {
		st.Iface, st.HasIface = c.Iface, true
	}
	if r.HasObject {
		return a.refuseRequest(p, StageRequest, deny(ReasonObjectUUID), st)
	}
	if a.state == Assembling {
		switch {
		case first || p.CallID != a.asm.callID:
			return a.violation(StageSequence, ReasonCallInterleaved)
		case r.ContextID != a.asm.ctx.ID || r.Opnum != a.asm.opnum:
			return a.violation(StageSequence, ReasonFragmentMismatch)
		}
	} else {
		if !first {
			return a.violation(StageSequence, ReasonFirstFragMissing)
		}
		ctx, ok := a.Context(r.ContextID)
		if !ok {
			return a.refuseRequest(p, StageRequest, deny(ReasonContextNotLive), st)
		}
		d := env.Policy.DecideRequest(env.Src, ctx.Iface, a.auth, r.Opnum)
		if env.Shadow != nil {
			st.Shadow = differs(d, env.Shadow.DecideRequest(env.Src, ctx.Iface, a.auth, r.Opnum))
		}
		if d.Verdict != acl.Allow {
			return a.refuseRequest(p, StageRequest, d, st)
		}
		a.asm = assembly{callID: p.CallID, ctx: ctx, opnum: r.Opnum, rule: d}
		a.state = Assembling
	}
	a.asm.stubLen += len(r.Stub)
	// Bound the stub and, for floods of tiny fragments, the held bytes.
	if a.asm.stubLen > env.MaxCallBytes || a.asm.held()+len(frag) > MaxHeldCallBytes(env.MaxCallBytes) {
		return a.refuseRequest(p, StageRequest, deny(ReasonCallTooLarge), st)
	}
	single := first && last
	if !single {
		if a.asm.raw == nil {
			a.asm.raw, a.asm.stub = a.bufs.Get(), a.bufs.Get()
		}
		*a.asm.raw = append(*a.asm.raw, frag...)
		*a.asm.stub = append(*a.asm.stub, r.Stub...)
	}
	st.Decision = a.asm.rule
	if !last {
		st.Verdict, st.Reason = Hold, ReasonFragmentHeld
		return st
	}
	stub, out := r.Stub, frag
	if !single {
		stub, out = *a.asm.stub, *a.asm.raw
	}
	c := Call{ID: p.CallID, CtxID: a.asm.ctx.ID, Opnum: a.asm.opnum, Iface: a.asm.ctx.Iface, NDR64: a.asm.ctx.NDR64, Rule: a.asm.rule}
	if IsKMSActivation(c.Iface, c.Opnum) {
		st.Stage = StageKMS
		a.kmsCall = KMSCall{} // one activation at a time: reused, never allocated
		kc := &a.kmsCall
		d := a.decideKMS(env, p, &c, kc, stub, &st)
		c.KMS = kc
		st.Call = &a.call
		a.call = c
		if d.Verdict != acl.Allow {
			return a.refuseRequest(p, StageKMS, d, st)
		}
		if env.RateOK != nil && !env.RateOK() {
			return a.refuseRequest(p, StageRate, deny(ReasonRateLimited), st)
		}
	}
	a.call = c
	st.Call = &a.call
	st.Verdict, st.Reason, st.Out, st.Stub = Forward, st.Decision.Reason, out, stub
	a.state = CallSent
	// Out may point into the held fragments: they go back to the pool at
	// the next step, once the driver has written them.
	a.spent = [2]*[]byte{a.asm.raw, a.asm.stub}
	a.asm = assembly{}
	return st
}

// recycle returns the buffers of the call the previous step forwarded.
func (a *Assoc) recycle() {
	if a.spent[0] != nil {
		a.bufs.Put(a.spent[0])
		a.bufs.Put(a.spent[1])
		a.spent = [2]*[]byte{}
	}
}

// decideKMS decodes an activation request in the call's byte order and
// decides it under the allowing rule's kms: block (its defaults when the
// rule has none).
func (a *Assoc) decideKMS(env *Env, p *rpcparse.PDU, c *Call, kc *KMSCall, stub []byte, st *Step) acl.Decision {
	facts := acl.KMSFacts{}
	blob, err := kms.ParseRequestStub(stub, kms.Encoding{NDR64: c.NDR64, BigEndian: a.drep.BigEndian()})
	if err == nil {
		err = kms.DecodeRequest(blob, &kc.Req)
	}
	facts.Version = kc.Req.MajorVersion
	if err != nil {
		kc.DecodeErr = err
		facts.Malformed = true
	} else {
		facts.Application = kc.Req.ApplicationID
	}
	d := env.Policy.DecideKMS(c.Rule.RuleIndex, facts)
	if env.Shadow != nil && st.Shadow == nil {
		// The shadow's own request decision picks the rule whose kms: block
		// applies; a difference already found at the request is not repeated.
		if sr := env.Shadow.DecideRequest(env.Src, c.Iface, a.auth, p.Request.Opnum); sr.Verdict == acl.Allow {
			st.Shadow = differs(d, env.Shadow.DecideKMS(sr.RuleIndex, facts))
		}
	}
	return d
}

func deny(reason string) acl.Decision {
	return acl.Decision{Verdict: acl.Deny, RuleIndex: -1, Reason: reason}
}

func differs(live, shadow acl.Decision) *acl.Decision {
	if live.Verdict == shadow.Verdict {
		return nil
	}
	return &shadow
}
