package proxy

import (
	"container/list"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/assoc"
	"github.com/kmsproxy/kmsproxy/config"
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
	f := eventFields(ActionKMSActivation, "unknown", "")
	f = append(f, zap.String("rule.name", kc.rule), zap.Uint32("dcerpc.call_id", c.ID),
		zap.Uint16("dcerpc.opnum", c.Opnum), zap.Uint16("dcerpc.context_id", c.CtxID),
		zap.String("dcerpc.interface.name", "kms"), zap.String("dcerpc.interface.uuid", kmsUUIDText))
	f = appendKMSRequestFields(f, kc)
	result := "no-reply"
	switch {
	case !answered:
	case c.KMS.Fault:
		result = "fault"
		f = append(f, zap.String("kms.status", "0x"+strconv.FormatUint(uint64(c.KMS.FaultStatus), 16)))
	default:
		var hr uint32
		var ok bool
		f, hr, ok = appendKMSResponse(f, c, kc)
		switch {
		case !ok:
			result = "malformed-reply"
		case hr == 0:
			result = "success"
		default:
			result = "refused-by-host"
		}
	}
	outcome := "failure"
	if result == "success" {
		outcome = "success"
	}
	f[4] = zap.String("event.outcome", outcome)
	f = append(f, zap.String("kmsproxy.kms_result", result))
	s.log.Info(ActionKMSActivation, f...)
	s.srv.metrics.KMSActivations.WithLabelValues(applicationLabel(kc), versionLabel(kc), result).Inc()
}

// appendKMSResponse adds the reply's kms.* fields to f and reports its
// HRESULT and whether the reply stub decoded (in the host's byte order).
func appendKMSResponse(f []zap.Field, c *assoc.Call, kc *kmsCall) ([]zap.Field, uint32, bool) {
	blob, hr, err := kms.ParseResponseStub(c.KMS.RespStub, kms.Encoding{NDR64: c.NDR64, BigEndian: c.KMS.RespBigEndian})
	if err != nil {
		return append(f, zap.String("kmsproxy.kms_reply_error", err.Error())), 0, false
	}
	f = append(f, zap.String("kms.status", hresultText(hr)))
	if hr != 0 || kc.decodeErr != nil {
		return f, hr, true
	}
	return appendKMSResponseFields(f, blob, kc.req), hr, true
}

var kmsUUIDText = rpcparse.KMSInterfaceUUID.String()

func hresultText(hr uint32) string {
	if hr == 0 {
		return hresultOK
	}
	return formatHRESULT(hr)
}

var hresultOK = formatHRESULT(0)

func formatHRESULT(hr uint32) string {
	const hexDigits = "0123456789abcdef"
	b := make([]byte, 0, 64)
	b = append(b, '0', 'x')
	for shift := 28; shift >= 0; shift -= 4 {
		b = append(b, hexDigits[hr>>uint(shift)&0xf])
	}
	if n := kms.HRESULTName(hr); n != "" {
		b = append(b, ' ')
		b = append(b, n...)
	}
	return string(b)
}

func applicationLabel(kc *kmsCall) string {
	if kc.decodeErr != nil {
		return "malformed"
	}
	if n := kms.ApplicationName(kc.req.ApplicationID); n != "" {
		return n
	}
	return "other"
}

func versionLabel(kc *kmsCall) string {
	switch kc.req.MajorVersion {
	case 4, 5, 6:
		return strconv.Itoa(int(kc.req.MajorVersion))
	}
	return "other"
}

// appendKMSRequestFields adds the kms.* fields of DESIGN Events taken from a
// request to f.
func appendKMSRequestFields(f []zap.Field, kc *kmsCall) []zap.Field {
	if kc.decodeErr != nil {
		return append(f,
			zap.String("kms.error", kms.Reason(kc.decodeErr)),
			zap.String("error.message", kc.decodeErr.Error()),
		)
	}
	r := kc.req
	return append(f,
		zap.Uint16("kms.version", r.MajorVersion),
		zap.String("kms.application", nameOr(kms.ApplicationName(r.ApplicationID), r.ApplicationID)),
		zap.String("kms.application_id", r.ApplicationID.String()),
		zap.String("kms.sku", nameOr(kms.SKUName(r.SKUID), r.SKUID)),
		zap.String("kms.sku_id", r.SKUID.String()),
		zap.String("kms.kms_counted_id", r.KMSCountedID.String()),
		zap.String("kms.kms_counted_name", nameOr(kms.KMSCountedIDName(r.KMSCountedID), r.KMSCountedID)),
		zap.String("kms.client_machine_id", r.CMID.String()),
		zap.String("kms.workstation", r.Workstation()),
		zap.String("kms.license_status", kms.LicenseStatusName(r.LicenseStatus)),
		zap.Time("kms.client_time", r.Time()),
		zap.Uint32("kms.required_count", r.RequiredCount),
		zap.Bool("kms.virtual_machine", r.VMInfo == 1),
	)
}

func nameOr(name string, id rpcparse.UUID) string {
	if name != "" {
		return name
	}
	return id.String()
}

// ---- detection: duplicate CMIDs and clock skew ----

// kmsWatch remembers recent client machine IDs to spot clones and
// spoofing: the same CMID from another source or workstation within the
// window. Memory is bounded by KMSWatch.MaxTracked (oldest evicted).
type kmsWatch struct {
	mu    sync.Mutex
	byID  map[rpcparse.UUID]*list.Element
	order *list.List // front = most recent
}

type cmidSeen struct {
	cmid        rpcparse.UUID
	src         netip.Addr
	workstation string
	seen        time.Time
}

func newKMSWatch() *kmsWatch {
	return &kmsWatch{byID: make(map[rpcparse.UUID]*list.Element), order: list.New()}
}

func (w *kmsWatch) observe(s *session, rt *config.Runtime, kc *kmsCall) {
	cfg := rt.Config.KMSWatch
	now := time.Now()
	r := kc.req
	if skew := now.Sub(r.Time()); cfg.MaxClockSkew > 0 && (skew > cfg.MaxClockSkew || -skew > cfg.MaxClockSkew) {
		f := eventFields(ActionKMSClockSkew, "unknown", "clock-skew")
		f = append(f, zap.String("rule.name", kc.rule), zap.Duration("kms.clock_skew", skew),
			zap.String("kms.client_machine_id", r.CMID.String()), zap.String("kms.workstation", r.Workstation()),
			zap.Time("kms.client_time", r.Time()))
		s.log.Warn(ActionKMSClockSkew, f...)
		s.srv.metrics.Decisions.WithLabelValues(ActionKMSClockSkew, "clock-skew").Inc()
	}
	if cfg.MaxTracked <= 0 {
		return
	}
	ws := r.Workstation()
	src := s.src.Addr()
	w.mu.Lock()
	var prev cmidSeen
	dup := false
	if e, ok := w.byID[r.CMID]; ok {
		old := e.Value.(*cmidSeen)
		if now.Sub(old.seen) <= cfg.DuplicateWindow && (old.src != src || old.workstation != ws) {
			prev, dup = *old, true
		}
		old.src, old.workstation, old.seen = src, ws, now
		w.order.MoveToFront(e)
	} else {
		w.byID[r.CMID] = w.order.PushFront(&cmidSeen{cmid: r.CMID, src: src, workstation: ws, seen: now})
		for w.order.Len() > cfg.MaxTracked {
			last := w.order.Back()
			delete(w.byID, last.Value.(*cmidSeen).cmid)
			w.order.Remove(last)
		}
	}
	w.mu.Unlock()
	if dup {
		f := eventFields(ActionKMSDuplicateCMID, "unknown", "duplicate-cmid")
		f = append(f, zap.String("rule.name", kc.rule),
			zap.String("kms.client_machine_id", r.CMID.String()), zap.String("kms.workstation", ws),
			zap.String("kmsproxy.previous.source_ip", prev.src.String()),
			zap.String("kmsproxy.previous.workstation", prev.workstation),
			zap.Time("kmsproxy.previous.seen", prev.seen))
		s.log.Warn(ActionKMSDuplicateCMID, f...)
		s.srv.metrics.Decisions.WithLabelValues(ActionKMSDuplicateCMID, "duplicate-cmid").Inc()
	}
}

// appendKMSResponseFields adds the kms.* fields taken from a successful
// reply to f.
func appendKMSResponseFields(f []zap.Field, blob []byte, req *kms.Request) []zap.Field {
	var r kms.Response
	if err := kms.DecodeResponse(blob, req, &r); err != nil {
		return append(f, zap.String("kms.reply_error", kms.Reason(err)))
	}
	f = append(f,
		zap.Uint32("kms.current_count", r.CurrentCount),
		zap.String("kms.epid", r.EPID()),
		zap.Uint32("kms.activation_interval", r.ActivationInterval),
		zap.Uint32("kms.renewal_interval", r.RenewalInterval),
		zap.Bool("kms.reply_cmid_match", r.CMIDMatch),
		zap.Bool("kms.reply_time_match", r.TimeMatch),
	)
	switch r.MajorVersion {
	case 4:
		f = append(f, zap.Bool("kms.reply_verified", r.MACVerified))
	case 5:
		f = append(f, zap.Bool("kms.reply_verified", r.DigestVerified && r.IVMatch))
	case 6:
		f = append(f, zap.Bool("kms.reply_verified", r.HMACVerified))
	}
	return f
}
