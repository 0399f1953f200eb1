package e2e

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
	"github.com/kmsproxy/kmsproxy/test/fixture"
	"github.com/kmsproxy/kmsproxy/test/kmsgen"
)

// The terminating gateway's failure semantics (issue 13), through the
// proxy: a host that goes away and comes back, one that never answers,
// one that closes idle associations or after every answer, one that
// refuses NDR64, and an association that dies before the answer. Every
// client speaks as Windows does (the win10-v6 bind, alter_context and
// request) with call ids from clientCallBase, so sentByClient tells
// whether anything a client wrote reached a host.

// gwSources are the dmz sources the gateway tests spread clients over.
var gwSources = []string{srcDMZ, "127.0.0.5", "127.0.0.6"}

// gwOutcome is how one client activation through the gateway ended.
type gwOutcome struct {
	ok      bool          // the reply to its own request (its CMID)
	refusal string        // "bind_nak" (temporary congestion) or "fault" (RPC_S_CALL_FAILED) on the named PDU
	stage   string        // bind, alter_context, request: where it was refused
	waited  time.Duration // how long the refused PDU waited for its refusal
	err     error         // anything else: a wrong answer, a close, a timeout
}

// gwClient is a Windows client of the gateway: the win10-v6 bind and
// alter_context, then a RequestActivation of its own (CMID from its
// number) in the capture's context and transfer syntax.
type gwClient struct {
	win    fixture.Capture
	reqCtx uint16
	ndr64  bool
}

func newGWClient(t *testing.T) *gwClient {
	t.Helper()
	g := &gwClient{win: mustCapture(t, "win10-v6")}
	p := fixture.Parse(t, g.win.C2S[2])
	if p.Type != rpcparse.PTypeRequest {
		t.Fatalf("win10-v6 PDU 2 is a %v, not the request", p.Type)
	}
	g.reqCtx = p.Request.ContextID
	_, err := kms.ParseRequestStub(p.Request.Stub, kms.Encoding{})
	g.ndr64 = err != nil
	return g
}

// activate runs activation n from src against the proxy at addr. Every
// read is bounded (answerWithin); nothing here fails the test, so it can
// run on any goroutine.
func (g *gwClient) activate(addr, src string, n int, answerWithin time.Duration) gwOutcome {
	req := kmsgen.NewRequest(6)
	req.CMID = rpcparse.MustUUID(fmt.Sprintf("6b6b6b6b-0000-4000-8000-%012x", n))
	return g.activateRequest(addr, src, n, req, answerWithin)
}

// activateRequest is activate with a request of the caller's (its own
// CMID, workstation, product).
func (g *gwClient) activateRequest(addr, src string, n int, req kms.Request, answerWithin time.Duration) gwOutcome {
	stub := kmsgen.RequestStub(kmsgen.EncodeRequest(&req, kmsgen.IV(byte(n))), g.ndr64)
	conn, err := fixture.DialErr(src, addr)
	if err != nil {
		return gwOutcome{err: fmt.Errorf("activation %d: dial: %w", n, err)}
	}
	defer conn.Close()
	fr := rpcparse.NewFramer(conn, rpcparse.MaxFragmentLimit)
	id := clientCallBase + uint32(10*n)
	steps := []struct {
		stage string
		pdu   []byte
		want  rpcparse.PType
	}{
		{"bind", withCall(g.win.C2S[0], id), rpcparse.PTypeBindAck},
		{"alter_context", withCall(g.win.C2S[1], id+1), rpcparse.PTypeAlterContextResp},
		{"request", kmsgen.RequestPDU(id+2, g.reqCtx, stub), rpcparse.PTypeResponse},
	}
	for i, s := range steps {
		conn.SetDeadline(time.Now().Add(answerWithin))
		if _, err := conn.Write(s.pdu); err != nil {
			return gwOutcome{err: fmt.Errorf("activation %d: writing the %s: %w", n, s.stage, err)}
		}
		t0 := time.Now()
		b, err := fr.Next()
		waited := time.Since(t0)
		if err != nil {
			return gwOutcome{err: fmt.Errorf("activation %d: no answer to the %s after %v: %w", n, s.stage, waited, err)}
		}
		var p rpcparse.PDU
		if err := p.Parse(b, 0); err != nil {
			return gwOutcome{err: fmt.Errorf("activation %d: answer to the %s does not parse: %w", n, s.stage, err)}
		}
		if p.CallID != id+uint32(i) {
			return gwOutcome{err: fmt.Errorf("activation %d: %v for call %d answers the %s, call %d", n, p.Type, p.CallID, s.stage, id+uint32(i))}
		}
		switch {
		case p.Type == rpcparse.PTypeBindNak && s.stage == "bind":
			if p.BindNak.Reason != rpcparse.NakTemporaryCongestion {
				return gwOutcome{err: fmt.Errorf("activation %d: bind_nak reason %d, not temporary congestion", n, p.BindNak.Reason)}
			}
			return gwOutcome{refusal: "bind_nak", stage: s.stage, waited: waited}
		case p.Type == rpcparse.PTypeFault && s.stage != "bind":
			if p.Fault.Status != rpcparse.StatusCallFailed {
				return gwOutcome{err: fmt.Errorf("activation %d: fault %#x on the %s, not RPC_S_CALL_FAILED", n, p.Fault.Status, s.stage)}
			}
			return gwOutcome{refusal: "fault", stage: s.stage, waited: waited}
		case p.Type != s.want:
			return gwOutcome{err: fmt.Errorf("activation %d: %v answers the %s", n, p.Type, s.stage)}
		}
		if s.stage != "request" {
			continue
		}
		blob, hr, err := kms.ParseResponseStub(p.Response.Stub, kms.Encoding{NDR64: g.ndr64})
		if err != nil || hr != 0 {
			return gwOutcome{err: fmt.Errorf("activation %d: reply stub %v %#x", n, err, hr)}
		}
		var r kms.Response
		if err := kms.DecodeResponse(blob, &req, &r); err != nil || !r.CMIDMatch {
			return gwOutcome{err: fmt.Errorf("activation %d: reply for CMID %v, not its own (%v)", n, r.CMID, err)}
		}
	}
	return gwOutcome{ok: true}
}

// mustActivate is activate for a test that expects success.
func (g *gwClient) mustActivate(t *testing.T, e *env, src string, n int) {
	t.Helper()
	if o := g.activate(e.Addr, src, n, 10*time.Second); !o.ok {
		t.Fatalf("activation %d from %s: %s", n, src, o)
	}
}

func (o gwOutcome) String() string {
	switch {
	case o.ok:
		return "success"
	case o.err != nil:
		return o.err.Error()
	}
	return fmt.Sprintf("%s on the %s after %v", o.refusal, o.stage, o.waited)
}

// poolMetric sums the series of the gathered metric name whose labels
// include every name=value pair of labels (for a histogram, its count).
func poolMetric(t *testing.T, e *env, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := e.Srv.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, want := range labels {
				k, v, _ := strings.Cut(want, "=")
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == k && l.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

// poolDials is every dial of a pooled association so far, ok or failed.
func poolDials(t *testing.T, e *env) float64 {
	return poolMetric(t, e, "kmsproxy_upstream_pool_dials_total")
}

// callIDs returns the call ids of the PDUs a host received on one
// connection, in the order received.
func callIDs(t *testing.T, pdus [][]byte) []uint32 {
	t.Helper()
	ids := make([]uint32, 0, len(pdus))
	for _, b := range pdus {
		if len(b) < 16 {
			t.Fatalf("the host received %d unframed bytes", len(b))
		}
		ids = append(ids, fixture.Parse(t, b).CallID)
	}
	return ids
}

// A host killed and restarted on the same address under load: while it is
// down every client is refused promptly (bind_nak temporary congestion, or
// a fault RPC_S_CALL_FAILED on a later PDU), the proxy says
// upstream-unavailable, and the pool dials a handful of times, not once
// per client; once it is back activations succeed again. Neither host
// incarnation ever receives a PDU a client wrote.
func TestGatewayFailHostRestart(t *testing.T) {
	t.Parallel()
	host := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub())
	addr := host.Addr()
	e := startProxy(t, host, strings.ReplaceAll(gatewayConfig, "UPSTREAM", addr))
	g := newGWClient(t)

	const (
		workers    = 16
		upFor      = time.Second // before the host is stopped
		downFor    = time.Second // the outage
		loadFor    = 3 * time.Second
		loadMax    = 8 * time.Second // cap while waiting for a success after the restart
		refuseIn   = 1500 * time.Millisecond
		answerIn   = 5 * time.Second // a read this long means a hang
		pause      = 10 * time.Millisecond
		maxOutDial = 10
		recoverIn  = 3 * time.Second // the pool's 1 s down backoff, and slack
	)
	// phase: 0 host up, 1 host down, 2 host restarted.
	var phase atomic.Int32
	var next atomic.Int64
	var okAfterRestart atomic.Int32
	var mu sync.Mutex
	var (
		okBefore, refusedDown, refusedOther int
		slow, bad                           []string
		restartAt                           time.Time
		firstOK, lastRefused                time.Duration // after the restart, of activations begun after it
		kinds                               = map[string]int{}
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := int(next.Add(1))
				before := phase.Load()
				began := time.Now()
				o := g.activate(e.Addr, gwSources[n%len(gwSources)], n, answerIn)
				after := phase.Load()
				mu.Lock()
				switch {
				case o.err != nil:
					bad = append(bad, fmt.Sprintf("phase %d→%d: %v", before, after, o.err))
				case o.ok:
					if before == 0 {
						okBefore++
					}
					if before == 2 {
						if okAfterRestart.Add(1) == 1 || began.Sub(restartAt) < firstOK {
							firstOK = began.Sub(restartAt)
						}
					}
				default:
					kinds[o.refusal+" on the "+o.stage]++
					if o.waited > refuseIn {
						slow = append(slow, fmt.Sprintf("phase %d→%d: %s", before, after, o))
					}
					if before == 2 {
						lastRefused = max(lastRefused, began.Sub(restartAt))
					}
					if before == 1 && after == 1 {
						refusedDown++
					} else {
						refusedOther++
					}
				}
				mu.Unlock()
				time.Sleep(pause)
			}
		}()
	}

	start := time.Now()
	time.Sleep(upFor)
	dialsBefore := poolDials(t, e)
	phase.Store(1)
	host.Close()
	time.Sleep(downFor)
	dialsDown := poolDials(t, e) - dialsBefore
	host2 := fixture.StartHostOn(t, addr, fixture.Replay, fixture.AnswerByStub())
	mu.Lock()
	restartAt = time.Now()
	mu.Unlock()
	phase.Store(2)
	// Load until loadFor, and on until one activation begun after the
	// restart succeeded (the upstream may still be in its down backoff).
	for time.Since(start) < loadFor || okAfterRestart.Load() == 0 && time.Since(start) < loadMax {
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	t.Logf("activations: %d; successes before the outage %d, after the restart %d; refused in the outage %d, at its edges %d; dials in the outage %v; after the restart: first success begun at +%v, last refusal begun at +%v; refusals %v",
		next.Load(), okBefore, okAfterRestart.Load(), refusedDown, refusedOther, dialsDown, firstOK, lastRefused, kinds)
	for i, s := range bad {
		if i == 10 {
			t.Errorf("… and %d more", len(bad)-i)
			break
		}
		t.Errorf("unexpected outcome: %s", s)
	}
	for i, s := range slow {
		if i == 10 {
			t.Errorf("… and %d more", len(slow)-i)
			break
		}
		t.Errorf("refusal slower than %v: %s", refuseIn, s)
	}
	if okBefore == 0 {
		t.Error("no activation succeeded before the host was stopped")
	}
	if refusedDown == 0 {
		t.Error("no client was refused while the host was down")
	}
	if okAfterRestart.Load() == 0 {
		t.Errorf("no activation begun after the restart succeeded within %v", loadMax)
	} else if firstOK > recoverIn {
		t.Errorf("the first activation to succeed after the restart began %v after it (the pool skips a down host for 1 s)", firstOK)
	}
	if dialsDown > maxOutDial {
		t.Errorf("the pool dialled %v times in a %v outage (more than %d: a dial storm)", dialsDown, downFor, maxOutDial)
	}
	if n := poolMetric(t, e, "kmsproxy_upstream_pool_dials_total", "result=failed"); n < 1 {
		t.Errorf("no failed dial counted: %v", n)
	}
	if len(e.Events("upstream-unavailable")) == 0 {
		t.Error("no upstream-unavailable event while the host was down")
	}
	// The pool is well again: sequential activations all succeed.
	for i := 0; i < 5; i++ {
		if o := g.activate(e.Addr, srcDMZ, int(next.Add(1)), answerIn); !o.ok {
			t.Errorf("activation after the restart: %s", o)
		}
	}
	if host2.Connections() == 0 {
		t.Error("the restarted host saw no association")
	}
	if sentByClient(host) || sentByClient(host2) {
		t.Error("a host received a PDU a client wrote")
	}
}

// A host that accepts and never answers: the client's bind is refused
// with bind_nak temporary congestion once the pool's bind times out
// (limits.idle_timeout, 2 s here), and the pool's bind is never sent
// twice: each association the host accepted carries one bind and nothing
// else.
func TestGatewayFailSilentHost(t *testing.T) {
	t.Parallel()
	host := fixture.StartHost(t, fixture.Silent, fixture.AnswerByStub())
	e := startProxy(t, host, strings.ReplaceAll(gatewayConfig, "UPSTREAM", host.Addr()))
	g := newGWClient(t)
	// idle_timeout + slack for a loaded machine (a 4 s bound was missed by
	// 57 ms at load 12 on 2 cores); what it guards is an answer, not a hang.
	const within = 2*time.Second + 4*time.Second
	for i := 0; i < 2; i++ {
		o := g.activate(e.Addr, gwSources[i], i, within+3*time.Second)
		if o.err != nil || o.ok || o.refusal != "bind_nak" {
			t.Fatalf("client %d: %s; want a bind_nak", i, o)
		}
		if o.waited > within {
			t.Fatalf("client %d: bind_nak after %v, over %v", i, o.waited, within)
		}
	}
	e.WaitEvent("upstream-unavailable", nil)
	settle()
	n := host.Connections()
	if n < 1 || n > 2 {
		t.Fatalf("the host accepted %d associations for 2 refused clients", n)
	}
	for i := 0; i < n; i++ {
		pdus := host.ReceivedOn(i)
		if len(pdus) != 1 {
			t.Fatalf("association %d carried %d PDUs, want the pool's one bind", i, len(pdus))
		}
		if p := fixture.Parse(t, pdus[0]); p.Type != rpcparse.PTypeBind || p.CallID != 1 {
			t.Fatalf("association %d carried %v call %d, want the pool's bind, call 1", i, p.Type, p.CallID)
		}
	}
	if sentByClient(host) {
		t.Fatal("the host received a PDU a client wrote")
	}
}

// Call ids the host sees increase on every association: 20 sequential
// activations from several sources, and on each host connection the pool
// used every PDU has a call id above the last.
func TestGatewayFailCallIDs(t *testing.T) {
	t.Parallel()
	host := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub())
	e := startProxy(t, host, strings.ReplaceAll(gatewayConfig, "UPSTREAM", host.Addr()))
	g := newGWClient(t)
	for i := 0; i < 20; i++ {
		g.mustActivate(t, e, gwSources[i%len(gwSources)], i)
	}
	// Then a burst, so that more than one association carries calls.
	const burst = 8
	outs := make(chan gwOutcome, burst)
	for i := 0; i < burst; i++ {
		go func(n int) { outs <- g.activate(e.Addr, gwSources[n%len(gwSources)], n, 10*time.Second) }(20 + i)
	}
	for i := 0; i < burst; i++ {
		if o := <-outs; !o.ok {
			t.Fatalf("burst activation: %s", o)
		}
	}
	n := host.Connections()
	if n < 1 {
		t.Fatal("the host saw no association")
	}
	requests := 0
	for i := 0; i < n; i++ {
		ids := callIDs(t, host.ReceivedOn(i))
		for j := 1; j < len(ids); j++ {
			if ids[j] <= ids[j-1] {
				t.Fatalf("association %d: call ids %v do not increase", i, ids)
			}
		}
		for _, b := range host.ReceivedOn(i) {
			if fixture.Parse(t, b).Type == rpcparse.PTypeRequest {
				requests++
			}
		}
		t.Logf("association %d: call ids %v", i, ids)
	}
	if requests != 20+burst {
		t.Fatalf("the host received %d requests for %d activations", requests, 20+burst)
	}
	if sentByClient(host) {
		t.Fatal("the host received a PDU a client wrote")
	}
}

// A host that closes idle associations after 300 ms: the second activation,
// 700 ms after the first, goes on a fresh association without an error;
// the metrics count the association the host closed.
func TestGatewayFailIdleClose(t *testing.T) {
	t.Parallel()
	host := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub(), fixture.CloseIdleAfter(300*time.Millisecond))
	e := startProxy(t, host, strings.ReplaceAll(gatewayConfig, "UPSTREAM", host.Addr()))
	g := newGWClient(t)
	g.mustActivate(t, e, srcDMZ, 0)
	time.Sleep(700 * time.Millisecond)
	g.mustActivate(t, e, srcDMZ, 1)
	settle()
	for _, action := range []string{"upstream-unavailable", "protocol-violation"} {
		if evs := e.Events(action); len(evs) != 0 {
			t.Fatalf("%s after an idle association closed by the host: %v", action, evs)
		}
	}
	if n := poolMetric(t, e, "kmsproxy_upstream_pool_host_closed_total", "upstream="+host.Addr()); n < 1 {
		t.Fatalf("host-closed associations counted: %v, want at least 1", n)
	}
	if n := host.Connections(); n < 2 {
		t.Fatalf("the host saw %d associations; the second activation needed a fresh one", n)
	}
	if sentByClient(host) {
		t.Fatal("the host received a PDU a client wrote")
	}
}

// A host that closes after every answer (vlmcsd -d, py-kms): every
// activation succeeds, and the upstream is switched to one association per
// call.
func TestGatewayFailCloseAfterResponse(t *testing.T) {
	t.Parallel()
	host := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub(), fixture.CloseAfterResponse())
	e := startProxy(t, host, strings.ReplaceAll(gatewayConfig, "UPSTREAM", host.Addr()))
	g := newGWClient(t)
	for i := 0; i < 10; i++ {
		g.mustActivate(t, e, gwSources[i%len(gwSources)], i)
	}
	if v := poolMetric(t, e, "kmsproxy_upstream_pool_per_call", "upstream="+host.Addr()); v != 1 {
		t.Fatalf("kmsproxy_upstream_pool_per_call{upstream=%q} = %v after 10 associations closed after their answer, want 1", host.Addr(), v)
	}
	if evs := e.Events("upstream-unavailable"); len(evs) != 0 {
		t.Fatalf("upstream-unavailable with a host that closes after every answer: %v", evs)
	}
	if sentByClient(host) {
		t.Fatal("the host received a PDU a client wrote")
	}
}

// A host that refuses NDR64 (py-kms): a Windows client's bind (NDR 2.0,
// NDR64, bind-time feature negotiation) is answered as the host answered
// the pool's — NDR 2.0 accepted, NDR64 refused — the alter_context for NDR
// 2.0 is accepted, and the activation on NDR 2.0 succeeds.
func TestGatewayFailRefuseNDR64(t *testing.T) {
	t.Parallel()
	host := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub(), fixture.RefuseNDR64())
	e := startProxy(t, host, strings.ReplaceAll(gatewayConfig, "UPSTREAM", host.Addr()))
	win := mustCapture(t, "win10-v6")
	bind := fixture.Parse(t, win.C2S[0])
	if bind.Type != rpcparse.PTypeBind || bind.Bind.NumContexts != 3 {
		t.Fatalf("win10-v6 PDU 0: %v with %d contexts, want the 3-context bind", bind.Type, bind.Bind.NumContexts)
	}
	var kinds []rpcparse.TransferKind
	for it := bind.Bind.Contexts(); it.Next(); {
		kinds = append(kinds, it.Context().TransferKind(0))
	}
	if len(kinds) != 3 || kinds[0] != rpcparse.TransferNDR20 || kinds[1] != rpcparse.TransferNDR64 || kinds[2] != rpcparse.TransferBTFN {
		t.Fatalf("win10-v6 bind offers %v, want NDR 2.0, NDR64, feature negotiation", kinds)
	}
	cl := e.Dial(srcDMZ)
	cl.Send(withCall(win.C2S[0], clientCallBase))
	ack := fixture.Parse(t, cl.MustRecv())
	if ack.Type != rpcparse.PTypeBindAck || ack.CallID != clientCallBase || int(ack.BindAck.NumResults) != len(kinds) {
		t.Fatalf("bind answered with %v call %d, %d results", ack.Type, ack.CallID, ack.BindAck.NumResults)
	}
	// What the host answered the pool's own bind: the proxy mirrors it.
	hostAck := hostBindAnswer(t, host)
	ndr20Ctx := -1
	for i, k := range kinds {
		r := ack.BindAck.Result(i)
		switch k {
		case rpcparse.TransferNDR20:
			ndr20Ctx = i
			if r.Result != rpcparse.ResultAcceptance || rpcparse.ClassifyTransfer(r.Transfer) != rpcparse.TransferNDR20 {
				t.Fatalf("context %d (NDR 2.0): %+v, want accepted", i, r)
			}
		case rpcparse.TransferNDR64:
			if r.Result != rpcparse.ResultProviderRejection || r.Reason != rpcparse.ProviderReasonTransferSyntaxes {
				t.Fatalf("context %d (NDR64): %+v, want refused (proposed transfer syntaxes not supported)", i, r)
			}
			if h := hostAck.BindAck.Result(1); h.Result != r.Result || h.Reason != r.Reason {
				t.Fatalf("context %d (NDR64): %+v, the host refused it with %+v", i, r, h)
			}
		case rpcparse.TransferBTFN:
			if h := hostAck.BindAck.Result(2); h.Result != r.Result || h.Reason != r.Reason {
				t.Fatalf("context %d (feature negotiation): %+v, the host: %+v", i, r, h)
			}
		}
	}
	if ndr20Ctx < 0 {
		t.Fatal("the Windows bind offers no NDR 2.0 context")
	}
	cl.Send(withCall(win.C2S[1], clientCallBase+1))
	alt := fixture.Parse(t, cl.MustRecv())
	if alt.Type != rpcparse.PTypeAlterContextResp || alt.CallID != clientCallBase+1 || alt.BindAck.NumResults != 1 ||
		alt.BindAck.Result(0).Result != rpcparse.ResultAcceptance || rpcparse.ClassifyTransfer(alt.BindAck.Result(0).Transfer) != rpcparse.TransferNDR20 {
		t.Fatalf("alter_context answered with %v call %d: %+v", alt.Type, alt.CallID, alt.BindAck.Result(0))
	}
	req := kmsgen.NewRequest(6)
	req.CMID = rpcparse.MustUUID("6c6c6c6c-0000-4000-8000-000000000001")
	stub := kmsgen.RequestStub(kmsgen.EncodeRequest(&req, kmsgen.IV(7)), false)
	cl.Send(kmsgen.RequestPDU(clientCallBase+2, uint16(ndr20Ctx), stub))
	resp := fixture.Parse(t, cl.MustRecv())
	if resp.Type != rpcparse.PTypeResponse || resp.CallID != clientCallBase+2 || resp.Response.ContextID != uint16(ndr20Ctx) {
		t.Fatalf("request answered with %v call %d context %d", resp.Type, resp.CallID, resp.Response.ContextID)
	}
	blob, hr, err := kms.ParseResponseStub(resp.Response.Stub, kms.Encoding{})
	if err != nil || hr != 0 {
		t.Fatalf("reply stub %v %#x", err, hr)
	}
	var r kms.Response
	if err := kms.DecodeResponse(blob, &req, &r); err != nil || !r.CMIDMatch {
		t.Fatalf("reply for CMID %v, not the client's (%v)", r.CMID, err)
	}
	act := e.WaitEvent("kms-activation", nil)
	if act["kmsproxy.kms_result"] != "success" || act["dcerpc.transfer_syntax"] != "ndr20" {
		t.Fatalf("activation event: %v", act)
	}
	// The pool's request went on NDR 2.0 (context 0 of its association).
	for _, b := range host.Received() {
		if p := fixture.Parse(t, b.Bytes); p.Type == rpcparse.PTypeRequest && p.Request.ContextID != 0 {
			t.Fatalf("the pool's request went on context %d, not NDR 2.0's 0", p.Request.ContextID)
		}
	}
	if sentByClient(host) {
		t.Fatal("the host received a PDU a client wrote")
	}
}

// hostBindAnswer returns the host's answer to the pool's first bind.
func hostBindAnswer(t *testing.T, host *fixture.Host) *rpcparse.PDU {
	t.Helper()
	for _, r := range host.Received() {
		if len(r.Bytes) > 2 && rpcparse.PType(r.Bytes[2]) == rpcparse.PTypeBind && r.Reply != nil {
			p := fixture.Parse(t, r.Reply)
			if p.Type != rpcparse.PTypeBindAck || p.BindAck.NumResults != 3 {
				t.Fatalf("the host answered the pool's bind with %v, %d results", p.Type, p.BindAck.NumResults)
			}
			return p
		}
	}
	t.Fatal("the host answered no bind")
	return nil
}

// An association that dies before any byte of the answer: the call goes
// once more on a fresh association, and the client sees only its answer.
func TestGatewayFailDiesBeforeAnswer(t *testing.T) {
	t.Parallel()
	host := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub(), fixture.CloseOnFirstRequests(1))
	e := startProxy(t, host, strings.ReplaceAll(gatewayConfig, "UPSTREAM", host.Addr()))
	g := newGWClient(t)
	g.mustActivate(t, e, srcDMZ, 0)
	if n := poolMetric(t, e, "kmsproxy_upstream_pool_retries_total"); n != 1 {
		t.Fatalf("kmsproxy_upstream_pool_retries_total = %v, want 1", n)
	}
	act := e.WaitEvent("kms-activation", nil)
	if act["kmsproxy.kms_result"] != "success" {
		t.Fatalf("activation event: %v", act)
	}
	requests := 0
	for _, r := range host.Received() {
		if p := fixture.Parse(t, r.Bytes); p.Type == rpcparse.PTypeRequest {
			requests++
		}
	}
	if requests != 2 || host.Connections() != 2 {
		t.Fatalf("the host received %d requests on %d associations, want the call and its one retry on 2", requests, host.Connections())
	}
	if sentByClient(host) {
		t.Fatal("the host received a PDU a client wrote")
	}
}
