package proxy

import (
	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// The shadow policy is evaluated beside the live one at every decision
// point and never enforced: where the two differ, a shadow-decision event
// says what the candidate would have done. This is how a policy change is
// tried on real traffic without a fail-open audit mode.

func (s *session) shadowBind(rt *Runtime, p *rpcparse.PDU, live acl.Decision) {
	if rt.Shadow == nil {
		return
	}
	s.shadowCompare(p, live, rt.Shadow.DecideBind(s.src.Addr(), p))
}

func (s *session) shadowRequest(rt *Runtime, p *rpcparse.PDU, ctx liveContext, auth rpcparse.AuthClass, live acl.Decision) {
	if rt.Shadow == nil {
		return
	}
	s.shadowCompare(p, live, rt.Shadow.DecideRequest(s.src.Addr(), ctx.iface, auth, p.Request.Opnum))
}

func (s *session) shadowKMS(rt *Runtime, p *rpcparse.PDU, facts acl.KMSFacts, live acl.Decision) {
	if rt.Shadow == nil {
		return
	}
	// The shadow's own request decision picks the rule whose kms: block applies.
	ctx, _ := s.liveContext(p.Request.ContextID)
	auth := s.auth
	sr := rt.Shadow.DecideRequest(s.src.Addr(), ctx.iface, auth, p.Request.Opnum)
	if sr.Verdict != acl.Allow {
		return // shadowRequest already reported this call's difference
	}
	s.shadowCompare(p, live, rt.Shadow.DecideKMS(sr.RuleIndex, facts))
}

func (s *session) shadowCompare(p *rpcparse.PDU, live, shadow acl.Decision) {
	if live.Verdict == shadow.Verdict {
		return
	}
	f := eventFields(ActionShadowDecision, "unknown", shadow.Reason)
	f = append(f,
		zap.String("rule.name", live.Rule),
		zap.String("kmsproxy.live.verdict", verdictName(live.Verdict)),
		zap.String("kmsproxy.live.reason", live.Reason),
		zap.String("kmsproxy.shadow.verdict", verdictName(shadow.Verdict)),
		zap.String("kmsproxy.shadow.rule", shadow.Rule),
		zap.String("kmsproxy.shadow.reason", shadow.Reason),
		zap.String("dcerpc.ptype", p.Type.String()),
		zap.Uint32("dcerpc.call_id", p.CallID),
	)
	s.log.Info(ActionShadowDecision, f...)
	s.srv.metrics.ShadowDifferences.WithLabelValues(verdictName(live.Verdict), verdictName(shadow.Verdict)).Inc()
	s.srv.metrics.Decisions.WithLabelValues(ActionShadowDecision, shadow.Reason).Inc()
}

func verdictName(v acl.Verdict) string {
	if v == acl.Allow {
		return "allow"
	}
	return "deny"
}
