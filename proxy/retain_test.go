package proxy

import (
	"testing"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// A fragmented call grows the call buffers to its size; once it is
// cancelled (or forwarded) the connection keeps none of it, so a quiet
// connection's memory does not depend on the biggest call it ever made.
func TestCallBuffersReleased(t *testing.T) {
	r := newWatchRig(t, "{}")
	s := r.session("192.0.2.7")
	s.bound = true
	s.live = []liveContext{{id: 0, iface: rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: 1}}}
	rt := r.rt
	var p rpcparse.PDU
	parse := func(b []byte) *rpcparse.PDU {
		t.Helper()
		if err := p.Parse(b, 0); err != nil {
			t.Fatal(err)
		}
		return &p
	}
	le := rpcparse.LittleEndianDataRep
	stub := make([]byte, 5000)
	for i := 0; i < 12; i++ {
		flags := uint8(0)
		if i == 0 {
			flags = rpcparse.FlagFirstFrag
		}
		frag := rpcparse.AppendRequest(nil, rpcparse.PDUHead{Flags: flags, DataRep: le, CallID: 3}, 0, 0, nil, stub, nil)
		if !s.handleClientPDU(rt, parse(frag), frag) {
			t.Fatalf("fragment %d refused: %v", i, r.logs.All())
		}
	}
	if !s.asm.active || s.asm.held() < 60000 {
		t.Fatalf("the call is not being held: active %v, %d bytes", s.asm.active, s.asm.held())
	}
	cancel := rpcparse.AppendSimple(nil, rpcparse.PDUHead{Type: rpcparse.PTypeCoCancel, Flags: 3, DataRep: le, CallID: 3}, nil, nil)
	if !s.handleClientPDU(rt, parse(cancel), cancel) {
		t.Fatal("co_cancel ended the connection")
	}
	if s.asm.active || s.asm.raw != nil || s.asm.stub != nil {
		t.Fatalf("after co_cancel the session still holds call buffers: %+v", s.asm)
	}

	// What parking drops: the reply stub too.
	s.respStub = make([]byte, 0, 4096)
	s.clientFr = rpcparse.NewFramer(nil, 5840)
	if !s.detachBuffers() {
		t.Fatal("an idle session could not detach its buffers")
	}
	if s.respStub != nil || s.clientPDU != nil || s.log != nil {
		t.Fatal("a detached session keeps its reply stub, parsed PDU or logger")
	}
}

// co_cancel and orphaned do no work, so they do not reset the idle clock;
// every other client PDU does.
func TestIdleClockIgnoresCancel(t *testing.T) {
	le := rpcparse.LittleEndianDataRep
	for typ, want := range map[rpcparse.PType]bool{
		rpcparse.PTypeCoCancel: false, rpcparse.PTypeOrphaned: false,
		rpcparse.PTypeRequest: true, rpcparse.PTypeAlterContext: true, rpcparse.PTypeBind: true, rpcparse.PTypeAuth3: true,
	} {
		frag := rpcparse.AppendSimple(nil, rpcparse.PDUHead{Type: typ, Flags: 3, DataRep: le, CallID: 3}, make([]byte, 8), nil)
		if got := doesWork(frag); got != want {
			t.Errorf("%v: doesWork %v, want %v", typ, got, want)
		}
	}
}
