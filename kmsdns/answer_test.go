package kmsdns

import (
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
)

// testConfig: the proxy at 192.0.2.5:1688 (and 2001:db8::5) for zone
// dmz.example.com; dmz and office may ask, mgmt (a deny rule's zone) may not.
const testConfig = `
listen: "192.0.2.5:1688"
upstreams: ["10.20.0.15:1688"]
zones:
  dmz: ["192.0.2.0/24", "2001:db8::/64"]
  office: ["198.51.100.0/24"]
  mgmt: ["10.9.0.0/16"]
rules:
  - name: kms
    from: [dmz, office]
    interface: kms
    opnums: [0]
    action: allow
  - name: no-mgmt
    from: [mgmt]
    interface: samr
    action: deny
dns:
  listen: "127.0.0.1:0"
  zones:
    - name: dmz.example.com
      addresses: [192.0.2.5, "2001:db8::5"]
      ttl: 10m
      soa: {minimum: 1m, serial: 7}
    - name: branch.example.org
      target: proxy.site.branch.example.org
      addresses: [198.51.100.5]
      port: 11688
      ns: [proxy.site.branch.example.org, ns.example.net]
`

func loadConfig(t testing.TB, text string) *config.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kmsproxy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func testResponder(t testing.TB) *Responder {
	t.Helper()
	r, err := Compile(loadConfig(t, testConfig))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var (
	dmzClient    = netip.MustParseAddr("192.0.2.10")
	dmzClient6   = netip.MustParseAddr("2001:db8::10")
	officeClient = netip.MustParseAddr("198.51.100.7")
	mgmtClient   = netip.MustParseAddr("10.9.1.1")
	nowhere      = netip.MustParseAddr("203.0.113.1")
)

type qopt func(*dnsmessage.Header, *dnsmessage.Question, *[]dnsmessage.Resource)

func withEDNS(size int, version uint8, do bool) qopt {
	return func(_ *dnsmessage.Header, _ *dnsmessage.Question, add *[]dnsmessage.Resource) {
		var h dnsmessage.ResourceHeader
		h.SetEDNS0(size, 0, do)
		h.TTL |= uint32(version) << 16
		*add = append(*add, dnsmessage.Resource{Header: h, Body: &dnsmessage.OPTResource{}})
	}
}

func withOpcode(op dnsmessage.OpCode) qopt {
	return func(h *dnsmessage.Header, _ *dnsmessage.Question, _ *[]dnsmessage.Resource) { h.OpCode = op }
}

func withClass(c dnsmessage.Class) qopt {
	return func(_ *dnsmessage.Header, q *dnsmessage.Question, _ *[]dnsmessage.Resource) { q.Class = c }
}

func asResponse() qopt {
	return func(h *dnsmessage.Header, _ *dnsmessage.Question, _ *[]dnsmessage.Resource) { h.Response = true }
}

func makeQuery(t testing.TB, name string, qt dnsmessage.Type, opts ...qopt) []byte {
	t.Helper()
	h := dnsmessage.Header{ID: 0x4b4d, RecursionDesired: true}
	q := dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: qt, Class: dnsmessage.ClassINET}
	var add []dnsmessage.Resource
	for _, o := range opts {
		o(&h, &q, &add)
	}
	m := dnsmessage.Message{Header: h, Questions: []dnsmessage.Question{q}, Additionals: add}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ask(t testing.TB, r *Responder, msg []byte, src netip.Addr, udp bool) (Result, *dnsmessage.Message) {
	t.Helper()
	res := r.Answer(msg, src, udp, nil)
	if res.Response == nil {
		return res, nil
	}
	var m dnsmessage.Message
	if err := m.Unpack(res.Response); err != nil {
		t.Fatalf("response does not parse: %v", err)
	}
	return res, &m
}

// rrs summarises a section as "TYPE owner data" lines.
func rrs(rs []dnsmessage.Resource) string {
	var s []string
	for _, r := range rs {
		var data string
		switch b := r.Body.(type) {
		case *dnsmessage.SRVResource:
			data = "0 0 " + strconv.Itoa(int(b.Port)) + " " + b.Target.String()
		case *dnsmessage.AResource:
			data = netip.AddrFrom4(b.A).String()
		case *dnsmessage.AAAAResource:
			data = netip.AddrFrom16(b.AAAA).String()
		case *dnsmessage.NSResource:
			data = b.NS.String()
		case *dnsmessage.SOAResource:
			data = b.NS.String() + " " + b.MBox.String() + " " + strconv.Itoa(int(b.Serial)) + " ttl " + strconv.Itoa(int(r.Header.TTL))
		case *dnsmessage.OPTResource:
			data = "size " + strconv.Itoa(int(r.Header.Class))
		}
		s = append(s, typeText(r.Header.Type)+" "+r.Header.Name.String()+" "+data)
	}
	return strings.Join(s, "; ")
}

func TestAnswer(t *testing.T) {
	r := testResponder(t)
	const (
		srv    = "SRV _vlmcs._tcp.dmz.example.com. 0 0 1688 kms.dmz.example.com."
		glue   = "A kms.dmz.example.com. 192.0.2.5; AAAA kms.dmz.example.com. 2001:db8::5"
		soaNeg = "SOA dmz.example.com. kms.dmz.example.com. hostmaster.dmz.example.com. 7 ttl 60"
	)
	tests := []struct {
		name   string
		q      []byte
		src    netip.Addr
		rcode  dnsmessage.RCode
		aa     bool
		answer string
		auth   string
		extra  string
		reason string
	}{
		{"srv", makeQuery(t, "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeSRV), dmzClient, 0, true, srv, "", glue, ""},
		{"srv mixed case keeps the question's case", makeQuery(t, "_VLMCS._TCP.Dmz.Example.COM.", dnsmessage.TypeSRV), dmzClient, 0, true,
			"SRV _VLMCS._TCP.Dmz.Example.COM. 0 0 1688 kms.dmz.example.com.", "", glue, ""},
		{"srv from ipv6", makeQuery(t, "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeSRV), dmzClient6, 0, true, srv, "", glue, ""},
		{"srv from office", makeQuery(t, "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeSRV), officeClient, 0, true, srv, "", glue, ""},
		{"a", makeQuery(t, "kms.dmz.example.com.", dnsmessage.TypeA), dmzClient, 0, true, "A kms.dmz.example.com. 192.0.2.5", "", "", ""},
		{"aaaa", makeQuery(t, "kms.dmz.example.com.", dnsmessage.TypeAAAA), dmzClient, 0, true, "AAAA kms.dmz.example.com. 2001:db8::5", "", "", ""},
		{"soa", makeQuery(t, "dmz.example.com.", dnsmessage.TypeSOA), dmzClient, 0, true,
			"SOA dmz.example.com. kms.dmz.example.com. hostmaster.dmz.example.com. 7 ttl 600", "", "", ""},
		{"ns with glue", makeQuery(t, "dmz.example.com.", dnsmessage.TypeNS), dmzClient, 0, true, "NS dmz.example.com. kms.dmz.example.com.", "", glue, ""},
		{"any at the srv name: one set", makeQuery(t, "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeALL), dmzClient, 0, true, srv, "", glue, ""},
		{"any at the apex: the soa", makeQuery(t, "dmz.example.com.", dnsmessage.TypeALL), dmzClient, 0, true,
			"SOA dmz.example.com. kms.dmz.example.com. hostmaster.dmz.example.com. 7 ttl 600", "", "", ""},
		{"any at the target: the a", makeQuery(t, "kms.dmz.example.com.", dnsmessage.TypeALL), dmzClient, 0, true, "A kms.dmz.example.com. 192.0.2.5", "", "", ""},
		{"nodata: mx at the target", makeQuery(t, "kms.dmz.example.com.", dnsmessage.TypeMX), dmzClient, 0, true, "", soaNeg, "", ""},
		{"nodata: a at the srv name", makeQuery(t, "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeA), dmzClient, 0, true, "", soaNeg, "", ""},
		{"nodata: the empty non-terminal _tcp", makeQuery(t, "_tcp.dmz.example.com.", dnsmessage.TypeSRV), dmzClient, 0, true, "", soaNeg, "", ""},
		{"nxdomain", makeQuery(t, "www.dmz.example.com.", dnsmessage.TypeA), dmzClient, dnsmessage.RCodeNameError, true, "", soaNeg, "", ""},
		{"nxdomain below the target", makeQuery(t, "x.kms.dmz.example.com.", dnsmessage.TypeA), dmzClient, dnsmessage.RCodeNameError, true, "", soaNeg, "", ""},
		{"nxdomain: another service", makeQuery(t, "_ldap._tcp.dmz.example.com.", dnsmessage.TypeSRV), dmzClient, dnsmessage.RCodeNameError, true, "", soaNeg, "", ""},
		{"second zone: srv", makeQuery(t, "_vlmcs._tcp.branch.example.org.", dnsmessage.TypeSRV), dmzClient, 0, true,
			"SRV _vlmcs._tcp.branch.example.org. 0 0 11688 proxy.site.branch.example.org.", "", "A proxy.site.branch.example.org. 198.51.100.5", ""},
		{"second zone: the non-terminal site", makeQuery(t, "site.branch.example.org.", dnsmessage.TypeA), dmzClient, 0, true, "",
			"SOA branch.example.org. proxy.site.branch.example.org. hostmaster.branch.example.org. 1 ttl 300", "", ""},
		{"second zone: two ns, glue for the target only", makeQuery(t, "branch.example.org.", dnsmessage.TypeNS), dmzClient, 0, true,
			"NS branch.example.org. proxy.site.branch.example.org.; NS branch.example.org. ns.example.net.", "", "A proxy.site.branch.example.org. 198.51.100.5", ""},

		{"outside the zones", makeQuery(t, "www.example.com.", dnsmessage.TypeA), dmzClient, dnsmessage.RCodeRefused, false, "", "", "", event.ReasonDNSNotAuthoritative},
		{"the parent of a zone", makeQuery(t, "example.com.", dnsmessage.TypeSOA), dmzClient, dnsmessage.RCodeRefused, false, "", "", "", event.ReasonDNSNotAuthoritative},
		{"a suffix that is not a label boundary", makeQuery(t, "xdmz.example.com.", dnsmessage.TypeA), dmzClient, dnsmessage.RCodeRefused, false, "", "", "", event.ReasonDNSNotAuthoritative},
		{"the root", makeQuery(t, ".", dnsmessage.TypeNS), dmzClient, dnsmessage.RCodeRefused, false, "", "", "", event.ReasonDNSNotAuthoritative},
		{"chaos class", makeQuery(t, "version.bind.", dnsmessage.TypeTXT, withClass(dnsmessage.ClassCHAOS)), dmzClient, dnsmessage.RCodeRefused, false, "", "", "", event.ReasonDNSNotAuthoritative},
		{"chaos class in the zone", makeQuery(t, "kms.dmz.example.com.", dnsmessage.TypeA, withClass(dnsmessage.ClassCHAOS)), dmzClient, dnsmessage.RCodeRefused, false, "", "", "", event.ReasonDNSNotAuthoritative},
		{"axfr", makeQuery(t, "dmz.example.com.", dnsmessage.TypeAXFR), dmzClient, dnsmessage.RCodeRefused, false, "", "", "", event.ReasonDNSZoneTransfer},
		{"ixfr", makeQuery(t, "dmz.example.com.", typeIXFR), dmzClient, dnsmessage.RCodeRefused, false, "", "", "", event.ReasonDNSZoneTransfer},
		{"source in a deny rule's zone", makeQuery(t, "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeSRV), mgmtClient, dnsmessage.RCodeRefused, false, "", "", "", event.ReasonDNSSourceNotAllowed},
		{"source in no zone", makeQuery(t, "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeSRV), nowhere, dnsmessage.RCodeRefused, false, "", "", "", event.ReasonDNSSourceNotAllowed},
		{"notify", makeQuery(t, "dmz.example.com.", dnsmessage.TypeSOA, withOpcode(4)), dmzClient, dnsmessage.RCodeNotImplemented, false, "", "", "", event.ReasonDNSNotImplemented},
		{"update", makeQuery(t, "dmz.example.com.", dnsmessage.TypeSOA, withOpcode(5)), dmzClient, dnsmessage.RCodeNotImplemented, false, "", "", "", event.ReasonDNSNotImplemented},
		{"edns version 1", makeQuery(t, "kms.dmz.example.com.", dnsmessage.TypeA, withEDNS(1232, 1, false)), dmzClient, RCodeBadVersion, false, "", "", "OPT . size 1232", event.ReasonDNSBadVersion},
		{"edns", makeQuery(t, "kms.dmz.example.com.", dnsmessage.TypeA, withEDNS(4096, 0, true)), dmzClient, 0, true, "A kms.dmz.example.com. 192.0.2.5", "", "OPT . size 1232", ""},
		{"two opt records", makeQuery(t, "kms.dmz.example.com.", dnsmessage.TypeA, withEDNS(1232, 0, false), withEDNS(1232, 0, false)), dmzClient,
			dnsmessage.RCodeFormatError, false, "", "", "OPT . size 1232", event.ReasonDNSMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, m := ask(t, r, tt.q, tt.src, true)
			if m == nil {
				t.Fatalf("no response (%+v)", res)
			}
			if res.Reason != tt.reason || res.RCode != tt.rcode {
				t.Errorf("reason %q rcode %v, want %q %v", res.Reason, res.RCode, tt.reason, tt.rcode)
			}
			rc := m.Header.RCode
			for _, a := range m.Additionals {
				if a.Header.Type == dnsmessage.TypeOPT {
					rc = a.Header.ExtendedRCode(rc)
				}
			}
			if rc != tt.rcode || m.Header.Authoritative != tt.aa || !m.Header.Response || m.Header.RecursionAvailable || m.Header.ID != 0x4b4d || !m.Header.RecursionDesired {
				t.Errorf("header %+v (extended rcode %v), want rcode %v aa %v, RD echoed, no RA", m.Header, rc, tt.rcode, tt.aa)
			}
			if len(m.Questions) != 1 {
				t.Errorf("questions %v", m.Questions)
			}
			if got := rrs(m.Answers); got != tt.answer {
				t.Errorf("answer\n  %s\nwant\n  %s", got, tt.answer)
			}
			if got := rrs(m.Authorities); got != tt.auth {
				t.Errorf("authority\n  %s\nwant\n  %s", got, tt.auth)
			}
			if got := rrs(m.Additionals); got != tt.extra {
				t.Errorf("additional\n  %s\nwant\n  %s", got, tt.extra)
			}
		})
	}
}

// Messages that get no answer, or an answer without a question.
func TestAnswerMalformed(t *testing.T) {
	r := testResponder(t)
	srvQuery := makeQuery(t, "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeSRV)
	twoQuestions, _ := (&dnsmessage.Message{Header: dnsmessage.Header{ID: 1}, Questions: []dnsmessage.Question{
		{Name: dnsmessage.MustNewName("a.dmz.example.com."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET},
		{Name: dnsmessage.MustNewName("b.dmz.example.com."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET},
	}}).Pack()
	noQuestion, _ := (&dnsmessage.Message{Header: dnsmessage.Header{ID: 1}}).Pack()
	for _, tt := range []struct {
		name     string
		msg      []byte
		respond  bool
		rcode    dnsmessage.RCode
		reason   string
		question bool
	}{
		{"empty", nil, false, 0, event.ReasonDNSMalformed, false},
		{"short header", srvQuery[:11], false, 0, event.ReasonDNSMalformed, false},
		{"a response", makeQuery(t, "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeSRV, asResponse()), false, 0, event.ReasonDNSResponse, true},
		{"header only", noQuestion, true, dnsmessage.RCodeFormatError, event.ReasonDNSMalformed, false},
		{"cut question", srvQuery[:20], true, dnsmessage.RCodeFormatError, event.ReasonDNSMalformed, false},
		{"two questions", twoQuestions, true, dnsmessage.RCodeFormatError, event.ReasonDNSMalformed, true},
		{"trailing garbage is ignored", append(append([]byte(nil), srvQuery...), 1, 2, 3), true, 0, "", true},
		{"a count past the end", func() []byte { b := append([]byte(nil), srvQuery...); b[11] = 200; return b }(), true, dnsmessage.RCodeFormatError, event.ReasonDNSMalformed, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res, m := ask(t, r, tt.msg, dmzClient, true)
			if (m != nil) != tt.respond || res.Reason != tt.reason {
				t.Fatalf("response %v reason %q, want response %v reason %q", m != nil, res.Reason, tt.respond, tt.reason)
			}
			if m == nil {
				return
			}
			if m.Header.RCode != tt.rcode || (len(m.Questions) == 1) != tt.question {
				t.Errorf("rcode %v, %d questions", m.Header.RCode, len(m.Questions))
			}
		})
	}
}

// An answer over the client's UDP size drops the glue first, then the
// answer, setting TC; TCP carries it whole.
func TestTruncation(t *testing.T) {
	var addrs []string
	for i := 1; i <= 16; i++ {
		addrs = append(addrs, "2001:db8::"+strconv.Itoa(100+i))
	}
	cfg := loadConfig(t, strings.Replace(testConfig, `addresses: [192.0.2.5, "2001:db8::5"]`, `addresses: ["`+strings.Join(addrs, `", "`)+`"]`, 1))
	r, err := Compile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// 16 AAAA records: about 470 bytes compressed, over 512 with the SRV's glue.
	srv := makeQuery(t, "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeSRV)
	aaaa := makeQuery(t, "kms.dmz.example.com.", dnsmessage.TypeAAAA)
	aaaaLongName := makeQuery(t, "KMS.dmz.example.com.", dnsmessage.TypeAAAA, withEDNS(512, 0, false))
	for _, tt := range []struct {
		name            string
		q               []byte
		udp             bool
		tc              bool
		answers, extras int
	}{
		{"srv over udp: glue dropped, no TC", srv, true, false, 1, 0},
		{"srv over tcp: glue kept", srv, false, false, 1, 16},
		{"srv with edns 1232: glue kept", makeQuery(t, "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeSRV, withEDNS(1232, 0, false)), true, false, 1, 17},
		{"aaaa over udp fits 512", aaaa, true, false, 16, 0},
		{"aaaa over tcp", aaaa, false, false, 16, 0},
		{"aaaa with edns 512 and its opt", aaaaLongName, true, false, 16, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res, m := ask(t, r, tt.q, dmzClient, tt.udp)
			if m == nil {
				t.Fatal("no response")
			}
			if m.Header.Truncated != tt.tc || res.Truncated != tt.tc || len(m.Answers) != tt.answers || len(m.Additionals) != tt.extras {
				t.Errorf("%d bytes: TC %v, %d answers, %d additional; want TC %v, %d, %d", len(res.Response), m.Header.Truncated, len(m.Answers), len(m.Additionals), tt.tc, tt.answers, tt.extras)
			}
			if tt.udp && len(res.Response) > 1232 {
				t.Errorf("%d bytes over UDP", len(res.Response))
			}
		})
	}

	// So many addresses that the answer itself does not fit 512: TC, no answer.
	many := strings.Replace(testConfig, `addresses: [192.0.2.5, "2001:db8::5"]`, `addresses: ["`+strings.Join(addrs, `", "`)+`"]`, 1)
	many = strings.Replace(many, "name: dmz.example.com", "name: a-rather-long-label-to-make-every-name-longer.dmz.example.com", 1)
	r2, err := Compile(loadConfig(t, many))
	if err != nil {
		t.Fatal(err)
	}
	res, m := ask(t, r2, makeQuery(t, "kms.a-rather-long-label-to-make-every-name-longer.dmz.example.com.", dnsmessage.TypeAAAA), dmzClient, true)
	if m == nil || !m.Header.Truncated || len(m.Answers) != 0 || len(res.Response) > 512 || len(m.Questions) != 1 {
		t.Errorf("over 512 bytes: %+v, %d answers, %d bytes", m, len(m.Answers), len(res.Response))
	}
	if _, m := ask(t, r2, makeQuery(t, "kms.a-rather-long-label-to-make-every-name-longer.dmz.example.com.", dnsmessage.TypeAAAA), dmzClient, false); m == nil || len(m.Answers) != 16 || m.Header.Truncated {
		t.Errorf("over TCP: %+v", m)
	}
}

// allow_from narrows who may ask: office only.
func TestAllowFrom(t *testing.T) {
	cfg := loadConfig(t, strings.Replace(testConfig, "dns:\n", "dns:\n  allow_from: [office]\n", 1))
	r, err := Compile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	q := makeQuery(t, "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeSRV)
	for src, want := range map[netip.Addr]string{officeClient: "", dmzClient: event.ReasonDNSSourceNotAllowed, dmzClient6: event.ReasonDNSSourceNotAllowed, nowhere: event.ReasonDNSSourceNotAllowed} {
		if res, _ := ask(t, r, q, src, true); res.Reason != want {
			t.Errorf("%v: reason %q, want %q", src, res.Reason, want)
		}
	}
	// An IPv4-mapped source is the IPv4 address.
	if res, _ := ask(t, r, q, netip.AddrFrom16(officeClient.As16()), true); res.Reason != "" {
		t.Errorf("mapped office source: %q", res.Reason)
	}
}
