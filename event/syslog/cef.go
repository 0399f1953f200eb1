package syslog

// CEF (ArcSight Common Event Format, rev 25) is the sink's alternative
// wire format, for collectors (ArcSight, Sentinel's CommonSecurityLog,
// QRadar, Splunk through SC4S) that map CEF keys rather than parse JSON.
// The message is
//
//	<PRI>1 TIMESTAMP HOSTNAME kmsproxy PROCID MSGID - CEF:0|kmsproxy|kmsproxy|VERSION|event.action|message|SEVERITY|EXTENSION
//
// The Signature ID (deviceEventClassId) is event.action, which every
// search keys on; act is the verdict (cefVerdict), in the words the ASIM
// NetworkSession parsers and ArcSight content map (allow, deny, drop);
// cefFields and cefSeverity are the rest of the mapping.
// docs/siem-sentinel.md and docs/siem-splunk.md repeat it, and
// test/siem holds one golden record per action.

import (
	"strconv"
	"strings"
	"time"

	"github.com/kmsproxy/kmsproxy/event"
)

// cefField maps one event field onto a CEF extension key; label, when
// set, is sent as the key's "…Label" companion (cs1Label=rule.name). A
// field starting with '@' is derived (cefValue). Each key has one meaning
// for every action.
type cefField struct {
	key, field, label string
}

// cefFields are the extension keys after rt and dvchost, in the order
// written; a key whose value is empty is left out.
var cefFields = []cefField{
	{"src", "source.ip", ""},
	{"spt", "source.port", ""},
	{"dst", "destination.ip", ""},
	{"dpt", "destination.port", ""},
	{"proto", "@transport", ""}, // network.transport, upper case
	{"app", "network.protocol", ""},
	{"act", "@verdict", ""},
	{"outcome", "@outcome", ""},
	{"reason", "event.reason", ""},
	{"cat", "event.kind", ""},
	{"in", "source.bytes", ""},       // CEF bytesIn: source to destination
	{"out", "destination.bytes", ""}, // CEF bytesOut: destination to source
	{"start", "@start", ""},
	{"end", "@end", ""},
	{"shost", "kms.workstation", ""},
	{"destinationServiceName", "dcerpc.interface.name", ""},
	{"msg", "error.message", ""},
	{"cs1", "rule.name", "rule.name"},
	{"cs2", "@zone", "kmsproxy.zone"},
	{"cs3", "event.action", "event.action"},
	{"cs4", "network.community_id", "network.community_id"},
	{"cs5", "kms.client_machine_id", "kms.client_machine_id"},
	{"cs6", "kms.application", "kms.application"},
	{"cn1", "dcerpc.opnum", "dcerpc.opnum"},
	{"cn2", "kmsproxy.connection_id", "kmsproxy.connection_id"},
	{"cn3", "kms.version", "kms.version"},
	{"flexString1", "kms.sku", "kms.sku"},
	{"flexString2", "kmsproxy.kms_result", "kmsproxy.kms_result"},
}

// cefValue is the value of a cefFields field in ev; t is the event's time.
func cefValue(field, action string, ev map[string]any, t time.Time) (string, bool) {
	switch field {
	case "@transport":
		v, ok := scalarText(ev["network.transport"])
		return strings.ToUpper(v), ok
	case "@verdict":
		v := cefVerdict(action, ev)
		return v, v != ""
	case "@outcome":
		// success or failure; an unknown outcome (the alerts, shadow
		// decisions) is left out rather than sent as a third word.
		o, _ := ev["event.outcome"].(string)
		return o, o == event.OutcomeSuccess || o == event.OutcomeFailure
	case "@zone":
		// The source's zone: observer.ingress.zone, or kmsproxy.zone (the
		// same value) on an event without it.
		if z, ok := scalarText(ev["observer.ingress.zone"]); ok {
			return z, true
		}
		return scalarText(ev["kmsproxy.zone"])
	case "@start", "@end":
		// The span of an event with a duration (connection-closed: the
		// connection; state-restored: the time degraded): end is the
		// event's time, start that less event.duration (ns); epoch ms.
		v, _ := scalarText(ev["event.duration"])
		d, err := strconv.ParseInt(v, 10, 64)
		if err != nil || d < 0 {
			return "", false
		}
		if field == "@start" {
			t = t.Add(-time.Duration(d))
		}
		return strconv.FormatInt(t.UnixMilli(), 10), true
	}
	return scalarText(ev[field])
}

// Verdicts: the CEF act values. ASIM's generic CEF parser for
// NetworkSession maps exactly these words to DvcAction Allow, Deny and
// Drop (and derives EventResult Success from Allow alone); none of
// kmsproxy's action names is one of its words.
const (
	verdictAllow = "allow" // the traffic went through
	verdictDeny  = "deny"  // refused with an answer: bind_nak or fault, then the close
	verdictDrop  = "drop"  // refused by closing the connection without an answer
)

// cefVerdict is an event's act: what the proxy did with the traffic the
// event is about, "" for the events that decide no traffic (config
// events, log-events-dropped, the shared state's, process messages),
// which carry no act.
func cefVerdict(action string, ev map[string]any) string {
	switch action {
	// The allowed path; connection-closed ends a connection that was let
	// in, and the alerts only report: the activation went on.
	case event.ActionConnectionAccepted, event.ActionBindAllowed, event.ActionKMSActivation,
		event.ActionConnectionClosed, event.ActionKMSDuplicateCMID, event.ActionKMSClockSkew:
		return verdictAllow
	case event.ActionBindRefused, event.ActionRequestRefused, event.ActionRateLimited:
		// kmsproxy.on_deny says what the client got; reject is on_deny's
		// default.
		if ev["kmsproxy.on_deny"] == "drop" {
			return verdictDrop
		}
		return verdictDeny
	case event.ActionUpstreamUnavailable: // bind_nak "temporary congestion", whatever on_deny says
		return verdictDeny
	case event.ActionConnectionRefused, // closed at accept, nothing read
		event.ActionProtocolViolation: // closed without an answer
		return verdictDrop
	case event.ActionDNSQuery: // answered from the zones
		return verdictAllow
	case event.ActionDNSRefused: // REFUSED, FORMERR, NOTIMP or BADVERS; or no answer at all
		if _, answered := ev["dns.response_code"]; answered {
			return verdictDeny
		}
		return verdictDrop
	case event.ActionShadowDecision:
		// What the live policy did; the candidate's verdict is in the JSON.
		switch v := ev["kmsproxy.live.verdict"]; v {
		case verdictAllow, verdictDeny:
			return v.(string)
		}
	}
	return ""
}

// cefSeverity is the CEF severity (0-10: 0-3 Low, 4-6 Medium, 7-8 High,
// 9-10 Very-High) of each action; a process message follows its level.
var cefSeverity = map[string]int{
	event.ActionConnectionAccepted:  1,
	event.ActionBindAllowed:         1,
	event.ActionConnectionClosed:    1,
	event.ActionDNSQuery:            1,
	event.ActionKMSActivation:       3,
	event.ActionShadowDecision:      3,
	event.ActionConfigReloaded:      3,
	event.ActionStateRestored:       3,
	event.ActionConnectionRefused:   5,
	event.ActionBindRefused:         5,
	event.ActionRequestRefused:      5,
	event.ActionRateLimited:         5,
	event.ActionKMSClockSkew:        5,
	event.ActionDNSRefused:          5,
	event.ActionPolicyAllowsNothing: 6,
	event.ActionLogEventsDropped:    6,
	event.ActionStateDegraded:       6,
	event.ActionProtocolViolation:   7,
	event.ActionUpstreamUnavailable: 7,
	event.ActionConfigReloadFailed:  7,
	event.ActionKMSDuplicateCMID:    8,
}

func cefLevelSeverity(sev int) int {
	switch sev { // RFC 5424 severity → CEF
	case 7:
		return 1
	case 6:
		return 3
	case 4:
		return 6
	case 3:
		return 8
	}
	return 10
}

// appendCEF appends the syslog header with NILVALUE structured data and
// the CEF record. Every value is bounded (maxSDValue), so a record stays
// far below MaxMessage and is never cut.
func (f *syslogFormatter) appendCEF(dst []byte, e *syslogEntry, ev map[string]any) []byte {
	action, _ := ev["event.action"].(string)
	message, _ := ev["message"].(string)
	dst = f.appendHeader(dst, e, action)
	dst = append(dst, "- CEF:0|kmsproxy|kmsproxy|"...)
	dst = appendCEFHeader(dst, f.version)
	dst = append(dst, '|')
	sig := action
	if sig == "" {
		sig = "log"
	}
	dst = appendCEFHeader(dst, sig)
	dst = append(dst, '|')
	dst = appendCEFHeader(dst, message)
	dst = append(dst, '|')
	sev, ok := cefSeverity[action]
	if !ok {
		sev = cefLevelSeverity(severity(e.level))
	}
	dst = strconv.AppendInt(dst, int64(sev), 10)
	dst = append(dst, '|')
	t := e.time
	if t.IsZero() {
		t = time.Now()
	}
	dst = append(dst, "rt="...)
	dst = strconv.AppendInt(dst, t.UnixMilli(), 10)
	dst = append(dst, " dvchost="...)
	dst = appendCEFValue(dst, f.hostname)
	for _, m := range cefFields {
		if v, ok := cefValue(m.field, action, ev, t); ok && v != "" {
			dst = appendCEFPair(dst, m.key, v, m.label)
		}
	}
	return dst
}

// appendCEFPair appends " key=value" and, with a label, " keyLabel=label".
func appendCEFPair(dst []byte, key, value, label string) []byte {
	dst = append(dst, ' ')
	dst = append(dst, key...)
	dst = append(dst, '=')
	dst = appendCEFValue(dst, value)
	if label != "" {
		dst = append(dst, ' ')
		dst = append(dst, key...)
		dst = append(dst, "Label="...)
		dst = appendCEFValue(dst, label)
	}
	return dst
}

// appendCEFHeader escapes a header field: '\' and '|' get a backslash;
// a line break, which would end the record, becomes a space.
func appendCEFHeader(dst []byte, s string) []byte {
	if len(s) > maxSDValue {
		s = string(truncateUTF8([]byte(s), maxSDValue))
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\', '|':
			dst = append(dst, '\\', c)
		case '\r', '\n':
			dst = append(dst, ' ')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// appendCEFValue escapes an extension value: '\' and '=' get a backslash,
// CR and LF become the two-character sequences \r and \n. Values are
// bounded like structured-data values.
func appendCEFValue(dst []byte, s string) []byte {
	if len(s) > maxSDValue {
		s = string(truncateUTF8([]byte(s), maxSDValue))
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\', '=':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}
