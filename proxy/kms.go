package proxy

import (
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/assoc"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// kmsCall is what an activation event says of one call: the decoded
// request (or why it did not decode) and the rule that allowed the call.
type kmsCall struct {
	req       *kms.Request
	decodeErr error
	rule      string
}

func kmsCallOf(c *assoc.Call) *kmsCall {
	return &kmsCall{req: &c.KMS.Req, decodeErr: c.KMS.DecodeErr, rule: c.Rule.Rule}
}

// finishKMSCall emits the kms-activation event for a call, merging the
// host's reply when there is one (answered false: the connection ended
// first).
func (s *session) finishKMSCall(c *assoc.Call, answered bool) {
	kc := kmsCallOf(c)
	ev := event.New(event.ActionKMSActivation, event.OutcomeUnknown, "")
	// The bind facts of the call's context go on the activation too, so
	// that under log.allowed: summary, with no bind-allowed written, this
	// event alone says what was bound, in which transfer syntax, with what
	// authentication and under which rule (the zone is a connection field).
	ev.Add(zap.String("rule.name", kc.rule), zap.Uint32("dcerpc.call_id", c.ID),
		zap.Uint16("dcerpc.opnum", c.Opnum), zap.Uint16("dcerpc.context_id", c.CtxID),
		zap.String("dcerpc.interface.name", "kms"), zap.String("dcerpc.interface.uuid", kmsUUIDText),
		zap.String("dcerpc.interface.version", event.VersionText(c.Iface)),
		zap.String("dcerpc.transfer_syntax", event.TransferSyntaxText(c.NDR64)))
	neg, class := s.a.Auth()
	f := event.AppendAuthOf(ev.Fields, neg.Present, neg.Type, neg.Level, class)
	f = event.AppendKMSRequest(f, kc.req, kc.decodeErr)
	result := event.KMSResultNoReply
	var reply kmsReply
	switch {
	case !answered:
	case c.KMS.Fault:
		result = event.KMSResultFault
		f = append(f, zap.String("kms.status", "0x"+strconv.FormatUint(uint64(c.KMS.FaultStatus), 16)))
	default:
		f, reply = appendKMSResponse(f, c, kc)
		switch {
		case !reply.stubOK:
			result = event.KMSResultMalformedReply
		case reply.hr == 0:
			result = event.KMSResultSuccess
		default:
			result = event.KMSResultRefusedByHost
		}
	}
	outcome := event.OutcomeFailure
	if result == event.KMSResultSuccess {
		outcome = event.OutcomeSuccess
	}
	f[4] = zap.String("event.outcome", outcome)
	if s.hostAssoc != "" {
		f = append(f, zap.String("kmsproxy.host_association", s.hostAssoc))
	}
	ev.Fields = append(f, zap.String("kmsproxy.kms_result", result))
	s.emit().Log(zap.InfoLevel, event.ActionKMSActivation, ev)
	m := s.srv.metrics
	m.KMSActivations.WithLabelValues(event.ApplicationLabel(kc.req, kc.decodeErr), event.VersionLabel(kc.req), result).Inc()
	m.ZoneActivations.WithLabelValues(event.ZoneLabel(s.zone), result).Inc()
	m.Recent.Count(event.WindowActivations)
	if !s.callStart.IsZero() && answered {
		m.KMSCallSeconds.Observe(time.Since(s.callStart).Seconds())
	}
	if kc.decodeErr != nil {
		return
	}
	if reply.stubOK && (reply.hr != 0 || reply.decodeErr == nil) {
		s.srv.hosts.ObserveReply(kc.req, reply.hr, reply.resp.CurrentCount)
	}
	s.srv.recordActivation(s, kc, result, &reply)
}

// kmsReply is what the host's answer to a call said: the stub's HRESULT
// (stubOK false: the stub did not parse) and, for S_OK, the decoded
// response (decodeErr: why it did not decode).
type kmsReply struct {
	stubOK    bool
	hr        uint32
	resp      kms.Response
	decodeErr error
}

// appendKMSResponse adds the reply's kms.* fields to f and says what the
// reply held (the stub read in the host's byte order).
func appendKMSResponse(f []zap.Field, c *assoc.Call, kc *kmsCall) ([]zap.Field, kmsReply) {
	var r kmsReply
	blob, hr, err := kms.ParseResponseStub(c.KMS.RespStub, kms.Encoding{NDR64: c.NDR64, BigEndian: c.KMS.RespBigEndian})
	if err != nil {
		return append(f, zap.String("kmsproxy.kms_reply_error", err.Error())), r
	}
	r.stubOK, r.hr = true, hr
	f = append(f, zap.String("kms.status", event.HRESULTText(hr)))
	if hr != 0 || kc.decodeErr != nil {
		return f, r
	}
	r.decodeErr = kms.DecodeResponse(blob, kc.req, &r.resp)
	return event.AppendKMSResponse(f, &r.resp, r.decodeErr), r
}

var kmsUUIDText = rpcparse.KMSInterfaceUUID.String()
