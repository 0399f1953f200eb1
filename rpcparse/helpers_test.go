package rpcparse

import (
	"errors"
	"testing"
)

// Shared builders for the tests: small typed PDUs in either byte order,
// so that malformed rows can say "this PDU, with these bytes changed".

var (
	kmsSyntax   = SyntaxID{UUID: KMSInterfaceUUID, Major: 1}
	ndr20Syntax = SyntaxID{UUID: NDR20UUID, Major: 2}
	ndr64Syntax = SyntaxID{UUID: NDR64UUID, Major: 1}
	btfnSyntax  = SyntaxID{UUID: MustUUID("6cb71c2c-9812-4540-0300-000000000000"), Major: 1}
	drepOrders  = []struct {
		name string
		drep DataRep
	}{{"le", LittleEndianDataRep}, {"be", BigEndianDataRep}}
)

// kmsBindSpec is the three-context bind a Windows KMS client sends.
func kmsBindSpec() BindSpec {
	return BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Contexts: []ContextSpec{
		{ID: 0, Abstract: kmsSyntax, Transfers: []SyntaxID{ndr20Syntax}},
		{ID: 1, Abstract: kmsSyntax, Transfers: []SyntaxID{ndr64Syntax}},
		{ID: 2, Abstract: kmsSyntax, Transfers: []SyntaxID{btfnSyntax}},
	}}
}

func kmsBindAckSpec() BindAckSpec {
	return BindAckSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, AssocGroup: 0x1063bf3f, SecAddr: []byte("1688\x00"), Results: []Result{
		{Result: ResultProviderRejection, Reason: 2},
		{Result: ResultAcceptance, Transfer: ndr64Syntax},
		{Result: ResultNegotiateAck, Reason: 3},
	}}
}

func head(t PType, drep DataRep) PDUHead {
	return PDUHead{Type: t, Flags: FlagFirstFrag | FlagLastFrag, DataRep: drep, CallID: 2}
}

func buildBind(drep DataRep) []byte {
	return AppendBind(nil, head(PTypeBind, drep), kmsBindSpec(), nil)
}

func buildBindAck(drep DataRep) []byte {
	return AppendBindAck(nil, head(PTypeBindAck, drep), kmsBindAckSpec())
}

func buildRequest(drep DataRep, stubLen int) []byte {
	stub := make([]byte, stubLen)
	for i := range stub {
		stub[i] = byte(i)
	}
	return AppendRequest(nil, head(PTypeRequest, drep), 1, 0, nil, stub, nil)
}

// allTypes builds one valid PDU of every connection-oriented type in drep.
func allTypes(drep DataRep) map[PType][]byte {
	obj := MustUUID("00112233-4455-6677-8899-aabbccddeeff")
	ntlm := &AuthSpec{Type: AuthTypeNTLM, Level: 2, ContextID: 7, Credentials: ntlmNegotiate()}
	return map[PType][]byte{
		PTypeRequest:          AppendRequest(nil, head(PTypeRequest, drep), 1, 0, &obj, []byte{1, 2, 3}, ntlm),
		PTypeResponse:         AppendResponse(nil, head(PTypeResponse, drep), 1, 5, []byte{9, 8, 7, 6, 5}),
		PTypeFault:            AppendFault(nil, drep, 9, 3, StatusUnknownIf, true),
		PTypeBind:             AppendBind(nil, head(PTypeBind, drep), kmsBindSpec(), ntlm),
		PTypeBindAck:          buildBindAck(drep),
		PTypeBindNak:          AppendBindNak(nil, drep, 4, NakTemporaryCongestion),
		PTypeAlterContext:     AppendBind(nil, head(PTypeAlterContext, drep), BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Contexts: []ContextSpec{{ID: 0, Abstract: kmsSyntax, Transfers: []SyntaxID{ndr20Syntax}}}}, nil),
		PTypeAlterContextResp: AppendBindAck(nil, head(PTypeAlterContextResp, drep), BindAckSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Results: []Result{{Transfer: ndr20Syntax}}}),
		PTypeAuth3:            AppendSimple(nil, head(PTypeAuth3, drep), []byte{0, 0, 0, 0}, &AuthSpec{Type: AuthTypeNTLM, Level: 2, Credentials: ntlmAuthenticate("", "")}),
		PTypeShutdown:         AppendSimple(nil, head(PTypeShutdown, drep), nil, nil),
		PTypeCoCancel:         AppendSimple(nil, head(PTypeCoCancel, drep), nil, nil),
		PTypeOrphaned:         AppendSimple(nil, head(PTypeOrphaned, drep), nil, nil),
	}
}

// mutate returns a copy of b with f applied; f gets the byte order.
func mutate(b []byte, f func(b []byte, bo bool)) []byte {
	c := append([]byte(nil), b...)
	f(c, c[4]>>4 == 0)
	return c
}

func put16(b []byte, off int, v uint16, big bool) { order(big).PutUint16(b[off:], v) }
func put32(b []byte, off int, v uint32, big bool) { order(big).PutUint32(b[off:], v) }

// setFrag rewrites frag_length.
func setFrag(b []byte, n int) []byte {
	return mutate(b, func(c []byte, big bool) { put16(c, 8, uint16(n), big) })
}

// wantErr checks the three faces of a parse failure: the class through
// errors.Is, the field through *ParseError, and the stable reason token.
func wantErr(t *testing.T, err error, class error, field string) {
	t.Helper()
	if !errors.Is(err, class) {
		t.Fatalf("err = %v, want class %v", err, class)
	}
	var pe *ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("err %v is not a *ParseError", err)
	}
	if field != "" && pe.Field != field {
		t.Fatalf("field = %q, want %q (err %v)", pe.Field, field, err)
	}
	if got, want := Reason(err), reasons[class]; got != want || got == "" || got == "malformed" {
		t.Fatalf("Reason = %q, want %q", got, want)
	}
}
