package assoc_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/assoc"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/captures"
)

var (
	le  = rpcparse.LittleEndianDataRep
	src = netip.MustParseAddr("192.0.2.7")
	kms = rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: 1}
	ndr = rpcparse.SyntaxID{UUID: rpcparse.NDR20UUID, Major: 2}
)

func policy(t testing.TB) *acl.Policy {
	t.Helper()
	path := filepath.Join(t.TempDir(), "p.yaml")
	os.WriteFile(path, []byte(`
upstreams: ["127.0.0.1:11688"]
zones: { dmz: ["192.0.2.0/24"] }
rules:
  - { name: dmz-activation, from: [dmz], interface: kms, opnums: [0], auth: [none], kms: { versions: [4,5,6] }, action: allow }
`), 0o600)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Policy
}

func env(t testing.TB) *assoc.Env {
	return &assoc.Env{Policy: policy(t), MaxCallBytes: 65536, MaxContexts: 8, Src: src}
}

// driver feeds PDUs to one association and keeps the parsed PDU.
type driver struct {
	t   testing.TB
	a   *assoc.Assoc
	env *assoc.Env
	p   rpcparse.PDU
}

func (d *driver) client(b []byte) assoc.Step {
	d.t.Helper()
	if err := d.p.Parse(b, 0); err != nil {
		d.t.Fatal(err)
	}
	return d.a.Client(d.env, &d.p, b)
}

func (d *driver) host(b []byte) assoc.Step {
	d.t.Helper()
	if err := d.p.Parse(b, 0); err != nil {
		d.t.Fatal(err)
	}
	return d.a.Host(d.env, &d.p)
}

func bind(typ rpcparse.PType, callID uint32, ctxs ...rpcparse.ContextSpec) []byte {
	return rpcparse.AppendBind(nil, rpcparse.PDUHead{Type: typ, Flags: 3, DataRep: le, CallID: callID},
		rpcparse.BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Contexts: ctxs}, nil)
}

func ack(typ rpcparse.PType, callID uint32, n int) []byte {
	res := make([]rpcparse.Result, n)
	for i := range res {
		res[i] = rpcparse.Result{Result: rpcparse.ResultAcceptance, Transfer: ndr}
	}
	return rpcparse.AppendBindAck(nil, rpcparse.PDUHead{Type: typ, Flags: 3, DataRep: le, CallID: callID},
		rpcparse.BindAckSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Results: res})
}

func request(callID uint32, flags uint8, stub []byte) []byte {
	return rpcparse.AppendRequest(nil, rpcparse.PDUHead{Flags: flags, DataRep: le, CallID: callID}, 0, 0, nil, stub, nil)
}

func response(callID uint32, stub []byte) []byte {
	return rpcparse.AppendResponse(nil, rpcparse.PDUHead{Flags: 3, DataRep: le, CallID: callID}, 0, uint32(len(stub)), stub)
}

var kmsCtx = rpcparse.ContextSpec{ID: 0, Abstract: kms, Transfers: []rpcparse.SyntaxID{ndr}}

// bound returns a driver whose association has context 0 live.
func bound(t testing.TB, bufs assoc.Buffers) *driver {
	d := &driver{t: t, a: assoc.New(bufs), env: env(t)}
	if st := d.client(bind(rpcparse.PTypeBind, 1, kmsCtx)); st.Verdict != assoc.Forward || !st.Dial {
		t.Fatalf("bind: %+v", st)
	}
	if st := d.host(ack(rpcparse.PTypeBindAck, 1, 1)); st.Verdict != assoc.Relay {
		t.Fatalf("bind_ack: %+v", st)
	}
	return d
}

// Every real capture goes through: its client PDUs are forwarded, its host
// PDUs relayed, and its activation calls decode.
func TestCapturesGoThrough(t *testing.T) {
	all, err := captures.All()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range all {
		t.Run(c.Name, func(t *testing.T) {
			d := &driver{t: t, a: assoc.New(nil), env: env(t)}
			calls := 0
			for i, b := range c.C2S {
				st := d.client(b)
				if st.Verdict != assoc.Forward {
					t.Fatalf("client PDU %d: %v %s (%s)", i, st.Verdict, st.Reason, st.Stage)
				}
				if i < len(c.S2C) {
					hs := d.host(c.S2C[i])
					if hs.Verdict != assoc.Relay {
						t.Fatalf("host PDU %d: %v %s", i, hs.Verdict, hs.Reason)
					}
					if hs.Call != nil && hs.Call.KMS != nil {
						calls++
						if hs.Call.KMS.DecodeErr != nil || hs.Call.KMS.RespStub == nil {
							t.Fatalf("call %d: decode %v, reply %d bytes", i, hs.Call.KMS.DecodeErr, len(hs.Call.KMS.RespStub))
						}
					}
				}
			}
			if calls == 0 {
				t.Fatal("no activation call finished")
			}
			if d.a.State() != assoc.Bound {
				t.Fatalf("ends in %v", d.a.State())
			}
		})
	}
}

// Every PDU type in every state: a type the state has no entry for is a
// violation with a named reason, never a panic and never a forward.
func TestEveryTypeInEveryState(t *testing.T) {
	type setup struct {
		name  string
		state assoc.State
		make  func(t *testing.T) *driver
	}
	fresh := func(t *testing.T) *driver { return &driver{t: t, a: assoc.New(nil), env: env(t)} }
	setups := []setup{
		{"awaiting-bind", assoc.AwaitingBind, fresh},
		{"bind-sent", assoc.BindSent, func(t *testing.T) *driver { d := fresh(t); d.client(bind(rpcparse.PTypeBind, 1, kmsCtx)); return d }},
		{"bound", assoc.Bound, func(t *testing.T) *driver { return bound(t, nil) }},
		{"assembling", assoc.Assembling, func(t *testing.T) *driver {
			d := bound(t, nil)
			d.client(request(2, rpcparse.FlagFirstFrag, make([]byte, 16)))
			return d
		}},
		{"alter-sent", assoc.AlterSent, func(t *testing.T) *driver {
			d := bound(t, nil)
			d.client(bind(rpcparse.PTypeAlterContext, 2, rpcparse.ContextSpec{ID: 1, Abstract: kms, Transfers: []rpcparse.SyntaxID{ndr}}))
			return d
		}},
		{"ended", assoc.Ended, func(t *testing.T) *driver {
			d := bound(t, nil)
			d.client(bind(rpcparse.PTypeBind, 9, kmsCtx)) // second bind
			return d
		}},
	}
	for _, su := range setups {
		for pt := rpcparse.PType(0); pt < 32; pt++ {
			for _, fromHost := range []bool{false, true} {
				d := su.make(t)
				if d.a.State() != su.state {
					t.Fatalf("%s: setup reached %v", su.name, d.a.State())
				}
				pdu := rpcparse.AppendSimple(nil, rpcparse.PDUHead{Type: pt, Flags: 3, DataRep: le, CallID: 77}, make([]byte, 64), nil)
				var p rpcparse.PDU
				if p.Parse(pdu, 0) != nil {
					continue // not a parseable PDU of that type: framing's concern
				}
				var st assoc.Step
				if fromHost {
					st = d.a.Host(d.env, &p)
				} else {
					st = d.a.Client(d.env, &p, pdu)
				}
				if st.Verdict == assoc.Forward {
					t.Errorf("%s: %v from client with call id 77 forwarded", su.name, pt)
				}
				if st.Verdict == assoc.Close && st.Reason == "" {
					t.Errorf("%s: %v (host %v) closed without a reason", su.name, pt, fromHost)
				}
				if fromHost && st.Verdict == assoc.Relay && pt != rpcparse.PTypeShutdown {
					t.Errorf("%s: host %v with call id 77 relayed", su.name, pt)
				}
			}
		}
	}
}

// countingBuffers counts what the association takes and gives back.
type countingBuffers struct{ gets, puts int }

func (c *countingBuffers) Get() *[]byte { c.gets++; b := make([]byte, 0, 64); return &b }
func (c *countingBuffers) Put(*[]byte)  { c.puts++ }

// A fragmented call's buffers go back when the call is cancelled, and
// after a forwarded one at the next step: a quiet association holds none.
func TestCallBuffersReturned(t *testing.T) {
	bufs := &countingBuffers{}
	d := bound(t, bufs)
	for i := 0; i < 8; i++ {
		flags := uint8(0)
		if i == 0 {
			flags = rpcparse.FlagFirstFrag
		}
		if st := d.client(request(3, flags, make([]byte, 5000))); st.Verdict != assoc.Hold {
			t.Fatalf("fragment %d: %+v", i, st)
		}
	}
	if bufs.gets != 2 || bufs.puts != 0 {
		t.Fatalf("while assembling: %d gets, %d puts", bufs.gets, bufs.puts)
	}
	cancel := rpcparse.AppendSimple(nil, rpcparse.PDUHead{Type: rpcparse.PTypeCoCancel, Flags: 3, DataRep: le, CallID: 3}, nil, nil)
	if st := d.client(cancel); st.Verdict != assoc.Consume || d.a.State() != assoc.Bound {
		t.Fatalf("co_cancel: %+v in %v", st, d.a.State())
	}
	if bufs.puts != bufs.gets {
		t.Fatalf("after co_cancel: %d gets, %d puts", bufs.gets, bufs.puts)
	}
	// A two-fragment call (not KMS-valid, so opnum 1 is refused... use a
	// policy-allowed shape: opnum 0 with a bad stub is refused at kms, which
	// ends the association and must give the buffers back too).
	d.client(request(4, rpcparse.FlagFirstFrag, make([]byte, 100)))
	if st := d.client(request(4, rpcparse.FlagLastFrag, make([]byte, 100))); st.Verdict != assoc.Refuse || st.Stage != assoc.StageKMS {
		t.Fatalf("malformed KMS call: %+v", st)
	}
	if bufs.puts != bufs.gets {
		t.Fatalf("after a refused call: %d gets, %d puts", bufs.gets, bufs.puts)
	}
}

// A PDU that does no work does not reset the idle clock.
func TestResetsIdle(t *testing.T) {
	for pt := rpcparse.PType(0); pt < 32; pt++ {
		want := pt != rpcparse.PTypeCoCancel && pt != rpcparse.PTypeOrphaned
		if assoc.ResetsIdle(pt) != want {
			t.Errorf("%v: ResetsIdle %v", pt, !want)
		}
	}
}

// What the client is owed when the host goes away: nothing when nothing
// is outstanding (the state is kept), bind_nak for a bind, a fault for a
// call.
func TestFailOutstanding(t *testing.T) {
	d := bound(t, nil)
	if out, c := d.a.FailOutstanding(); out != nil || c != nil || d.a.State() != assoc.Bound {
		t.Fatalf("idle association: %x %v, state %v", out, c, d.a.State())
	}
	d2 := &driver{t: t, a: assoc.New(nil), env: env(t)}
	d2.client(bind(rpcparse.PTypeBind, 5, kmsCtx))
	out, _ := d2.a.FailOutstanding()
	var p rpcparse.PDU
	if err := p.Parse(out, 0); err != nil || p.Type != rpcparse.PTypeBindNak || p.BindNak.Reason != rpcparse.NakTemporaryCongestion || p.CallID != 5 {
		t.Fatalf("pending bind answered %x (%v)", out, err)
	}
	if d2.a.State() != assoc.Ended {
		t.Fatalf("after failing: %v", d2.a.State())
	}
}

// The step function is the hot path: a whole activation call (request in,
// response out) allocates nothing once the association is warm.
func TestStepAllocatesNothing(t *testing.T) {
	c, err := captures.Load("win10-v6")
	if err != nil {
		t.Fatal(err)
	}
	d := &driver{t: t, a: assoc.New(nil), env: env(t)}
	for i := 0; i < 2; i++ { // bind, alter_context
		d.client(c.C2S[i])
		d.host(c.S2C[i])
	}
	req, resp := c.C2S[2], c.S2C[2]
	var p rpcparse.PDU
	cycle := func() {
		p.Parse(req, 0)
		if st := d.a.Client(d.env, &p, req); st.Verdict != assoc.Forward {
			t.Fatalf("request: %+v", st)
		}
		p.Parse(resp, 0)
		if st := d.a.Host(d.env, &p); st.Verdict != assoc.Relay {
			t.Fatalf("response: %+v", st)
		}
	}
	cycle()
	if n := testing.AllocsPerRun(200, cycle); n != 0 {
		t.Errorf("%v allocations per request+response step, want 0", n)
	}
}

func BenchmarkStepActivation(b *testing.B) {
	c, err := captures.Load("win10-v6")
	if err != nil {
		b.Fatal(err)
	}
	d := &driver{t: b, a: assoc.New(nil), env: env(b)}
	for i := 0; i < 2; i++ {
		d.client(c.C2S[i])
		d.host(c.S2C[i])
	}
	req, resp := c.C2S[2], c.S2C[2]
	var p rpcparse.PDU
	b.ReportAllocs()
	for b.Loop() {
		p.Parse(req, 0)
		d.a.Client(d.env, &p, req)
		p.Parse(resp, 0)
		d.a.Host(d.env, &p)
	}
}
