package siem

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/kmsdns"
	"github.com/kmsproxy/kmsproxy/state"
	"github.com/kmsproxy/kmsproxy/test/fixture"
	"github.com/kmsproxy/kmsproxy/test/redistest"
)

// The actions of the parts kmsproxy serve runs beside the proxy, driven
// for TestElasticSamples: the DNS responder (dns-query, dns-refused) and
// the shared state (state-degraded, state-restored).

// sideLog is a logger as serve makes it (ECS JSON lines, here at debug)
// and what it wrote, every event of which is validated (test/ecs).
type sideLog struct {
	log *zap.Logger
	buf *fixture.LogBuffer
}

func sideLogger(t *testing.T) *sideLog {
	t.Helper()
	buf := &fixture.LogBuffer{}
	log, err := event.NewLogger("debug", "ecs", buf)
	if err != nil {
		t.Fatal(err)
	}
	fixture.CheckEvents(t, "dns responder and shared state", buf)
	return &sideLog{log: log, buf: buf}
}

// wait returns the first event of action, waiting up to 10s for it.
func (s *sideLog) wait(t *testing.T, action string) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		for _, line := range strings.Split(s.buf.String(), "\n") {
			var ev map[string]any
			if json.Unmarshal([]byte(line), &ev) == nil && ev["event.action"] == action {
				return ev
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event:\n%s", action, s.buf.String())
		}
	}
}

// dnsSection, appended to baseConfig, runs the DNS responder for the dmz
// zone's clients (dns.allow_from defaults to the allow rules' zones) on a
// loopback address of its own, the port the kernel's.
const dnsSection = `dns:
  listen: "127.0.0.4:0"
  zones:
    - name: dmz.example.com
`

// loadWith loads baseConfig (UPSTREAM replaced) with extra appended.
func loadWith(t *testing.T, upstream, extra string) *config.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kmsproxy-extra.yaml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(baseConfig, "UPSTREAM", upstream)+extra), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

// startResponder starts a real DNS responder in-process on log, as
// kmsproxy serve runs it beside the proxy, answering for baseConfig with
// dnsSection.
func startResponder(t *testing.T, log *zap.Logger, upstream string) *kmsdns.Server {
	t.Helper()
	cfg := loadWith(t, upstream, dnsSection)
	srv, err := kmsdns.Listen(cfg, log, event.NewMetrics())
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// dnsExchange sends one query (ID id) over UDP from src to server and
// returns the answer.
func dnsExchange(t *testing.T, id uint16, src, server, name string, qtype dnsmessage.Type) dnsmessage.Message {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id})
	b.StartQuestions()
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: qtype, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	q, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	raddr, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)}, raddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(q); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("%s %v from %s: %v", name, qtype, src, err)
	}
	var m dnsmessage.Message
	if err := m.Unpack(buf[:n]); err != nil {
		t.Fatal(err)
	}
	if m.ID != id || !m.Response {
		t.Fatalf("%s %v from %s: answer %+v", name, qtype, src, m.Header)
	}
	return m
}

// dnsActions drives the responder's two actions through a real responder
// on log: an SRV query from the dmz zone answered from the zone
// (dns-query), the same from a source in no zone refused (dns-refused).
func dnsActions(t *testing.T, log *zap.Logger, upstream string) {
	t.Helper()
	srv := startResponder(t, log, upstream)
	if m := dnsExchange(t, 0x4b4d, srcDMZ, srv.Addr(), "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeSRV); m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 1 {
		t.Fatalf("SRV from %s: %v, %d answers", srcDMZ, m.RCode, len(m.Answers))
	}
	if m := dnsExchange(t, 0x4b4e, srcNowhere, srv.Addr(), "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeSRV); m.RCode != dnsmessage.RCodeRefused {
		t.Fatalf("SRV from %s (no zone): %v, want REFUSED", srcNowhere, m.RCode)
	}
}

// stateActions drives the shared state's two actions with a real
// redis-server, as a replica started while Redis is down sees them: the
// start's probe fails (state-degraded), then Redis comes up on its port
// and the next probe answers (state-restored).
func stateActions(t *testing.T, log *zap.Logger, upstream string) {
	t.Helper()
	rs := redistest.Start(t)
	rs.Stop()
	cfg := loadWith(t, upstream, rs.Conf("retry_interval: 100ms"))
	sh, err := state.New(cfg.State.Redis, state.Options{Log: log, Metrics: event.NewMetrics()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sh.Close() })
	if !sh.Degraded() {
		t.Fatal("a replica started with Redis down is not degraded")
	}
	rs.Start()
	for deadline := time.Now().Add(10 * time.Second); sh.Degraded(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("still degraded 10s after Redis came up")
		}
	}
}
