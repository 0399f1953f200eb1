package rpcparse

import (
	"bytes"
	"encoding/binary"
)

// AuthType is the sec_trailer auth_type (MS-RPCE 2.2.1.1.7).
type AuthType uint8

const (
	AuthTypeNone     AuthType = 0
	AuthTypeKRB5     AuthType = 1 // DCE private-key Kerberos
	AuthTypeSPNEGO   AuthType = 9
	AuthTypeNTLM     AuthType = 10 // RPC_C_AUTHN_WINNT
	AuthTypeSchannel AuthType = 14
	AuthTypeKerberos AuthType = 16
	AuthTypeNetlogon AuthType = 68
	AuthTypeDefault  AuthType = 255
)

func (t AuthType) String() string {
	switch t {
	case AuthTypeNone:
		return "none"
	case AuthTypeKRB5:
		return "krb5"
	case AuthTypeSPNEGO:
		return "spnego"
	case AuthTypeNTLM:
		return "ntlm"
	case AuthTypeSchannel:
		return "schannel"
	case AuthTypeKerberos:
		return "kerberos"
	case AuthTypeNetlogon:
		return "netlogon"
	case AuthTypeDefault:
		return "default"
	}
	return "auth_" + itoa(int(t))
}

// AuthLevel is the sec_trailer auth_level (MS-RPCE 2.2.1.1.8).
type AuthLevel uint8

// Auth levels (MS-RPCE 2.2.1.1.8). Above connect every PDU of an
// authenticated association carries a verifier.
const (
	AuthLevelDefault   AuthLevel = 0
	AuthLevelNone      AuthLevel = 1
	AuthLevelConnect   AuthLevel = 2
	AuthLevelCall      AuthLevel = 3
	AuthLevelPkt       AuthLevel = 4
	AuthLevelIntegrity AuthLevel = 5
	AuthLevelPrivacy   AuthLevel = 6
)

var authLevelNames = [...]string{"default", "none", "connect", "call", "pkt", "pkt_integrity", "pkt_privacy"}

func (l AuthLevel) String() string {
	if int(l) < len(authLevelNames) {
		return authLevelNames[l]
	}
	return "level_" + itoa(int(l))
}

// AuthClass is what policy reasons about: config's `auth:` values.
type AuthClass uint8

const (
	AuthClassNone      AuthClass = iota // no auth trailer
	AuthClassAnonymous                  // NTLM AUTHENTICATE with an empty user name (NULL session)
	AuthClassNTLM
	AuthClassKerberos
	AuthClassNegotiate // SPNEGO not recognised as anonymous NTLM
	AuthClassOther     // any other or unknown auth type (schannel, netlogon, …)
)

var authClassNames = [...]string{"none", "anonymous", "ntlm", "kerberos", "negotiate", "other"}

func (c AuthClass) String() string {
	if int(c) < len(authClassNames) {
		return authClassNames[c]
	}
	return "other"
}

// ParseAuthClass maps a config word to its class.
func ParseAuthClass(s string) (AuthClass, bool) {
	for i, n := range authClassNames {
		if n == s {
			return AuthClass(i), true
		}
	}
	return 0, false
}

// NTLM message types (MS-NLMP 2.2.1).
const (
	NTLMNegotiate    uint32 = 1
	NTLMChallenge    uint32 = 2
	NTLMAuthenticate uint32 = 3
)

var ntlmSignature = []byte("NTLMSSP\x00")

// NTLMMessage describes an NTLMSSP message found in credentials.
type NTLMMessage struct {
	Type      uint32
	UserEmpty bool // AUTHENTICATE only: UserName field has length 0
	Anonymous bool // AUTHENTICATE only: empty user name, the NULL session
}

// ParseNTLM reads an NTLMSSP message at the start of b.
func ParseNTLM(b []byte) (NTLMMessage, bool) {
	var m NTLMMessage
	if len(b) < 12 || !bytes.Equal(b[:8], ntlmSignature) {
		return m, false
	}
	m.Type = binary.LittleEndian.Uint32(b[8:12])
	if m.Type == NTLMAuthenticate {
		// UserNameFields is the fifth security buffer: offset 36, Len u16.
		if len(b) < 44 {
			return m, true
		}
		m.UserEmpty = binary.LittleEndian.Uint16(b[36:38]) == 0
		m.Anonymous = m.UserEmpty
	}
	return m, true
}

// ClassifyAuth says which config auth class a PDU's verifier belongs to.
// An NTLM (or SPNEGO-wrapped NTLM) AUTHENTICATE with an empty user name is
// anonymous; a NEGOTIATE cannot yet tell and counts as ntlm, which a policy
// allowing only "anonymous" therefore refuses, failing closed.
func ClassifyAuth(p *PDU) AuthClass {
	if !p.HasAuth {
		return AuthClassNone
	}
	switch p.Auth.Type {
	case AuthTypeNone:
		return AuthClassOther // a trailer that claims "none" is not a normal client
	case AuthTypeNTLM:
		if m, ok := ParseNTLM(p.Auth.Credentials); ok && m.Anonymous {
			return AuthClassAnonymous
		}
		return AuthClassNTLM
	case AuthTypeSPNEGO:
		// Look at every embedded NTLMSSP message, not just the first: a decoy
		// token in an earlier DER field must not hide a NULL session.
		for c := p.Auth.Credentials; ; {
			i := bytes.Index(c, ntlmSignature)
			if i < 0 {
				break
			}
			if m, ok := ParseNTLM(c[i:]); ok && m.Anonymous {
				return AuthClassAnonymous
			}
			c = c[i+len(ntlmSignature):]
		}
		return AuthClassNegotiate
	case AuthTypeKerberos, AuthTypeKRB5:
		return AuthClassKerberos
	}
	return AuthClassOther
}
