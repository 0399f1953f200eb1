package syslog

// CEF (ArcSight Common Event Format, rev 25) is the sink's alternative
// wire format, for collectors (ArcSight, Sentinel's CommonSecurityLog,
// QRadar) that map CEF keys rather than parse JSON. The message is
//
//	<PRI>1 TIMESTAMP HOSTNAME kmsproxy PROCID MSGID - CEF:0|kmsproxy|kmsproxy|VERSION|event.action|message|SEVERITY|EXTENSION
//
// and cefFields below is the whole mapping (docs/siem.md repeats it).

import (
	"strconv"
	"strings"
	"time"

	"github.com/kmsproxy/kmsproxy/event"
)

// cefField maps one ECS field onto a CEF extension key; label, when set,
// is sent as the key's "…Label" companion (cs1Label=rule.name).
type cefField struct {
	key, field, label string
}

var cefFields = []cefField{
	{"src", "source.ip", ""},
	{"spt", "source.port", ""},
	{"dst", "destination.ip", ""},
	{"dpt", "destination.port", ""},
	{"proto", "network.transport", ""},
	{"app", "network.protocol", ""},
	{"act", "event.action", ""},
	{"outcome", "event.outcome", ""},
	{"reason", "event.reason", ""},
	{"cat", "event.kind", ""},
	{"in", "source.bytes", ""},
	{"out", "destination.bytes", ""},
	{"shost", "kms.workstation", ""},
	{"cs1", "rule.name", "rule.name"},
	{"cs2", "kmsproxy.zone", "kmsproxy.zone"},
	{"cs3", "dcerpc.interface.name", "dcerpc.interface.name"},
	{"cs4", "network.community_id", "network.community_id"},
	{"cs5", "kms.client_machine_id", "kms.client_machine_id"},
	{"cs6", "kms.application", "kms.application"},
	{"cn1", "dcerpc.opnum", "dcerpc.opnum"},
	{"cn2", "kmsproxy.connection_id", "kmsproxy.connection_id"},
	{"cn3", "kms.version", "kms.version"},
	{"flexString1", "kms.sku", "kms.sku"},
	{"flexString2", "kmsproxy.kms_result", "kmsproxy.kms_result"},
}

// cefSeverity is the CEF severity (0-10) per action; others follow the level.
var cefSeverity = map[string]int{
	event.ActionConnectionRefused:   5,
	event.ActionBindRefused:         5,
	event.ActionRequestRefused:      5,
	event.ActionRateLimited:         5,
	event.ActionProtocolViolation:   6,
	event.ActionKMSClockSkew:        6,
	event.ActionLogEventsDropped:    6,
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
		v, ok := scalarText(ev[m.field])
		if !ok || v == "" {
			continue
		}
		if m.key == "proto" {
			v = strings.ToUpper(v)
		}
		dst = append(dst, ' ')
		dst = append(dst, m.key...)
		dst = append(dst, '=')
		dst = appendCEFValue(dst, v)
		if m.label != "" {
			dst = append(dst, ' ')
			dst = append(dst, m.key...)
			dst = append(dst, "Label="...)
			dst = appendCEFValue(dst, m.label)
		}
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
