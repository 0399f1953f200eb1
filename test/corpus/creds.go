package corpus

import "encoding/binary"

// Dummy credentials: structurally plausible tokens with no secrets in
// them, enough for dissectors to recognise the mechanism.

var le = binary.LittleEndian

// ntlmHeader starts an NTLMSSP message of type t (MS-NLMP 2.2.1).
func ntlmHeader(t uint32) []byte {
	return le.AppendUint32([]byte("NTLMSSP\x00"), t)
}

// secBuf appends an NTLM security buffer (len, maxlen, offset).
func secBuf(b []byte, n int, off int) []byte {
	b = le.AppendUint16(b, uint16(n))
	b = le.AppendUint16(b, uint16(n))
	return le.AppendUint32(b, uint32(off))
}

func ntlmNegotiate() []byte {
	b := ntlmHeader(1)
	b = le.AppendUint32(b, 0xe2088297) // flags
	b = secBuf(b, 0, 32)               // domain
	return secBuf(b, 0, 32)            // workstation
}

func ntlmChallenge() []byte {
	b := ntlmHeader(2)
	b = secBuf(b, 0, 48) // target name
	b = le.AppendUint32(b, 0xe2898215)
	b = append(b, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88) // server challenge
	b = append(b, make([]byte, 8)...)                             // reserved
	return secBuf(b, 0, 48)                                       // target info
}

// ntlmAuthenticate builds an AUTHENTICATE message; an empty user is the
// anonymous (NULL session) form.
func ntlmAuthenticate(user string) []byte {
	var u16 []byte
	for _, r := range user {
		u16 = le.AppendUint16(u16, uint16(r))
	}
	const payload = 64
	b := ntlmHeader(3)
	b = secBuf(b, 0, payload)        // LM response
	b = secBuf(b, 0, payload)        // NT response
	b = secBuf(b, 0, payload)        // domain
	b = secBuf(b, len(u16), payload) // user
	b = secBuf(b, 0, payload+len(u16))
	b = secBuf(b, 0, payload+len(u16)) // session key
	b = le.AppendUint32(b, 0xe2888215)
	return append(b, u16...)
}

// ntlmSignature is an NTLMSSP_MESSAGE_SIGNATURE (version 1, dummy checksum).
func ntlmSignature(seq uint32) []byte {
	b := le.AppendUint32(nil, 1)
	b = append(b, 0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef)
	return le.AppendUint32(b, seq)
}

// der encodes one ASN.1 DER TLV.
func der(tag byte, content ...[]byte) []byte {
	var body []byte
	for _, c := range content {
		body = append(body, c...)
	}
	n := len(body)
	switch {
	case n < 0x80:
		return append([]byte{tag, byte(n)}, body...)
	case n < 0x100:
		return append([]byte{tag, 0x81, byte(n)}, body...)
	default:
		return append([]byte{tag, 0x82, byte(n >> 8), byte(n)}, body...)
	}
}

var (
	oidSPNEGO = []byte{0x2b, 0x06, 0x01, 0x05, 0x05, 0x02}                         // 1.3.6.1.5.5.2
	oidNTLM   = []byte{0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a} // 1.3.6.1.4.1.311.2.2.10
	oidKRB5   = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02}       // 1.2.840.113554.1.2.2
)

// spnegoInit wraps a mechanism token in a GSS-API NegTokenInit offering NTLM.
func spnegoInit(mechToken []byte) []byte {
	return der(0x60,
		der(0x06, oidSPNEGO),
		der(0xa0, der(0x30,
			der(0xa0, der(0x30, der(0x06, oidNTLM))),
			der(0xa2, der(0x04, mechToken)))))
}

// spnegoResp is a NegTokenResp accepting NTLM, with an optional token.
func spnegoResp(token []byte) []byte {
	parts := [][]byte{der(0xa0, der(0x0a, []byte{1})), der(0xa1, der(0x06, oidNTLM))}
	if token != nil {
		parts = append(parts, der(0xa2, der(0x04, token)))
	}
	return der(0xa1, der(0x30, parts...))
}

// krbToken is a GSS-API Kerberos token (tokID 0x0100 AP-REQ, 0x0200
// AP-REP) wrapping an empty-ish application-tagged sequence.
func krbToken(tokID uint16, app byte) []byte {
	inner := der(0x60|app, der(0x30,
		der(0xa0, der(0x02, []byte{5})),
		der(0xa1, der(0x02, []byte{app}))))
	return der(0x60, der(0x06, oidKRB5), []byte{byte(tokID >> 8), byte(tokID)}, inner)
}
