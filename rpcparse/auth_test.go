package rpcparse

import (
	"encoding/binary"
	"testing"
)

// NTLMSSP messages built by hand from MS-NLMP 2.2.1.

func ntlmNegotiate() []byte {
	b := make([]byte, 32)
	copy(b, "NTLMSSP\x00")
	binary.LittleEndian.PutUint32(b[8:], NTLMNegotiate)
	binary.LittleEndian.PutUint32(b[12:], 0xe2088297) // NegotiateFlags
	// DomainNameFields @16 and WorkstationFields @24 stay empty.
	return b
}

// ntlmAuthenticate builds an AUTHENTICATE_MESSAGE (2.2.1.3) whose payload
// holds the UTF-16LE domain and user; responses are empty (anonymous form)
// when user is empty, 24 bytes each otherwise.
func ntlmAuthenticate(domain, user string) []byte {
	const fixed = 64 // through NegotiateFlags, no Version/MIC
	utf16 := func(s string) []byte {
		var o []byte
		for _, r := range s {
			o = append(o, byte(r), byte(r>>8))
		}
		return o
	}
	var lm, nt []byte
	if user != "" {
		lm, nt = make([]byte, 24), make([]byte, 24)
	} else {
		lm = []byte{0} // Z(1), the anonymous LmChallengeResponse
	}
	fields := [][]byte{lm, nt, utf16(domain), utf16(user), utf16("WS01"), nil}
	b := make([]byte, fixed)
	copy(b, "NTLMSSP\x00")
	binary.LittleEndian.PutUint32(b[8:], NTLMAuthenticate)
	off := fixed
	for i, f := range fields {
		at := 12 + 8*i
		binary.LittleEndian.PutUint16(b[at:], uint16(len(f)))
		binary.LittleEndian.PutUint16(b[at+2:], uint16(len(f)))
		binary.LittleEndian.PutUint32(b[at+4:], uint32(off))
		off += len(f)
	}
	flags := uint32(0xe2088215)
	if user == "" {
		flags |= 0x00000800 // NTLMSSP_NEGOTIATE_ANONYMOUS
	}
	binary.LittleEndian.PutUint32(b[60:], flags)
	for _, f := range fields {
		b = append(b, f...)
	}
	return b
}

// spnego wraps an NTLM token the way a NegTokenResp responseToken does:
// enough DER around it that the token is not at offset 0.
func spnego(tok []byte) []byte {
	octet := append([]byte{0x04, 0x82, byte(len(tok) >> 8), byte(len(tok))}, tok...)
	inner := append([]byte{0xa2, 0x82, byte(len(octet) >> 8), byte(len(octet))}, octet...)
	seq := append([]byte{0x30, 0x82, byte(len(inner) >> 8), byte(len(inner))}, inner...)
	return append([]byte{0xa1, 0x82, byte(len(seq) >> 8), byte(len(seq))}, seq...)
}

func bindWithAuth(drep DataRep, typ AuthType, creds []byte) *PDU {
	b := AppendBind(nil, head(PTypeBind, drep), kmsBindSpec(), &AuthSpec{Type: typ, Level: 2, ContextID: 0x55, Credentials: creds})
	p := new(PDU)
	if err := p.Parse(b, 0); err != nil {
		panic(err)
	}
	return p
}

func TestParseNTLM(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		ok   bool
		typ  uint32
		anon bool
	}{
		{"negotiate", ntlmNegotiate(), true, NTLMNegotiate, false},
		{"authenticate-anon", ntlmAuthenticate("", ""), true, NTLMAuthenticate, true},
		{"authenticate-user", ntlmAuthenticate("CORP", "alice"), true, NTLMAuthenticate, false},
		{"authenticate-domain-only", ntlmAuthenticate("CORP", ""), true, NTLMAuthenticate, true},
		{"short-authenticate", ntlmAuthenticate("", "")[:40], true, NTLMAuthenticate, false},
		{"no-signature", []byte("NTLMSSX\x00\x03\x00\x00\x00"), false, 0, false},
		{"too-short", []byte("NTLMSSP\x00\x03\x00"), false, 0, false},
		{"empty", nil, false, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, ok := ParseNTLM(tc.in)
			if ok != tc.ok || m.Type != tc.typ || m.Anonymous != tc.anon {
				t.Fatalf("ParseNTLM = %+v, %v; want type %d anon %v ok %v", m, ok, tc.typ, tc.anon, tc.ok)
			}
		})
	}
}

func TestClassifyAuth(t *testing.T) {
	anon := ntlmAuthenticate("", "")
	user := ntlmAuthenticate("CORP", "alice")
	for _, tc := range []struct {
		name  string
		typ   AuthType
		creds []byte
		want  AuthClass
	}{
		{"ntlm-negotiate", AuthTypeNTLM, ntlmNegotiate(), AuthClassNTLM},
		{"ntlm-anonymous", AuthTypeNTLM, anon, AuthClassAnonymous},
		{"ntlm-user", AuthTypeNTLM, user, AuthClassNTLM},
		{"ntlm-garbage", AuthTypeNTLM, []byte("not ntlm at all"), AuthClassNTLM},
		{"spnego-anonymous", AuthTypeSPNEGO, spnego(anon), AuthClassAnonymous},
		{"spnego-user", AuthTypeSPNEGO, spnego(user), AuthClassNegotiate},
		{"spnego-negotiate", AuthTypeSPNEGO, spnego(ntlmNegotiate()), AuthClassNegotiate},
		// A decoy user token in front must not hide a NULL session behind it.
		{"spnego-decoy-then-anonymous", AuthTypeSPNEGO, append(spnego(user), spnego(anon)...), AuthClassAnonymous},
		{"kerberos", AuthTypeKerberos, []byte{0x60, 0x82, 0, 0}, AuthClassKerberos},
		{"krb5", AuthTypeKRB5, []byte{1, 2, 3}, AuthClassKerberos},
		{"schannel", AuthTypeSchannel, []byte{1}, AuthClassOther},
		{"netlogon", AuthTypeNetlogon, []byte{1}, AuthClassOther},
		{"none-with-trailer", AuthTypeNone, []byte{1}, AuthClassOther},
	} {
		for _, o := range drepOrders {
			t.Run(tc.name+"/"+o.name, func(t *testing.T) {
				p := bindWithAuth(o.drep, tc.typ, tc.creds)
				if !p.HasAuth || p.Auth.Type != tc.typ || p.Auth.Level != 2 || p.Auth.ContextID != 0x55 || string(p.Auth.Credentials) != string(tc.creds) {
					t.Fatalf("trailer %+v", p.Auth)
				}
				if got := ClassifyAuth(p); got != tc.want {
					t.Fatalf("ClassifyAuth = %v, want %v", got, tc.want)
				}
			})
		}
	}
	var none PDU
	none.Parse(buildBind(LittleEndianDataRep), 0)
	if got := ClassifyAuth(&none); got != AuthClassNone {
		t.Fatalf("no trailer: %v", got)
	}
}

// TestClassifyAuthEveryType sweeps the auth_type byte with anonymous NTLM
// credentials: nothing panics, and only the NTLM and SPNEGO types look
// inside, so only they can say anonymous.
func TestClassifyAuthEveryType(t *testing.T) {
	anon := ntlmAuthenticate("", "")
	for i := 0; i < 256; i++ {
		typ := AuthType(i)
		p := bindWithAuth(LittleEndianDataRep, typ, anon)
		got := ClassifyAuth(p)
		var want AuthClass
		switch typ {
		case AuthTypeNTLM, AuthTypeSPNEGO:
			want = AuthClassAnonymous
		case AuthTypeKerberos, AuthTypeKRB5:
			want = AuthClassKerberos
		default:
			want = AuthClassOther
		}
		if got != want {
			t.Errorf("auth_type %d (%v): %v, want %v", i, typ, got, want)
		}
		if typ.String() == "" || AuthLevel(i).String() == "" {
			t.Errorf("auth_type %d: empty name", i)
		}
	}
}

func TestAuth3Trailer(t *testing.T) {
	for _, o := range drepOrders {
		creds := ntlmAuthenticate("CORP", "bob")
		b := AppendSimple(nil, head(PTypeAuth3, o.drep), []byte{0, 0, 0, 0}, &AuthSpec{Type: AuthTypeNTLM, Level: 6, ContextID: 9, Credentials: creds})
		p := mustParse(t, b)
		if p.Type != PTypeAuth3 || !p.HasAuth || p.Auth.Level != 6 || p.Auth.ContextID != 9 || int(p.AuthLength) != len(creds) || len(p.Body) != 4 || len(p.AuthPad) != 0 {
			t.Fatalf("%s: auth3 %+v body %x", o.name, p.Auth, p.Body)
		}
		if ClassifyAuth(p) != AuthClassNTLM {
			t.Fatalf("%s: class %v", o.name, ClassifyAuth(p))
		}
	}
}

func TestAuthPadding(t *testing.T) {
	// A 3-byte stub makes the builder pad by 1 before the trailer.
	for _, o := range drepOrders {
		b := AppendRequest(nil, head(PTypeRequest, o.drep), 0, 0, nil, []byte{1, 2, 3}, &AuthSpec{Type: AuthTypeNTLM, Level: 5, Credentials: make([]byte, 16)})
		p := mustParse(t, b)
		if p.Auth.PadLength != 1 || len(p.AuthPad) != 1 || string(p.Request.Stub) != "\x01\x02\x03" {
			t.Fatalf("%s: pad %d %x stub %x", o.name, p.Auth.PadLength, p.AuthPad, p.Request.Stub)
		}
	}
}

func TestAuthClassNames(t *testing.T) {
	for c := AuthClassNone; c <= AuthClassOther; c++ {
		got, ok := ParseAuthClass(c.String())
		if !ok || got != c {
			t.Errorf("ParseAuthClass(%q) = %v %v", c.String(), got, ok)
		}
	}
	if _, ok := ParseAuthClass("bogus"); ok {
		t.Error("ParseAuthClass accepted bogus")
	}
}
