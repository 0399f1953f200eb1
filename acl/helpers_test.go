package acl

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// Test zones. "web" overlaps "dmz" on purpose; "v6only" is IPv6 only.
var testZones = []Zone{
	{Name: "dmz", Prefixes: pfx("192.0.2.0/24", "2001:db8:10::/64")},
	{Name: "web", Prefixes: pfx("192.0.2.128/25")},
	{Name: "mail", Prefixes: pfx("198.51.100.16/28", "198.51.100.40/32")},
	{Name: "inner", Prefixes: pfx("10.0.0.0/8")},
	{Name: "v6only", Prefixes: pfx("2001:db8:20::/48")},
}

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

var (
	kmsSyn   = rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: 1}
	samrSyn  = iface("samr")
	lsaSyn   = rpcparse.SyntaxID{UUID: rpcparse.MustUUID("12345778-1234-abcd-ef00-0123456789ab")}
	epmSyn   = iface("epm")
	ndr20    = rpcparse.SyntaxID{UUID: rpcparse.NDR20UUID, Major: 2}
	ndr64    = rpcparse.SyntaxID{UUID: rpcparse.NDR64UUID, Major: 1}
	btfn     = rpcparse.SyntaxID{UUID: rpcparse.MustUUID("6cb71c2c-9812-4540-0300-000000000000"), Major: 1}
	badNDR   = rpcparse.SyntaxID{UUID: rpcparse.NDR20UUID, Major: 1} // NDR 2.0 UUID with the wrong version
	junkSyn  = rpcparse.SyntaxID{UUID: rpcparse.MustUUID("00000000-1111-2222-3333-444444444444"), Major: 1}
	winApp   = rpcparse.MustUUID("55c92734-d682-4d71-983e-d6ec3f16059f")
	o2013App = rpcparse.MustUUID("0ff1ce15-a989-479d-af46-f275c6370663")
)

func iface(name string) rpcparse.SyntaxID {
	i, ok := rpcparse.InterfaceByName(name)
	if !ok {
		panic("unknown interface " + name)
	}
	return rpcparse.SyntaxID{UUID: i.UUID, Major: i.Major, Minor: i.Minor}
}

// parseRule parses a one-line rule, config-ish:
//
//	"name allow from=dmz,web if=kms op=0 auth=none kms=4,5,6:windows:strict"
//
// if= takes an alias, optionally /major.minor (else any version), or "any";
// op= "any" or a list; kms= versions:applications[:strict], lists may be empty.
func parseRule(s string) RuleSpec {
	f := strings.Fields(s)
	r := RuleSpec{Name: f[0]}
	if f[1] == "allow" {
		r.Action = Allow
	}
	for _, kv := range f[2:] {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "from":
			r.From = strings.Split(v, ",")
		case "if":
			if v == "any" {
				continue
			}
			name, ver, hasVer := strings.Cut(v, "/")
			syn := iface(name)
			if hasVer {
				maj, min, _ := strings.Cut(ver, ".")
				syn.Major, syn.Minor = u16(maj), u16(min)
			} else {
				r.AnyVersion = true
			}
			r.Interface = &syn
		case "op":
			if v == "any" {
				continue
			}
			for _, o := range strings.Split(v, ",") {
				r.Opnums = append(r.Opnums, u16(o))
			}
		case "auth":
			for _, a := range strings.Split(v, ",") {
				c, ok := rpcparse.ParseAuthClass(a)
				if !ok {
					panic("bad auth " + a)
				}
				r.Auth = append(r.Auth, c)
			}
		case "kms":
			parts := strings.Split(v, ":")
			k := &KMSSpec{RejectMalformed: len(parts) > 2 && parts[2] == "strict"}
			for _, ver := range strings.Split(parts[0], ",") {
				if ver != "" {
					k.Versions = append(k.Versions, u16(ver))
				}
			}
			if len(parts) > 1 {
				for _, a := range strings.Split(parts[1], ",") {
					switch a {
					case "":
					case "windows":
						k.Applications = append(k.Applications, winApp)
					case "office2013":
						k.Applications = append(k.Applications, o2013App)
					default:
						panic("bad app " + a)
					}
				}
			}
			r.KMS = k
		default:
			panic("bad rule key " + k)
		}
	}
	return r
}

func u16(s string) uint16 {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		panic(err)
	}
	return uint16(n)
}

// compile builds a policy over testZones from one-line rules.
func compile(t testing.TB, rules ...string) *Policy {
	t.Helper()
	spec := Spec{Zones: testZones}
	for _, r := range rules {
		spec.Rules = append(spec.Rules, parseRule(r))
	}
	p, err := Compile(spec)
	if err != nil {
		t.Fatalf("Compile(%q): %v", rules, err)
	}
	return p
}

// ctxItem is one presentation context of a hand-built bind.
type ctxItem struct {
	id        uint16
	abstract  rpcparse.SyntaxID
	transfers []rpcparse.SyntaxID
}

func ctx(id uint16, abstract rpcparse.SyntaxID, transfers ...rpcparse.SyntaxID) ctxItem {
	return ctxItem{id, abstract, transfers}
}

// trailer is an auth verifier: sec_trailer type plus credentials.
type trailer struct {
	typ   rpcparse.AuthType
	creds []byte
}

// ntlmMsg builds an NTLMSSP message of the given type; for AUTHENTICATE,
// userLen is the UserName field length (0 is a NULL session).
func ntlmMsg(typ uint32, userLen uint16) []byte {
	b := make([]byte, 64)
	copy(b, "NTLMSSP\x00")
	binary.LittleEndian.PutUint32(b[8:], typ)
	binary.LittleEndian.PutUint16(b[36:], userLen)
	return b
}

// authFor returns a trailer ClassifyAuth puts in class c (nil for none).
func authFor(c rpcparse.AuthClass) *trailer {
	switch c {
	case rpcparse.AuthClassNone:
		return nil
	case rpcparse.AuthClassAnonymous:
		return &trailer{rpcparse.AuthTypeNTLM, ntlmMsg(rpcparse.NTLMAuthenticate, 0)}
	case rpcparse.AuthClassNTLM:
		return &trailer{rpcparse.AuthTypeNTLM, ntlmMsg(rpcparse.NTLMAuthenticate, 8)}
	case rpcparse.AuthClassKerberos:
		return &trailer{rpcparse.AuthTypeKerberos, []byte("\x60\x82\x01\x00kerberos")}
	case rpcparse.AuthClassNegotiate:
		return &trailer{rpcparse.AuthTypeSPNEGO, []byte("\x60\x48\x06\x06+\x06\x01\x05\x05\x02")}
	}
	return &trailer{rpcparse.AuthTypeSchannel, []byte("schannel")}
}

// bindBytes writes a little-endian bind (ptype 11) or alter_context (14):
// header, max_xmit/max_recv/assoc_group/n_context_elem, items, then the
// optional sec_trailer and credentials (kms-protocol.md §1).
func bindBytes(ptype rpcparse.PType, a *trailer, items ...ctxItem) []byte {
	le := binary.LittleEndian
	b := []byte{5, 0, byte(ptype), 0x03, 0x10, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0}
	b = le.AppendUint16(b, 5840)
	b = le.AppendUint16(b, 5840)
	b = le.AppendUint32(b, 0)
	b = append(b, byte(len(items)), 0, 0, 0)
	for _, it := range items {
		b = le.AppendUint16(b, it.id)
		b = append(b, byte(len(it.transfers)), 0)
		b = appendSyntax(b, it.abstract)
		for _, ts := range it.transfers {
			b = appendSyntax(b, ts)
		}
	}
	if a != nil {
		b = append(b, byte(a.typ), 2, 0, 0, 0, 0, 0, 0) // level connect, no pad, ctx 0
		b = append(b, a.creds...)
		le.PutUint16(b[10:], uint16(len(a.creds)))
	}
	le.PutUint16(b[8:], uint16(len(b)))
	return b
}

// appendSyntax writes a p_syntax_id_t: UUID, then the version u32 whose low
// half is the major version (in little-endian: u16 major, u16 minor).
func appendSyntax(b []byte, s rpcparse.SyntaxID) []byte {
	var u [16]byte
	s.UUID.PutWire(u[:], false)
	b = append(b, u[:]...)
	b = binary.LittleEndian.AppendUint16(b, s.Major)
	return binary.LittleEndian.AppendUint16(b, s.Minor)
}

// parseBind parses hand-built bytes, failing the test if rpcparse refuses them.
func parseBind(t testing.TB, frag []byte) *rpcparse.PDU {
	t.Helper()
	p := new(rpcparse.PDU)
	if err := p.Parse(frag, 0); err != nil {
		t.Fatalf("rpcparse refused the test bind: %v\n% x", err, frag)
	}
	return p
}

func bind(t testing.TB, items ...ctxItem) *rpcparse.PDU {
	t.Helper()
	return parseBind(t, bindBytes(rpcparse.PTypeBind, nil, items...))
}

// windowsBind is the bind a Windows KMS client sends: NDR 2.0, NDR64, BTFN.
func windowsBind(t testing.TB) *rpcparse.PDU {
	return bind(t, ctx(0, kmsSyn, ndr20), ctx(1, kmsSyn, ndr64), ctx(2, kmsSyn, btfn))
}

var (
	dmzV4     = netip.MustParseAddr("192.0.2.10")
	webV4     = netip.MustParseAddr("192.0.2.200") // in dmz and web
	mailV4    = netip.MustParseAddr("198.51.100.20")
	innerV4   = netip.MustParseAddr("10.1.2.3")
	outsideV4 = netip.MustParseAddr("203.0.113.9")
	dmzV6     = netip.MustParseAddr("2001:db8:10::42")
	mappedDMZ = netip.MustParseAddr("::ffff:192.0.2.10")
)

func addr(s string) netip.Addr {
	if s == "" {
		return netip.Addr{}
	}
	return netip.MustParseAddr(s)
}

func checkDecision(t *testing.T, got Decision, want Verdict, wantRule, wantReason string) {
	t.Helper()
	if got.Verdict != want || got.Rule != wantRule || got.Reason != wantReason {
		t.Errorf("got %v rule=%q reason=%q, want %v rule=%q reason=%q",
			got.Verdict, got.Rule, got.Reason, want, wantRule, wantReason)
	}
	if wantRule == "" && got.RuleIndex != -1 {
		t.Errorf("RuleIndex = %d with no rule, want -1", got.RuleIndex)
	}
	if got.Allowed() != (want == Allow) {
		t.Errorf("Allowed() = %v, verdict %v", got.Allowed(), got.Verdict)
	}
}
