package acl

import (
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// The rules most tests run against: a realistic DMZ policy.
var dmzRules = []string{
	"no-samr deny from=dmz,web,mail,inner if=samr op=any auth=none,anonymous,ntlm,kerberos,negotiate,other",
	"web-kms allow from=web if=kms/1.0 op=0 auth=none kms=4,5,6:windows:strict",
	"dmz-kms allow from=dmz,mail,v6only if=kms/1.0 op=0 auth=none kms=::",
	"inner-epm allow from=inner if=epm op=0,3 auth=ntlm,kerberos",
	"no-lsa-op deny from=inner if=lsarpc op=7 auth=none",
	"inner-lsa allow from=inner if=lsarpc op=0,7,9",
}

func TestZeroValueDenies(t *testing.T) {
	var d Decision
	if d.Allowed() || d.Verdict != Deny || Verdict(0) != Deny {
		t.Fatalf("zero Decision allows: %+v", d)
	}
	if Deny.String() != "deny" || Allow.String() != "allow" || Verdict(7).String() != "deny" {
		t.Errorf("Verdict strings: %v %v %v", Deny, Allow, Verdict(7))
	}
	var p *Policy // nil policy: everything denied
	for _, d := range []Decision{
		p.AdmitSource(dmzV4),
		p.DecideRequest(dmzV4, kmsSyn, rpcparse.AuthClassNone, 0),
		p.DecideBind(dmzV4, windowsBind(t)),
		p.DecideKMS(0, KMSFacts{Version: 6, Application: winApp}),
	} {
		checkDecision(t, d, Deny, "", ReasonNoMatchingRule)
	}
	if p.Zone(dmzV4) != "" || p.HasKMSPolicy(0) || p.Rules() != nil || p.Zones() != nil || p.MaxContexts() != 0 {
		t.Error("nil policy reports something")
	}
}

func TestCompileErrors(t *testing.T) {
	kms := kmsSyn
	samr := samrSyn
	good := RuleSpec{Name: "ok", From: []string{"dmz"}, Interface: &kms, Opnums: []uint16{0}, Action: Allow}
	with := func(f func(r *RuleSpec)) []RuleSpec {
		r := good
		f(&r)
		return []RuleSpec{r}
	}
	tests := []struct {
		name string
		spec Spec
		path string // of the first problem
		msg  string
	}{
		{"no rules", Spec{Zones: testZones}, "rules", "no rules"},
		{"no rule name", Spec{Zones: testZones, Rules: with(func(r *RuleSpec) { r.Name = "" })}, "rules[0].name", "no name"},
		{"duplicate rule", Spec{Zones: testZones, Rules: []RuleSpec{good, good}}, "rules[1].name", "duplicate rule name"},
		{"unknown zone", Spec{Zones: testZones, Rules: with(func(r *RuleSpec) { r.From = []string{"dmz", "nope"} })}, "rules[0].from[1]", `unknown zone "nope"`},
		{"no zone", Spec{Zones: testZones, Rules: with(func(r *RuleSpec) { r.From = nil })}, "rules[0].from", "names no zone"},
		{"allow any interface", Spec{Zones: testZones, Rules: with(func(r *RuleSpec) { r.Interface = nil })}, "rules[0].interface", "must name its interface"},
		{"allow any opnum", Spec{Zones: testZones, Rules: with(func(r *RuleSpec) { r.Opnums = nil })}, "rules[0].opnums", "must list its opnums"},
		{"bad action", Spec{Zones: testZones, Rules: with(func(r *RuleSpec) { r.Action = 9 })}, "rules[0].action", "unknown action"},
		{"bad auth", Spec{Zones: testZones, Rules: with(func(r *RuleSpec) { r.Auth = []rpcparse.AuthClass{rpcparse.AuthClassOther + 1} })}, "rules[0].auth[0]", "unknown auth class"},
		{"kms on samr", Spec{Zones: testZones, Rules: with(func(r *RuleSpec) { r.Interface, r.KMS = &samr, &KMSSpec{} })}, "rules[0].kms", "needs interface kms"},
		{"kms on deny", Spec{Zones: testZones, Rules: with(func(r *RuleSpec) { r.Action, r.KMS = Deny, &KMSSpec{} })}, "rules[0].kms", "on an allow rule"},
		{"empty zone", Spec{Zones: []Zone{{Name: "dmz"}}, Rules: []RuleSpec{good}}, "zones[0]", "names no network"},
		{"zone no name", Spec{Zones: []Zone{{Prefixes: pfx("10.0.0.0/8")}}, Rules: []RuleSpec{good}}, "zones[0]", "no name"},
		{"duplicate zone", Spec{Zones: []Zone{testZones[0], testZones[0]}, Rules: []RuleSpec{good}}, "zones[1]", "duplicate zone"},
		{"invalid prefix", Spec{Zones: []Zone{{Name: "dmz", Prefixes: []netip.Prefix{{}}}}, Rules: []RuleSpec{good}}, "zones[0].prefixes[0]", "invalid prefix"},
		{"max contexts", Spec{Zones: testZones, Rules: []RuleSpec{good}, MaxContexts: 256}, "max_contexts", "1..255"},
		{"negative max contexts", Spec{Zones: testZones, Rules: []RuleSpec{good}, MaxContexts: -1}, "max_contexts", "1..255"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Compile(tt.spec)
			if p != nil || err == nil {
				t.Fatalf("Compile = %v, %v; want an error", p, err)
			}
			var se *SpecError
			if !errors.Is(err, ErrInvalidSpec) || !errors.As(err, &se) {
				t.Fatalf("error %v is not an ErrInvalidSpec *SpecError", err)
			}
			if se.Path != tt.path || !strings.Contains(se.Msg, tt.msg) {
				t.Errorf("first problem %q %q, want %q containing %q", se.Path, se.Msg, tt.path, tt.msg)
			}
		})
	}
}

func TestCompileReportsEveryProblem(t *testing.T) {
	_, err := Compile(Spec{
		Zones: []Zone{{Name: "empty"}},
		Rules: []RuleSpec{{Name: "a", From: []string{"x"}, Action: Allow}, {Name: "a", From: []string{"y"}}},
	})
	var n int
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var se *SpecError
		if errors.As(e, &se) {
			n++
		}
	}
	// empty zone, from x, interface, opnums, duplicate a, from y
	if n != 6 {
		t.Errorf("got %d problems, want 6:\n%v", n, err)
	}
}

func TestCompileCopiesSpec(t *testing.T) {
	spec := Spec{Zones: []Zone{{Name: "dmz", Prefixes: pfx("192.0.2.0/24")}}, Rules: []RuleSpec{parseRule("r allow from=dmz if=kms op=0 kms=6::")}}
	p, err := Compile(spec)
	if err != nil {
		t.Fatal(err)
	}
	spec.Zones[0].Prefixes[0] = netip.MustParsePrefix("0.0.0.0/0")
	spec.Rules[0].From[0] = "other"
	spec.Rules[0].Interface.UUID = samrSyn.UUID
	spec.Rules[0].KMS.Versions[0] = 4
	if p.Zone(outsideV4) != "" || !p.DecideRequest(dmzV4, kmsSyn, 0, 0).Allowed() {
		t.Error("mutating the spec after Compile changed the policy")
	}
	if d := p.DecideKMS(0, KMSFacts{Version: 4}); d.Allowed() {
		t.Error("mutating the kms spec after Compile changed the policy")
	}
	r := p.Rules()
	r[0].Opnums[0] = 5
	if p.Rules()[0].Opnums[0] != 0 || p.Zones()[0].Name != "dmz" || p.MaxContexts() != DefaultMaxContexts {
		t.Error("Rules()/Zones() expose internal state")
	}
}

func TestZone(t *testing.T) {
	p := compile(t, "r allow from=dmz if=kms op=0")
	tests := []struct {
		src, want string
	}{
		{"192.0.2.0", "dmz"},
		{"192.0.2.10", "dmz"},
		{"192.0.2.200", "dmz"}, // also in web: config order wins
		{"192.0.2.255", "dmz"},
		{"192.0.3.0", ""},
		{"192.0.1.255", ""},
		{"198.51.100.16", "mail"},
		{"198.51.100.31", "mail"},
		{"198.51.100.32", ""},
		{"198.51.100.40", "mail"}, // bare /32
		{"198.51.100.41", ""},
		{"10.255.255.255", "inner"},
		{"0.0.0.0", ""},
		{"255.255.255.255", ""},
		{"2001:db8:10::42", "dmz"},
		{"2001:db8:10:0:ffff:ffff:ffff:ffff", "dmz"},
		{"2001:db8:10:1::", ""},
		{"2001:db8:20:ffff::1", "v6only"},
		{"fe80::1%eth0", ""},
		{"::ffff:192.0.2.10", "dmz"}, // v4-mapped is unmapped
		{"::ffff:10.0.0.1", "inner"},
		{"::192.0.2.10", ""}, // v4-compatible is not v4
		{"::", ""},
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ""},
		{"", ""}, // invalid address
	}
	for _, tt := range tests {
		if got := p.Zone(addr(tt.src)); got != tt.want {
			t.Errorf("Zone(%s) = %q, want %q", tt.src, got, tt.want)
		}
	}
}

func TestZoneOverlapOrder(t *testing.T) {
	// The same networks with the narrower zone first: it wins for its part.
	p, err := Compile(Spec{
		Zones: []Zone{
			{Name: "narrow", Prefixes: pfx("192.0.2.128/25")},
			{Name: "wide", Prefixes: pfx("192.0.0.0/16", "192.0.2.0/24")}, // nested in itself too
			{Name: "mapped", Prefixes: pfx("::ffff:198.51.100.0/120")},    // written v4-mapped
			{Name: "host6", Prefixes: pfx("2001:db8::1/128", "fe80::1/128")},
		},
		Rules: []RuleSpec{parseRule("r allow from=wide if=kms op=0")},
	})
	if err != nil {
		t.Fatal(err)
	}
	for src, want := range map[string]string{
		"192.0.2.128": "narrow", "192.0.2.127": "wide", "192.0.255.255": "wide", "192.1.0.0": "",
		"198.51.100.7": "mapped", "::ffff:198.51.100.7": "mapped", "198.51.101.0": "",
		"2001:db8::1": "host6", "2001:db8::2": "", "fe80::1%eth1": "host6",
	} {
		if got := p.Zone(addr(src)); got != want {
			t.Errorf("Zone(%s) = %q, want %q", src, got, want)
		}
	}
	// Admission counts every zone holding the source, not just the first.
	checkDecision(t, p.AdmitSource(addr("192.0.2.200")), Allow, "r", ReasonAllowed)
}

func TestAdmitSource(t *testing.T) {
	tests := []struct {
		rules  []string
		src    string
		want   Verdict
		rule   string
		reason string
	}{
		{dmzRules, "192.0.2.10", Allow, "dmz-kms", ReasonAllowed},
		{dmzRules, "192.0.2.200", Allow, "web-kms", ReasonAllowed}, // first allow rule holding it
		{dmzRules, "2001:db8:10::42", Allow, "dmz-kms", ReasonAllowed},
		{dmzRules, "::ffff:192.0.2.10", Allow, "dmz-kms", ReasonAllowed},
		{dmzRules, "2001:db8:20::1", Allow, "dmz-kms", ReasonAllowed},
		{dmzRules, "10.9.9.9", Allow, "inner-epm", ReasonAllowed},
		{dmzRules, "203.0.113.9", Deny, "", ReasonSourceNotInZone},
		{dmzRules, "2001:db8:30::1", Deny, "", ReasonSourceNotInZone},
		{dmzRules, "", Deny, "", ReasonSourceNotInZone},
		// A zone used only by deny rules does not admit.
		{[]string{"d deny from=inner if=any op=any", "a allow from=dmz if=kms op=0"}, "10.0.0.1", Deny, "", ReasonSourceNotInZone},
		{[]string{"d deny from=dmz if=any op=any", "a allow from=dmz if=kms op=0"}, "192.0.2.1", Allow, "a", ReasonAllowed},
		{[]string{"d deny from=dmz if=any op=any"}, "192.0.2.1", Deny, "", ReasonSourceNotInZone},
	}
	for _, tt := range tests {
		d := compile(t, tt.rules...).AdmitSource(addr(tt.src))
		t.Run(tt.src, func(t *testing.T) { checkDecision(t, d, tt.want, tt.rule, tt.reason) })
	}
}

func TestDecideRequest(t *testing.T) {
	var (
		none  = rpcparse.AuthClassNone
		ntlm  = rpcparse.AuthClassNTLM
		krb   = rpcparse.AuthClassKerberos
		anon  = rpcparse.AuthClassAnonymous
		kms20 = rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: 2}
	)
	tests := []struct {
		rules  []string
		src    string
		iface  rpcparse.SyntaxID
		auth   rpcparse.AuthClass
		opnum  uint16
		want   Verdict
		rule   string
		reason string
	}{
		{dmzRules, "192.0.2.10", kmsSyn, none, 0, Allow, "dmz-kms", ReasonAllowed},
		{dmzRules, "192.0.2.200", kmsSyn, none, 0, Allow, "web-kms", ReasonAllowed},
		{dmzRules, "::ffff:192.0.2.10", kmsSyn, none, 0, Allow, "dmz-kms", ReasonAllowed},
		{dmzRules, "2001:db8:10::42", kmsSyn, none, 0, Allow, "dmz-kms", ReasonAllowed},
		{dmzRules, "192.0.2.10", kmsSyn, none, 1, Deny, "", ReasonOpnumNotAllowed},
		{dmzRules, "192.0.2.10", kmsSyn, anon, 0, Deny, "", ReasonAuthNotAllowed},
		{dmzRules, "192.0.2.10", kmsSyn, ntlm, 1, Deny, "", ReasonAuthNotAllowed},
		{dmzRules, "192.0.2.10", kms20, none, 0, Deny, "", ReasonInterfaceNotAllowed}, // exact version
		{dmzRules, "192.0.2.10", samrSyn, none, 0, Deny, "no-samr", ReasonDeniedByRule},
		{dmzRules, "192.0.2.10", samrSyn, krb, 57, Deny, "no-samr", ReasonDeniedByRule},
		{dmzRules, "192.0.2.10", epmSyn, none, 3, Deny, "", ReasonInterfaceNotAllowed},
		{dmzRules, "192.0.2.10", junkSyn, none, 0, Deny, "", ReasonInterfaceNotAllowed},
		{dmzRules, "203.0.113.9", kmsSyn, none, 0, Deny, "", ReasonSourceNotInZone},
		{dmzRules, "", kmsSyn, none, 0, Deny, "", ReasonSourceNotInZone},
		{dmzRules, "10.1.2.3", epmSyn, ntlm, 3, Allow, "inner-epm", ReasonAllowed},
		{dmzRules, "10.1.2.3", epmSyn, none, 3, Deny, "", ReasonAuthNotAllowed},
		{dmzRules, "10.1.2.3", epmSyn, krb, 2, Deny, "", ReasonOpnumNotAllowed},
		{dmzRules, "10.1.2.3", kmsSyn, none, 0, Deny, "", ReasonInterfaceNotAllowed},
		{dmzRules, "10.1.2.3", lsaSyn, none, 7, Deny, "no-lsa-op", ReasonDeniedByRule}, // deny before allow
		{dmzRules, "10.1.2.3", lsaSyn, none, 9, Allow, "inner-lsa", ReasonAllowed},
		{dmzRules, "10.1.2.3", lsaSyn, ntlm, 7, Deny, "", ReasonAuthNotAllowed}, // deny rule needs its auth too
		// First match wins, in both directions.
		{[]string{"a allow from=dmz if=kms op=0", "d deny from=dmz if=kms op=0"}, "192.0.2.1", kmsSyn, none, 0, Allow, "a", ReasonAllowed},
		{[]string{"d deny from=dmz if=kms op=0", "a allow from=dmz if=kms op=0"}, "192.0.2.1", kmsSyn, none, 0, Deny, "d", ReasonDeniedByRule},
		{[]string{"d deny from=web if=any op=any auth=none", "a allow from=dmz if=kms op=0"}, "192.0.2.200", kmsSyn, none, 0, Deny, "d", ReasonDeniedByRule},
		{[]string{"d deny from=web if=any op=any auth=none", "a allow from=dmz if=kms op=0"}, "192.0.2.1", kmsSyn, none, 0, Allow, "a", ReasonAllowed},
		// Version given or not.
		{[]string{"a allow from=dmz if=kms op=0"}, "192.0.2.1", kms20, none, 0, Allow, "a", ReasonAllowed},
		{[]string{"a allow from=dmz if=kms/2.0 op=0"}, "192.0.2.1", kmsSyn, none, 0, Deny, "", ReasonInterfaceNotAllowed},
		{[]string{"a allow from=dmz if=kms/2.0 op=0"}, "192.0.2.1", kms20, none, 0, Allow, "a", ReasonAllowed},
		// The deepest near miss explains the deny.
		{[]string{"a allow from=dmz if=kms op=0", "b allow from=dmz if=samr op=5 auth=ntlm"}, "192.0.2.1", samrSyn, ntlm, 6, Deny, "", ReasonOpnumNotAllowed},
		{[]string{"a allow from=mail if=samr op=6", "b allow from=dmz if=kms op=0"}, "192.0.2.1", samrSyn, none, 6, Deny, "", ReasonInterfaceNotAllowed},
		// Only deny rules near-missed: nothing explains it beyond the zone.
		{[]string{"d deny from=dmz if=samr op=any", "a allow from=mail if=kms op=0"}, "192.0.2.1", kmsSyn, none, 0, Deny, "", ReasonSourceNotInZone},
		// Opnum list edges.
		{[]string{"a allow from=dmz if=samr op=65535,0,7,7"}, "192.0.2.1", samrSyn, none, 65535, Allow, "a", ReasonAllowed},
		{[]string{"a allow from=dmz if=samr op=65535,0,7,7"}, "192.0.2.1", samrSyn, none, 7, Allow, "a", ReasonAllowed},
		{[]string{"a allow from=dmz if=samr op=65535,0,7,7"}, "192.0.2.1", samrSyn, none, 65534, Deny, "", ReasonOpnumNotAllowed},
	}
	for i, tt := range tests {
		d := compile(t, tt.rules...).DecideRequest(addr(tt.src), tt.iface, tt.auth, tt.opnum)
		t.Run("", func(t *testing.T) {
			t.Logf("row %d: %v from %s %s op %d", i, tt.rules, tt.src, rpcparse.InterfaceName(tt.iface.UUID), tt.opnum)
			checkDecision(t, d, tt.want, tt.rule, tt.reason)
			if tt.rule != "" && tt.rules[d.RuleIndex][:len(tt.rule)+1] != tt.rule+" " {
				t.Errorf("RuleIndex %d does not name %q", d.RuleIndex, tt.rule)
			}
		})
	}
}

// TestAuthSweep: a rule allowing one auth class admits exactly that class,
// for requests and for binds carrying a real trailer of each class.
func TestAuthSweep(t *testing.T) {
	classes := []rpcparse.AuthClass{
		rpcparse.AuthClassNone, rpcparse.AuthClassAnonymous, rpcparse.AuthClassNTLM,
		rpcparse.AuthClassKerberos, rpcparse.AuthClassNegotiate, rpcparse.AuthClassOther,
	}
	for _, allowed := range classes {
		p := compile(t, "a allow from=dmz if=kms op=0 auth="+allowed.String())
		for _, got := range append(classes, rpcparse.AuthClassOther+1) {
			want, reason, rule := Deny, ReasonAuthNotAllowed, ""
			if got == allowed {
				want, reason, rule = Allow, ReasonAllowed, "a"
			}
			t.Run(allowed.String()+"/"+got.String(), func(t *testing.T) {
				checkDecision(t, p.DecideRequest(dmzV4, kmsSyn, got, 0), want, rule, reason)
				if got > rpcparse.AuthClassOther {
					return
				}
				pdu := parseBind(t, bindBytes(rpcparse.PTypeBind, authFor(got), ctx(0, kmsSyn, ndr20)))
				if c := rpcparse.ClassifyAuth(pdu); c != got {
					t.Fatalf("test trailer classifies as %v, want %v", c, got)
				}
				checkDecision(t, p.DecideBind(dmzV4, pdu), want, rule, reason)
			})
		}
	}
	// No auth list means [none].
	p := compile(t, "a allow from=dmz if=kms op=0")
	for _, c := range classes {
		if got := p.DecideRequest(dmzV4, kmsSyn, c, 0).Allowed(); got != (c == rpcparse.AuthClassNone) {
			t.Errorf("default auth: %v allowed = %v", c, got)
		}
	}
}

func TestDecideBind(t *testing.T) {
	many := make([]ctxItem, 9)
	for i := range many {
		many[i] = ctx(uint16(i), kmsSyn, ndr20)
	}
	tests := []struct {
		name   string
		rules  []string
		src    string
		items  []ctxItem
		want   Verdict
		rule   string
		reason string
	}{
		{"windows kms bind", dmzRules, "192.0.2.10", []ctxItem{ctx(0, kmsSyn, ndr20), ctx(1, kmsSyn, ndr64), ctx(2, kmsSyn, btfn)}, Allow, "dmz-kms", ReasonAllowed},
		{"windows kms bind v6", dmzRules, "2001:db8:10::42", []ctxItem{ctx(0, kmsSyn, ndr20), ctx(1, kmsSyn, ndr64), ctx(2, kmsSyn, btfn)}, Allow, "dmz-kms", ReasonAllowed},
		{"windows kms bind v4-mapped", dmzRules, "::ffff:192.0.2.200", []ctxItem{ctx(0, kmsSyn, ndr20), ctx(1, kmsSyn, ndr64), ctx(2, kmsSyn, btfn)}, Allow, "web-kms", ReasonAllowed},
		{"vlmcs -N0 -B0", dmzRules, "192.0.2.10", []ctxItem{ctx(0, kmsSyn, ndr20)}, Allow, "dmz-kms", ReasonAllowed},
		{"py-kms client", dmzRules, "192.0.2.10", []ctxItem{ctx(0, kmsSyn, ndr20), ctx(1, kmsSyn, btfn)}, Allow, "dmz-kms", ReasonAllowed},
		{"two transfers in one item", dmzRules, "192.0.2.10", []ctxItem{ctx(0, kmsSyn, ndr20, ndr64)}, Allow, "dmz-kms", ReasonAllowed},
		{"outside source", dmzRules, "203.0.113.9", []ctxItem{ctx(0, kmsSyn, ndr20)}, Deny, "", ReasonSourceNotInZone},
		{"samr enumeration", dmzRules, "192.0.2.10", []ctxItem{ctx(0, samrSyn, ndr20)}, Deny, "no-samr", ReasonDeniedByRule},
		{"epm enumeration", dmzRules, "192.0.2.10", []ctxItem{ctx(0, epmSyn, ndr20)}, Deny, "", ReasonInterfaceNotAllowed},
		{"kms beside samr", dmzRules, "192.0.2.10", []ctxItem{ctx(0, kmsSyn, ndr20), ctx(1, samrSyn, ndr20)}, Deny, "no-samr", ReasonDeniedByRule},
		{"kms beside epm", dmzRules, "192.0.2.10", []ctxItem{ctx(0, kmsSyn, ndr20), ctx(1, epmSyn, ndr20)}, Deny, "", ReasonInterfaceNotAllowed},
		{"kms wrong version", dmzRules, "192.0.2.10", []ctxItem{ctx(0, rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: 1, Minor: 1}, ndr20)}, Deny, "", ReasonInterfaceNotAllowed},
		{"opnum deny rule does not refuse bind", dmzRules, "10.1.2.3", []ctxItem{ctx(0, lsaSyn, ndr20)}, Allow, "inner-lsa", ReasonAllowed},
		{"auth checked at bind", dmzRules, "10.1.2.3", []ctxItem{ctx(0, epmSyn, ndr20)}, Deny, "", ReasonAuthNotAllowed},
		{"duplicate context id", dmzRules, "192.0.2.10", []ctxItem{ctx(0, kmsSyn, ndr20), ctx(0, kmsSyn, ndr64)}, Deny, "", ReasonDuplicateContextID},
		{"duplicate context id far apart", dmzRules, "192.0.2.10", []ctxItem{ctx(7, kmsSyn, ndr20), ctx(1, kmsSyn, ndr64), ctx(7, kmsSyn, btfn)}, Deny, "", ReasonDuplicateContextID},
		{"too many contexts", dmzRules, "192.0.2.10", many, Deny, "", ReasonTooManyContexts},
		{"max contexts exactly", dmzRules, "192.0.2.10", many[:8], Allow, "dmz-kms", ReasonAllowed},
		{"unknown transfer", dmzRules, "192.0.2.10", []ctxItem{ctx(0, kmsSyn, junkSyn)}, Deny, "", ReasonBadTransferSyntax},
		{"ndr wrong version", dmzRules, "192.0.2.10", []ctxItem{ctx(0, kmsSyn, badNDR)}, Deny, "", ReasonBadTransferSyntax},
		{"unknown transfer second", dmzRules, "192.0.2.10", []ctxItem{ctx(0, kmsSyn, ndr20), ctx(1, kmsSyn, ndr64, junkSyn)}, Deny, "", ReasonBadTransferSyntax},
		{"shape before policy", dmzRules, "203.0.113.9", []ctxItem{ctx(0, kmsSyn, junkSyn)}, Deny, "", ReasonBadTransferSyntax},
		{"btfn first", dmzRules, "192.0.2.10", []ctxItem{ctx(0, kmsSyn, btfn)}, Deny, "", ReasonBTFNMisplaced},
		{"btfn twice", dmzRules, "192.0.2.10", []ctxItem{ctx(0, kmsSyn, ndr20), ctx(1, kmsSyn, btfn), ctx(2, kmsSyn, btfn)}, Deny, "", ReasonBTFNMisplaced},
		{"btfn with another transfer", dmzRules, "192.0.2.10", []ctxItem{ctx(0, kmsSyn, ndr20), ctx(1, kmsSyn, ndr20, btfn)}, Deny, "", ReasonBTFNMisplaced},
		{"btfn other abstract", dmzRules, "192.0.2.10", []ctxItem{ctx(0, kmsSyn, ndr20), ctx(1, samrSyn, btfn)}, Deny, "", ReasonBTFNMisplaced},
		{"btfn not after its twin", dmzRules, "10.1.2.3", []ctxItem{ctx(0, lsaSyn, ndr20), ctx(1, epmSyn, ndr20), ctx(2, lsaSyn, btfn)}, Deny, "", ReasonBTFNMisplaced},
		{"first context names the rule", []string{"a allow from=dmz if=kms op=0", "b allow from=dmz if=samr op=1"}, "192.0.2.1", []ctxItem{ctx(0, samrSyn, ndr20), ctx(1, kmsSyn, ndr20)}, Allow, "b", ReasonAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := compile(t, tt.rules...)
			checkDecision(t, p.DecideBind(addr(tt.src), bind(t, tt.items...)), tt.want, tt.rule, tt.reason)
			// alter_context is decided the same way.
			alter := parseBind(t, bindBytes(rpcparse.PTypeAlterContext, nil, tt.items...))
			checkDecision(t, p.DecideBind(addr(tt.src), alter), tt.want, tt.rule, tt.reason)
		})
	}
}

func TestDecideBindShapeEdges(t *testing.T) {
	p := compile(t, dmzRules...)
	// Not a bind at all.
	checkDecision(t, p.DecideBind(dmzV4, nil), Deny, "", ReasonNotBind)
	req := &rpcparse.PDU{Header: rpcparse.Header{Type: rpcparse.PTypeRequest}}
	checkDecision(t, p.DecideBind(dmzV4, req), Deny, "", ReasonNotBind)
	// rpcparse refuses n_context_elem 0 itself; a PDU that claims it anyway.
	zero := &rpcparse.PDU{Header: rpcparse.Header{Type: rpcparse.PTypeBind}}
	checkDecision(t, p.DecideBind(dmzV4, zero), Deny, "", ReasonNoContexts)
	// n_context_elem disagreeing with the items (a PDU that failed to parse).
	pdu := windowsBind(t)
	pdu.Bind.NumContexts = 2
	checkDecision(t, p.DecideBind(dmzV4, pdu), Deny, "", ReasonMalformedBind)
	pdu = windowsBind(t)
	pdu.Bind.NumContexts = 4
	checkDecision(t, p.DecideBind(dmzV4, pdu), Deny, "", ReasonMalformedBind)
	// A context the count leaves out (here SAMR, after two counted KMS
	// items) is bytes nothing checked: the bind is refused, not forwarded.
	frag := bindBytes(rpcparse.PTypeBind, nil, ctx(0, kmsSyn, ndr20), ctx(1, kmsSyn, ndr64), ctx(2, iface("samr"), ndr20))
	frag[24] = 2 // n_context_elem
	pdu = parseBind(t, frag)
	if len(pdu.Bind.Extra) == 0 {
		t.Fatal("test bind has no bytes past its counted items")
	}
	checkDecision(t, p.DecideBind(dmzV4, pdu), Deny, "", ReasonMalformedBind)
	frag[24] = 3 // counted, the SAMR item meets the rules
	checkDecision(t, p.DecideBind(dmzV4, parseBind(t, frag)), Deny, "no-samr", ReasonDeniedByRule)
	// The context limit follows the spec.
	for _, tt := range []struct{ max, n int }{{1, 1}, {1, 2}, {3, 3}, {255, 255}, {255, 256}} {
		spec := Spec{Zones: testZones, Rules: []RuleSpec{parseRule("a allow from=dmz if=kms op=0")}, MaxContexts: tt.max}
		p, err := Compile(spec)
		if err != nil {
			t.Fatal(err)
		}
		items := make([]ctxItem, tt.n)
		for i := range items {
			items[i] = ctx(uint16(i), kmsSyn, ndr20)
		}
		frag := bindBytes(rpcparse.PTypeBind, nil, items...)
		pdu := new(rpcparse.PDU)
		if err := pdu.Parse(frag, 0); err != nil {
			continue // 256 contexts do not fit n_context_elem
		}
		if got, want := p.DecideBind(dmzV4, pdu).Allowed(), tt.n <= tt.max; got != want {
			t.Errorf("max %d, %d contexts: allowed %v", tt.max, tt.n, got)
		}
	}
}

// TestTransferSweep: every transfer kind, alone and after an NDR item.
func TestTransferSweep(t *testing.T) {
	p := compile(t, dmzRules...)
	syntax := map[rpcparse.TransferKind]rpcparse.SyntaxID{
		rpcparse.TransferUnknown: junkSyn, rpcparse.TransferNDR20: ndr20,
		rpcparse.TransferNDR64: ndr64, rpcparse.TransferBTFN: btfn,
	}
	for k := rpcparse.TransferUnknown; k <= rpcparse.TransferBTFN; k++ {
		s := syntax[k]
		if got := rpcparse.ClassifyTransfer(s); got != k {
			t.Fatalf("test syntax for %v classifies as %v", k, got)
		}
		alone, after := ReasonAllowed, ReasonAllowed
		switch k {
		case rpcparse.TransferUnknown:
			alone, after = ReasonBadTransferSyntax, ReasonBadTransferSyntax
		case rpcparse.TransferBTFN:
			alone = ReasonBTFNMisplaced
		}
		t.Run(k.String(), func(t *testing.T) {
			if d := p.DecideBind(dmzV4, bind(t, ctx(0, kmsSyn, s))); d.Reason != alone {
				t.Errorf("alone: %q, want %q", d.Reason, alone)
			}
			if d := p.DecideBind(dmzV4, bind(t, ctx(0, kmsSyn, ndr20), ctx(1, kmsSyn, s))); d.Reason != after {
				t.Errorf("after ndr20: %q, want %q", d.Reason, after)
			}
		})
	}
}

func TestDecideKMS(t *testing.T) {
	p := compile(t,
		"strict allow from=dmz if=kms op=0 kms=4,5,6:windows,office2013:strict", // 0
		"lax allow from=dmz if=kms op=0 kms=6::",                                // 1
		"any allow from=dmz if=kms op=0 kms=::",                                 // 2
		"plain allow from=dmz if=kms op=0",                                      // 3
		"d deny from=dmz if=kms op=1",                                           // 4
	)
	other := rpcparse.MustUUID("59a52881-a989-479d-af46-f275c6370663")
	tests := []struct {
		rule   int
		facts  KMSFacts
		want   Verdict
		name   string
		reason string
	}{
		{0, KMSFacts{Version: 6, Application: winApp}, Allow, "strict", ReasonAllowed},
		{0, KMSFacts{Version: 4, Application: o2013App}, Allow, "strict", ReasonAllowed},
		{0, KMSFacts{Version: 3, Application: winApp}, Deny, "strict", ReasonKMSVersionNotAllowed},
		{0, KMSFacts{Version: 7, Application: winApp}, Deny, "strict", ReasonKMSVersionNotAllowed},
		{0, KMSFacts{Version: 6, Application: other}, Deny, "strict", ReasonKMSApplicationNotAllowed},
		{0, KMSFacts{Version: 6}, Deny, "strict", ReasonKMSApplicationNotAllowed},
		{0, KMSFacts{Version: 6, Application: winApp, Malformed: true}, Deny, "strict", ReasonKMSMalformed},
		{1, KMSFacts{Version: 6, Application: other}, Allow, "lax", ReasonAllowed},
		{1, KMSFacts{Version: 5, Application: winApp}, Deny, "lax", ReasonKMSVersionNotAllowed},
		{1, KMSFacts{Malformed: true}, Allow, "lax", ReasonAllowed},
		{2, KMSFacts{Version: 99, Application: other}, Allow, "any", ReasonAllowed},
		{3, KMSFacts{Malformed: true}, Deny, "plain", ReasonKMSMalformed}, // no block: defaults, fail closed
		{3, KMSFacts{Version: 99, Application: other}, Allow, "plain", ReasonAllowed},
		{4, KMSFacts{Version: 6, Application: winApp}, Deny, "", ReasonNoMatchingRule},
		{-1, KMSFacts{Version: 6, Application: winApp}, Deny, "", ReasonNoMatchingRule},
		{5, KMSFacts{Version: 6, Application: winApp}, Deny, "", ReasonNoMatchingRule},
	}
	for _, tt := range tests {
		d := p.DecideKMS(tt.rule, tt.facts)
		t.Run(tt.name, func(t *testing.T) {
			checkDecision(t, d, tt.want, tt.name, tt.reason)
			if tt.name != "" && d.RuleIndex != tt.rule {
				t.Errorf("RuleIndex %d, want %d", d.RuleIndex, tt.rule)
			}
		})
	}
	for i, want := range []bool{true, true, true, false, false, false} {
		if got := p.HasKMSPolicy(i); got != want {
			t.Errorf("HasKMSPolicy(%d) = %v", i, got)
		}
	}
	if p.HasKMSPolicy(-1) {
		t.Error("HasKMSPolicy(-1)")
	}
}

func TestReasonsListed(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range Reasons() {
		if seen[r] || r == "" || strings.ToLower(r) != r || strings.ContainsAny(r, " _") {
			t.Errorf("bad or repeated reason token %q", r)
		}
		seen[r] = true
	}
	for _, r := range missReason {
		if !seen[r] {
			t.Errorf("%q missing from Reasons()", r)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	p := compile(t, dmzRules...)
	pdu := windowsBind(t)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				if !p.DecideBind(dmzV4, pdu).Allowed() || !p.DecideRequest(dmzV6, kmsSyn, 0, 0).Allowed() ||
					p.DecideRequest(dmzV4, samrSyn, 0, 0).Allowed() || p.Zone(webV4) != "dmz" {
					t.Error("decision changed under concurrency")
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestDecisionsDoNotAllocate(t *testing.T) {
	p := compile(t, dmzRules...)
	good, bad := windowsBind(t), bind(t, ctx(0, kmsSyn, ndr20), ctx(1, samrSyn, ndr20))
	anon := parseBind(t, bindBytes(rpcparse.PTypeBind, authFor(rpcparse.AuthClassAnonymous), ctx(0, kmsSyn, ndr20)))
	facts := KMSFacts{Version: 6, Application: winApp}
	for name, f := range map[string]func(){
		"Zone":                func() { _ = p.Zone(mappedDMZ) },
		"Zone v6":             func() { _ = p.Zone(netip.MustParseAddr("fe80::1%eth0")) },
		"AdmitSource":         func() { _ = p.AdmitSource(dmzV6) },
		"AdmitSource refused": func() { _ = p.AdmitSource(outsideV4) },
		"DecideBind":          func() { _ = p.DecideBind(dmzV4, good) },
		"DecideBind refused":  func() { _ = p.DecideBind(dmzV4, bad) },
		"DecideBind anon":     func() { _ = p.DecideBind(dmzV4, anon) },
		"DecideRequest":       func() { _ = p.DecideRequest(webV4, kmsSyn, 0, 0) },
		"DecideRequest miss":  func() { _ = p.DecideRequest(innerV4, epmSyn, 0, 9) },
		"DecideKMS":           func() { _ = p.DecideKMS(1, facts) },
		"HasKMSPolicy":        func() { _ = p.HasKMSPolicy(1) },
	} {
		if n := testing.AllocsPerRun(200, f); n != 0 {
			t.Errorf("%s: %v allocs per run, want 0", name, n)
		}
	}
}

func BenchmarkDecideBind(b *testing.B) {
	p := compile(b, dmzRules...)
	pdu := windowsBind(b)
	b.ReportAllocs()
	for b.Loop() {
		if !p.DecideBind(webV4, pdu).Allowed() {
			b.Fatal("denied")
		}
	}
}

func BenchmarkDecideRequest(b *testing.B) {
	p := compile(b, dmzRules...)
	b.ReportAllocs()
	for b.Loop() {
		if !p.DecideRequest(mailV4, kmsSyn, rpcparse.AuthClassNone, 0).Allowed() {
			b.Fatal("denied")
		}
	}
}

func FuzzDecideBind(f *testing.F) {
	f.Add(bindBytes(rpcparse.PTypeBind, nil, ctx(0, kmsSyn, ndr20), ctx(1, kmsSyn, ndr64), ctx(2, kmsSyn, btfn)))
	f.Add(bindBytes(rpcparse.PTypeAlterContext, authFor(rpcparse.AuthClassAnonymous), ctx(0, samrSyn, ndr20)))
	f.Add(bindBytes(rpcparse.PTypeBind, nil, ctx(0, kmsSyn, btfn), ctx(0, kmsSyn, junkSyn)))
	p := compile(f, dmzRules...)
	f.Fuzz(func(t *testing.T, frag []byte) {
		var pdu rpcparse.PDU
		if pdu.Parse(frag, 0) != nil {
			return
		}
		d := p.DecideBind(dmzV4, &pdu)
		if !d.Allowed() {
			if d.Reason == "" {
				t.Fatal("deny without a reason")
			}
			return
		}
		// Invariants of an allowed bind.
		if d.Rule == "" || d.RuleIndex < 0 || pdu.Bind.NumContexts == 0 || int(pdu.Bind.NumContexts) > p.MaxContexts() {
			t.Fatalf("allowed a bind it should not: %+v", d)
		}
		it := pdu.Bind.Contexts()
		for it.Next() {
			c := it.Context()
			if !p.DecideRequest(dmzV4, c.Abstract, rpcparse.ClassifyAuth(&pdu), 0).Allowed() {
				t.Fatalf("allowed context %v that opnum 0 requests on it would not pass", c.Abstract)
			}
			for i := 0; i < int(c.NumTransfer); i++ {
				if rpcparse.ClassifyTransfer(c.Transfer(i)) == rpcparse.TransferUnknown {
					t.Fatal("allowed an unknown transfer syntax")
				}
			}
		}
	})
}

// TestImports guards the package map: acl is pure and imports only the
// standard library's non-I/O packages and rpcparse.
func TestImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{join .Imports "\n"}}`, ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	allowed := map[string]bool{
		"errors": true, "fmt": true, "net/netip": true, "slices": true,
		"github.com/kmsproxy/kmsproxy/rpcparse":     true,
		"github.com/kmsproxy/kmsproxy/rpcparse/kms": true,
	}
	for _, imp := range strings.Fields(string(out)) {
		if !allowed[imp] {
			t.Errorf("acl imports %q", imp)
		}
	}
}

func TestDecideAuth(t *testing.T) {
	p, err := Compile(Spec{Zones: testZones, Rules: []RuleSpec{parseRule("ntlm-only allow from=dmz if=kms/1.0 op=0 auth=ntlm")}})
	if err != nil {
		t.Fatal(err)
	}
	src := netip.MustParseAddr("192.0.2.7")
	for _, c := range []struct {
		auth rpcparse.AuthClass
		want Verdict
	}{
		{rpcparse.AuthClassNTLM, Allow},
		{rpcparse.AuthClassAnonymous, Deny}, // the NULL session shows only in AUTHENTICATE
		{rpcparse.AuthClassNone, Deny},
		{rpcparse.AuthClassKerberos, Deny},
	} {
		if d := p.DecideAuth(src, kmsSyn, c.auth); d.Verdict != c.want {
			t.Errorf("auth %v: got %v (%s), want %v", c.auth, d.Verdict, d.Reason, c.want)
		}
	}
	if d := (*Policy)(nil).DecideAuth(src, kmsSyn, rpcparse.AuthClassNTLM); d.Verdict != Deny {
		t.Error("nil policy allowed")
	}
}
