package rpcparse

import (
	"bytes"
	"testing"
)

// The malformed rows say which count and length values parse. Where a
// count one below the exact value is accepted, these rows pin down what the
// parser made of it: the counted items are exactly the ones counted, and the
// uncounted wire bytes end up in Extra (or the padding) instead of being
// read as items or dropped, so the acl and a re-encode see what was sent.

type countRow struct {
	name  string
	pdu   []byte
	check func(t *testing.T, p *PDU, pdu []byte)
}

func countRows(drep DataRep) []countRow {
	bind := buildBind(drep)
	ack := buildBindAck(drep)
	alter := AppendBind(nil, head(PTypeAlterContext, drep), kmsBindSpec(), nil)
	twoTS := AppendBind(nil, head(PTypeBind, drep), BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Contexts: []ContextSpec{
		{ID: 0, Abstract: kmsSyntax, Transfers: []SyntaxID{ndr20Syntax, ndr64Syntax}},
	}}, nil)
	creds := make([]byte, 16)
	for i := range creds {
		creds[i] = byte(0xa0 + i)
	}
	authReq := AppendRequest(nil, head(PTypeRequest, drep), 0, 0, nil, nil, &AuthSpec{Type: AuthTypeNTLM, Level: 2, Credentials: creds})
	authBind := AppendBind(nil, head(PTypeBind, drep), kmsBindSpec(), &AuthSpec{Type: AuthTypeNTLM, Level: 2, Credentials: creds})

	contexts := func(t *testing.T, p *PDU) []ContextElem {
		t.Helper()
		var out []ContextElem
		for it := p.Bind.Contexts(); it.Next(); {
			out = append(out, *it.Context())
		}
		return out
	}
	// contextOneBelow: n_context_elem 2 of 3 items.
	contextOneBelow := func(t *testing.T, p *PDU, pdu []byte) {
		cs := contexts(t, p)
		if p.Bind.NumContexts != 2 || len(cs) != 2 || cs[0].ID != 0 || cs[1].ID != 1 {
			t.Fatalf("NumContexts %d, iterated %+v", p.Bind.NumContexts, cs)
		}
		if len(p.Bind.Items) != 2*44 || !bytes.Equal(p.Bind.Extra, pdu[28+2*44:]) {
			t.Fatalf("Items %d bytes, Extra %x: want the third item (%x) as Extra", len(p.Bind.Items), p.Bind.Extra, pdu[28+2*44:])
		}
	}

	return []countRow{
		{"n_context_elem-one-below", set8(bind, offNumCtx, 2), contextOneBelow},
		{"alter-n_context_elem-one-below", set8(alter, offNumCtx, 2), contextOneBelow},
		{"n_context_elem-exact", bind, func(t *testing.T, p *PDU, pdu []byte) {
			if cs := contexts(t, p); len(cs) != 3 || cs[2].ID != 2 || len(p.Bind.Extra) != 0 {
				t.Fatalf("contexts %+v, Extra %x", cs, p.Bind.Extra)
			}
		}},
		{"n_transfer_syn-one-below", set8(twoTS, offCtx0NumTS, 1), func(t *testing.T, p *PDU, pdu []byte) {
			cs := contexts(t, p)
			if len(cs) != 1 || cs[0].NumTransfer != 1 || cs[0].Transfer(0) != ndr20Syntax || cs[0].Abstract != kmsSyntax {
				t.Fatalf("contexts %+v", cs)
			}
			// The NDR64 syntax the count left out is not a transfer syntax
			// of the context; it is the 20 bytes after the item.
			if len(p.Bind.Extra) != syntaxIDLen || readSyntax(p.Bind.Extra, p.BigEndian()) != ndr64Syntax {
				t.Fatalf("Extra %x, want the NDR64 syntax", p.Bind.Extra)
			}
		}},
		{"n_transfer_syn-exact", twoTS, func(t *testing.T, p *PDU, pdu []byte) {
			cs := contexts(t, p)
			if len(cs) != 1 || cs[0].NumTransfer != 2 || cs[0].Transfer(1) != ndr64Syntax || len(p.Bind.Extra) != 0 {
				t.Fatalf("contexts %+v, Extra %x", cs, p.Bind.Extra)
			}
		}},
		{"n_results-one-below", set8(ack, offNumResults, 2), func(t *testing.T, p *PDU, pdu []byte) {
			a := &p.BindAck
			if a.NumResults != 2 || len(a.Results) != 2*resultLen || len(a.Extra) != resultLen {
				t.Fatalf("NumResults %d, Results %d bytes, Extra %d bytes", a.NumResults, len(a.Results), len(a.Extra))
			}
			if r := a.Result(1); r.Result != ResultAcceptance || r.Transfer != ndr64Syntax {
				t.Fatalf("result 1 = %+v", r)
			}
		}},
		{"n_results-0", set8(ack, offNumResults, 0), func(t *testing.T, p *PDU, pdu []byte) {
			if a := &p.BindAck; a.NumResults != 0 || len(a.Results) != 0 || len(a.Extra) != 3*resultLen {
				t.Fatalf("NumResults %d, Results %d bytes, Extra %d bytes", a.NumResults, len(a.Results), len(a.Extra))
			}
		}},
		{"sec_addr-one-below", set16(ack, offSecAddrLen, 4), func(t *testing.T, p *PDU, pdu []byte) {
			a := &p.BindAck
			// The NUL moves into the alignment padding; the results stay put.
			if string(a.SecAddr) != "1688" || !bytes.Equal(a.SecAddrPad, pdu[30:32]) || a.NumResults != 3 {
				t.Fatalf("SecAddr %q, pad %x, NumResults %d", a.SecAddr, a.SecAddrPad, a.NumResults)
			}
			if r := a.Result(1); r.Result != ResultAcceptance || r.Transfer != ndr64Syntax {
				t.Fatalf("result 1 = %+v", r)
			}
		}},
		{"sec_addr-one-above", set16(ack, offSecAddrLen, 6), func(t *testing.T, p *PDU, pdu []byte) {
			a := &p.BindAck
			if !bytes.Equal(a.SecAddr, pdu[26:32]) || len(a.SecAddrPad) != 0 || a.NumResults != 3 {
				t.Fatalf("SecAddr %q, pad %x, NumResults %d", a.SecAddr, a.SecAddrPad, a.NumResults)
			}
		}},
		{"sec_addr-0-built", AppendBindAck(nil, head(PTypeBindAck, drep), BindAckSpec{Results: kmsBindAckSpec().Results}), func(t *testing.T, p *PDU, pdu []byte) {
			a := &p.BindAck
			if len(a.SecAddr) != 0 || len(a.SecAddrPad) != 2 || a.NumResults != 3 || len(a.Extra) != 0 {
				t.Fatalf("SecAddr %q, pad %x, NumResults %d, Extra %x", a.SecAddr, a.SecAddrPad, a.NumResults, a.Extra)
			}
		}},
		{"auth-one-below-fit", set16(authReq, offAuthLen, 15), func(t *testing.T, p *PDU, pdu []byte) {
			// The trailer is read one byte earlier: what was auth_type is
			// now the one-byte stub.
			if !p.HasAuth || !bytes.Equal(p.Auth.Credentials, pdu[48-15:]) || len(p.Request.Stub) != 1 || p.Request.Stub[0] != byte(AuthTypeNTLM) {
				t.Fatalf("HasAuth %v, credentials %x, stub %x", p.HasAuth, p.Auth.Credentials, p.Request.Stub)
			}
		}},
		{"auth-exact-fit", authReq, func(t *testing.T, p *PDU, pdu []byte) {
			if !p.HasAuth || p.Auth.Type != AuthTypeNTLM || !bytes.Equal(p.Auth.Credentials, creds) || len(p.Request.Stub) != 0 {
				t.Fatalf("auth %+v, stub %x", p.Auth, p.Request.Stub)
			}
		}},
		{"auth-zero", set16(authReq, offAuthLen, 0), func(t *testing.T, p *PDU, pdu []byte) {
			if p.HasAuth || p.Auth.Credentials != nil || !bytes.Equal(p.Request.Stub, pdu[24:]) {
				t.Fatalf("HasAuth %v, stub %x", p.HasAuth, p.Request.Stub)
			}
		}},
		{"bind-auth-zero", set16(authBind, offAuthLen, 0), func(t *testing.T, p *PDU, pdu []byte) {
			if p.HasAuth || len(contexts(t, p)) != 3 || !bytes.Equal(p.Bind.Extra, pdu[160:]) {
				t.Fatalf("HasAuth %v, Extra %x", p.HasAuth, p.Bind.Extra)
			}
		}},
		{"bind-auth-one-below-fit", set16(authBind, offAuthLen, 15), func(t *testing.T, p *PDU, pdu []byte) {
			if !p.HasAuth || len(p.Auth.Credentials) != 15 || len(contexts(t, p)) != 3 || !bytes.Equal(p.Bind.Extra, pdu[160:161]) {
				t.Fatalf("HasAuth %v, credentials %x, Extra %x", p.HasAuth, p.Auth.Credentials, p.Bind.Extra)
			}
		}},
	}
}

func TestCountsOneBelow(t *testing.T) {
	for _, o := range drepOrders {
		for _, row := range countRows(o.drep) {
			t.Run(o.name+"/"+row.name, func(t *testing.T) {
				var p PDU
				if err := p.Parse(row.pdu, 0); err != nil {
					t.Fatalf("Parse: %v", err)
				}
				checkAccessors(t, &p, row.pdu)
				row.check(t, &p, row.pdu)
				if out := AppendPDU(nil, &p); !bytes.Equal(out, row.pdu) {
					t.Fatalf("re-encode differs\n in %x\nout %x", row.pdu, out)
				}
			})
		}
	}
}
