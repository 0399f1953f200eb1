package proxy

import (
	"context"
	"errors"
	"net"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/assoc"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/pool"
	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// The terminating gateway (DESIGN "Host side"). A client association that
// asks only for the KMS interface without authentication ends here: the
// proxy answers its bind and alter_context itself, as the KMS host answered
// the pool's own association, and sends each allowed activation call as a
// request the pool builds on one of its associations. The client never
// causes a connection to the host, and nothing it wrote reaches the host
// but the stub bytes that passed every check. Every answer the proxy makes
// goes through the association's Host step, so rules 5 and 7 hold for it
// as for a host's.

// newPool builds the upstream pool for rt, or nil when it is off.
func (s *Server) newPool(rt *config.Runtime) *pool.Pool {
	up := rt.Config.UpstreamPool
	if !up.Enabled {
		return nil
	}
	lim := rt.Config.Limits
	return pool.New(pool.Config{
		Upstreams:           rt.Config.Upstreams,
		MaxAssociations:     up.MaxAssociations,
		MaxIdle:             up.MaxIdle,
		IdleTimeout:         up.IdleTimeout,
		ConnectTimeout:      lim.UpstreamConnectTimeout,
		CallTimeout:         lim.IdleTimeout,
		MaxWaiters:          up.MaxWaiters,
		MaxWaitersPerSource: up.MaxWaitersPerSource,
		MaxCallBytes:        lim.MaxCallBytes,
		MaxResponseBytes:    lim.MaxCallBytes,
		Dial:                func(ctx context.Context, network, addr string) (net.Conn, error) { return s.dial(ctx, network, addr) },
		OnWait:              func(d time.Duration) { s.poolWait.Observe(d.Seconds()) },
		OnDial: func(addr string, took time.Duration, err error) {
			s.metrics.UpstreamResult(addr, err)
			if err != nil {
				s.metrics.UpstreamErrors.WithLabelValues(addr).Inc()
				return
			}
			s.metrics.UpstreamDialSeconds.Observe(took.Seconds())
			s.MarkUpstreamOK()
		},
	})
}

// gatewayFor decides, at the client's first bind, whether its association
// ends at the proxy.
func (s *session) gatewayFor(p *rpcparse.PDU) bool {
	return p.Type == rpcparse.PTypeBind && s.srv.upstreamPool() != nil && assoc.Terminable(p)
}

// hostSyntaxes is what the pool's association learnt of the host.
func hostSyntaxes(n *pool.Negotiation) assoc.HostSyntaxes {
	r0, _ := n.BindResult(rpcparse.TransferNDR20)
	r2, _ := n.BindResult(rpcparse.TransferBTFN)
	return assoc.HostSyntaxes{
		NDR20:            n.Accepts(rpcparse.TransferNDR20),
		NDR64:            n.Accepts(rpcparse.TransferNDR64),
		NDR20BesideNDR64: r0.Result == rpcparse.ResultAcceptance,
		BTFN:             r2.Result == rpcparse.ResultNegotiateAck,
		BTFNFlags:        n.Features(),
	}
}

// answerBind answers an allowed bind or alter_context of a terminated
// association from the pool's negotiation.
func (s *session) answerBind(rt *config.Runtime, p *rpcparse.PDU) bool {
	if !assoc.Terminable(p) {
		// An alter_context for another interface or with auth on an
		// association that ended here: there is no host association of
		// its own to carry it.
		s.violation("client", event.ReasonNotTerminable, nil, p)
		return false
	}
	pl := s.srv.upstreamPool()
	ctx, cancel := context.WithTimeout(context.Background(), rt.Config.Limits.IdleTimeout)
	neg, err := pl.Negotiation(ctx, s.src.Addr(), s.a.DataRep().BigEndian())
	cancel()
	if err != nil {
		s.hostUnavailable(rt, err)
		s.failOutstanding()
		return false
	}
	if p.Type == rpcparse.PTypeBind {
		s.clientMaxRecv = int(p.Bind.MaxRecvFrag)
		s.upstreamAddr = neg.Upstream
	}
	frag := uint16(rt.Config.Limits.MaxFragment)
	g := assoc.GatewayAnswer{MaxXmitFrag: min(frag, p.Bind.MaxRecvFrag), MaxRecvFrag: min(frag, p.Bind.MaxXmitFrag),
		AssocGroup: s.srv.assocGroup(s.id), SecAddr: s.secAddr()}
	s.gwOut = assoc.AnswerBind(s.gwOut[:0], p, hostSyntaxes(&neg), g)
	return s.relayOwn(s.gwOut)
}

// secAddr is the proxy's own listening port, as a host's bind_ack names
// its own.
func (s *session) secAddr() []byte {
	return append(strconv.AppendUint(nil, uint64(s.dst.Port()), 10), 0)
}

// gatewayCall sends an allowed call over the pool and answers the client.
func (s *session) gatewayCall(rt *config.Runtime, st assoc.Step) bool {
	c := *st.Call
	ctx, cancel := context.WithTimeout(context.Background(), rt.Config.Limits.IdleTimeout)
	res, err := s.srv.upstreamPool().Call(ctx, s.src.Addr(), pool.Call{Opnum: c.Opnum, NDR64: c.NDR64,
		BigEndian: s.a.DataRep().BigEndian(), Stub: st.Stub, Dst: s.gwStub[:0]})
	cancel()
	s.gwStub = res.Stub
	if err != nil {
		s.hostUnavailable(rt, err)
		s.failOutstanding()
		return false
	}
	s.hostAssoc, s.upstreamAddr = res.Assoc, upstreamOf(res.Assoc)
	rep := rpcparse.LittleEndianDataRep
	if res.HostBigEndian {
		rep = rpcparse.BigEndianDataRep
	}
	s.gwOut = assoc.AnswerCall(s.gwOut[:0], &c, rep, res.Stub, max(s.clientMaxRecv, rpcparse.HeaderLen+16), res.Fault, res.FaultStatus)
	return s.relayOwn(s.gwOut)
}

// relayOwn passes PDUs the proxy made through the association's host step
// and on to the client, exactly as relayHostPDU does with the host's.
func (s *session) relayOwn(out []byte) bool {
	if s.gwPDU == nil {
		s.gwPDU = new(rpcparse.PDU)
	}
	for b := out; len(b) > 0; {
		n, err := rpcparse.Split(b, 0)
		if err != nil || n == 0 {
			s.violation("host", event.ReasonGatewayAnswer, err, nil)
			return false
		}
		if err := s.gwPDU.Parse(b[:n], 0); err != nil {
			s.violation("host", event.ReasonGatewayAnswer, err, nil)
			return false
		}
		st := s.a.Host(&s.env, s.gwPDU)
		if st.Verdict != assoc.Relay {
			s.violation("host", st.Reason, nil, s.gwPDU)
			return false
		}
		if c := st.Call; c != nil && c.KMS != nil {
			s.finishKMSCall(c, true)
		}
		b = b[n:]
	}
	s.hostPDUs.Add(1)
	if err := s.writeClient(out); err != nil {
		s.setReason(event.ReasonClientWriteError)
		return false
	}
	s.srv.metrics.AddBytesToClient(len(out))
	s.hostBytes.Add(int64(len(out))) // destination.bytes: what the client got from the host side
	return true
}

// hostUnavailable logs why the pool could not serve a terminated call.
func (s *session) hostUnavailable(rt *config.Runtime, err error) {
	reason := event.ReasonUpstreamUnreachable
	switch {
	case errors.Is(err, pool.ErrBusy):
		reason = event.ReasonPoolBusy
	case errors.Is(err, pool.ErrTimeout):
		reason = event.ReasonIdleTimeout
	}
	ev := event.New(event.ActionUpstreamUnavailable, event.OutcomeFailure, reason)
	ev.Add(zap.Strings("kmsproxy.upstreams", rt.Config.Upstreams), zap.String("error.message", err.Error()))
	s.emit().Decision(zap.WarnLevel, "no host association for the call", ev)
	s.setReason(reason)
}

// upstreamOf is the upstream part of a pool association name ("host:port#3").
func upstreamOf(name string) string {
	for i := len(name) - 1; i >= 0; i-- {
		if name[i] == '#' {
			return name[:i]
		}
	}
	return name
}
