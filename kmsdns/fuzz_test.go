package kmsdns

import (
	"bytes"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// FuzzAnswer feeds arbitrary bytes to the query path from an allowed and
// a refused source, over UDP and TCP. Whatever comes in: no panic; a
// response parses, answers the query's ID, offers no recursion, fits the
// UDP size; a refused source gets REFUSED and no records; and no record
// is ever outside the configured zones.
func FuzzAnswer(f *testing.F) {
	r := testResponder(f)
	for _, q := range [][]byte{
		makeQuery(f, "_vlmcs._tcp.dmz.example.com.", dnsmessage.TypeSRV),
		makeQuery(f, "_VLMCS._tcp.DMZ.example.com.", dnsmessage.TypeSRV, withEDNS(4096, 0, true)),
		makeQuery(f, "kms.dmz.example.com.", dnsmessage.TypeALL),
		makeQuery(f, "dmz.example.com.", dnsmessage.TypeNS, withEDNS(512, 0, false)),
		makeQuery(f, "branch.example.org.", dnsmessage.TypeSOA),
		makeQuery(f, "www.example.com.", dnsmessage.TypeA),
		makeQuery(f, "dmz.example.com.", dnsmessage.TypeAXFR),
		makeQuery(f, "kms.dmz.example.com.", dnsmessage.TypeA, withEDNS(1232, 3, false)),
		makeQuery(f, "kms.dmz.example.com.", dnsmessage.TypeA, withOpcode(5)),
		{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1}, // a pointer loop in the question
		{},
	} {
		f.Add(q, true, true)
		f.Add(q, false, false)
	}
	zones := [][]byte{[]byte("dmz.example.com."), []byte("branch.example.org.")}
	f.Fuzz(func(t *testing.T, msg []byte, allowedSrc, udp bool) {
		src := dmzClient
		if !allowedSrc {
			src = nowhere
		}
		res := r.Answer(msg, src, udp, nil)
		if res.Response == nil {
			if res.Reason == "" {
				t.Fatal("no response and no reason")
			}
			return
		}
		var m dnsmessage.Message
		if err := m.Unpack(res.Response); err != nil {
			t.Fatalf("response does not parse: %v\n%x", err, res.Response)
		}
		if !m.Header.Response || m.Header.RecursionAvailable || len(msg) < 2 || m.Header.ID != uint16(msg[0])<<8|uint16(msg[1]) {
			t.Fatalf("header %+v for query %x", m.Header, msg)
		}
		qr, _ := parseQuery(msg)
		switch {
		case udp && !qr.edns && len(res.Response) > 512,
			udp && len(res.Response) > r.maxUDP:
			t.Fatalf("%d bytes over UDP (edns %v size %d)", len(res.Response), qr.edns, qr.ednsSize)
		}
		if !allowedSrc && (m.Header.RCode != dnsmessage.RCodeRefused || len(m.Answers)+len(m.Authorities) > 0) {
			t.Fatalf("a refused source got rcode %v and %d records", m.Header.RCode, len(m.Answers)+len(m.Authorities))
		}
		if res.Reason == "" && (!m.Header.Authoritative || (res.RCode != dnsmessage.RCodeSuccess && res.RCode != dnsmessage.RCodeNameError)) {
			t.Fatalf("an answer from the zones with rcode %v, AA %v", res.RCode, m.Header.Authoritative)
		}
		for _, sec := range [][]dnsmessage.Resource{m.Answers, m.Authorities, m.Additionals} {
			for _, rr := range sec {
				if rr.Header.Type == dnsmessage.TypeOPT {
					continue
				}
				var n dnsmessage.Name
				lowerName(&n, &rr.Header.Name)
				in := false
				for _, z := range zones {
					in = in || under(nameBytes(&n), z)
				}
				if !in {
					t.Fatalf("record %v outside the zones", rr.Header)
				}
			}
		}
		if len(m.Questions) == 1 && qr.hasQ && !bytes.Equal(nameBytes(&m.Questions[0].Name), nameBytes(&qr.q.Name)) {
			t.Fatalf("question %v echoed as %v", qr.q.Name, m.Questions[0].Name)
		}
	})
}
