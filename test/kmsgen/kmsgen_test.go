package kmsgen_test

import (
	"bytes"
	"testing"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
	"github.com/kmsproxy/kmsproxy/test/kmsgen"
)

// TestPDUs: the built PDUs parse as opnum 0 request / response carrying the
// stubs, and the sizes match the captured ones (kms-protocol.md §2, §3.4).
func TestPDUs(t *testing.T) {
	for _, tc := range []struct {
		major           uint16
		ndr64           bool
		reqPDU, respPDU int
	}{{4, false, 284, 200}, {5, false, 292, 268}, {6, false, 292, 300}, {6, true, 300, 312}} {
		req := kmsgen.NewRequest(tc.major)
		req.IV = kmsgen.IV(9)
		stub := kmsgen.RequestStub(kmsgen.EncodeRequest(&req, req.IV), tc.ndr64)
		frag := kmsgen.RequestPDU(3, 1, stub)
		var p rpcparse.PDU
		if err := p.Parse(frag, 0); err != nil {
			t.Fatal(err)
		}
		if len(frag) != tc.reqPDU || p.Type != rpcparse.PTypeRequest || p.Request.Opnum != 0 || p.Request.ContextID != 1 || !bytes.Equal(p.Request.Stub, stub) {
			t.Errorf("V%d ndr64=%v: request PDU %d bytes %+v", tc.major, tc.ndr64, len(frag), p.Header)
		}
		resp := kmsgen.NewResponse(&req)
		rstub := kmsgen.ResponseStub(kmsgen.EncodeResponse(&resp, &req, [16]byte{1}), 0, tc.ndr64)
		frag = kmsgen.ResponsePDU(3, 1, rstub)
		if err := p.Parse(frag, 0); err != nil {
			t.Fatal(err)
		}
		if len(frag) != tc.respPDU || p.Type != rpcparse.PTypeResponse || !bytes.Equal(p.Response.Stub, rstub) {
			t.Errorf("V%d ndr64=%v: response PDU %d bytes, want %d", tc.major, tc.ndr64, len(frag), tc.respPDU)
		}
	}
	if got := len(kmsgen.ResponsePDU(2, 0, kmsgen.ResponseStub(nil, kms.HResultKMSIDMismatch, false))); got != 36 {
		t.Errorf("refusal PDU %d bytes, want 36", got)
	}
}
