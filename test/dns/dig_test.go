package dns

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// TestDig asks the responder of a real `kmsproxy serve` with dig, each
// row one query: the answer section (squeezed lines), the status, AA and
// the sections that must be there.
func TestDig(t *testing.T) {
	host := fixture.StartHost(t, fixture.Replay)
	p := startServe(t, host.Addr(), opts{zoneExtra: `      addresses: [127.0.0.1, "2001:db8::5"]`})
	_, port, _ := strings.Cut(p.addr, ":")
	srv := "_vlmcs._tcp.dmz.example.com. 600 IN SRV 0 0 " + port + " kms.dmz.example.com."
	glue := []string{"kms.dmz.example.com. 600 IN A 127.0.0.1", "kms.dmz.example.com. 600 IN AAAA 2001:db8::5"}
	soa := "dmz.example.com. 60 IN SOA kms.dmz.example.com. hostmaster.dmz.example.com. 2026050101 3600 900 604800 60"
	tests := []struct {
		name       string
		src        string
		args       []string
		status     string
		aa         bool
		answer     []string
		authority  []string
		additional []string
	}{
		{"srv", srcDMZ, []string{"_vlmcs._tcp.dmz.example.com", "SRV"}, "NOERROR", true, []string{srv}, nil, glue},
		{"srv in capitals", srcDMZ, []string{"_VLMCS._TCP.DMZ.EXAMPLE.COM", "SRV"}, "NOERROR", true,
			[]string{"_VLMCS._TCP.DMZ.EXAMPLE.COM. 600 IN SRV 0 0 " + port + " kms.dmz.example.com."}, nil, glue},
		{"srv over tcp", srcDMZ, []string{"+tcp", "_vlmcs._tcp.dmz.example.com", "SRV"}, "NOERROR", true, []string{srv}, nil, glue},
		{"srv without edns", srcDMZ, []string{"+noedns", "_vlmcs._tcp.dmz.example.com", "SRV"}, "NOERROR", true, []string{srv}, nil, glue},
		{"a", srcDMZ2, []string{"kms.dmz.example.com", "A"}, "NOERROR", true, glue[:1], nil, nil},
		{"aaaa", srcDMZ, []string{"kms.dmz.example.com", "AAAA"}, "NOERROR", true, glue[1:], nil, nil},
		{"soa", srcDMZ, []string{"dmz.example.com", "SOA"}, "NOERROR", true,
			[]string{strings.Replace(soa, " 60 IN", " 600 IN", 1)}, nil, nil},
		{"ns", srcDMZ, []string{"dmz.example.com", "NS"}, "NOERROR", true, []string{"dmz.example.com. 600 IN NS kms.dmz.example.com."}, nil, glue},
		{"any: one set (RFC 8482)", srcDMZ, []string{"_vlmcs._tcp.dmz.example.com", "ANY"}, "NOERROR", true, []string{srv}, nil, glue},
		{"any over tcp too", srcDMZ, []string{"+tcp", "dmz.example.com", "ANY"}, "NOERROR", true, []string{strings.Replace(soa, " 60 IN", " 600 IN", 1)}, nil, nil},
		{"nxdomain", srcDMZ, []string{"www.dmz.example.com", "A"}, "NXDOMAIN", true, nil, []string{soa}, nil},
		{"nodata", srcDMZ, []string{"kms.dmz.example.com", "TXT"}, "NOERROR", true, nil, []string{soa}, nil},
		{"nodata at the empty non-terminal", srcDMZ, []string{"_tcp.dmz.example.com", "SRV"}, "NOERROR", true, nil, []string{soa}, nil},
		{"outside the zone", srcDMZ, []string{"www.example.com", "A"}, "REFUSED", false, nil, nil, nil},
		{"the parent zone", srcDMZ, []string{"example.com", "NS"}, "REFUSED", false, nil, nil, nil},
		{"zone transfer", srcDMZ, []string{"+tcp", "dmz.example.com", "AXFR"}, "", false, nil, nil, nil},
		{"edns version 1", srcDMZ, []string{"+edns=1", "+noednsneg", "kms.dmz.example.com", "A"}, "BADVERS", false, nil, nil, nil},
		{"source outside the zones", srcNowhere, []string{"_vlmcs._tcp.dmz.example.com", "SRV"}, "REFUSED", false, nil, nil, nil},
		{"source in a zone no allow rule names", "127.0.0.4", []string{"_vlmcs._tcp.dmz.example.com", "SRV"}, "REFUSED", false, nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dig(t, p.dns, tt.src, tt.args...)
			if tt.name == "zone transfer" { // dig prints "Transfer failed." and no header
				if !strings.Contains(r.out, "Transfer failed") || len(r.sections["ANSWER"]) > 0 {
					t.Errorf("AXFR was not refused:\n%s", r.out)
				}
				return
			}
			if r.status != tt.status || r.flags["aa"] != tt.aa || r.flags["ra"] || !r.flags["qr"] {
				t.Errorf("status %s flags %v, want %s aa=%v, no ra:\n%s", r.status, keys(r.flags), tt.status, tt.aa, r.out)
			}
			for sec, want := range map[string][]string{"ANSWER": tt.answer, "AUTHORITY": tt.authority, "ADDITIONAL": tt.additional} {
				got := r.sections[sec]
				slices.Sort(got)
				w := slices.Clone(want)
				slices.Sort(w)
				if !slices.Equal(got, w) {
					t.Errorf("%s section\n  %q\nwant\n  %q\n%s", sec, got, w, r.out)
				}
			}
		})
	}

	// EDNS0: the OPT record comes back with the responder's size (1232),
	// whatever larger size the client offered.
	r := dig(t, p.dns, srcDMZ, "+edns=0", "+bufsize=4096", "_vlmcs._tcp.dmz.example.com", "SRV")
	if opt := strings.Join(r.sections["OPT PSEUDOSECTION"], "\n"); !strings.Contains(opt, "EDNS: version: 0") || !strings.Contains(opt, "udp: 1232") {
		t.Errorf("OPT pseudosection %q:\n%s", opt, r.out)
	}
	if r := dig(t, p.dns, srcDMZ, "+noedns", "kms.dmz.example.com", "A"); len(r.sections["OPT PSEUDOSECTION"]) != 0 {
		t.Errorf("an OPT record answered a query without one:\n%s", r.out)
	}

	// The events: dns-query at debug with the question, dns-refused at info.
	ev := p.waitEvent(t, "dns-query", map[string]any{"dns.question.type": "SRV", "network.transport": "tcp"})
	if ev["log.level"] != "debug" || ev["dns.question.name"] != "_vlmcs._tcp.dmz.example.com" || ev["dns.response_code"] != "NOERROR" ||
		ev["source.ip"] != srcDMZ || ev["kmsproxy.zone"] != "dmz" || ev["kmsproxy.dns.zone"] != "dmz.example.com" {
		t.Errorf("dns-query event %v", ev)
	}
	ev = p.waitEvent(t, "dns-refused", map[string]any{"source.ip": srcNowhere})
	if ev["log.level"] != "info" || ev["event.reason"] != "dns-source-not-allowed" || ev["dns.response_code"] != "REFUSED" || ev["event.outcome"] != "failure" {
		t.Errorf("dns-refused event %v", ev)
	}
	p.waitEvent(t, "dns-refused", map[string]any{"event.reason": "dns-not-authoritative", "dns.question.name": "www.example.com"})
	p.waitEvent(t, "dns-refused", map[string]any{"event.reason": "dns-zone-transfer"})
	p.waitEvent(t, "dns-refused", map[string]any{"event.reason": "dns-bad-version"})

	// The metrics, on the management listener.
	m := scrape(t, p.mgmt)
	for _, want := range []string{
		`kmsproxy_dns_queries_total{qtype="SRV",rcode="NOERROR"}`, `kmsproxy_dns_queries_total{qtype="A",rcode="NXDOMAIN"}`,
		`kmsproxy_dns_queries_total{qtype="AXFR",rcode="REFUSED"}`, `kmsproxy_dns_refused_total{reason="dns-source-not-allowed"} 2`,
		`kmsproxy_dns_refused_total{reason="dns-not-authoritative"} 2`, `kmsproxy_dns_rate_limited_total 0`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func scrape(t *testing.T, mgmt string) string {
	t.Helper()
	resp, err := http.Get("http://" + mgmt + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
