package siem

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/event/syslog"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// stdoutLines returns the proxy's stdout events, one JSON object each.
func stdoutLines(e *fixture.Env) []string {
	return strings.Split(strings.TrimSpace(e.Log.String()), "\n")
}

func sum(pdus [][]byte) int {
	n := 0
	for _, p := range pdus {
		n += len(p)
	}
	return n
}

// An allowed Windows activation and a refused SAMR bind, shipped to a
// real rsyslog over UDP and TCP (RFC 5424) and TCP (CEF): every stdout
// event arrives once, in order, unchanged, and parses back field by field.
func TestEventsAtRsyslog(t *testing.T) {
	rs := startRsyslog(t)
	for _, c := range []struct{ name, transport, format string }{
		{"udp-rfc5424", "udp", "rfc5424"},
		{"tcp-rfc5424", "tcp", "rfc5424"},
		{"tcp-cef", "tcp", "cef"},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr := rs.UDPAddr
			if c.transport == "tcp" {
				addr = rs.TCPAddr
			}
			before := len(rs.messages(c.transport))
			s := newSink(t, syslog.Options{Address: c.transport + "://" + addr, Format: c.format, Level: "info", Version: "9.9.9"}, nil)
			e := fixture.StartEnvWith(t, fixture.Replay, baseConfig+detailLog, s.Opts) // every event of the allowed path
			activate(t, e, srcDMZ)
			waitCount(t, e, "connection-closed", 1)
			refusedSAMRBind(t, e, srcDMZ)
			waitCount(t, e, "connection-closed", 2)
			s.Sink.Close() // flushes the queue
			want := stdoutLines(e)
			got := rs.waitMessages(c.transport, before+len(want))[before:]
			time.Sleep(200 * time.Millisecond)
			if n := len(rs.messages(c.transport)) - before; n != len(want) {
				t.Fatalf("rsyslog got %d messages, stdout has %d events", n, len(want))
			}
			if st := s.Sink.Stats(); st.Dropped != 0 || st.Sent != uint64(len(want)) {
				t.Fatalf("sink stats %+v, want %d sent, none dropped", st, len(want))
			}
			var actions []string
			for i, line := range got {
				m, err := parse5424(line)
				if err != nil {
					t.Fatal(err)
				}
				ev := decodeJSON(t, want[i])
				actions = append(actions, str(ev["event.action"]))
				if c.format == "cef" {
					checkCEF(t, m, ev)
					continue
				}
				if m.Msg != want[i] {
					t.Fatalf("message %d MSG differs from stdout:\n got %s\nwant %s", i, m.Msg, want[i])
				}
				checkMessage(t, m, ev)
			}
			if strings.Join(actions, " ") != "connection-accepted bind-allowed bind-allowed kms-clock-skew kms-activation connection-closed "+
				"connection-accepted bind-refused connection-closed" {
				t.Fatalf("actions at rsyslog: %v", actions)
			}
			if c.format == "cef" {
				if out := os.Getenv("KMSPROXY_SIEM_SAMPLES"); out != "" {
					if err := os.WriteFile(out+".cef", []byte(strings.Join(got, "\n")+"\n"), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				return
			}
			msgs := parseAll(t, got)
			act := msgs.first(t, "kms-activation")
			expect(t, act, map[string]string{
				"event.outcome": "success", "rule.name": "dmz-activation", "kmsproxy.zone": "dmz", "source.ip": srcDMZ,
				"dcerpc.interface.name": "kms", "dcerpc.opnum": "0", "kms.version": "6", "kms.application": "windows",
				"kmsproxy.kms_result": "success", "event.kind": "event",
			})
			closed := msgs.first(t, "connection-closed")
			expect(t, closed, map[string]string{
				"source.bytes": strconv.Itoa(sum(win.C2S)), "destination.bytes": strconv.Itoa(sum(win.S2C)),
				"kmsproxy.client_pdus": "3", "kmsproxy.host_pdus": "3", "event.outcome": "success",
			})
			if d, err := strconv.ParseInt(scalar(closed.ev["event.duration"]), 10, 64); err != nil || d <= 0 || d > int64(10*time.Second) {
				t.Errorf("connection-closed event.duration %v (nanoseconds)", closed.ev["event.duration"])
			}
			ref := msgs.first(t, "bind-refused")
			expect(t, ref, map[string]string{
				"event.outcome": "failure", "event.reason": "interface-not-allowed", "dcerpc.interface.name": "samr",
				"source.ip": srcDMZ, "kmsproxy.zone": "dmz", "destination.ip": "127.0.0.1",
			})
			if ref.m.PRI != 16*8+6 {
				t.Errorf("bind-refused PRI %d", ref.m.PRI)
			}
		})
	}
}

func decodeJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	m := &syslogMsg{Msg: s}
	ev, err := m.event()
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

type received struct {
	m  *syslogMsg
	ev map[string]any
}

type receivedSet []received

func parseAll(t *testing.T, lines []string) receivedSet {
	t.Helper()
	var out receivedSet
	for _, l := range lines {
		m, err := parse5424(l)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := m.event()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, received{m, ev})
	}
	return out
}

func (rs receivedSet) first(t *testing.T, action string) received {
	t.Helper()
	for _, r := range rs {
		if r.m.MsgID == action {
			return r
		}
	}
	t.Fatalf("no %s message", action)
	return received{}
}

// expect checks event fields, and the same fields in structured data
// where the sink copies them there.
func expect(t *testing.T, r received, want map[string]string) {
	t.Helper()
	if r.m == nil {
		return // already reported missing
	}
	sd := r.m.SD["kmsproxy@32473"]
	for k, v := range want {
		if got := scalar(r.ev[k]); got != v {
			t.Errorf("%s: %s = %q, want %q", r.m.MsgID, k, got, v)
		}
		if got, ok := sd[k]; ok && got != v {
			t.Errorf("%s: SD %s = %q, want %q", r.m.MsgID, k, got, v)
		}
	}
}

// checkCEF checks a CEF message against the stdout event it came from.
func checkCEF(t *testing.T, m *syslogMsg, ev map[string]any) {
	t.Helper()
	if len(m.SD) != 0 {
		t.Errorf("CEF message with structured data: %s", m.Raw)
	}
	action := str(ev["event.action"])
	if m.MsgID != action && !(action == "" && m.MsgID == "-") {
		t.Errorf("MSGID %q, want %q", m.MsgID, action)
	}
	r, err := parseCEF(m.Msg)
	if err != nil {
		t.Fatalf("%v in %s", err, m.Raw)
	}
	sig := action
	if sig == "" {
		sig = "log"
	}
	if h := r.Header; h[0] != "0" || h[1] != "kmsproxy" || h[2] != "kmsproxy" || h[3] != "9.9.9" || h[4] != sig || h[5] != str(ev["message"]) {
		t.Errorf("CEF header %q for %s", h, action)
	}
	if sev, err := strconv.Atoi(r.Header[6]); err != nil || sev < 0 || sev > 10 {
		t.Errorf("CEF severity %q", r.Header[6])
	}
	ts, _ := time.Parse("2006-01-02T15:04:05.000Z0700", str(ev["@timestamp"]))
	if r.Ext["rt"] != strconv.FormatInt(ts.UnixMilli(), 10) {
		t.Errorf("rt %s, @timestamp %v", r.Ext["rt"], ev["@timestamp"])
	}
	for key, field := range map[string]string{
		"src": "source.ip", "spt": "source.port", "dst": "destination.ip", "dpt": "destination.port",
		"reason": "event.reason", "app": "network.protocol", "cat": "event.kind",
		"cs1": "rule.name", "cs2": "kmsproxy.zone", "cs3": "event.action", "cs4": "network.community_id",
		"cs5": "kms.client_machine_id", "cs6": "kms.application", "cn1": "dcerpc.opnum", "cn2": "kmsproxy.connection_id",
		"cn3": "kms.version", "in": "source.bytes", "out": "destination.bytes", "shost": "kms.workstation",
		"destinationServiceName": "dcerpc.interface.name", "msg": "error.message",
		"flexString1": "kms.sku", "flexString2": "kmsproxy.kms_result",
	} {
		if got, want := r.Ext[key], scalar(ev[field]); got != want {
			t.Errorf("%s: CEF %s=%q, event %s=%q", action, key, got, field, want)
		}
		if label, ok := r.Ext[key+"Label"]; ok && label != field {
			t.Errorf("%sLabel=%q, want %q", key, label, field)
		}
	}
	if o := str(ev["event.outcome"]); (o == "success" || o == "failure") && r.Ext["outcome"] != o || o == "unknown" && r.Ext["outcome"] != "" {
		t.Errorf("%s: outcome=%q, event.outcome %q", action, r.Ext["outcome"], o)
	}
	if want := wantVerdict(action, ev); r.Ext["act"] != want {
		t.Errorf("%s: act=%q, want %q", action, r.Ext["act"], want)
	}
	if ev["network.transport"] == "tcp" && r.Ext["proto"] != "TCP" {
		t.Errorf("proto %q", r.Ext["proto"])
	}
	checkECS(t, m.Raw, ev)
}
