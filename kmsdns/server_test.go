package kmsdns

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/kmsproxy/kmsproxy/event"
)

// loopConfig answers 127.0.0.2 and 127.0.0.3 (zone dmz); 127.0.0.9 is in no zone.
const loopConfig = `
listen: "127.0.0.1:1688"
upstreams: ["127.0.0.1:1"]
zones:
  dmz: ["127.0.0.2/32", "127.0.0.3/32"]
rules:
  - name: kms
    from: [dmz]
    interface: kms
    opnums: [0]
    action: allow
dns:
  listen: "127.0.0.1:0"
  rate_limit_per_second: 1
  rate_limit_burst: 5
  tcp_connections: 2
  tcp_connections_per_source: 1
  tcp_timeout: 500ms
  zones:
    - name: dmz.example.com
      addresses: [192.0.2.5, "2001:db8::5"]
`

func startServer(t *testing.T, cfgText string) (*Server, *observer.ObservedLogs, *event.Metrics) {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	m := event.NewMetrics()
	s, err := Listen(loadConfig(t, cfgText), zap.New(core), m)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Close)
	return s, logs, m
}

// resolver is Go's own DNS client, sending from src to the responder.
func resolver(s *Server, src, network string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		d := net.Dialer{}
		if network == "udp" {
			d.LocalAddr = &net.UDPAddr{IP: net.ParseIP(src)}
		} else {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
		}
		return d.DialContext(ctx, network, s.Addr())
	}}
}

func TestServeGoResolver(t *testing.T) {
	// Go asks A and AAAA at once, on two connections over TCP.
	cfg := strings.NewReplacer("rate_limit_per_second: 1", "rate_limit_per_second: 100", "rate_limit_burst: 5", "rate_limit_burst: 100", "tcp_connections: 2", "tcp_connections: 8", "tcp_connections_per_source: 1", "tcp_connections_per_source: 8").Replace(loopConfig)
	s, logs, m := startServer(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, network := range []string{"udp", "tcp"} {
		res := resolver(s, "127.0.0.2", network)
		_, srvs, err := res.LookupSRV(ctx, "vlmcs", "tcp", "dmz.example.com")
		if err != nil || len(srvs) != 1 || srvs[0].Target != "kms.dmz.example.com." || srvs[0].Port != 1688 {
			t.Fatalf("%s: LookupSRV = %v, %v", network, srvs, err)
		}
		ips, err := res.LookupNetIP(ctx, "ip", "kms.dmz.example.com")
		if err != nil || len(ips) != 2 {
			t.Fatalf("%s: LookupNetIP = %v, %v", network, ips, err)
		}
		if _, err := res.LookupNetIP(ctx, "ip4", "www.dmz.example.com"); err == nil || !err.(*net.DNSError).IsNotFound {
			t.Fatalf("%s: www: %v, want not found", network, err)
		}
	}
	ev := logs.FilterField(zap.String("event.action", event.ActionDNSQuery)).FilterField(zap.String("dns.question.type", "SRV"))
	if ev.Len() != 2 {
		t.Fatalf("%d dns-query SRV events, want 2 (udp, tcp)", ev.Len())
	}
	f := ev.All()[0].ContextMap()
	if f["dns.question.name"] != "_vlmcs._tcp.dmz.example.com" || f["source.ip"] != "127.0.0.2" || f["kmsproxy.zone"] != "dmz" ||
		f["dns.response_code"] != "NOERROR" || f["network.transport"] != "udp" || f["kmsproxy.dns.zone"] != "dmz.example.com" {
		t.Errorf("dns-query fields %v", f)
	}
	if ev.All()[0].Level != zap.DebugLevel {
		t.Errorf("dns-query at %v", ev.All()[0].Level)
	}
	if got := counter(t, m, "kmsproxy_dns_queries_total", "qtype", "SRV", "rcode", "NOERROR"); got != 2 {
		t.Errorf("kmsproxy_dns_queries_total{SRV,NOERROR} = %v", got)
	}
}

// counter reads one series from the registry.
func counter(t *testing.T, m *event.Metrics, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, mm := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range mm.GetLabel() {
					found = found || (lp.GetName() == labels[i] && lp.GetValue() == labels[i+1])
				}
				if !found {
					continue next
				}
			}
			return mm.GetCounter().GetValue()
		}
	}
	return 0
}

func udpQuery(t *testing.T, s *Server, src string, msg []byte, wait time.Duration) *dnsmessage.Message {
	t.Helper()
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)}, net.UDPAddrFromAddrPort(mustAddrPort(s.Addr())))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(msg)
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	var m dnsmessage.Message
	if err := m.Unpack(buf[:n]); err != nil {
		t.Fatalf("unparseable response: %v", err)
	}
	return &m
}

// A flood from one source is dropped past its burst, once logged; another
// source is answered; a source in no zone is refused, at info.
func TestServeRateLimitAndRefusal(t *testing.T) {
	s, logs, m := startServer(t, loopConfig)
	q := makeQuery(t, "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeSRV)
	// 20 queries at once from one socket, then every answer that comes.
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.0.2")}, net.UDPAddrFromAddrPort(mustAddrPort(s.Addr())))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 20; i++ {
		c.Write(q)
	}
	answered := 0
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	for buf := make([]byte, 2048); ; answered++ {
		if _, err := c.Read(buf); err != nil {
			break
		}
	}
	if answered != 5 {
		t.Errorf("%d of 20 answered at burst 5, 1/s", answered)
	}
	if r := udpQuery(t, s, "127.0.0.3", q, time.Second); r == nil || len(r.Answers) != 1 {
		t.Errorf("another source during the flood: %+v", r)
	}
	if got := counter(t, m, "kmsproxy_dns_rate_limited_total"); got != 15 {
		t.Errorf("kmsproxy_dns_rate_limited_total = %v", got)
	}
	if n := logs.FilterField(zap.String("event.reason", event.ReasonDNSRateLimited)).Len(); n != 1 {
		t.Errorf("%d rate-limited events, want one per episode", n)
	}
	r := udpQuery(t, s, "127.0.0.9", q, time.Second)
	if r == nil || r.Header.RCode != dnsmessage.RCodeRefused || len(r.Answers) != 0 {
		t.Fatalf("source in no zone: %+v", r)
	}
	ev := logs.FilterField(zap.String("event.reason", event.ReasonDNSSourceNotAllowed)).All()
	if len(ev) != 1 || ev[0].Level != zap.InfoLevel || ev[0].ContextMap()["event.action"] != event.ActionDNSRefused {
		t.Errorf("refusal events %v", ev)
	}
	if got := counter(t, m, "kmsproxy_dns_refused_total", "reason", event.ReasonDNSSourceNotAllowed); got != 1 {
		t.Errorf("kmsproxy_dns_refused_total{source-not-allowed} = %v", got)
	}
}

// TCP: pipelined queries answered in order; the per-source limit closes a
// second connection from the same source; an idle connection ends at
// tcp_timeout; a length over max_message_size ends it at once.
func TestServeTCPLimits(t *testing.T) {
	s, logs, _ := startServer(t, loopConfig)
	dial := func(src string) *net.TCPConn {
		c, err := net.DialTCP("tcp", &net.TCPAddr{IP: net.ParseIP(src)}, net.TCPAddrFromAddrPort(mustAddrPort(s.Addr())))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c := dial("127.0.0.2")
	var pipelined []byte
	for _, name := range []string{"kms.dmz.example.com.", "dmz.example.com."} {
		q := makeQuery(t, name, dnsmessage.TypeA)
		pipelined = binary.BigEndian.AppendUint16(pipelined, uint16(len(q)))
		pipelined = append(pipelined, q...)
	}
	c.Write(pipelined)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	for i, want := range []int{1, 0} {
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		b := make([]byte, binary.BigEndian.Uint16(l[:]))
		io.ReadFull(c, b)
		var m dnsmessage.Message
		if err := m.Unpack(b); err != nil || len(m.Answers) != want {
			t.Fatalf("answer %d: %v, %d answers", i, err, len(m.Answers))
		}
	}
	// A second connection from 127.0.0.2 is over its share: closed at once.
	if c2, err := net.DialTCP("tcp", &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, net.TCPAddrFromAddrPort(mustAddrPort(s.Addr()))); err == nil {
		defer c2.Close()
		c2.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c2.Read(make([]byte, 1)); err == nil {
			t.Error("a second connection from one source was served")
		}
	}
	waitFor(t, func() bool { return logs.FilterField(zap.String("event.reason", event.ReasonDNSTCPLimit)).Len() == 1 })
	// The idle first connection ends at tcp_timeout (500ms).
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("idle connection: %v after %v", err, time.Since(start))
	}
	// A declared length over max_message_size (4096): closed without reading on.
	c3 := dial("127.0.0.3")
	c3.Write([]byte{0xff, 0xff})
	c3.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c3.Read(make([]byte, 1)); err == nil {
		t.Error("an oversize message was answered")
	}
	waitFor(t, func() bool { return logs.FilterField(zap.String("event.reason", event.ReasonDNSOversize)).Len() == 1 })
}

// A reload swaps the zones in; a changed listen address waits for a restart.
func TestServeApply(t *testing.T) {
	s, logs, _ := startServer(t, loopConfig)
	q := makeQuery(t, "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeSRV)
	if r := udpQuery(t, s, "127.0.0.2", q, time.Second); r == nil || len(r.Answers) != 1 {
		t.Fatalf("before: %+v", r)
	}
	next := strings.Replace(loopConfig, "name: dmz.example.com", "name: other.example.com", 1)
	next = strings.Replace(next, `listen: "127.0.0.1:0"`, `listen: "127.0.0.1:5353"`, 1)
	if err := s.Apply(loadConfig(t, next)); err != nil {
		t.Fatal(err)
	}
	if r := udpQuery(t, s, "127.0.0.3", q, time.Second); r == nil || r.Header.RCode != dnsmessage.RCodeRefused {
		t.Errorf("the removed zone after a reload: %+v", r)
	}
	if logs.FilterMessageSnippet("dns.listen changed").Len() != 1 {
		t.Error("a changed dns.listen was not logged")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met within 3s")
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
