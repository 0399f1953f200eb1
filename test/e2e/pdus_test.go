package e2e

import (
	"encoding/binary"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

var (
	le       = rpcparse.LittleEndianDataRep
	be       = rpcparse.BigEndianDataRep
	kmsIface = rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: 1}
	ndr20    = rpcparse.SyntaxID{UUID: rpcparse.NDR20UUID, Major: 2}
	ndr64    = rpcparse.SyntaxID{UUID: rpcparse.NDR64UUID, Major: 1}
)

func iface(name string) rpcparse.SyntaxID {
	it, ok := rpcparse.InterfaceByName(name)
	if !ok {
		panic("unknown interface " + name)
	}
	return rpcparse.SyntaxID{UUID: it.UUID, Major: it.Major, Minor: it.Minor}
}

func ctx(id uint16, abstract rpcparse.SyntaxID, transfers ...rpcparse.SyntaxID) rpcparse.ContextSpec {
	if len(transfers) == 0 {
		transfers = []rpcparse.SyntaxID{ndr20}
	}
	return rpcparse.ContextSpec{ID: id, Abstract: abstract, Transfers: transfers}
}

func bindPDU(drep rpcparse.DataRep, typ rpcparse.PType, callID uint32, auth *rpcparse.AuthSpec, ctxs ...rpcparse.ContextSpec) []byte {
	return rpcparse.AppendBind(nil, rpcparse.PDUHead{Type: typ, Flags: 0x03, DataRep: drep, CallID: callID},
		rpcparse.BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Contexts: ctxs}, auth)
}

// kmsBind is a one-context KMS bind over NDR 2.0, which the host accepts.
func kmsBind() []byte {
	return bindPDU(le, rpcparse.PTypeBind, 2, nil, ctx(0, kmsIface))
}

func requestPDU(callID uint32, flags uint8, ctxID, opnum uint16, stub []byte) []byte {
	return rpcparse.AppendRequest(nil, rpcparse.PDUHead{Flags: flags, DataRep: le, CallID: callID}, ctxID, opnum, nil, stub, nil)
}

const (
	first = rpcparse.FlagFirstFrag
	last  = rpcparse.FlagLastFrag
	whole = first | last
)

// ntlmNegotiate is a minimal NTLMSSP NEGOTIATE_MESSAGE (MS-NLMP 2.2.1.1).
func ntlmNegotiate() []byte {
	b := make([]byte, 32)
	copy(b, "NTLMSSP\x00")
	binary.LittleEndian.PutUint32(b[8:], 1)
	binary.LittleEndian.PutUint32(b[12:], 0xe2088297)
	return b
}

// ntlmAuthenticate is an AUTHENTICATE_MESSAGE with the given user name;
// "" is the NULL session (MS-NLMP 3.2.5.1.2: anonymous).
func ntlmAuthenticate(user string) []byte {
	const head = 72
	u := make([]byte, 0, 2*len(user))
	for _, r := range user {
		u = append(u, byte(r), 0)
	}
	b := make([]byte, head, head+1+len(u))
	copy(b, "NTLMSSP\x00")
	binary.LittleEndian.PutUint32(b[8:], 3)
	field := func(off int, n, at int) {
		binary.LittleEndian.PutUint16(b[off:], uint16(n))
		binary.LittleEndian.PutUint16(b[off+2:], uint16(n))
		binary.LittleEndian.PutUint32(b[off+4:], uint32(at))
	}
	field(12, 1, head)                                // LmChallengeResponse: one zero byte for anonymous
	field(20, 0, head+1)                              // NtChallengeResponse
	field(28, 0, head+1)                              // DomainName
	field(36, len(u), head+1)                         // UserName
	field(44, 0, head+1+len(u))                       // Workstation
	field(52, 0, head+1+len(u))                       // EncryptedRandomSessionKey
	binary.LittleEndian.PutUint32(b[60:], 0x00000800) // NTLMSSP_NEGOTIATE_ANONYMOUS
	b = append(b, 0)
	return append(b, u...)
}
