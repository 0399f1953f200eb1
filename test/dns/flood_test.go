package dns

import (
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/kmsproxy/kmsproxy/test/fixture"
)

func srvQuery(t *testing.T, id uint16) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName("_vlmcs._tcp.dmz.example.com."), Type: dnsmessage.TypeSRV, Class: dnsmessage.ClassINET})
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// A flood of 300 queries from 127.0.0.2 (burst 10, 1/s) is answered 10
// times and dropped after; meanwhile dig from 127.0.0.3 is answered and
// dig from 127.0.0.2 gets nothing. The drops are counted, and logged once.
func TestFloodRateLimited(t *testing.T) {
	host := fixture.StartHost(t, fixture.Replay)
	p := startServe(t, host.Addr(), opts{rate: 1, burst: 10})
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(srcDMZ)}, net.UDPAddrFromAddrPort(mustAddrPort(t, p.dns)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 300; i++ {
		c.Write(srvQuery(t, uint16(i)))
	}
	answered := 0
	c.SetReadDeadline(time.Now().Add(time.Second))
	for buf := make([]byte, 2048); ; answered++ {
		if _, err := c.Read(buf); err != nil {
			break
		}
	}
	t.Logf("flood from %s: %d of 300 answered", srcDMZ, answered)
	if answered < 10 || answered > 12 {
		t.Errorf("%d of 300 answered at burst 10, 1/s", answered)
	}
	if r := dig(t, p.dns, srcDMZ2, "_vlmcs._tcp.dmz.example.com", "SRV"); r.status != "NOERROR" || len(r.sections["ANSWER"]) != 1 {
		t.Errorf("another source during the flood:\n%s", r.out)
	}
	// The flooding source's bucket is empty: dig times out (exit 9, no reply).
	for i := 0; i < 3; i++ {
		c.Write(srvQuery(t, 1)) // keep it empty
	}
	if r := dig(t, p.dns, srcDMZ, "+timeout=1", "_vlmcs._tcp.dmz.example.com", "SRV"); r.exit != 9 || r.status != "" {
		t.Errorf("the flooding source was answered (exit %d):\n%s", r.exit, r.out)
	}
	m := scrape(t, p.mgmt)
	if !strings.Contains(m, "kmsproxy_dns_rate_limited_total 2") && !strings.Contains(m, "kmsproxy_dns_rate_limited_total 29") {
		// 300 - answered + the 3 + dig's 1, give or take a refilled token
		var line string
		for _, l := range strings.Split(m, "\n") {
			if strings.HasPrefix(l, "kmsproxy_dns_rate_limited_total") {
				line = l
			}
		}
		if line == "" || strings.HasSuffix(line, " 0") {
			t.Errorf("rate-limited counter: %q", line)
		}
		t.Logf("%s", line)
	}
	evs := p.events("dns-refused", map[string]any{"event.reason": "dns-rate-limited", "source.ip": srcDMZ})
	if len(evs) < 1 || len(evs) > 3 {
		t.Errorf("%d dns-rate-limited events for one flood (one per episode)", len(evs))
	}
}
