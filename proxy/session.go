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
	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// maxLiveContexts bounds the presentation contexts one association may
// accumulate over repeated alter_contexts.
const maxLiveContexts = 64

// maxHeldCallBytes bounds the whole fragments held for one call: the stub
// limit plus a quarter for fragment headers, so a stream of empty
// fragments cannot grow the buffer.
func maxHeldCallBytes(maxCallBytes int) int { return maxCallBytes + maxCallBytes/4 + 4096 }

// liveContext is a presentation context the host accepted.
type liveContext struct {
	id    uint16
	iface rpcparse.SyntaxID
	ndr64 bool
}

// pendingItem is a context offered in a bind or alter_context that the
// host has not answered yet.
type pendingItem struct {
	id    uint16
	iface rpcparse.SyntaxID
}

// call is a request forwarded to the host and not yet fully answered.
type call struct {
	id     uint32
	ctxID  uint16
	opnum  uint16
	ndr64  bool
	kms    *kmsCall // non-nil for KMS activation calls
	respOK bool     // first response fragment seen
	// The host's byte order for the answer, from its first fragment: the
	// host marshals in its own representation, not the client's.
	respBigEndian bool
}

// assembly holds the fragments of a multi-fragment request until its last
// fragment passed every check (store and forward).
type assembly struct {
	active  bool
	callID  uint32
	ctxID   uint16
	opnum   uint16
	ctx     liveContext
	rule    acl.Decision
	raw     *[]byte // whole fragments as received, forwarded unchanged (pooled; nil for one-fragment calls)
	stub    *[]byte // reassembled stub, for payload inspection (pooled)
	stubLen int
}

// held is how many bytes of fragments the assembly holds.
func (a *assembly) held() int {
	if a.raw == nil {
		return 0
	}
	return len(*a.raw)
}

// NegotiatedAuth is the authentication an association's bind carried:
// every later PDU must carry the same (DESIGN rule 4).
type NegotiatedAuth struct {
	Present bool // the bind had an auth trailer
	Type    rpcparse.AuthType
	Level   rpcparse.AuthLevel
}

// NegotiatedBy returns what a bind negotiated.
func NegotiatedBy(bind *rpcparse.PDU) NegotiatedAuth {
	if !bind.HasAuth {
		return NegotiatedAuth{}
	}
	return NegotiatedAuth{Present: true, Type: bind.Auth.Type, Level: bind.Auth.Level}
}

// LaterPDUReason checks a client PDU after the bind against what the bind
// set up, or returns "" (the live session and replay both call it).
//
// The data representation must stay the bind's, as Windows requires of an
// association: the host reads every stub in it, so the proxy must too.
// Unauthenticated: auth_length 0, so nothing follows the stub (an NTLM
// verifier, a trailer of type none or an auth_pad hiding another PDU
// would otherwise reach the host unread), and auth3 is never legitimate.
// Authenticated: the same type and level; auth3 must carry a trailer, and
// only at level connect may the others omit it.
func LaterPDUReason(bindRep rpcparse.DataRep, n NegotiatedAuth, p *rpcparse.PDU) string {
	if p.DataRep[0] != bindRep[0] || p.DataRep[1] != bindRep[1] {
		return ReasonDataRepChanged
	}
	if !n.Present {
		if p.AuthLength != 0 {
			return ReasonAuthTrailerMismatch
		}
		if p.Type == rpcparse.PTypeAuth3 {
			return ReasonAuth3Unauthenticated
		}
		return ""
	}
	if !p.HasAuth {
		if p.Type == rpcparse.PTypeAuth3 || n.Level > rpcparse.AuthLevelConnect {
			return ReasonAuthTrailerMismatch
		}
		return ""
	}
	if p.Auth.Type != n.Type || p.Auth.Level != n.Level {
		return ReasonAuthTrailerMismatch
	}
	return ""
}

type session struct {
	srv    *Server
	id     uint64
	client net.Conn
	src    netip.AddrPort
	dst    netip.AddrPort
	zone   string
	extra  []zap.Field // fields beyond connFields (PROXY protocol peer)
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
	respStub []byte

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
	lastActive time.Time // last client PDU or host answer, for the idle timeout
	parkUntil  time.Time // when a parked session is woken regardless
	bound      bool
	drep       rpcparse.DataRep
	asm        assembly
	maxFrg     int

	auth      rpcparse.AuthClass
	negAuth   NegotiatedAuth
	pending   []pendingItem
	pendType  rpcparse.PType
	pendCall  uint32
	pendValid bool
	live      []liveContext
	calls     []call
}

func newSession(srv *Server, c net.Conn, id uint64, src, dst netip.AddrPort, zone string, extra []zap.Field) *session {
	return &session{
		srv: srv, id: id, client: c, src: src, dst: dst, zone: zone, extra: extra,
		start: time.Now(), drep: rpcparse.LittleEndianDataRep,
	}
}

func (s *session) runtime() *Runtime { return s.srv.rt.Load() }

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
		if s.bound {
			deadline = s.lastActive.Add(rt.Config.Limits.IdleTimeout)
			if park := time.Now().Add(idleParkAfter); park.Before(deadline) && !s.asm.active && s.clientFr.Buffered() == 0 {
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
		worked := doesWork(frag)
		if worked {
			s.lastActive = time.Now()
		}
		s.clientPDUs.Add(1)
		// Decide under the policy in force when the PDU arrived, not when
		// the read began: a reload must reach the very next PDU.
		rt = s.runtime()
		p := s.clientPDU
		if err := p.Parse(frag, s.maxFrg); err != nil {
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

// doesWork reports whether a client PDU asks for work. co_cancel and
// orphaned do not: they must not reset the idle clock, or a client that
// sends one every few seconds would hold its association (and its host
// connection) open forever.
func doesWork(frag []byte) bool {
	t := rpcparse.PType(frag[2])
	return t != rpcparse.PTypeCoCancel && t != rpcparse.PTypeOrphaned
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
		s.log = s.srv.log.With(append(connFields(s.id, s.src, s.dst, s.zone), s.extra...)...)
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
	s.respStub = nil
	return true
}

// parkIdle hands a quiet bound session to the parker until the client
// sends again or its idle timeout passes.
func (s *session) parkIdle(rt *Runtime) bool {
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
		if s.bound {
			s.setReason(ReasonIdleTimeout)
			s.failOutstanding() // the client was idle waiting on the host
		} else {
			s.setReason(ReasonHandshakeTimeout)
		}
	case errors.Is(err, io.ErrUnexpectedEOF):
		s.setReason("client-eof-mid-pdu")
	case errors.Is(err, ErrUntrustedProxyHeader):
		s.violation("client", ReasonProxyHeader, err, nil)
	default:
		var pe *rpcparse.ParseError
		if errors.As(err, &pe) {
			s.violation("client", rpcparse.Reason(err), err, nil)
			return
		}
		s.setReason("client-read-error")
	}
}

// halfClose ends a connection whose client closed: every answer the
// client asked for was relayed before its next read, so nothing is owed.
func (s *session) halfClose() {
	s.setReason("client-closed")
}

// handleClientPDU applies DESIGN rules 3–6 to one client PDU; it returns
// false when the connection must end.
func (s *session) handleClientPDU(rt *Runtime, p *rpcparse.PDU, frag []byte) bool {
	if !p.Type.FromClient() {
		s.violation("client", ReasonWrongDirection, nil, p)
		return false
	}
	if !s.bound && p.Type != rpcparse.PTypeBind {
		s.violation("client", ReasonFirstPDUNotBind, nil, p)
		return false
	}
	if p.Type == rpcparse.PTypeBind {
		if s.bound {
			s.violation("client", ReasonSecondBind, nil, p)
			return false
		}
		s.drep = p.DataRep
		return s.handleBind(rt, p, frag)
	}
	if reason := LaterPDUReason(s.drep, s.negAuth, p); reason != "" {
		s.violation("client", reason, nil, p)
		return false
	}
	switch p.Type {
	case rpcparse.PTypeAlterContext:
		return s.handleBind(rt, p, frag)
	case rpcparse.PTypeRequest:
		return s.handleRequest(rt, p, frag)
	case rpcparse.PTypeAuth3:
		return s.handleAuth3(rt, p, frag)
	case rpcparse.PTypeCoCancel, rpcparse.PTypeOrphaned:
		return s.handleCancel(p, frag)
	}
	s.violation("client", ReasonWrongDirection, nil, p)
	return false
}

func (s *session) handleBind(rt *Runtime, p *rpcparse.PDU, frag []byte) bool {
	if s.asm.active {
		s.violation("client", ReasonCallInterleaved, nil, p)
		return false
	}
	d := rt.Policy.DecideBind(s.src.Addr(), p)
	s.shadowBind(rt, p, d)
	live := len(s.live)
	if d.Verdict == acl.Allow && live+int(p.Bind.NumContexts) > maxLiveContexts {
		d = acl.Decision{Verdict: acl.Deny, RuleIndex: -1, Reason: acl.ReasonTooManyContexts}
	}
	if d.Verdict != acl.Allow {
		s.refuseBind(rt, p, d)
		return false
	}
	auth := rpcparse.ClassifyAuth(p)
	if p.Type == rpcparse.PTypeBind {
		s.negAuth = NegotiatedBy(p)
	}
	s.logBind(p, d, auth)
	if s.upstream == nil {
		if !s.connectUpstream(rt, p) {
			return false
		}
	}
	items := make([]pendingItem, 0, p.Bind.NumContexts)
	for it := p.Bind.Contexts(); it.Next(); {
		c := it.Context()
		items = append(items, pendingItem{id: c.ID, iface: c.Abstract})
	}
	s.pending, s.pendType, s.pendCall, s.pendValid = items, p.Type, p.CallID, true
	if p.Type == rpcparse.PTypeBind || p.HasAuth {
		s.auth = auth
	}
	s.bound = true
	return s.forward(frag) && s.awaitHost()
}

func (s *session) handleAuth3(rt *Runtime, p *rpcparse.PDU, frag []byte) bool {
	if s.asm.active {
		// Nothing may come between the fragments of a call.
		s.violation("client", ReasonCallInterleaved, nil, p)
		return false
	}
	// auth3 carries NTLM's last leg, the only place a NULL session shows:
	// the association's new auth class must be allowed for every interface
	// bound or being bound, or the handshake ends here.
	class := rpcparse.ClassifyAuth(p)
	ifaces := make([]rpcparse.SyntaxID, 0, len(s.live)+len(s.pending))
	for _, c := range s.live {
		ifaces = append(ifaces, c.iface)
	}
	for _, c := range s.pending {
		ifaces = append(ifaces, c.iface)
	}
	for _, iface := range ifaces {
		d := rt.Policy.DecideAuth(s.src.Addr(), iface, class)
		if d.Verdict != acl.Allow {
			s.refusalEvent(ActionBindRefused, d, p, append(appendAuthFields(nil, p),
				zap.String("dcerpc.interface.uuid", uuidText(iface.UUID)),
				zap.String("dcerpc.interface.name", rpcparse.InterfaceName(iface.UUID)))...)
			s.setReason(d.Reason)
			return false // auth3 has no answer PDU: refusing is closing
		}
	}
	s.auth = class
	return s.forward(frag)
}

func (s *session) handleCancel(p *rpcparse.PDU, frag []byte) bool {
	// A cancel or orphan for a call still held here ends that call without
	// the host ever seeing it. Any other names nothing at the host (every
	// forwarded call was answered before this PDU was read): swallowed.
	if s.asm.active && p.CallID == s.asm.callID {
		s.dropAssembly()
	}
	return true
}

// handleRequest checks one request fragment (rule 6) and forwards the call
// once its last fragment passed.
func (s *session) handleRequest(rt *Runtime, p *rpcparse.PDU, frag []byte) bool {
	r := &p.Request
	first := p.Flags&rpcparse.FlagFirstFrag != 0
	last := p.Flags&rpcparse.FlagLastFrag != 0
	lim := rt.Config.Limits
	if r.HasObject {
		d := acl.Decision{Verdict: acl.Deny, RuleIndex: -1, Reason: ReasonObjectUUID}
		s.refuseRequest(rt, p, d)
		return false
	}
	if s.asm.active {
		switch {
		case first || p.CallID != s.asm.callID:
			s.violation("client", ReasonCallInterleaved, nil, p)
			return false
		case r.ContextID != s.asm.ctxID || r.Opnum != s.asm.opnum:
			s.violation("client", ReasonFragmentMismatch, nil, p)
			return false
		}
	} else {
		if !first {
			s.violation("client", ReasonFirstFragMissing, nil, p)
			return false
		}
		// No call is outstanding here: each was answered (awaitHost)
		// before this PDU was read.
		ctx, ok := s.liveContext(r.ContextID)
		if !ok {
			s.refuseRequest(rt, p, acl.Decision{Verdict: acl.Deny, RuleIndex: -1, Reason: ReasonContextNotLive})
			return false
		}
		auth := s.auth
		d := rt.Policy.DecideRequest(s.src.Addr(), ctx.iface, auth, r.Opnum)
		s.shadowRequest(rt, p, ctx, auth, d)
		if d.Verdict != acl.Allow {
			s.refuseRequest(rt, p, d)
			return false
		}
		s.asm = assembly{active: true, callID: p.CallID, ctxID: r.ContextID, opnum: r.Opnum, ctx: ctx, rule: d}
	}
	s.asm.stubLen += len(r.Stub)
	// Bound the stub and, for floods of tiny fragments, the held bytes.
	if s.asm.stubLen > lim.MaxCallBytes || s.asm.held()+len(frag) > maxHeldCallBytes(lim.MaxCallBytes) {
		s.refuseRequest(rt, p, acl.Decision{Verdict: acl.Deny, RuleIndex: -1, Reason: ReasonCallTooLarge})
		return false
	}
	single := first && last
	if !single {
		if s.asm.raw == nil {
			s.asm.raw, s.asm.stub = getCallBuffer(), getCallBuffer()
		}
		*s.asm.raw = append(*s.asm.raw, frag...)
		*s.asm.stub = append(*s.asm.stub, r.Stub...)
	}
	if !last {
		return true
	}
	stub := r.Stub
	if !single {
		stub = *s.asm.stub
	}
	c := call{id: p.CallID, ctxID: s.asm.ctxID, opnum: s.asm.opnum, ndr64: s.asm.ctx.ndr64}
	if !s.inspectCall(rt, p, &c, stub) {
		return false
	}
	s.calls = append(s.calls, c)
	out := frag
	if !single {
		out = *s.asm.raw
	}
	ok := s.forward(out) // before the buffers go back to the pool
	s.dropAssembly()
	return ok && s.awaitHost()
}

// dropAssembly ends the call being assembled and gives its buffers back:
// a connection keeps no call bytes between calls.
func (s *session) dropAssembly() {
	putCallBuffer(s.asm.raw)
	putCallBuffer(s.asm.stub)
	s.asm = assembly{}
}

func (s *session) clearPending() {
	s.pendValid, s.pending = false, nil
}

func (s *session) liveContext(id uint16) (liveContext, bool) {
	for _, c := range s.live {
		if c.id == id {
			return c, true
		}
	}
	return liveContext{}, false
}

func (s *session) findCall(id uint32) int {
	for i := range s.calls {
		if s.calls[i].id == id {
			return i
		}
	}
	return -1
}

// forward writes bytes that passed every check to the host.
func (s *session) forward(b []byte) bool {
	rt := s.runtime()
	s.upstream.SetWriteDeadline(time.Now().Add(rt.Config.Limits.IdleTimeout))
	if _, err := s.upstream.Write(b); err != nil {
		s.setReason("upstream-write-error")
		return false
	}
	s.srv.metrics.bytesToHost.Add(float64(len(b)))
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
func (s *session) connectUpstream(rt *Runtime, p *rpcparse.PDU) bool {
	if !s.srv.takeFD() {
		// Unbound clients hold one descriptor each; a bind that would need
		// a second past the budget is refused rather than dialled.
		f := eventFields(ActionUpstreamUnavailable, "failure", ReasonFDBudget)
		s.log.Warn("no file descriptor left for an upstream connection", f...)
		s.srv.metrics.Decisions.WithLabelValues(ActionUpstreamUnavailable, ReasonFDBudget).Inc()
		s.writeClient(rpcparse.AppendBindNak(nil, p.DataRep, p.CallID, rpcparse.NakTemporaryCongestion))
		s.setReason(ReasonFDBudget)
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
			continue
		}
		s.srv.metrics.UpstreamDialSeconds.Observe(time.Since(t0).Seconds())
		s.srv.MarkUpstreamOK()
		s.upMu.Lock()
		s.upstream, s.upstreamAddr = c, addr
		s.upMu.Unlock()
		if s.closed.Load() { // Shutdown aborted us while dialling
			c.Close()
			s.setReason(ReasonShutdown)
			return false
		}
		s.hostBuf = getBuffer(hostFrameSize(s.maxFrg))
		s.hostFr = rpcparse.NewFramerBuffer(countingReader{c, &s.hostBytes}, *s.hostBuf)
		s.hostPDU = new(rpcparse.PDU)
		s.hostPoll = newHostPoller(c)
		return true
	}
	s.srv.releaseFD()
	f := eventFields(ActionUpstreamUnavailable, "failure", ReasonUpstreamUnreachable)
	f = append(f, zap.Strings("kmsproxy.upstreams", rt.Config.Upstreams))
	if lastErr != nil {
		f = append(f, zap.String("error.message", lastErr.Error()))
	}
	s.log.Warn("no upstream reachable", f...)
	s.srv.metrics.Decisions.WithLabelValues(ActionUpstreamUnavailable, ReasonUpstreamUnreachable).Inc()
	s.writeClient(rpcparse.AppendBindNak(nil, p.DataRep, p.CallID, rpcparse.NakTemporaryCongestion))
	s.setReason(ReasonUpstreamUnreachable)
	return false
}

// ---- refusals ----

func (s *session) onDenyReject() bool { return s.runtime().Config.OnDeny != "drop" }

func (s *session) refuseBind(rt *Runtime, p *rpcparse.PDU, d acl.Decision) {
	action := ActionBindRefused
	s.refusalEvent(action, d, p, appendBindFields(nil, p)...)
	s.setReason(d.Reason)
	if !s.onDenyReject() {
		return
	}
	if p.Type == rpcparse.PTypeBind {
		reason := rpcparse.NakReasonNotSpecified
		switch d.Reason {
		case acl.ReasonAuthNotAllowed:
			reason = rpcparse.NakAuthenticationTypeNotRecog
		case acl.ReasonTooManyContexts:
			reason = rpcparse.NakLocalLimitExceeded
		}
		s.writeClient(rpcparse.AppendBindNak(nil, p.DataRep, p.CallID, reason))
		return
	}
	// alter_context has no nak: a fault on its call id ends it.
	status := rpcparse.StatusAccessDenied
	if d.Reason == acl.ReasonInterfaceNotAllowed || d.Reason == acl.ReasonNoMatchingRule {
		status = rpcparse.StatusUnknownIf
	}
	s.writeClient(rpcparse.AppendFault(nil, p.DataRep, p.CallID, 0, status, true))
}

func (s *session) refuseRequest(rt *Runtime, p *rpcparse.PDU, d acl.Decision, extra ...zap.Field) {
	s.refusalEvent(ActionRequestRefused, d, p, append(appendRequestFields(nil, s, p), extra...)...)
	s.setReason(d.Reason)
	if !s.onDenyReject() {
		return
	}
	status := rpcparse.StatusAccessDenied
	switch d.Reason {
	case acl.ReasonOpnumNotAllowed:
		status = rpcparse.StatusOpRangeError
	case ReasonContextNotLive:
		status = rpcparse.StatusUnknownIf
	}
	s.writeClient(rpcparse.AppendFault(nil, p.DataRep, p.CallID, p.Request.ContextID, status, true))
}

// violation logs a protocol violation and ends the connection without an
// answer: a peer that breaks framing is not a client to talk to.
func (s *session) violation(dir, reason string, err error, p *rpcparse.PDU) {
	if s.closed.Load() {
		return
	}
	f := eventFields(ActionProtocolViolation, "failure", reason)
	f = append(f, zap.String("network.direction", directionECS(dir)))
	if p != nil {
		f = append(f, zap.String("dcerpc.ptype", p.Type.String()), zap.Uint32("dcerpc.call_id", p.CallID))
	}
	if err != nil {
		f = append(f, zap.String("error.message", err.Error()))
	}
	s.log.Warn("protocol violation", f...)
	s.srv.metrics.Decisions.WithLabelValues(ActionProtocolViolation, reason).Inc()
	s.setReason(reason)
}

func directionECS(dir string) string {
	if dir == "host" {
		return "outbound"
	}
	return "inbound"
}

func (s *session) refusalEvent(action string, d acl.Decision, p *rpcparse.PDU, extra ...zap.Field) {
	f := eventFields(action, "failure", d.Reason)
	if d.Rule != "" {
		f = append(f, zap.String("rule.name", d.Rule))
	}
	f = append(f, zap.String("dcerpc.ptype", p.Type.String()), zap.Uint32("dcerpc.call_id", p.CallID))
	f = append(f, extra...)
	s.log.Info(action, f...)
	s.srv.metrics.Decisions.WithLabelValues(action, d.Reason).Inc()
}

func (s *session) logBind(p *rpcparse.PDU, d acl.Decision, auth rpcparse.AuthClass) {
	f := eventFields(ActionBindAllowed, "success", "")
	f = append(f, zap.String("rule.name", d.Rule), zap.String("dcerpc.ptype", p.Type.String()), zap.Uint32("dcerpc.call_id", p.CallID))
	f = appendBindFields(f, p)
	s.log.Info(ActionBindAllowed, f...)
	s.srv.metrics.bindAllowed.Inc()
}

// appendBindFields adds a bind's first context and its auth to f.
func appendBindFields(f []zap.Field, p *rpcparse.PDU) []zap.Field {
	it := p.Bind.Contexts()
	if it.Next() {
		c := it.Context()
		f = append(f,
			zap.String("dcerpc.interface.uuid", uuidText(c.Abstract.UUID)),
			zap.String("dcerpc.interface.name", rpcparse.InterfaceName(c.Abstract.UUID)),
			zap.String("dcerpc.interface.version", versionString(c.Abstract)),
		)
	}
	f = append(f, zap.Uint8("dcerpc.context_count", p.Bind.NumContexts))
	return appendAuthFields(f, p)
}

func appendAuthFields(f []zap.Field, p *rpcparse.PDU) []zap.Field {
	if !p.HasAuth {
		return append(f, zap.String("dcerpc.auth.type", "none"))
	}
	return append(f,
		zap.String("dcerpc.auth.type", p.Auth.Type.String()),
		zap.String("dcerpc.auth.level", p.Auth.Level.String()),
		zap.String("kmsproxy.auth_class", rpcparse.ClassifyAuth(p).String()),
	)
}

func appendRequestFields(f []zap.Field, s *session, p *rpcparse.PDU) []zap.Field {
	f = append(f,
		zap.Uint16("dcerpc.context_id", p.Request.ContextID),
		zap.Uint16("dcerpc.opnum", p.Request.Opnum),
	)
	ctx, ok := s.liveContext(p.Request.ContextID)
	if ok {
		f = append(f,
			zap.String("dcerpc.interface.uuid", uuidText(ctx.iface.UUID)),
			zap.String("dcerpc.interface.name", rpcparse.InterfaceName(ctx.iface.UUID)),
			zap.String("dcerpc.interface.version", versionString(ctx.iface)),
		)
	}
	return appendAuthFields(f, p)
}

func versionString(s rpcparse.SyntaxID) string {
	if s.Major < 10 && s.Minor < 10 {
		return smallVersions[s.Major*10+s.Minor] // no allocation for the usual x.y
	}
	return itoa(int(s.Major)) + "." + itoa(int(s.Minor))
}

var smallVersions = func() (v [100]string) {
	for i := range v {
		v[i] = itoa(i/10) + "." + itoa(i%10)
	}
	return v
}()

func itoa(n int) string {
	var b [12]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// ---- host side ----

// awaitHost relays the host's PDUs to the client, after checking each
// answers something the client asked (rules 5 and 7), until nothing is
// outstanding. A host that goes away or stays silent past the idle timeout
// gets the client a prompt refusal (failOutstanding).
func (s *session) awaitHost() bool {
	idle := s.runtime().Config.Limits.IdleTimeout
	for s.outstanding() {
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
	if reason := s.checkHostPDU(p, &s.respStub); reason != "" {
		s.violation("host", reason, nil, p)
		return false
	}
	if err := s.writeClient(frag); err != nil {
		s.setReason("client-write-error")
		return false
	}
	s.srv.metrics.bytesToClient.Add(float64(len(frag)))
	return true
}

func (s *session) outstanding() bool {
	return s.pendValid || len(s.calls) > 0
}

func (s *session) hostReadError(err error) {
	if s.closed.Load() {
		return
	}
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF):
		s.setReason("upstream-closed")
	case errors.As(err, &ne) && ne.Timeout():
		s.setReason(ReasonIdleTimeout)
	default:
		var pe *rpcparse.ParseError
		if errors.As(err, &pe) {
			s.violation("host", rpcparse.Reason(err), err, nil)
		} else {
			s.setReason("upstream-read-error")
		}
	}
	s.failOutstanding()
}

// failOutstanding answers what the client still waits for when the host
// goes away or stops answering: a pending bind gets bind_nak "temporary
// congestion", an alter_context or call a fault, so the client sees a
// prompt refusal rather than a bare close.
func (s *session) failOutstanding() {
	var out []byte
	if s.pendValid {
		if s.pendType == rpcparse.PTypeBind {
			out = rpcparse.AppendBindNak(out, s.drep, s.pendCall, rpcparse.NakTemporaryCongestion)
		} else {
			out = rpcparse.AppendFault(out, s.drep, s.pendCall, 0, rpcparse.StatusCallFailed, false)
		}
	}
	for _, c := range s.calls {
		out = rpcparse.AppendFault(out, s.drep, c.id, c.ctxID, rpcparse.StatusCallFailed, false)
		if c.kms != nil {
			s.finishKMSCall(&c, nil, nil)
		}
	}
	// Answered once.
	s.calls = nil
	s.clearPending()
	if len(out) > 0 {
		s.writeClient(out)
	}
}

// checkHostPDU updates the association from the host's answer and returns
// a violation reason, or "".
func (s *session) checkHostPDU(p *rpcparse.PDU, respStub *[]byte) string {
	if !p.Type.FromServer() {
		return ReasonHostWrongDirection
	}
	switch p.Type {
	case rpcparse.PTypeBindAck, rpcparse.PTypeAlterContextResp:
		want := rpcparse.PTypeBind
		if p.Type == rpcparse.PTypeAlterContextResp {
			want = rpcparse.PTypeAlterContext
		}
		if !s.pendValid || s.pendType != want || p.CallID != s.pendCall {
			return ReasonUnexpectedResponse
		}
		if int(p.BindAck.NumResults) != len(s.pending) {
			return ReasonResultCount
		}
		for i, item := range s.pending {
			r := p.BindAck.Result(i)
			if r.Result != rpcparse.ResultAcceptance {
				continue
			}
			lc := liveContext{id: item.id, iface: item.iface, ndr64: rpcparse.ClassifyTransfer(r.Transfer) == rpcparse.TransferNDR64}
			replaced := false
			for j := range s.live {
				if s.live[j].id == item.id {
					s.live[j], replaced = lc, true
				}
			}
			if !replaced {
				s.live = append(s.live, lc)
			}
		}
		s.clearPending()
	case rpcparse.PTypeBindNak:
		if !s.pendValid || s.pendType != rpcparse.PTypeBind || p.CallID != s.pendCall {
			return ReasonUnexpectedResponse
		}
		s.clearPending()
	case rpcparse.PTypeResponse, rpcparse.PTypeFault:
		i := s.findCall(p.CallID)
		if i < 0 {
			if p.Type == rpcparse.PTypeFault && s.pendValid && p.CallID == s.pendCall {
				s.clearPending() // host refused an alter_context
				return ""
			}
			return ReasonUnexpectedResponse
		}
		c := &s.calls[i]
		if c.kms != nil && p.Type == rpcparse.PTypeResponse {
			if p.Flags&rpcparse.FlagFirstFrag != 0 {
				*respStub = (*respStub)[:0]
				c.respBigEndian = p.DataRep.BigEndian()
			}
			if len(*respStub)+len(p.Response.Stub) <= s.runtime().Config.Limits.MaxCallBytes {
				*respStub = append(*respStub, p.Response.Stub...)
			}
		}
		if p.Type == rpcparse.PTypeFault || p.Flags&rpcparse.FlagLastFrag != 0 {
			if c.kms != nil {
				s.finishKMSCall(c, p, *respStub)
			}
			s.calls = append(s.calls[:i], s.calls[i+1:]...)
		}
	case rpcparse.PTypeShutdown:
	}
	return ""
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
// relayed, anything else is a violation. One poll(2) when nothing waits.
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
				s.setReason("upstream-closed")
			default:
				s.setReason("upstream-read-error")
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
	s.dropAssembly()
	pending := s.calls
	s.calls = nil
	for i := range pending {
		if pending[i].kms != nil {
			s.finishKMSCall(&pending[i], nil, nil)
		}
	}
	reason, _ := s.closeReason.Load().(string)
	f := eventFields(ActionConnectionClosed, "success", "")
	f = append(f,
		zap.Duration("event.duration", time.Since(s.start)),
		zap.Int64("source.bytes", s.clientBytes.Load()),
		zap.Int64("destination.bytes", s.hostBytes.Load()),
		zap.Int64("kmsproxy.client_pdus", s.clientPDUs.Load()),
		zap.Int64("kmsproxy.host_pdus", s.hostPDUs.Load()),
		zap.String("kmsproxy.close_reason", reason),
	)
	if s.upstreamAddr != "" {
		f = append(f, zap.String("kmsproxy.upstream", s.upstreamAddr))
	}
	s.log.Info("connection closed", f...)
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
