package assoc_test

import (
	"bytes"
	"testing"

	"github.com/kmsproxy/kmsproxy/assoc"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/captures"
)

// vlmcsd, as the captures show it: NDR64 accepted, NDR 2.0 only when not
// offered beside NDR64, bind-time features 0x3 acknowledged.
var vlmcsd = assoc.HostSyntaxes{NDR20: true, NDR64: true, BTFN: true, BTFNFlags: 3}

// The proxy's own answers to a Windows client's bind and alter_context
// give the same results as the host did, and drive the association as the
// host's answers would.
func TestAnswerBindAsTheHostDid(t *testing.T) {
	c, err := captures.Load("win10-v6")
	if err != nil {
		t.Fatal(err)
	}
	d := &driver{t: t, a: assoc.New(nil), env: env(t)}
	g := assoc.GatewayAnswer{MaxXmitFrag: 5840, MaxRecvFrag: 5840, AssocGroup: 0x1234, SecAddr: []byte("1688\x00")}
	for i := 0; i < 2; i++ { // bind, alter_context
		if st := d.client(c.C2S[i]); st.Verdict != assoc.Forward {
			t.Fatalf("client PDU %d: %+v", i, st)
		}
		ours := assoc.AnswerBind(nil, &d.p, vlmcsd, g)
		var got, want rpcparse.PDU
		if err := got.Parse(ours, 0); err != nil {
			t.Fatalf("our answer %d does not parse: %v", i, err)
		}
		if err := want.Parse(c.S2C[i], 0); err != nil {
			t.Fatal(err)
		}
		if got.Type != want.Type || got.CallID != want.CallID || got.BindAck.NumResults != want.BindAck.NumResults {
			t.Fatalf("answer %d: %v call %d, %d results; the host: %v call %d, %d results", i, got.Type, got.CallID, got.BindAck.NumResults, want.Type, want.CallID, want.BindAck.NumResults)
		}
		for j := 0; j < int(want.BindAck.NumResults); j++ {
			g, w := got.BindAck.Result(j), want.BindAck.Result(j)
			if g.Result != w.Result || g.Reason != w.Reason || (w.Result == rpcparse.ResultAcceptance && g.Transfer != w.Transfer) {
				t.Errorf("answer %d result %d: %+v, the host answered %+v", i, j, g, w)
			}
		}
		if st := d.host(ours); st.Verdict != assoc.Relay {
			t.Fatalf("our answer %d refused by the association: %+v", i, st)
		}
	}
	// The activation call on the context our answers made live.
	st := d.client(c.C2S[2])
	if st.Verdict != assoc.Forward || st.Call == nil || !bytes.Equal(st.Stub, d.p.Request.Stub) {
		t.Fatalf("request: %+v", st)
	}
	call := *st.Call
	var resp rpcparse.PDU
	if err := resp.Parse(c.S2C[2], 0); err != nil {
		t.Fatal(err)
	}
	answer := assoc.AnswerCall(nil, &call, resp.DataRep, resp.Response.Stub, 5840, false, 0)
	if !bytes.Equal(answer, c.S2C[2]) {
		t.Fatalf("our response differs from the host's:\n ours %x\nhost's %x", answer, c.S2C[2])
	}
	if hs := d.host(answer); hs.Verdict != assoc.Relay || hs.Call == nil || hs.Call.KMS.RespStub == nil {
		t.Fatalf("our response: %+v", hs)
	}
}

// A host without NDR64 (or without BTFN) is mirrored: those contexts are
// refused, the rest accepted.
func TestAnswerBindMirrorsRefusals(t *testing.T) {
	c, err := captures.Load("win10-v6")
	if err != nil {
		t.Fatal(err)
	}
	var bind rpcparse.PDU
	if err := bind.Parse(c.C2S[0], 0); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		host assoc.HostSyntaxes
		want []uint16
	}{
		{assoc.HostSyntaxes{NDR20: true, NDR20BesideNDR64: true}, []uint16{rpcparse.ResultAcceptance, rpcparse.ResultProviderRejection, rpcparse.ResultProviderRejection}},
		{assoc.HostSyntaxes{NDR64: true, BTFN: true, BTFNFlags: 1}, []uint16{rpcparse.ResultProviderRejection, rpcparse.ResultAcceptance, rpcparse.ResultNegotiateAck}},
		{assoc.HostSyntaxes{}, []uint16{rpcparse.ResultProviderRejection, rpcparse.ResultProviderRejection, rpcparse.ResultProviderRejection}},
	} {
		var ack rpcparse.PDU
		if err := ack.Parse(assoc.AnswerBind(nil, &bind, tc.host, assoc.GatewayAnswer{MaxXmitFrag: 5840, MaxRecvFrag: 5840}), 0); err != nil {
			t.Fatal(err)
		}
		for j, w := range tc.want {
			if r := ack.BindAck.Result(j); r.Result != w {
				t.Errorf("host %+v: result %d is %d, want %d", tc.host, j, r.Result, w)
			}
		}
	}
}

// A stub larger than the client's max_recv_frag goes in fragments.
func TestAnswerCallFragments(t *testing.T) {
	call := assoc.Call{ID: 7, CtxID: 1}
	stub := bytes.Repeat([]byte{0xab}, 3000)
	out := assoc.AnswerCall(nil, &call, rpcparse.LittleEndianDataRep, stub, 1024, false, 0)
	var got []byte
	frags := 0
	for len(out) > 0 {
		n, err := rpcparse.Split(out, 0)
		if err != nil || n == 0 {
			t.Fatalf("split: %d %v", n, err)
		}
		var p rpcparse.PDU
		if err := p.Parse(out[:n], 0); err != nil || p.CallID != 7 || p.Response.ContextID != 1 || n > 1024 {
			t.Fatalf("fragment %d: %v, call %d ctx %d, %d bytes", frags, err, p.CallID, p.Response.ContextID, n)
		}
		got = append(got, p.Response.Stub...)
		out, frags = out[n:], frags+1
	}
	if frags < 3 || !bytes.Equal(got, stub) {
		t.Fatalf("%d fragments, stub intact %v", frags, bytes.Equal(got, stub))
	}
}
