package rpcparse

import (
	"bytes"
	"encoding/hex"
	"path/filepath"
	"testing"
)

// The expectations below are copied from testdata/kms/README.md (and
// kms-protocol.md §1), not from what the parser prints.

type reqFact struct {
	size, stub int
	call       uint32
	ctx        uint16
}

type captureFact struct {
	name      string
	requests  []reqFact
	responses []reqFact
}

var captureFacts = []captureFact{
	{"win10-v4", []reqFact{{284, 260, 2, 0}}, []reqFact{{200, 176, 2, 0}}},
	{"win10-v5", []reqFact{{292, 268, 2, 0}}, []reqFact{{268, 244, 2, 0}}},
	{"win10-v6", []reqFact{{292, 268, 2, 0}}, []reqFact{{300, 276, 2, 0}}},
	{"office2016-v6", []reqFact{{292, 268, 2, 0}}, []reqFact{{300, 276, 2, 0}}},
	{"win10-v6-two-requests-ndr64", []reqFact{{292, 268, 2, 0}, {300, 276, 3, 1}}, []reqFact{{300, 276, 2, 0}, {312, 288, 3, 1}}},
	{"error-unknown-kmsid-v6", []reqFact{{292, 268, 2, 0}}, []reqFact{{36, 12, 2, 0}}},
}

func TestCaptureFactsCoverEveryFile(t *testing.T) {
	seen := map[string]bool{}
	for _, f := range captureFiles(t) {
		b := filepath.Base(f)
		seen[b[:len(b)-len(".c2s.hex")]] = true
	}
	for _, c := range captureFacts {
		if !seen[c.name] {
			t.Errorf("capture %s listed in README table is missing", c.name)
		}
		delete(seen, c.name)
	}
	for n := range seen {
		t.Errorf("capture %s has no expected facts", n)
	}
}

func mustParse(t *testing.T, frag []byte) *PDU {
	t.Helper()
	p := new(PDU)
	if err := p.Parse(frag, 5840); err != nil {
		t.Fatalf("parse %x: %v", frag, err)
	}
	return p
}

// checkCommon asserts what README says of every PDU.
func checkCommon(t *testing.T, p *PDU, typ PType, size int, call uint32, flags uint8) {
	t.Helper()
	if p.Version != 5 || p.MinorVersion != 0 || p.DataRep != LittleEndianDataRep || p.AuthLength != 0 || p.HasAuth {
		t.Errorf("%v: common header %+v", typ, p.Header)
	}
	if p.Type != typ || int(p.FragLength) != size || p.CallID != call || p.Flags != flags {
		t.Errorf("got type %v len %d call %d flags %#x, want %v %d %d %#x", p.Type, p.FragLength, p.CallID, p.Flags, typ, size, call, flags)
	}
}

func TestCaptureFacts(t *testing.T) {
	for _, c := range captureFacts {
		t.Run(c.name, func(t *testing.T) {
			c2s := readHexPDUs(t, filepath.Join(captureDir, c.name+".c2s.hex"))
			s2c := readHexPDUs(t, filepath.Join(captureDir, c.name+".s2c.hex"))
			if len(c2s) != 2+len(c.requests) || len(s2c) != 2+len(c.responses) {
				t.Fatalf("PDU count c2s %d s2c %d", len(c2s), len(s2c))
			}
			checkBind(t, mustParse(t, c2s[0]))
			checkAlter(t, mustParse(t, c2s[1]))
			checkBindAck(t, mustParse(t, s2c[0]))
			checkAlterResp(t, mustParse(t, s2c[1]))
			for i, want := range c.requests {
				p := mustParse(t, c2s[2+i])
				checkCommon(t, p, PTypeRequest, want.size, want.call, FlagFirstFrag|FlagLastFrag)
				r := p.Request
				if r.Opnum != 0 || r.ContextID != want.ctx || len(r.Stub) != want.stub || int(r.AllocHint) != want.stub || r.HasObject {
					t.Errorf("request %d: opnum %d ctx %d stub %d alloc %d object %v, want ctx %d stub %d", i, r.Opnum, r.ContextID, len(r.Stub), r.AllocHint, r.HasObject, want.ctx, want.stub)
				}
			}
			for i, want := range c.responses {
				p := mustParse(t, s2c[2+i])
				checkCommon(t, p, PTypeResponse, want.size, want.call, FlagFirstFrag|FlagLastFrag)
				if r := p.Response; r.ContextID != want.ctx || len(r.Stub) != want.stub {
					t.Errorf("response %d: ctx %d stub %d, want ctx %d stub %d", i, r.ContextID, len(r.Stub), want.ctx, want.stub)
				}
			}
			if c.name == "error-unknown-kmsid-v6" {
				refusal, _ := hex.DecodeString("00000000" + "00000000" + "42f004c0")
				if got := mustParse(t, s2c[2]).Response.Stub; !bytes.Equal(got, refusal) {
					t.Errorf("refusal stub %x, want %x", got, refusal)
				}
			}
		})
	}
}

func checkBind(t *testing.T, p *PDU) {
	t.Helper()
	checkCommon(t, p, PTypeBind, 160, 2, 0x13)
	b := &p.Bind
	if b.MaxXmitFrag != 5840 || b.MaxRecvFrag != 5840 || b.AssocGroup != 0 || b.NumContexts != 3 || len(b.Extra) != 0 {
		t.Errorf("bind body %+v", b)
	}
	want := []struct {
		id   uint16
		kind TransferKind
		ts   SyntaxID
	}{{0, TransferNDR20, ndr20Syntax}, {1, TransferNDR64, ndr64Syntax}, {2, TransferBTFN, btfnSyntax}}
	it := b.Contexts()
	for i, w := range want {
		if !it.Next() {
			t.Fatalf("bind: only %d contexts", i)
		}
		c := it.Context()
		if c.ID != w.id || c.NumTransfer != 1 || c.Abstract != kmsSyntax {
			t.Errorf("ctx %d: %+v", i, c)
		}
		ts := c.Transfer(0)
		if ts != w.ts || ClassifyTransfer(ts) != w.kind {
			t.Errorf("ctx %d transfer %v v%d.%d (%v), want %v", i, ts.UUID, ts.Major, ts.Minor, ClassifyTransfer(ts), w.kind)
		}
		if w.kind == TransferBTFN {
			if m, ok := BTFNBitmask(ts.UUID); !ok || m != 0x03 {
				t.Errorf("BTFN bitmask %#x %v, want 0x03", m, ok)
			}
		}
		if InterfaceName(c.Abstract.UUID) != "kms" {
			t.Errorf("ctx %d abstract %v not named kms", i, c.Abstract.UUID)
		}
	}
	if it.Next() {
		t.Error("bind: more than 3 contexts")
	}
}

func checkAlter(t *testing.T, p *PDU) {
	t.Helper()
	checkCommon(t, p, PTypeAlterContext, 72, 2, 0x13)
	it := p.Bind.Contexts()
	if p.Bind.NumContexts != 1 || !it.Next() {
		t.Fatalf("alter_context: %d contexts", p.Bind.NumContexts)
	}
	c := it.Context()
	if c.ID != 0 || c.Abstract != kmsSyntax || c.NumTransfer != 1 || c.Transfer(0) != ndr20Syntax {
		t.Errorf("alter_context ctx %+v %+v", c, c.Transfer(0))
	}
}

func checkBindAck(t *testing.T, p *PDU) {
	t.Helper()
	checkCommon(t, p, PTypeBindAck, 108, 2, 0x13)
	a := &p.BindAck
	if a.MaxXmitFrag != 5840 || a.MaxRecvFrag != 5840 || !isPortSpec(a.SecAddr) || a.NumResults != 3 || len(a.Extra) != 0 {
		t.Errorf("bind_ack body %+v", a)
	}
	want := []Result{
		{Result: ResultProviderRejection, Reason: 2},
		{Result: ResultAcceptance, Reason: 0, Transfer: ndr64Syntax},
		{Result: ResultNegotiateAck, Reason: 3},
	}
	for i, w := range want {
		if got := a.Result(i); got != w {
			t.Errorf("result %d = %+v, want %+v", i, got, w)
		}
	}
}

func checkAlterResp(t *testing.T, p *PDU) {
	t.Helper()
	checkCommon(t, p, PTypeAlterContextResp, 56, 2, 0x03)
	a := &p.BindAck
	if len(a.SecAddr) != 0 || a.NumResults != 1 {
		t.Fatalf("alter_context_resp body %+v", a)
	}
	if r := a.Result(0); r.Result != ResultAcceptance || r.Reason != 0 {
		t.Errorf("alter_context_resp result %+v", r)
	}
}

// isPortSpec reports whether b is a TCP port in ASCII decimal with its NUL,
// the secondary address vlmcsd writes (the captures used ports 21688/21689).
func isPortSpec(b []byte) bool {
	if len(b) < 2 || len(b) > 6 || b[len(b)-1] != 0 {
		return false
	}
	for _, c := range b[:len(b)-1] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
