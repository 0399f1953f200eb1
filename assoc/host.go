package assoc

import "github.com/kmsproxy/kmsproxy/rpcparse"

// hostHandlers is the host-side transition table: per state, the PDU
// types that answer what is outstanding. A shutdown is relayed in any
// live state; anything else is a violation (hostFallback).
var hostHandlers = [...]map[rpcparse.PType]func(*Assoc, *Env, *rpcparse.PDU) Step{
	AwaitingBind: {rpcparse.PTypeShutdown: (*Assoc).onShutdown},
	BindSent: {
		rpcparse.PTypeBindAck:  (*Assoc).onBindAck,
		rpcparse.PTypeBindNak:  (*Assoc).onBindNak,
		rpcparse.PTypeFault:    (*Assoc).onPendingFault,
		rpcparse.PTypeShutdown: (*Assoc).onShutdown,
	},
	Bound:      {rpcparse.PTypeShutdown: (*Assoc).onShutdown},
	Assembling: {rpcparse.PTypeShutdown: (*Assoc).onShutdown},
	AlterSent: {
		rpcparse.PTypeAlterContextResp: (*Assoc).onBindAck,
		rpcparse.PTypeFault:            (*Assoc).onPendingFault,
		rpcparse.PTypeShutdown:         (*Assoc).onShutdown,
	},
	CallSent: {
		rpcparse.PTypeResponse: (*Assoc).onResponse,
		rpcparse.PTypeFault:    (*Assoc).onResponse,
		rpcparse.PTypeShutdown: (*Assoc).onShutdown,
	},
	Ended: {},
}

// Host applies rules 5 and 7 to one host PDU that parsed.
func (a *Assoc) Host(env *Env, p *rpcparse.PDU) Step {
	a.recycle()
	h := hostHandlers[a.state][p.Type]
	switch {
	case h != nil:
		return h(a, env, p)
	case !p.Type.FromServer():
		return a.violation(StageHost, ReasonHostWrongDirection)
	}
	// Answering nothing outstanding, or after the association ended (a
	// late answer read at close): the host sent it unasked.
	return a.violation(StageHost, ReasonUnexpectedResponse)
}

// Violate ends the association for a reason found outside it (framing,
// a read error): the driver's own violation, recorded in the state.
func (a *Assoc) Violate(stage Stage, reason string) Step { return a.violation(stage, reason) }

func (a *Assoc) onShutdown(*Env, *rpcparse.PDU) Step {
	return Step{Verdict: Relay, Stage: StageHost}
}

// onBindAck makes the contexts the host accepted live (rule 5).
func (a *Assoc) onBindAck(_ *Env, p *rpcparse.PDU) Step {
	if p.CallID != a.pendingCall {
		return a.violation(StageHost, ReasonUnexpectedResponse)
	}
	if int(p.BindAck.NumResults) != len(a.pending) {
		return a.violation(StageHost, ReasonResultCount)
	}
	a.accepted = a.accepted[:0]
	for i, item := range a.pending {
		r := p.BindAck.Result(i)
		if r.Result != rpcparse.ResultAcceptance {
			continue
		}
		a.accepted = append(a.accepted, item.id)
		a.setLive(Context{ID: item.id, Iface: item.iface, NDR64: rpcparse.ClassifyTransfer(r.Transfer) == rpcparse.TransferNDR64})
	}
	a.pending = a.pending[:0]
	a.state = Bound
	return Step{Verdict: Relay, Stage: StageHost, Accepted: a.accepted}
}

// setLive adds a context, or redefines a live one of the same id.
func (a *Assoc) setLive(c Context) {
	for j := range a.live {
		if a.live[j].ID == c.ID {
			a.live[j] = c
			return
		}
	}
	a.live = append(a.live, c)
}

func (a *Assoc) onBindNak(_ *Env, p *rpcparse.PDU) Step {
	if p.CallID != a.pendingCall {
		return a.violation(StageHost, ReasonUnexpectedResponse)
	}
	// The association has no contexts: a request gets context-not-bound,
	// another bind is a second bind.
	a.pending = a.pending[:0]
	a.state = Bound
	return Step{Verdict: Relay, Stage: StageHost}
}

// onPendingFault: the host refused the bind or alter_context with a fault.
func (a *Assoc) onPendingFault(_ *Env, p *rpcparse.PDU) Step {
	if p.CallID != a.pendingCall {
		return a.violation(StageHost, ReasonUnexpectedResponse)
	}
	a.pending = a.pending[:0]
	a.state = Bound
	return Step{Verdict: Relay, Stage: StageHost}
}

// onResponse relays the answer to the outstanding call; its last fragment
// (or a fault) ends the call. A KMS reply's stub is kept, up to
// max_call_bytes, for the activation event.
func (a *Assoc) onResponse(env *Env, p *rpcparse.PDU) Step {
	c := &a.call
	if p.CallID != c.ID {
		return a.violation(StageHost, ReasonUnexpectedResponse)
	}
	if c.KMS != nil && p.Type == rpcparse.PTypeResponse {
		if p.Flags&rpcparse.FlagFirstFrag != 0 {
			a.respStub = a.respStub[:0]
			c.KMS.RespBigEndian = p.DataRep.BigEndian()
		}
		if len(a.respStub)+len(p.Response.Stub) <= env.MaxCallBytes {
			a.respStub = append(a.respStub, p.Response.Stub...)
		}
	}
	if p.Type == rpcparse.PTypeResponse && p.Flags&rpcparse.FlagLastFrag == 0 {
		return Step{Verdict: Relay, Stage: StageHost}
	}
	if c.KMS != nil {
		if p.Type == rpcparse.PTypeFault {
			c.KMS.Fault, c.KMS.FaultStatus = true, p.Fault.Status
		} else {
			c.KMS.RespStub = a.respStub
		}
	}
	a.state = Bound
	return Step{Verdict: Relay, Stage: StageHost, Call: c}
}

// FailOutstanding ends the association when the host goes away or stops
// answering, and returns what the client is owed so it sees a prompt
// refusal rather than a bare close: a pending bind gets bind_nak
// "temporary congestion", an alter_context or call a fault. call is the
// call that went unanswered, if any.
func (a *Assoc) FailOutstanding() (answer []byte, call *Call) {
	a.recycle()
	if !a.Outstanding() {
		return nil, nil
	}
	switch a.state {
	case BindSent:
		answer = rpcparse.AppendBindNak(nil, a.drep, a.pendingCall, rpcparse.NakTemporaryCongestion)
	case AlterSent:
		answer = rpcparse.AppendFault(nil, a.drep, a.pendingCall, 0, rpcparse.StatusCallFailed, false)
	case CallSent:
		answer = rpcparse.AppendFault(nil, a.drep, a.call.ID, a.call.CtxID, rpcparse.StatusCallFailed, false)
		call = &a.call
	}
	a.end()
	return answer, call
}

// Unanswered returns the outstanding call, if any, without changing the
// state (the connection is ending for another reason).
func (a *Assoc) Unanswered() *Call {
	if a.state == CallSent {
		return &a.call
	}
	return nil
}
