package syslog

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kmsproxy/kmsproxy/event"
)

var testTime = time.Date(2025, 3, 9, 14, 7, 5, 123456789, time.FixedZone("CET", 3600))

func testFormatter(cef bool) *syslogFormatter {
	return &syslogFormatter{facility: 16, hostname: "gw1", procID: "4242", cef: cef, version: "1.2.3", max: MaxMessage}
}

const refusalJSON = `{"log.level":"info","@timestamp":"2025-03-09T14:07:05.123+0100","message":"bind-refused",` +
	`"event.kind":"event","event.category":["network"],"event.type":["protocol","denied"],"event.action":"bind-refused",` +
	`"event.outcome":"failure","event.reason":"interface-not-allowed","source.ip":"192.0.2.7","source.port":50123,` +
	`"destination.ip":"192.0.2.1","destination.port":1688,"network.transport":"tcp","network.protocol":"dcerpc",` +
	`"network.community_id":"1:abc=","rule.name":"we\"ird]\\rule","kmsproxy.zone":"dmz","kmsproxy.connection_id":7,` +
	`"dcerpc.interface.name":"samr","dcerpc.opnum":0}`

func TestRFC5424Message(t *testing.T) {
	e := syslogEntry{level: zapcore.InfoLevel, time: testTime, json: []byte(refusalJSON)}
	got := string(testFormatter(false).format(nil, &e, false))
	want := `<134>1 2025-03-09T13:07:05.123456Z gw1 kmsproxy 4242 bind-refused [kmsproxy@32473` +
		` event.action="bind-refused" event.outcome="failure" event.reason="interface-not-allowed" event.kind="event"` +
		` source.ip="192.0.2.7" source.port="50123" destination.ip="192.0.2.1" destination.port="1688"` +
		` network.transport="tcp" network.protocol="dcerpc" network.community_id="1:abc="` +
		` rule.name="we\"ird\]\\rule" kmsproxy.zone="dmz" kmsproxy.connection_id="7"` +
		` dcerpc.interface.name="samr" dcerpc.opnum="0"] ` + refusalJSON
	if got != want {
		t.Fatalf("message\n got %s\nwant %s", got, want)
	}
}

func TestRFC5424NoActionNoFields(t *testing.T) {
	e := syslogEntry{level: zapcore.ErrorLevel, time: testTime, json: []byte(`{"message":"hello"}`)}
	got := string(testFormatter(false).format(nil, &e, false))
	if want := `<131>1 2025-03-09T13:07:05.123456Z gw1 kmsproxy 4242 - - {"message":"hello"}`; got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
}

func TestSeverityAndPRI(t *testing.T) {
	for _, c := range []struct {
		l   zapcore.Level
		pri string
	}{
		{zapcore.DebugLevel, "<135>"}, {zapcore.InfoLevel, "<134>"}, {zapcore.WarnLevel, "<132>"},
		{zapcore.ErrorLevel, "<131>"}, {zapcore.DPanicLevel, "<130>"}, {zapcore.FatalLevel, "<130>"},
	} {
		e := syslogEntry{level: c.l, time: testTime, json: []byte(`{}`)}
		if got := string(testFormatter(false).format(nil, &e, false)); !strings.HasPrefix(got, c.pri+"1 ") {
			t.Errorf("%v: %s, want PRI %s", c.l, got, c.pri)
		}
	}
}

func TestSDValueEscaping(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`plain`, `plain`},
		{`a"b`, `a\"b`},
		{`a\b`, `a\\b`},
		{`a]b`, `a\]b`},
		{`[x]`, `[x\]`}, // '[' needs no escape (RFC 5424 6.3.3)
		{`\"]`, `\\\"\]`},
		{"ünï", "ünï"},
	} {
		if got := string(appendSDValue(nil, c.in)); got != c.want {
			t.Errorf("%q: got %q, want %q", c.in, got, c.want)
		}
	}
	long := strings.Repeat("é", maxSDValue) // 2 bytes each
	if got := appendSDValue(nil, long); len(got) > maxSDValue || !utf8.Valid(got) {
		t.Errorf("long value: %d bytes, valid %v", len(got), utf8.Valid(got))
	}
}

func TestHeaderTokens(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"", 32, "-"}, {"kms-activation", 32, "kms-activation"}, {"a b\tc", 32, "a_b_c"},
		{strings.Repeat("x", 40), 32, strings.Repeat("x", 32)}, {"hôst", 255, "h__st"},
	} {
		if got := headerToken(c.in, c.n); got != c.want {
			t.Errorf("headerToken(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestOctetCounting(t *testing.T) {
	msgs := []string{"<134>1 - - - - - - a", "", "x y z ü", strings.Repeat("m", 70000)}
	var stream []byte
	for _, m := range msgs {
		stream = appendOctetCounted(stream, []byte(m))
	}
	if !strings.HasPrefix(string(stream), "20 <134>1 ") {
		t.Fatalf("frame starts %q", stream[:12])
	}
	r := bufio.NewReader(strings.NewReader(string(stream)))
	for i, want := range msgs {
		got, err := readOctetFrame(r)
		if err != nil || got != want {
			t.Fatalf("frame %d: %v, %d bytes, want %d", i, err, len(got), len(want))
		}
	}
	if _, err := readOctetFrame(r); err != io.EOF {
		t.Fatalf("trailing bytes: %v", err)
	}
}

// readOctetFrame is an independent RFC 6587 3.4.1 reader.
func readOctetFrame(r *bufio.Reader) (string, error) {
	n, err := r.ReadString(' ')
	if err != nil {
		return "", err
	}
	size, err := strconv.Atoi(strings.TrimSuffix(n, " "))
	if err != nil {
		return "", err
	}
	b := make([]byte, size)
	_, err = io.ReadFull(r, b)
	return string(b), err
}

func TestOversizedMessageIsCutAtRuneBoundary(t *testing.T) {
	big := `{"event.action":"config-reload-failed","message":"` + strings.Repeat("€", 30000) + `"}`
	e := syslogEntry{level: zapcore.ErrorLevel, time: testTime, json: []byte(big)}
	f := testFormatter(false)
	udp := f.format(nil, &e, false)
	if len(udp) > MaxMessage || !utf8.Valid(udp) {
		t.Fatalf("datagram %d bytes (max %d), valid UTF-8 %v", len(udp), MaxMessage, utf8.Valid(udp))
	}
	if len(udp) < MaxMessage-3 {
		t.Fatalf("cut too early: %d bytes", len(udp))
	}
	if !strings.Contains(string(udp), ` kmsproxy.truncated="true"]`) {
		t.Fatalf("no truncation mark: %s", udp[:200])
	}
	framed := string(f.format(nil, &e, true))
	if want := strconv.Itoa(len(udp)) + " " + string(udp); framed != want {
		t.Fatal("framed message is not the octet-counted datagram")
	}
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{{"abc", 5, "abc"}, {"abc", 2, "ab"}, {"a€", 3, "a"}, {"a€", 4, "a€"}, {"😀", 3, ""}, {"ab", 0, ""}} {
		if got := string(truncateUTF8([]byte(c.in), c.n)); got != c.want {
			t.Errorf("truncateUTF8(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
}

func TestCEFMessage(t *testing.T) {
	e := syslogEntry{level: zapcore.InfoLevel, time: testTime, json: []byte(refusalJSON)}
	got := string(testFormatter(true).format(nil, &e, false))
	want := `<134>1 2025-03-09T13:07:05.123456Z gw1 kmsproxy 4242 bind-refused - ` +
		`CEF:0|kmsproxy|kmsproxy|1.2.3|bind-refused|bind-refused|5|rt=1741525625123 dvchost=gw1` +
		` src=192.0.2.7 spt=50123 dst=192.0.2.1 dpt=1688 proto=TCP app=dcerpc act=deny outcome=failure` +
		` reason=interface-not-allowed cat=event destinationServiceName=samr cs1=we"ird]\\rule cs1Label=rule.name` +
		` cs2=dmz cs2Label=kmsproxy.zone cs3=bind-refused cs3Label=event.action cs4=1:abc\= cs4Label=network.community_id` +
		` cn1=0 cn1Label=dcerpc.opnum cn2=7 cn2Label=kmsproxy.connection_id`
	if got != want {
		t.Fatalf("CEF\n got %s\nwant %s", got, want)
	}
}

// cefOf formats one event as CEF and returns the extension keys and the
// header fields, split the simple way (the values here hold no escapes).
func cefOf(t *testing.T, level zapcore.Level, js string) (map[string]string, []string) {
	t.Helper()
	e := syslogEntry{level: level, time: testTime, json: []byte(js)}
	msg := string(testFormatter(true).format(nil, &e, false))
	_, rec, ok := strings.Cut(msg, " - CEF:")
	if !ok {
		t.Fatalf("no CEF record in %s", msg)
	}
	head := strings.SplitN(rec, "|", 8)
	if len(head) != 8 {
		t.Fatalf("CEF header %q", rec)
	}
	ext := map[string]string{}
	for _, kv := range strings.Fields(head[7]) {
		k, v, _ := strings.Cut(kv, "=")
		ext[k] = v
	}
	return ext, head[:7]
}

// Every action's act and severity, from the table docs/siem-sentinel.md
// gives, not from cef.go's.
func TestCEFVerdictAndSeverityPerAction(t *testing.T) {
	for _, c := range []struct {
		action, extra, act string
		sev                int
	}{
		{event.ActionConnectionAccepted, ``, "allow", 1},
		{event.ActionBindAllowed, ``, "allow", 1},
		{event.ActionConnectionClosed, ``, "allow", 1},
		{event.ActionKMSActivation, ``, "allow", 3},
		{event.ActionKMSActivation, `,"event.outcome":"failure","kmsproxy.kms_result":"refused-by-host"`, "allow", 3},
		{event.ActionKMSDuplicateCMID, ``, "allow", 8},
		{event.ActionKMSClockSkew, ``, "allow", 5},
		{event.ActionBindRefused, `,"kmsproxy.on_deny":"reject"`, "deny", 5},
		{event.ActionBindRefused, `,"kmsproxy.on_deny":"drop"`, "drop", 5},
		{event.ActionBindRefused, ``, "deny", 5}, // from a proxy before kmsproxy.on_deny
		{event.ActionRequestRefused, `,"kmsproxy.on_deny":"reject"`, "deny", 5},
		{event.ActionRequestRefused, `,"kmsproxy.on_deny":"drop"`, "drop", 5},
		{event.ActionRateLimited, `,"kmsproxy.on_deny":"reject"`, "deny", 5},
		{event.ActionRateLimited, `,"kmsproxy.on_deny":"drop"`, "drop", 5},
		{event.ActionConnectionRefused, ``, "drop", 5},
		{event.ActionDNSQuery, `,"dns.response_code":"NOERROR"`, "allow", 1},
		{event.ActionDNSRefused, `,"dns.response_code":"REFUSED"`, "deny", 5},
		{event.ActionDNSRefused, `,"event.reason":"dns-rate-limited"`, "drop", 5}, // dropped: no response code
		{event.ActionProtocolViolation, ``, "drop", 7},
		{event.ActionUpstreamUnavailable, ``, "deny", 7},
		{event.ActionShadowDecision, `,"kmsproxy.live.verdict":"allow","kmsproxy.shadow.verdict":"deny"`, "allow", 3},
		{event.ActionShadowDecision, `,"kmsproxy.live.verdict":"deny","kmsproxy.shadow.verdict":"allow"`, "deny", 3},
		{event.ActionShadowDecision, `,"kmsproxy.live.verdict":"maybe"`, "", 3},
		{event.ActionConfigReloaded, ``, "", 3},
		{event.ActionConfigReloadFailed, ``, "", 7},
		{event.ActionPolicyAllowsNothing, ``, "", 6},
		{event.ActionLogEventsDropped, ``, "", 6},
		{event.ActionStateDegraded, ``, "", 6},
		{event.ActionStateRestored, ``, "", 3},
	} {
		ext, head := cefOf(t, zapcore.InfoLevel, `{"message":"m","event.action":"`+c.action+`"`+c.extra+`}`)
		if got, ok := ext["act"]; got != c.act || ok != (c.act != "") {
			t.Errorf("%s%s: act=%q (present %v), want %q", c.action, c.extra, got, ok, c.act)
		}
		if head[4] != c.action || ext["cs3"] != c.action || ext["cs3Label"] != "event.action" {
			t.Errorf("%s: signature ID %q, cs3=%q cs3Label=%q", c.action, head[4], ext["cs3"], ext["cs3Label"])
		}
		if head[6] != strconv.Itoa(c.sev) {
			t.Errorf("%s: severity %s, want %d", c.action, head[6], c.sev)
		}
	}
	// A process message has no action: signature "log", no act, the
	// severity of its level.
	for l, sev := range map[zapcore.Level]string{zapcore.DebugLevel: "1", zapcore.InfoLevel: "3", zapcore.WarnLevel: "6", zapcore.ErrorLevel: "8"} {
		ext, head := cefOf(t, l, `{"message":"kmsproxy listening"}`)
		if head[4] != "log" || head[6] != sev || ext["act"] != "" || ext["cs3"] != "" {
			t.Errorf("%v process message: header %q, ext %v", l, head, ext)
		}
	}
}

func TestCEFDerivedKeys(t *testing.T) {
	// outcome: success and failure only.
	for o, want := range map[string]string{"success": "success", "failure": "failure", "unknown": "", "": ""} {
		ext, _ := cefOf(t, zapcore.InfoLevel, `{"event.action":"kms-clock-skew","event.outcome":"`+o+`"}`)
		if ext["outcome"] != want {
			t.Errorf("event.outcome %q: outcome=%q, want %q", o, ext["outcome"], want)
		}
	}
	// cs2: observer.ingress.zone when the event has it, else kmsproxy.zone;
	// a source in no zone has no cs2.
	for _, c := range []struct{ js, want string }{
		{`"kmsproxy.zone":"dmz"`, "dmz"},
		{`"kmsproxy.zone":"dmz","observer.ingress.zone":"dmz"`, "dmz"},
		{`"observer.ingress.zone":"office"`, "office"},
		{`"kmsproxy.zone":"","observer.ingress.zone":""`, ""},
	} {
		ext, _ := cefOf(t, zapcore.InfoLevel, `{"event.action":"connection-refused",`+c.js+`}`)
		if ext["cs2"] != c.want || (c.want != "") != (ext["cs2Label"] == "kmsproxy.zone") {
			t.Errorf("%s: cs2=%q cs2Label=%q, want %q", c.js, ext["cs2"], ext["cs2Label"], c.want)
		}
	}
	// start and end: the connection's span from event.duration (ns).
	ext, _ := cefOf(t, zapcore.InfoLevel, `{"event.action":"connection-closed","event.duration":2500000000,`+
		`"source.bytes":524,"destination.bytes":464,"error.message":"a=b\nc"}`)
	end := testTime.UnixMilli()
	if ext["end"] != strconv.FormatInt(end, 10) || ext["start"] != strconv.FormatInt(end-2500, 10) {
		t.Errorf("start=%s end=%s, want %d and %d", ext["start"], ext["end"], end-2500, end)
	}
	if ext["in"] != "524" || ext["out"] != "464" || ext["msg"] != `a\=b\nc` {
		t.Errorf("in=%s out=%s msg=%s", ext["in"], ext["out"], ext["msg"])
	}
	if ext, _ := cefOf(t, zapcore.InfoLevel, `{"event.action":"kms-activation"}`); ext["start"] != "" || ext["end"] != "" {
		t.Errorf("start/end without event.duration: %v", ext)
	}
}

func TestCEFEscaping(t *testing.T) {
	for _, c := range []struct{ in, header, ext string }{
		{`plain`, `plain`, `plain`},
		{`a|b`, `a\|b`, `a|b`},
		{`a\b`, `a\\b`, `a\\b`},
		{`a=b`, `a=b`, `a\=b`},
		{"l1\nl2\r", `l1 l2 `, `l1\nl2\r`},
		{`\|=`, `\\\|=`, `\\|\=`},
	} {
		if got := string(appendCEFHeader(nil, c.in)); got != c.header {
			t.Errorf("header %q: got %q, want %q", c.in, got, c.header)
		}
		if got := string(appendCEFValue(nil, c.in)); got != c.ext {
			t.Errorf("extension %q: got %q, want %q", c.in, got, c.ext)
		}
	}
	// A hostile message cannot add a header field or an extension key.
	e := syslogEntry{level: zapcore.WarnLevel, time: testTime,
		json: []byte(`{"message":"x|7|src=6.6.6.6\nCEF:0","event.action":"a|b","kms.workstation":"w src=6.6.6.6"}`)}
	got := string(testFormatter(true).format(nil, &e, false))
	if !strings.Contains(got, `|a\|b|x\|7\|src=6.6.6.6 CEF:0|6|`) || !strings.Contains(got, `shost=w src\=6.6.6.6`) {
		t.Fatalf("escaping: %s", got)
	}
	if strings.Count(got, "\n") != 0 {
		t.Fatalf("line break in record: %q", got)
	}
	// Derived and mapped keys escape alike: a backslash, an '=' and a
	// line break in error.message, a '|' in the message.
	e = syslogEntry{level: zapcore.ErrorLevel, time: testTime,
		json: []byte(`{"message":"config | reload failed","event.action":"config-reload-failed","event.outcome":"failure","error.message":"C:\\k.yaml: a=b\r\n  c"}`)}
	got = string(testFormatter(true).format(nil, &e, false))
	if !strings.Contains(got, `|config-reload-failed|config \| reload failed|7|`) || !strings.HasSuffix(got, ` msg=C:\\k.yaml: a\=b\r\n  c cs3=config-reload-failed cs3Label=event.action`) {
		t.Fatalf("escaping: %s", got)
	}
}

func TestNewSyslogSinkRejectsBadSettings(t *testing.T) {
	for _, c := range []struct {
		opts Options
		want error
	}{
		{Options{Address: "udp//x"}, ErrAddress},
		{Options{Address: "udp://noport"}, ErrAddress},
		{Options{Address: "http://h:1"}, ErrAddress},
		{Options{Address: "udp://h:1", Format: "leef"}, ErrOption},
		{Options{Address: "udp://h:1", Level: "loud"}, ErrOption},
		{Options{Address: "udp://h:1", Facility: 24}, ErrOption},
		{Options{Address: "tls://h:1", CAFile: "/nonexistent/ca.pem"}, ErrTLS},
		{Options{Address: "tls://h:1", CertFile: "/nonexistent/c.pem"}, ErrTLS},
	} {
		s, _, err := NewSink(c.opts, nil, nil)
		if !errors.Is(err, c.want) {
			t.Errorf("%+v: err %v, want %v", c.opts, err, c.want)
		}
		if s != nil {
			s.Close()
		}
	}
}

// UDP: one datagram per event, not framed; logger.With fields are kept.
func TestUDPSinkOneDatagramPerEvent(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	sink, core, err := NewSink(Options{Address: "udp://" + pc.LocalAddr().String(), Hostname: "h"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	log := zap.New(core).With(zap.String("kmsproxy.zone", "dmz"))
	log.Info("one", zap.String("event.action", "connection-accepted"))
	log.Debug("filtered out at info")
	log.Warn("two", zap.String("event.action", "kms-clock-skew"))
	buf := make([]byte, 70000)
	for _, want := range []string{
		`<134>1 `, `<132>1 `,
	} {
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		msg := string(buf[:n])
		if !strings.HasPrefix(msg, want) || !strings.Contains(msg, ` kmsproxy.zone="dmz"`) ||
			!strings.Contains(msg, `] {"log.level":`) || !strings.Contains(msg, `"kmsproxy.zone":"dmz"`) {
			t.Fatalf("datagram %q", msg)
		}
	}
}

// stallListener accepts connections and never reads from them, with a
// tiny receive buffer so the sender's writes block quickly.
func stallListener(t *testing.T) (net.Listener, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int32
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*net.TCPConn).SetReadBuffer(1024)
			accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln, &accepted
}

// A collector that accepts and never reads: Write stays non-blocking,
// drops are counted and reported, the writer times out and redials, and
// Close returns promptly.
func TestStalledCollectorNeverBlocksWrite(t *testing.T) {
	ln, accepted := stallListener(t)
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"})
	var warned atomic.Uint64
	var warnings atomic.Int32
	sink, core, err := NewSink(Options{
		Address: "tcp://" + ln.Addr().String(), QueueSize: 8,
		WriteTimeout: 200 * time.Millisecond, WarnInterval: 100 * time.Millisecond, FlushTimeout: 100 * time.Millisecond,
	}, dropped, func(d Drops) { warned.Add(d.Total()); warnings.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	log := zap.New(core)
	pad := strings.Repeat("x", 4000)
	var slowest time.Duration
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		start := time.Now()
		log.Info("event", zap.Int("i", i), zap.String("pad", pad))
		slowest = max(slowest, time.Since(start))
		if i%100 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		if sink.Stats().Dropped > 100 && accepted.Load() >= 2 && warned.Load() > 0 {
			break
		}
	}
	st := sink.Stats()
	if st.Dropped <= 100 || accepted.Load() < 2 || warned.Load() == 0 {
		t.Fatalf("dropped %d, connections %d, warned %d: want drops, a redial after the write timeout, a warning",
			st.Dropped, accepted.Load(), warned.Load())
	}
	if slowest > 5*time.Second { // liveness, not speed: the data path must never wait on the sink
		t.Fatalf("a Write took %v", slowest) // gross check; see TestWriteNeverWaitsForTheWriter
	}
	start := time.Now()
	sink.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Close took %v", d)
	}
	if got := counterValue(t, dropped); got != sink.Stats().Dropped {
		t.Fatalf("counter %d, stats %d", got, sink.Stats().Dropped)
	}
	if warned.Load() != sink.Stats().Dropped {
		t.Fatalf("warnings reported %d drops, sink dropped %d", warned.Load(), sink.Stats().Dropped)
	}
	// Once per interval at most: the loop ran for well under 100 intervals.
	if n := warnings.Load(); n > 100 {
		t.Fatalf("%d warnings", n)
	}
	log.Info("after close") // dropped, not a panic
}

// A collector that is down: events are dropped while disconnected, and
// delivered again once it is back.
func TestReconnectsWithBackoff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var drops atomic.Uint64
	sink, core, err := NewSink(Options{Address: "tcp://" + addr, WarnInterval: 50 * time.Millisecond},
		nil, func(d Drops) {
			drops.Add(d.Disconnected)
			if d.LastError == "" {
				t.Error("drop report without the connection error")
			}
		})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	log := zap.New(core)
	waitFor(t, "disconnected", func() bool { return !sink.Stats().Connected })
	log.Info("lost")
	waitFor(t, "drop report", func() bool { return drops.Load() == 1 })

	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port reused: %v", err)
	}
	defer ln.Close()
	waitFor(t, "reconnect", func() bool { return sink.Stats().Connected })
	log.Info("back", zap.String("event.action", "config-reloaded"))
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	msg, err := readOctetFrame(bufio.NewReader(c))
	if err != nil || !strings.Contains(msg, " config-reloaded [kmsproxy@32473 event.action=\"config-reloaded\"]") {
		t.Fatalf("after reconnect: %q %v", msg, err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLogSyslogDropsEvent(t *testing.T) {
	var b strings.Builder
	log, err := event.NewLogger("info", "ecs", &b)
	if err != nil {
		t.Fatal(err)
	}
	LogDrops(log, Drops{QueueFull: 5, Disconnected: 2, LastError: "boom"})
	out := b.String()
	for _, want := range []string{`"log.level":"warn"`, `"event.action":"log-events-dropped"`, `"event.reason":"syslog-queue-full"`,
		`"kmsproxy.log.dropped":7`, `"event.kind":"pipeline_error"`, `"error.message":"boom"`, `"message":"syslog sink dropped 7 events"`} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %s in %s", want, out)
		}
	}
}

func counterValue(t *testing.T, c prometheus.Counter) uint64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return uint64(m.GetCounter().GetValue())
}

// With the writer stuck for a minute in a write to a collector that
// stopped reading, Write still returns at once (a blocking Write would
// wait the minute), and Close is bounded by FlushTimeout, not the write
// timeout.
func TestWriteNeverWaitsForTheWriter(t *testing.T) {
	ln, _ := stallListener(t)
	sink, core, err := NewSink(Options{
		Address: "tcp://" + ln.Addr().String(), QueueSize: 16,
		WriteTimeout: time.Minute, FlushTimeout: 100 * time.Millisecond,
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	log := zap.New(core)
	pad := strings.Repeat("x", 8000)
	// Fill the socket buffers (a few MB) until the writer stops making
	// progress: it is then blocked in Write for up to a minute.
	deadline := time.Now().Add(20 * time.Second)
	lastSent, still := uint64(0), time.Now()
	for time.Since(still) < 500*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatal("the writer never blocked")
		}
		for range 20 {
			log.Info("event", zap.String("pad", pad))
		}
		time.Sleep(time.Millisecond)
		if n := sink.Stats().Sent; n != lastSent {
			lastSent, still = n, time.Now()
		}
	}
	before := sink.Stats()
	var slowest time.Duration
	for range 1000 {
		start := time.Now()
		log.Info("event", zap.String("pad", pad))
		slowest = max(slowest, time.Since(start))
	}
	if slowest > 5*time.Second {
		t.Fatalf("a Write waited %v for the blocked writer", slowest)
	}
	after := sink.Stats()
	if after.Connects != 1 || after.Sent != before.Sent || after.Dropped-before.Dropped < 1000-16 {
		t.Fatalf("before %+v after %+v: want the writer stuck, the later events dropped", before, after)
	}
	start := time.Now()
	sink.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Close took %v with a one-minute write timeout", d)
	}
}
