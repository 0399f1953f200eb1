package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/assoc"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// callBuffers pools the association's call-assembly buffers.
type callBuffers struct{}

func (callBuffers) Get() *[]byte  { return getCallBuffer() }
func (callBuffers) Put(b *[]byte) { putCallBuffer(b) }

type session struct {
	srv    *Server
	id     uint64
	client net.Conn
	src    netip.AddrPort
	dst    netip.AddrPort
	zone   string
	extra  []zap.Field // fields beyond event.ConnFields (PROXY protocol peer)
	log    *zap.Logger // nil until run
	start  time.Time

	upMu         sync.Mutex // orders setting upstream against abort from Shutdown
	upstream     net.Conn
	upstreamAddr string
	// The host side is read by the session's own goroutine, only while the
	// client waits for an answer: KMS is strictly call and answer, so one
	// goroutine serves both directions with no hand-offs between threads.
	hostBuf  *[]byte // nil while parked
	hostFr   *rpcparse.Framer
	hostPoll *hostPoller
	hostPDU  *rpcparse.PDU // made with the upstream connection

	closeOnce   sync.Once
	closed      atomic.Bool
	closeReason atomic.Value // string

	clientBytes, hostBytes atomic.Int64
	clientPDUs, hostPDUs   atomic.Int64

	// Touched by the session goroutine only (one at a time: a parked
	// session has none, and parkLoop starts one when it wakes).
	clientFr   *rpcparse.Framer
	clientBuf  *[]byte // nil while parked
	clientPDU  *rpcparse.PDU
	lastActive time.Time // last client PDU that did work or host answer, for the idle timeout
	parkUntil  time.Time // when a parked session is woken regardless
	maxFrg     int

	// a is the association's protocol state (DESIGN rules 3–7): every
	// client and host PDU goes through it, and act carries out its step.
	a      *assoc.Assoc
	env    assoc.Env
	rateOK func() bool // s.rateAllow, made once

	// The terminating gateway (gateway.go): set at the first bind when the
	// association ends at the proxy; its answers and stubs, reused.
	terminated    bool
	clientMaxRecv int
	hostAssoc     string    // the pool association of the last call
	callStart     time.Time // when the call in flight went to the host (kmsproxy_kms_call_duration_seconds)
	gwOut, gwStub []byte
	gwPDU         *rpcparse.PDU
}

func newSession(srv *Server, c net.Conn, id uint64, src, dst netip.AddrPort, zone string, extra []zap.Field) *session {
	sess := &session{
		srv: srv, id: id, client: c, src: src, dst: dst, zone: zone, extra: extra,
		start: time.Now(), a: assoc.New(callBuffers{}),
	}
	sess.rateOK = sess.rateAllow
	return sess
}

// rateAllow is the per-source activation rate, asked by the association
// for each complete KMS call that passed every other check.
func (s *session) rateAllow() bool {
	return s.srv.rate.allow(s.src.Addr(), s.runtime().Config.Limits.ActivationsPerMinutePerSource, time.Now())
}

// envFor is what the association consults for one PDU: the policy in
// force when it arrived.
func (s *session) envFor(rt *config.Runtime) *assoc.Env {
	s.env = assoc.Env{Policy: rt.Policy, Shadow: rt.Shadow, MaxCallBytes: rt.Config.Limits.MaxCallBytes,
		MaxContexts: rt.Config.Limits.MaxContexts, Src: s.src.Addr(), RateOK: s.rateOK}
	return &s.env
}

func (s *session) runtime() *config.Runtime { return s.srv.rt.Load() }

// emit is the connection's event emitter: its logger (the connection's
// fields on every event) and the server's metrics. Made per call, so a
// session holds one pointer for it.
func (s *session) emit() event.Emitter {
	return event.NewEmitter(s.log, s.srv.metrics).From(s.src.Addr(), s.zone)
}

// idleParkAfter is how long a bound client may sit quiet between calls
// before its session is parked (no goroutine, no buffers) until it sends
// again or its idle timeout passes. A LAN client's next PDU comes well
// within it; a slow one pays a few system calls to park, which is little
// against its round trip, and a burst of binds never holds thousands of
// running sessions at once (20 ms: 7.4 KiB RSS per bound idle connection
// after 9,000 binds, against 11.7 KiB at 200 ms).
const idleParkAfter = 20 * time.Millisecond

// run serves the connection: frame, parse, decide, forward, then relay the
// host's answer (awaitHost) before reading the client again. It owns the
// session's lifetime, and runs again after each time the session was parked.
func (s *session) run() {
	if s.serve() {
		return // parked: parkLoop runs us again
	}
	s.finish()
	s.srv.release(s)
}

// serve runs the session until it ends (false) or parks (true).
func (s *session) serve() (parked bool) {
	rt := s.runtime()
	if s.clientFr == nil {
		s.maxFrg = rt.Config.Limits.MaxFragment
		s.clientFr = rpcparse.NewFramer(countingReader{s.client, &s.clientBytes}, s.maxFrg)
	}
	s.attachBuffers()
	handshakeDeadline := s.start.Add(rt.Config.Limits.HandshakeTimeout) // parking time counts
	for {
		var deadline time.Time
		canPark := false
		if s.a.BindSeen() {
			deadline = s.lastActive.Add(rt.Config.Limits.IdleTimeout)
			if park := time.Now().Add(idleParkAfter); CanPark && park.Before(deadline) && s.a.Idle() && s.clientFr.Buffered() == 0 {
				deadline, canPark = park, true
			}
		} else {
			deadline = handshakeDeadline
		}
		s.client.SetReadDeadline(deadline)
		frag, err := s.clientFr.Next()
		if err != nil {
			if canPark && s.clientFr.Buffered() == 0 && isTimeout(err) && s.parkIdle(rt) {
				return true
			}
			if canPark && isTimeout(err) {
				continue // bytes of a PDU arrived, or it could not park: wait out the idle timeout
			}
			s.clientReadError(err)
			return false
		}
		worked := assoc.ResetsIdle(rpcparse.PType(frag[2]))
		if worked {
			s.lastActive = time.Now()
		}
		s.clientPDUs.Add(1)
		// Decide under the policy in force when the PDU arrived, not when
		// the read began: a reload must reach the very next PDU.
		rt = s.runtime()
		p := s.clientPDU
		if err := p.Parse(frag, s.maxFrg); err != nil {
			s.a.Violate(assoc.StageFraming, rpcparse.Reason(err))
			s.violation("client", rpcparse.Reason(err), err, p)
			return false
		}
		// Whatever the host sent since its last answer was sent unasked:
		// check it before this PDU changes what is outstanding, so it can
		// never pass for the answer to this one.
		if s.hostFr != nil && !s.hostQuiet() {
			return false
		}
		if !s.handleClientPDU(rt, p, frag) {
			return false
		}
		if worked {
			s.lastActive = time.Now()
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// attachBuffers gives a running session what parking took away: the
// framers' pooled buffers, the parsed-PDU scratch and the logger holding
// the connection's fields (built here rather than kept from accept, so a
// parked connection holds none of them).
func (s *session) attachBuffers() {
	if s.log == nil {
		s.log = s.srv.log.With(append(event.ConnFields(s.id, s.src, s.dst, s.zone), s.extra...)...)
	}
	if s.clientPDU == nil {
		s.clientPDU = new(rpcparse.PDU) // reused for every client PDU until parked
	}
	if s.hostFr != nil && s.hostPDU == nil {
		s.hostPDU = new(rpcparse.PDU)
	}
	if s.clientBuf == nil {
		s.clientBuf = getBuffer(s.maxFrg)
		s.clientFr.Attach(*s.clientBuf)
	}
	if s.hostFr != nil && s.hostBuf == nil {
		s.hostBuf = getBuffer(hostFrameSize(s.maxFrg))
		s.hostFr.Attach(*s.hostBuf)
	}
}

// detachBuffers returns both framers' buffers to the pool, if they hold no
// bytes, drops what attachBuffers rebuilds, and reports whether it could.
func (s *session) detachBuffers() bool {
	if s.clientFr.Buffered() != 0 || (s.hostFr != nil && s.hostFr.Buffered() != 0) {
		return false
	}
	// The parsed PDUs point into the buffers: drop them too, or a parked
	// session would keep its buffers alive. The logger goes as well.
	if s.clientBuf != nil {
		s.clientFr.Detach()
		putBuffer(s.clientBuf)
		s.clientBuf = nil
	}
	if s.hostBuf != nil {
		s.hostFr.Detach()
		putBuffer(s.hostBuf)
		s.hostBuf = nil
	}
	s.clientPDU, s.hostPDU, s.log = nil, nil, nil
	s.a.Shrink()
	s.env = assoc.Env{}
	return true
}

// parkIdle hands a quiet bound session to the parker until the client
// sends again or its idle timeout passes.
func (s *session) parkIdle(rt *config.Runtime) bool {
	if !s.detachBuffers() {
		return false
	}
	s.parkUntil = s.lastActive.Add(rt.Config.Limits.IdleTimeout)
	if s.srv.park(s) {
		return true
	}
	s.attachBuffers()
	return false
}

// hostFrameSize is the host-side buffer: the host's fragments are bounded
// by the wire format, not by the client-side max_fragment.
func hostFrameSize(maxFrag int) int { return max(maxFrag, 5840) }

func (s *session) clientReadError(err error) {
	if s.closed.Load() {
		return
	}
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF):
		s.halfClose()
	case errors.As(err, &ne) && ne.Timeout():
		if s.a.BindSeen() {
			s.setReason(event.ReasonIdleTimeout)
			s.failOutstanding() // the client was idle waiting on the host
		} else {
			s.setReason(event.ReasonHandshakeTimeout)
		}
	case errors.Is(err, io.ErrUnexpectedEOF):
		s.setReason(event.ReasonClientEOFMidPDU)
	case errors.Is(err, ErrUntrustedProxyHeader):
		s.violation("client", event.ReasonProxyHeader, err, nil)
	default:
		var pe *rpcparse.ParseError
		if errors.As(err, &pe) {
			s.violation("client", rpcparse.Reason(err), err, nil)
			return
		}
		s.setReason(event.ReasonClientReadError)
	}
}

// halfClose ends a connection whose client closed: every answer the
// client asked for was relayed before its next read, so nothing is owed.
func (s *session) halfClose() {
	s.setReason(event.ReasonClientClosed)
}

// handleClientPDU runs one client PDU through the association and acts on
// its step; it returns false when the connection must end.
func (s *session) handleClientPDU(rt *config.Runtime, p *rpcparse.PDU, frag []byte) bool {
	return s.act(rt, p, s.a.Client(s.envFor(rt), p, frag))
}

// act carries out a client step: the one place that logs, counts,
// answers, forwards and closes.
func (s *session) act(rt *config.Runtime, p *rpcparse.PDU, st assoc.Step) bool {
	if st.Shadow != nil {
		s.shadowCompare(p, st.Decision, *st.Shadow)
	}
	switch st.Verdict {
	case assoc.Close:
		s.violation("client", st.Reason, nil, p)
		return false
	case assoc.Refuse:
		s.refuse(p, st)
		return false
	case assoc.Hold, assoc.Consume:
		return true
	case assoc.Forward:
	default:
		s.violation("client", st.Reason, nil, p)
		return false
	}
	switch st.Stage {
	case assoc.StageBind:
		s.logBind(p, st.Decision)
		if st.Dial {
			s.terminated = s.gatewayFor(p)
		}
		if s.terminated {
			return s.answerBind(rt, p)
		}
		if st.Dial && !s.connectUpstream(rt, p) {
			return false
		}
		return s.forward(st.Out) && s.awaitHost()
	case assoc.StageAuth3:
		if s.terminated { // never: a terminated association has no auth
			s.violation("client", event.ReasonNotTerminable, nil, p)
			return false
		}
		return s.forward(st.Out) // auth3 has no answer
	}
	if c := st.Call; c != nil && c.KMS != nil && c.KMS.DecodeErr == nil {
		s.srv.watch.Observe(s.emit(), rt.Config.KMSWatch, s.src.Addr(), &c.KMS.Req, c.Rule.Rule)
	}
	if st.Call != nil {
		s.callStart = time.Now()
	}
	if s.terminated {
		return s.gatewayCall(rt, st)
	}
	return s.forward(st.Out) && s.awaitHost()
}

// refuse logs a policy refusal in full and answers it (on_deny reject).
func (s *session) refuse(p *rpcparse.PDU, st assoc.Step) {
	d := st.Decision
	// Whether the client gets an answer, decided once: the event says so
	// (kmsproxy.on_deny) and the answer follows it.
	answer := st.Answer != nil && s.onDenyReject()
	switch st.Stage {
	case assoc.StageBind:
		s.refusalEvent(event.ActionBindRefused, d, p, answer, event.AppendBind(nil, p)...)
	case assoc.StageAuth3:
		s.refusalEvent(event.ActionBindRefused, d, p, answer, append(event.AppendAuth(nil, p),
			zap.String("dcerpc.interface.uuid", event.UUIDText(st.Iface.UUID)),
			zap.String("dcerpc.interface.name", rpcparse.InterfaceName(st.Iface.UUID)))...)
	case assoc.StageRate:
		s.refusalEvent(event.ActionRateLimited, d, p, answer, appendRequestFields(nil, s, p)...)
	default:
		f := appendRequestFields(nil, s, p)
		if c := st.Call; c != nil && c.KMS != nil {
			kc := kmsCallOf(c)
			f = event.AppendKMSRequest(f, kc.req, kc.decodeErr)
			s.srv.metrics.KMSActivations.WithLabelValues(event.ApplicationLabel(kc.req, kc.decodeErr), event.VersionLabel(kc.req), event.KMSResultRefused).Inc()
		}
		s.refusalEvent(event.ActionRequestRefused, d, p, answer, f...)
	}
	s.setReason(d.Reason)
	if answer {
		s.writeClient(st.Answer)
	}
}

// forward writes bytes that passed every check to the host.
func (s *session) forward(b []byte) bool {
	rt := s.runtime()
	s.upstream.SetWriteDeadline(time.Now().Add(rt.Config.Limits.IdleTimeout))
	if _, err := s.upstream.Write(b); err != nil {
		s.setReason(event.ReasonUpstreamWriteError)
		return false
	}
	s.srv.metrics.AddBytesToHost(len(b))
	return true
}

// writeClient sends bytes to the client.
func (s *session) writeClient(b []byte) error {
	s.client.SetWriteDeadline(time.Now().Add(s.runtime().Config.Limits.IdleTimeout))
	_, err := s.client.Write(b)
	return err
}

// connectUpstream dials the upstreams in order; on failure the client gets
// bind_nak "temporary congestion" and the connection ends.
func (s *session) connectUpstream(rt *config.Runtime, p *rpcparse.PDU) bool {
	if !s.srv.takeFD() {
		// Unbound clients hold one descriptor each; a bind that would need
		// a second past the budget is refused rather than dialled.
		s.emit().Decision(zap.WarnLevel, "no file descriptor left for an upstream connection",
			event.New(event.ActionUpstreamUnavailable, event.OutcomeFailure, event.ReasonFDBudget))
		s.writeClient(rpcparse.AppendBindNak(nil, p.DataRep, p.CallID, rpcparse.NakTemporaryCongestion))
		s.setReason(event.ReasonFDBudget)
		return false
	}
	timeout := rt.Config.Limits.UpstreamConnectTimeout
	var lastErr error
	for _, addr := range rt.Config.Upstreams {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		t0 := time.Now()
		c, err := s.srv.dial(ctx, "tcp", addr)
		cancel()
		if err != nil {
			lastErr = err
			s.srv.metrics.UpstreamErrors.WithLabelValues(addr).Inc()
			s.srv.metrics.UpstreamResult(addr, err)
			continue
		}
		s.srv.metrics.UpstreamDialSeconds.Observe(time.Since(t0).Seconds())
		s.srv.metrics.UpstreamResult(addr, nil)
		s.srv.MarkUpstreamOK()
		s.upMu.Lock()
		s.upstream, s.upstreamAddr = c, addr
		s.upMu.Unlock()
		if s.closed.Load() { // Shutdown aborted us while dialling
			c.Close()
			s.setReason(event.ReasonShutdown)
			return false
		}
		s.hostBuf = getBuffer(hostFrameSize(s.maxFrg))
		// The framer reads the host through its poller, which may hold a
		// byte it probed (park_other.go).
		s.hostPoll = newHostPoller(c)
		s.hostFr = rpcparse.NewFramerBuffer(countingReader{s.hostPoll.source(), &s.hostBytes}, *s.hostBuf)
		s.hostPDU = new(rpcparse.PDU)
		return true
	}
	s.srv.releaseFD()
	ev := event.New(event.ActionUpstreamUnavailable, event.OutcomeFailure, event.ReasonUpstreamUnreachable)
	ev.Add(zap.Strings("kmsproxy.upstreams", rt.Config.Upstreams))
	if lastErr != nil {
		ev.Add(zap.String("error.message", lastErr.Error()))
	}
	s.emit().Decision(zap.WarnLevel, "no upstream reachable", ev)
	s.writeClient(rpcparse.AppendBindNak(nil, p.DataRep, p.CallID, rpcparse.NakTemporaryCongestion))
	s.setReason(event.ReasonUpstreamUnreachable)
	return false
}

// ---- refusals ----

func (s *session) onDenyReject() bool { return s.runtime().Config.OnDeny != "drop" }

// violation logs a protocol violation and ends the connection without an
// answer: a peer that breaks framing is not a client to talk to.
func (s *session) violation(dir, reason string, err error, p *rpcparse.PDU) {
	if s.closed.Load() {
		return
	}
	ev := event.New(event.ActionProtocolViolation, event.OutcomeFailure, reason)
	ev.Add(zap.String("network.direction", directionECS(dir)))
	if p != nil {
		ev.Add(zap.String("dcerpc.ptype", p.Type.String()), zap.Uint32("dcerpc.call_id", p.CallID))
	}
	if err != nil {
		ev.Add(zap.String("error.message", err.Error()))
	}
	s.emit().Decision(zap.WarnLevel, "protocol violation", ev)
	s.setReason(reason)
}

func directionECS(dir string) string {
	if dir == "host" {
		return "outbound"
	}
	return "inbound"
}

// refusalEvent logs a policy refusal. kmsproxy.on_deny says what the
// client got, in on_deny's words: reject (a bind_nak or fault, then the
// close) or drop (the close alone: on_deny drop, or an auth3 refusal,
// which has no answer PDU). CEF's act (deny, drop) is read from it.
func (s *session) refusalEvent(action string, d acl.Decision, p *rpcparse.PDU, answered bool, extra ...zap.Field) {
	ev := event.New(action, event.OutcomeFailure, d.Reason)
	if d.Rule != "" {
		ev.Add(zap.String("rule.name", d.Rule))
	}
	onDeny := "drop"
	if answered {
		onDeny = "reject"
	}
	ev.Add(zap.String("dcerpc.ptype", p.Type.String()), zap.Uint32("dcerpc.call_id", p.CallID), zap.String("kmsproxy.on_deny", onDeny))
	ev.Add(extra...)
	s.emit().Decision(zap.InfoLevel, action, ev)
}

// logBind logs an allowed bind or alter_context (bind-allowed) under
// log.allowed: detail; under summary it is only counted, its facts going
// on the call's kms-activation (finishKMSCall). The mode is the current
// runtime's, so a reload switches it for open connections too.
func (s *session) logBind(p *rpcparse.PDU, d acl.Decision) {
	if !s.runtime().Config.Log.AllowedDetail() {
		s.emit().Count(event.ActionBindAllowed, "")
		return
	}
	ev := event.New(event.ActionBindAllowed, event.OutcomeSuccess, "")
	ev.Add(zap.String("rule.name", d.Rule), zap.String("dcerpc.ptype", p.Type.String()), zap.Uint32("dcerpc.call_id", p.CallID))
	ev.Fields = event.AppendBind(ev.Fields, p)
	s.emit().Decision(zap.InfoLevel, event.ActionBindAllowed, ev) // counted as reason "allowed"
}

func appendRequestFields(f []zap.Field, s *session, p *rpcparse.PDU) []zap.Field {
	f = append(f,
		zap.Uint16("dcerpc.context_id", p.Request.ContextID),
		zap.Uint16("dcerpc.opnum", p.Request.Opnum),
	)
	if ctx, ok := s.a.Context(p.Request.ContextID); ok {
		f = append(f,
			zap.String("dcerpc.interface.uuid", event.UUIDText(ctx.Iface.UUID)),
			zap.String("dcerpc.interface.name", rpcparse.InterfaceName(ctx.Iface.UUID)),
			zap.String("dcerpc.interface.version", event.VersionText(ctx.Iface)),
		)
	}
	return event.AppendAuth(f, p)
}

// ---- host side ----

// awaitHost relays the host's PDUs to the client, after checking each
// answers something the client asked (rules 5 and 7), until nothing is
// outstanding. A host that goes away or stays silent past the idle timeout
// gets the client a prompt refusal (failOutstanding).
func (s *session) awaitHost() bool {
	idle := s.runtime().Config.Limits.IdleTimeout
	for s.a.Outstanding() {
		s.upstream.SetReadDeadline(time.Now().Add(idle))
		frag, err := s.hostFr.Next()
		if err != nil {
			s.hostReadError(err)
			return false
		}
		if !s.relayHostPDU(frag) {
			return false
		}
	}
	return true
}

// relayHostPDU parses and checks one host PDU and passes it to the client.
func (s *session) relayHostPDU(frag []byte) bool {
	s.hostPDUs.Add(1)
	p := s.hostPDU
	if err := p.Parse(frag, 0); err != nil {
		s.violation("host", rpcparse.Reason(err), err, p)
		return false
	}
	st := s.a.Host(&s.env, p)
	if st.Verdict != assoc.Relay {
		s.violation("host", st.Reason, nil, p)
		return false
	}
	if c := st.Call; c != nil && c.KMS != nil {
		s.finishKMSCall(c, true)
	}
	if err := s.writeClient(frag); err != nil {
		s.setReason(event.ReasonClientWriteError)
		return false
	}
	s.srv.metrics.AddBytesToClient(len(frag))
	return true
}

func (s *session) hostReadError(err error) {
	if s.closed.Load() {
		return
	}
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF):
		s.setReason(event.ReasonUpstreamClosed)
	case errors.As(err, &ne) && ne.Timeout():
		s.setReason(event.ReasonIdleTimeout)
	default:
		var pe *rpcparse.ParseError
		if errors.As(err, &pe) {
			s.violation("host", rpcparse.Reason(err), err, nil)
		} else {
			s.setReason(event.ReasonUpstreamReadError)
		}
	}
	s.failOutstanding()
}

// failOutstanding answers what the client still waits for when the host
// goes away or stops answering (a pending bind gets bind_nak "temporary
// congestion", an alter_context or call a fault), so the client sees a
// prompt refusal rather than a bare close.
func (s *session) failOutstanding() {
	out, c := s.a.FailOutstanding()
	if c != nil && c.KMS != nil {
		s.finishKMSCall(c, false)
	}
	if len(out) > 0 {
		s.writeClient(out)
	}
}

// ---- lifetime ----

func (s *session) setReason(r string) {
	if r == "" {
		return
	}
	s.closeReason.CompareAndSwap(nil, r)
}

// abort closes both sides once; a blocked read of the session then returns.
func (s *session) abort(reason string) {
	s.setReason(reason)
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.client.Close()
		s.upMu.Lock()
		if s.upstream != nil {
			s.upstream.Close()
		}
		s.upMu.Unlock()
	})
}

// unsolicitedWait bounds how long finish waits for a host PDU that poll
// said is already arriving.
const unsolicitedWait = 50 * time.Millisecond

// hostQuiet checks what the host sent that nobody asked for and reports
// whether the association may go on. Such PDUs never reach the client (the
// host is read only while the client waits for an answer); a shutdown is
// relayed, anything else is a violation. One poll(2) when nothing waits
// (on the portable build a one-byte read waiting probeWait, park_other.go).
func (s *session) hostQuiet() bool {
	for s.hostFr.Buffered() > 0 || s.hostPoll.readable() {
		s.upstream.SetReadDeadline(time.Now().Add(unsolicitedWait))
		frag, err := s.hostFr.Next()
		if err != nil {
			var pe *rpcparse.ParseError
			switch {
			case errors.As(err, &pe):
				s.violation("host", rpcparse.Reason(err), err, nil)
			case errors.Is(err, io.EOF):
				s.setReason(event.ReasonUpstreamClosed)
			default:
				s.setReason(event.ReasonUpstreamReadError)
			}
			return false
		}
		if !s.relayHostPDU(frag) {
			return false
		}
	}
	return true
}

// checkUnsolicited reports, before the connection closes, what the host
// sent unasked since its last answer.
func (s *session) checkUnsolicited() {
	if s.hostFr != nil && !s.closed.Load() {
		s.hostQuiet()
	}
}

// finish ends the session and emits its summary event.
func (s *session) finish() {
	s.checkUnsolicited()
	s.abort("")
	if s.hostBuf != nil {
		putBuffer(s.hostBuf)
		s.hostBuf, s.hostFr = nil, nil
	}
	if s.clientBuf != nil {
		putBuffer(s.clientBuf)
		s.clientBuf = nil
	}
	if c := s.a.Unanswered(); c != nil && c.KMS != nil {
		s.finishKMSCall(c, false)
	}
	s.a.Release()
	reason, _ := s.closeReason.Load().(string)
	ev := event.New(event.ActionConnectionClosed, event.OutcomeSuccess, "")
	ev.Add(
		zap.Duration("event.duration", time.Since(s.start)),
		zap.Int64("source.bytes", s.clientBytes.Load()),
		zap.Int64("destination.bytes", s.hostBytes.Load()),
		zap.Int64("kmsproxy.client_pdus", s.clientPDUs.Load()),
		zap.Int64("kmsproxy.host_pdus", s.hostPDUs.Load()),
		zap.String("kmsproxy.close_reason", reason),
	)
	if s.upstreamAddr != "" {
		ev.Add(zap.String("kmsproxy.upstream", s.upstreamAddr))
	}
	if s.a.BindSeen() {
		// Whether the association ended here (its calls over the pool) or
		// had a host association of its own.
		ev.Add(zap.Bool("kmsproxy.pooled", s.terminated))
	}
	s.emit().Log(zap.InfoLevel, "connection closed", ev)
}

// countingReader counts bytes read from a connection.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}
