package proxy

import (
	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// The shadow policy is evaluated beside the live one at every decision
// point and never enforced: where the two differ, a shadow-decision event
// says what the candidate would have done. This is how a policy change is
// tried on real traffic without a fail-open audit mode.

func (s *session) shadowCompare(p *rpcparse.PDU, live, shadow acl.Decision) {
	if live.Verdict == shadow.Verdict {
		return
	}
	ev := event.New(event.ActionShadowDecision, event.OutcomeUnknown, shadow.Reason)
	ev.Add(
		zap.String("rule.name", live.Rule),
		zap.String("kmsproxy.live.verdict", verdictName(live.Verdict)),
		zap.String("kmsproxy.live.reason", live.Reason),
		zap.String("kmsproxy.shadow.verdict", verdictName(shadow.Verdict)),
		zap.String("kmsproxy.shadow.rule", shadow.Rule),
		zap.String("kmsproxy.shadow.reason", shadow.Reason),
		zap.String("dcerpc.ptype", p.Type.String()),
		zap.Uint32("dcerpc.call_id", p.CallID),
	)
	s.emit().Decision(zap.InfoLevel, event.ActionShadowDecision, ev)
	s.srv.metrics.ShadowDifferences.WithLabelValues(verdictName(live.Verdict), verdictName(shadow.Verdict)).Inc()
}

func verdictName(v acl.Verdict) string {
	if v == acl.Allow {
		return "allow"
	}
	return "deny"
}
