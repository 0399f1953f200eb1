package pool_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/pool"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
	"github.com/kmsproxy/kmsproxy/test/fixture"
	"github.com/kmsproxy/kmsproxy/test/kmsgen"
)

var (
	srcA = netip.MustParseAddr("192.0.2.10")
	srcB = netip.MustParseAddr("192.0.2.20")
)

// dialCounter is a Config.Dial that counts its dials.
type dialCounter struct {
	n atomic.Int64
	d net.Dialer
}

func (dc *dialCounter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	dc.n.Add(1)
	return dc.d.DialContext(ctx, network, addr)
}

// newPool starts a pool closed at the test's end, which must leave none
// of the pool's goroutines behind.
func newPool(t testing.TB, cfg pool.Config) *pool.Pool {
	t.Helper()
	p := pool.New(cfg)
	t.Cleanup(func() {
		p.Close()
		if n, stack := poolGoroutines(); n > 0 {
			t.Errorf("%d goroutines of the pool left after Close:\n%s", n, stack)
		}
	})
	return p
}

// poolGoroutines counts the goroutines running the pool's own code,
// allowing one that has done its part of Close a moment to return.
func poolGoroutines() (int, string) {
	for deadline := time.Now().Add(time.Second); ; time.Sleep(5 * time.Millisecond) {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var out []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "kmsproxy/pool.(") {
				out = append(out, g)
			}
		}
		if len(out) == 0 || time.Now().After(deadline) {
			return len(out), strings.Join(out, "\n\n")
		}
	}
}

// activation is one KMS request with a CMID of its own and the stub that
// carries it.
type activation struct {
	req  kms.Request
	stub []byte
	call pool.Call
}

func newActivation(i int, major uint16, ndr64, big bool) activation {
	a := activation{req: kmsgen.NewRequest(major)}
	a.req.CMID[0], a.req.CMID[1], a.req.CMID[15] = byte(i>>8), byte(i), byte(major)
	blob := kmsgen.EncodeRequest(&a.req, kmsgen.IV(byte(i)))
	if major != 4 {
		// The decoder reports the IV it read; keep ours for the cross-check.
		copy(a.req.IV[:], blob[4:20])
	}
	a.stub = kmsgen.RequestStubIn(blob, kms.Encoding{NDR64: ndr64, BigEndian: big})
	a.call = pool.Call{NDR64: ndr64, BigEndian: big, Stub: a.stub}
	return a
}

// checkReply decodes the reply stub and requires it to answer a's request.
func (a *activation) checkReply(res pool.Result) error {
	if res.Fault {
		return fmt.Errorf("fault %#x", res.FaultStatus)
	}
	blob, hr, err := kms.ParseResponseStub(res.Stub, kms.Encoding{NDR64: a.call.NDR64, BigEndian: res.HostBigEndian})
	if err != nil {
		return fmt.Errorf("reply stub: %v", err)
	}
	if hr != 0 {
		return fmt.Errorf("HRESULT %#x", hr)
	}
	var resp kms.Response
	if err := kms.DecodeResponse(blob, &a.req, &resp); err != nil {
		return fmt.Errorf("reply: %v", err)
	}
	if resp.CMID != a.req.CMID || !resp.CMIDMatch {
		return fmt.Errorf("reply for CMID %v, the request had %v", resp.CMID, a.req.CMID)
	}
	return nil
}

// checkHostSaw requires that every connection the host accepted carried
// only the pool's own PDUs: a bind (call 1, the Windows shape), at most one
// alter_context (call 2), then requests whose call ids go up by one.
func checkHostSaw(t testing.TB, h *fixture.Host) {
	t.Helper()
	next := map[int]uint32{}
	var p rpcparse.PDU
	for i, r := range h.Received() {
		if err := p.Parse(r.Bytes, 0); err != nil {
			t.Errorf("host PDU %d (connection %d): %v", i, r.Conn, err)
			continue
		}
		want, seen := next[r.Conn]
		switch {
		case !seen:
			if p.Type != rpcparse.PTypeBind || p.CallID != 1 || p.Bind.NumContexts != 3 || p.Flags != 0x13 {
				t.Errorf("connection %d starts with %v call %d, %d contexts, flags %#x; want the pool's bind", r.Conn, p.Type, p.CallID, p.Bind.NumContexts, p.Flags)
			}
			next[r.Conn] = 2
		case p.Type == rpcparse.PTypeAlterContext:
			if p.CallID != 2 || want != 2 || p.Bind.NumContexts != 1 {
				t.Errorf("connection %d: alter_context call %d with %d contexts after call %d", r.Conn, p.CallID, p.Bind.NumContexts, want-1)
			}
			next[r.Conn] = 3
		case p.Type == rpcparse.PTypeRequest:
			if p.CallID != want {
				t.Errorf("connection %d: request call id %d, want %d (one more than the last PDU's)", r.Conn, p.CallID, want)
			}
			if p.Flags != rpcparse.FlagFirstFrag|rpcparse.FlagLastFrag || p.Request.HasObject || int(p.Request.AllocHint) != len(p.Request.Stub) {
				t.Errorf("connection %d call %d: flags %#x, object %v, alloc_hint %d for %d stub bytes", r.Conn, p.CallID, p.Flags, p.Request.HasObject, p.Request.AllocHint, len(p.Request.Stub))
			}
			next[r.Conn] = p.CallID + 1
		default:
			t.Errorf("connection %d: %v call %d: not one of the pool's PDUs", r.Conn, p.Type, p.CallID)
		}
	}
}

func requestsSeen(h *fixture.Host) int {
	n := 0
	for _, r := range h.Received() {
		if len(r.Bytes) > 2 && rpcparse.PType(r.Bytes[2]) == rpcparse.PTypeRequest {
			n++
		}
	}
	return n
}

// TestCaptures: every activation of every capture, sent through the pool,
// gets the recorded reply stub, and the pool's negotiation with the
// recorded host (vlmcsd) is what the capture shows.
func TestCaptures(t *testing.T) {
	caps, err := fixture.AllCaptures()
	if err != nil {
		t.Fatal(err)
	}
	h := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub())
	p := newPool(t, pool.Config{Upstreams: []string{h.Addr()}})
	n, err := p.Negotiation(context.Background(), srcA, false)
	if err != nil {
		t.Fatal(err)
	}
	ok, rej, ack := rpcparse.ResultAcceptance, rpcparse.ResultProviderRejection, rpcparse.ResultNegotiateAck
	if n.Bind[0].Result != rej || n.Bind[0].Reason != 2 || n.Bind[1].Result != ok || n.Bind[2].Result != ack || n.Features() != 3 ||
		!n.AlterSent || n.Alter.Result != ok || !n.Accepts(rpcparse.TransferNDR20) || !n.Accepts(rpcparse.TransferNDR64) {
		t.Fatalf("negotiation %+v, want vlmcsd's: NDR 2.0 rejected (2/2), NDR64 accepted, BTFN ack 3, NDR 2.0 accepted by the alter_context", n)
	}
	if n.MaxXmitFrag != 5840 || n.MaxRecvFrag != 5840 || n.SecAddr != "21688" {
		t.Errorf("negotiation frags %d/%d secaddr %q", n.MaxXmitFrag, n.MaxRecvFrag, n.SecAddr)
	}
	calls := 0
	for _, c := range caps {
		var q, r rpcparse.PDU
		for i, req := range c.C2S {
			if q.Parse(req, 0) != nil || q.Type != rpcparse.PTypeRequest || i >= len(c.S2C) || r.Parse(c.S2C[i], 0) != nil {
				continue
			}
			// The Windows bind: context 1 is NDR64, context 0 NDR 2.0.
			res, err := p.Call(context.Background(), srcA, pool.Call{NDR64: q.Request.ContextID == 1, Stub: q.Request.Stub})
			if err != nil {
				t.Errorf("%s request %d: %v", c.Name, i, err)
				continue
			}
			calls++
			if !bytes.Equal(res.Stub, r.Response.Stub) || res.Fault || res.HostBigEndian || res.Retried {
				t.Errorf("%s request %d: reply stub %x (fault %v), want the recorded %x", c.Name, i, res.Stub, res.Fault, r.Response.Stub)
			}
		}
	}
	if calls < len(caps) {
		t.Fatalf("only %d activations in %d captures", calls, len(caps))
	}
	if got := h.Connections(); got != 1 {
		t.Errorf("host saw %d connections for %d sequential calls, want 1", got, calls)
	}
	checkHostSaw(t, h)
}

// TestConcurrentCallers: 64 callers through 4 associations each get the
// reply to their own request; the host sees at most 4 connections, only
// the pool's PDUs, and call ids that go up on each.
func TestConcurrentCallers(t *testing.T) {
	h := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub())
	p := newPool(t, pool.Config{Upstreams: []string{h.Addr()}, MaxAssociations: 4, MaxWaitersPerSource: 64})
	const callers = 64
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := newActivation(i, uint16(4+i%3), i%2 == 1, false)
			src := netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 8)})
			for range 3 {
				res, err := p.Call(context.Background(), src, a.call)
				if err == nil {
					err = a.checkReply(res)
				}
				if err != nil {
					errs <- fmt.Errorf("caller %d: %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := h.Connections(); got > 4 {
		t.Errorf("host saw %d connections, MaxAssociations is 4", got)
	}
	st := p.Stats()
	if u := st.Upstreams[0]; u.Open > 4 || st.Calls != 3*callers || st.Retries != 0 {
		t.Errorf("stats %+v", st)
	}
	checkHostSaw(t, h)
}

// TestIdleClosedByHostReplaced: an association the host closed while idle
// is dropped when it closes, never handed a call, and replaced.
func TestIdleClosedByHostReplaced(t *testing.T) {
	h := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub(), fixture.CloseIdleAfter(200*time.Millisecond))
	p := newPool(t, pool.Config{Upstreams: []string{h.Addr()}})
	a := newActivation(1, 6, false, false)
	for i := range 2 {
		res, err := p.Call(context.Background(), srcA, a.call)
		if err == nil {
			err = a.checkReply(res)
		}
		if err != nil || res.Retried {
			t.Fatalf("call %d: %v (retried %v)", i, err, res.Retried)
		}
		if i == 0 {
			time.Sleep(400 * time.Millisecond)
		}
	}
	st := p.Stats().Upstreams[0]
	if st.HostClosed != 1 || st.ClosedAfterResponse != 0 || st.Dials != 2 || st.PerCall {
		t.Errorf("stats %+v: want 1 association closed by the host while idle, 2 dials", st)
	}
	if requestsSeen(h) != 2 {
		t.Errorf("host saw %d requests, want 2", requestsSeen(h))
	}
	checkHostSaw(t, h)
}

// TestCloseAfterEveryResponse: a host that closes after each answer
// (vlmcsd -d, py-kms) is served without errors and switched to one
// association per call.
func TestCloseAfterEveryResponse(t *testing.T) {
	h := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub(), fixture.CloseAfterResponse())
	p := newPool(t, pool.Config{Upstreams: []string{h.Addr()}})
	const calls = 12
	retriedLate := 0
	for i := range calls {
		a := newActivation(i, 6, i%2 == 0, false)
		res, err := p.Call(context.Background(), srcA, a.call)
		if err == nil {
			err = a.checkReply(res)
		}
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if res.Retried && i > 4 {
			retriedLate++
		}
		if i == calls/2 {
			time.Sleep(20 * time.Millisecond) // let the last close be seen
		}
	}
	st := p.Stats().Upstreams[0]
	if !st.PerCall || st.PerCallSwitches != 1 || st.ClosedAfterResponse < 3 {
		t.Errorf("stats %+v: want one switch to one association per call", st)
	}
	if retriedLate != 0 {
		t.Errorf("%d calls retried after the switch to one association per call", retriedLate)
	}
	if requestsSeen(h) > calls+3 {
		t.Errorf("host saw %d requests for %d calls", requestsSeen(h), calls)
	}
	checkHostSaw(t, h)
}

// TestHostDownFailsFast: with the host stopped, callers fail at once with
// ErrUnavailable and the pool dials about once per DownBackoff, not once
// per caller; after a restart on the same port calls succeed again.
func TestHostDownFailsFast(t *testing.T) {
	h := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub())
	addr := h.Addr()
	dc := &dialCounter{}
	const backoff = 250 * time.Millisecond
	p := newPool(t, pool.Config{Upstreams: []string{addr}, DownBackoff: backoff, Dial: dc.dial, MaxWaitersPerSource: 64})
	run := func(phase string, d time.Duration, wantErr bool) (calls int64) {
		var wg sync.WaitGroup
		var n atomic.Int64
		stop := time.Now().Add(d)
		for g := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; time.Now().Before(stop); i++ {
					a := newActivation(g*1000+i, 6, false, false)
					t0 := time.Now()
					res, err := p.Call(context.Background(), srcA, a.call)
					took := time.Since(t0)
					n.Add(1)
					switch {
					case wantErr && !errors.Is(err, pool.ErrUnavailable):
						t.Errorf("%s: %v, want ErrUnavailable", phase, err)
						return
					case wantErr && took > 200*time.Millisecond:
						t.Errorf("%s: failing took %v", phase, took)
						return
					case !wantErr && err != nil:
						t.Errorf("%s: %v", phase, err)
						return
					case !wantErr:
						if err := a.checkReply(res); err != nil {
							t.Errorf("%s: %v", phase, err)
							return
						}
					}
					time.Sleep(5 * time.Millisecond)
				}
			}()
		}
		wg.Wait()
		return n.Load()
	}
	run("before", 200*time.Millisecond, false)
	h.Close()
	deadline := time.Now().Add(2 * time.Second)
	for p.Stats().Upstreams[0].Open > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	before := dc.n.Load()
	const outage = time.Second
	calls := run("outage", outage, true)
	dials := dc.n.Load() - before
	// The first burst may dial up to MaxAssociations (the host was healthy
	// a moment ago), then one dial per DownBackoff.
	if max := int64(4 + outage/backoff + 1); dials > max || calls < 10*dials {
		t.Errorf("outage: %d dials for %d calls, want at most %d", dials, calls, max)
	}
	t.Logf("outage of %v: %d calls failed fast with %d dials", outage, calls, dials)

	h2 := fixture.StartHostOn(t, addr, fixture.Replay, fixture.AnswerByStub())
	time.Sleep(backoff)
	run("after restart", 200*time.Millisecond, false)
	checkHostSaw(t, h2)
	checkHostSaw(t, h)
}

// TestSilentHost: a host that accepts and never answers costs CallTimeout,
// then ErrTimeout; nothing is retried.
func TestSilentHost(t *testing.T) {
	h := fixture.StartHost(t, fixture.Silent)
	const timeout = 300 * time.Millisecond
	p := newPool(t, pool.Config{Upstreams: []string{h.Addr()}, CallTimeout: timeout})
	a := newActivation(1, 6, false, false)
	t0 := time.Now()
	_, err := p.Call(context.Background(), srcA, a.call)
	if took := time.Since(t0); !errors.Is(err, pool.ErrTimeout) || took < timeout || took > timeout+500*time.Millisecond {
		t.Fatalf("Call = %v after %v, want ErrTimeout after %v", err, took, timeout)
	}
	if got := len(h.Received()); got != 1 || h.Connections() != 1 {
		t.Errorf("host saw %d PDUs on %d connections, want the one bind", got, h.Connections())
	}
	// The upstream is down for DownBackoff now: the next caller fails fast,
	// without dialling it (the proof; a wall-clock bound flakes under load).
	if _, err := p.Negotiation(context.Background(), srcA, false); !errors.Is(err, pool.ErrUnavailable) || h.Connections() != 1 {
		t.Errorf("Negotiation right after = %v with %d host connections, want ErrUnavailable and no new dial", err, h.Connections())
	}
	checkHostSaw(t, h)
}

// TestSlowAnswerNotRetried: a call the host does not answer in time is
// ErrTimeout and sent once, and its late answer reaches nobody.
func TestSlowAnswerNotRetried(t *testing.T) {
	h := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub(), fixture.AnswerDelay(500*time.Millisecond))
	p := newPool(t, pool.Config{Upstreams: []string{h.Addr()}, CallTimeout: 200 * time.Millisecond})
	a := newActivation(1, 6, false, false)
	res, err := p.Call(context.Background(), srcA, a.call)
	if !errors.Is(err, pool.ErrTimeout) || res.Retried {
		t.Fatalf("Call = %v (retried %v), want ErrTimeout", err, res.Retried)
	}
	if n := requestsSeen(h); n != 1 {
		t.Errorf("host saw %d requests, want 1: a timeout is never retried", n)
	}
	// A caller's own deadline is a timeout too.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := p.Call(ctx, srcA, a.call); !errors.Is(err, pool.ErrTimeout) {
		t.Errorf("Call with a 100 ms deadline = %v, want ErrTimeout", err)
	}
	if st := p.Stats(); st.Upstreams[0].Timeouts != 2 || st.Retries != 0 || st.Upstreams[0].Open != 0 {
		t.Errorf("stats %+v", st)
	}
	checkHostSaw(t, h)
}

// TestDiedBeforeAnswerRetriedOnce: an association that closes before any
// byte of the answer is replaced and the call sent once more; if that
// one dies too the caller gets ErrClosed, after two sends, not three.
func TestDiedBeforeAnswerRetriedOnce(t *testing.T) {
	for _, tc := range []struct {
		closes  int
		wantErr error
	}{{1, nil}, {2, pool.ErrClosed}} {
		t.Run(fmt.Sprint(tc.closes), func(t *testing.T) {
			h := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub(), fixture.CloseOnFirstRequests(tc.closes))
			p := newPool(t, pool.Config{Upstreams: []string{h.Addr()}})
			a := newActivation(7, 5, false, false)
			res, err := p.Call(context.Background(), srcA, a.call)
			if tc.wantErr == nil && err == nil {
				err = a.checkReply(res)
			}
			if !errors.Is(err, tc.wantErr) || !res.Retried {
				t.Fatalf("Call = %v (retried %v), want %v after a retry", err, res.Retried, tc.wantErr)
			}
			if n := requestsSeen(h); n != 2 || h.Connections() != 2 {
				t.Errorf("host saw %d requests on %d connections, want 2 on 2", n, h.Connections())
			}
			if st := p.Stats(); st.Retries != 1 {
				t.Errorf("stats %+v", st)
			}
			checkHostSaw(t, h)
		})
	}
}

// TestSourceShare: one source with 100 callers queued cannot keep another
// source's call from being served promptly.
func TestSourceShare(t *testing.T) {
	const delay = 50 * time.Millisecond
	h := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub(), fixture.AnswerDelay(delay))
	p := newPool(t, pool.Config{Upstreams: []string{h.Addr()}, MaxAssociations: 1, MaxWaiters: 64, MaxWaitersPerSource: 16})
	var wg sync.WaitGroup
	var busy, served atomic.Int64
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := newActivation(i, 6, false, false)
			res, err := p.Call(context.Background(), srcA, a.call)
			switch {
			case errors.Is(err, pool.ErrBusy):
				busy.Add(1)
			case err != nil:
				t.Errorf("source A call %d: %v", i, err)
			default:
				if err := a.checkReply(res); err != nil {
					t.Error(err)
				}
				served.Add(1)
			}
		}()
	}
	deadline := time.Now().Add(2 * time.Second)
	for p.Stats().Waiting < 16 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if w := p.Stats().Waiting; w != 16 {
		t.Fatalf("%d waiting, want source A's share of 16", w)
	}
	b := newActivation(1000, 6, false, false)
	t0 := time.Now()
	res, err := p.Call(context.Background(), srcB, b.call)
	took := time.Since(t0)
	if err == nil {
		err = b.checkReply(res)
	}
	if err != nil {
		t.Fatalf("source B: %v", err)
	}
	t.Logf("source B answered in %v behind source A's 16 waiters (each call takes %v)", took, delay)
	// Round robin: B goes right after the call in progress, not after A's 16.
	if took > 6*delay {
		t.Errorf("source B waited %v behind source A's queue (each call takes %v)", took, delay)
	}
	aheadOfB := served.Load()
	wg.Wait()
	if busy.Load() < 80 || busy.Load()+served.Load() != 100 || aheadOfB > 2 {
		t.Errorf("source A: %d busy, %d served (%d before B)", busy.Load(), served.Load(), aheadOfB)
	}
	checkHostSaw(t, h)
}

// TestBigEndianOwnAssociation: a big-endian client's call goes on an
// association bound big-endian, never beside little-endian calls, even
// when the one association allowed is idle in the other byte order.
func TestBigEndianOwnAssociation(t *testing.T) {
	h := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub())
	p := newPool(t, pool.Config{Upstreams: []string{h.Addr()}, MaxAssociations: 1})
	for i, big := range []bool{false, true, false, true, true} {
		a := newActivation(i, uint16(4+i%3), i%2 == 0, big)
		res, err := p.Call(context.Background(), srcA, a.call)
		if err == nil {
			err = a.checkReply(res)
		}
		if err != nil {
			t.Fatalf("call %d (big-endian %v): %v", i, big, err)
		}
	}
	n, err := p.Negotiation(context.Background(), srcA, true)
	if err != nil || !n.BigEndian {
		t.Fatalf("Negotiation(big-endian) = %+v, %v", n, err)
	}
	var p0 rpcparse.PDU
	order := map[int]bool{}
	for _, r := range h.Received() {
		if err := p0.Parse(r.Bytes, 0); err != nil {
			t.Fatal(err)
		}
		if prev, ok := order[r.Conn]; ok && prev != p0.BigEndian() {
			t.Errorf("connection %d mixes byte orders", r.Conn)
		}
		order[r.Conn] = p0.BigEndian()
	}
	if h.Connections() != 4 { // LE, BE, LE, BE (the last BE call reuses it)
		t.Errorf("host saw %d connections, want 4", h.Connections())
	}
	checkHostSaw(t, h)
}

// TestNDR64Refused: against a host that rejects NDR64 (py-kms), NDR 2.0
// is accepted in the bind (no alter_context) and an NDR64 call is refused
// by the pool without reaching the host.
func TestNDR64Refused(t *testing.T) {
	h := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub(), fixture.RefuseNDR64())
	p := newPool(t, pool.Config{Upstreams: []string{h.Addr()}})
	n, err := p.Negotiation(context.Background(), srcA, false)
	if err != nil {
		t.Fatal(err)
	}
	if n.AlterSent || !n.Accepts(rpcparse.TransferNDR20) || n.Accepts(rpcparse.TransferNDR64) || n.Bind[1].Result != rpcparse.ResultProviderRejection {
		t.Errorf("negotiation %+v", n)
	}
	a := newActivation(1, 6, false, false)
	if res, err := p.Call(context.Background(), srcA, a.call); err != nil || a.checkReply(res) != nil {
		t.Errorf("NDR 2.0 call: %v", err)
	}
	b := newActivation(2, 6, true, false)
	if _, err := p.Call(context.Background(), srcA, b.call); !errors.Is(err, pool.ErrNoSyntax) {
		t.Errorf("NDR64 call = %v, want ErrNoSyntax", err)
	}
	if requestsSeen(h) != 1 {
		t.Errorf("host saw %d requests, want 1", requestsSeen(h))
	}
	checkHostSaw(t, h)
}

// TestFailover: the first upstream refuses connections; calls go to the
// second, the first is tried again only after DownBackoff.
func TestFailover(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	h := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub())
	dc := &dialCounter{}
	const backoff = 300 * time.Millisecond
	p := newPool(t, pool.Config{Upstreams: []string{dead, h.Addr()}, DownBackoff: backoff, Dial: dc.dial})
	a := newActivation(1, 6, false, false)
	for i := range 5 {
		res, err := p.Call(context.Background(), srcA, a.call)
		if err != nil {
			t.Fatal(err)
		}
		if want := h.Addr() + "#1"; res.Assoc != want {
			t.Errorf("call %d on %s, want %s", i, res.Assoc, want)
		}
	}
	if dc.n.Load() != 2 {
		t.Errorf("%d dials, want 2 (the dead upstream once, the live one once)", dc.n.Load())
	}
	time.Sleep(backoff + 50*time.Millisecond)
	if _, err := p.Call(context.Background(), srcA, a.call); err != nil {
		t.Fatal(err)
	}
	st := p.Stats()
	if st.Upstreams[0].Dials != 2 || st.Upstreams[0].DialFailures != 2 || st.Upstreams[1].Dials != 1 {
		t.Errorf("stats %+v: the first upstream must be tried again after DownBackoff", st)
	}
	checkHostSaw(t, h)
}

// TestIdleAgedOut: an idle association is closed by the pool after
// IdleTimeout, before the host's own timeout.
func TestIdleAgedOut(t *testing.T) {
	h := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub())
	p := newPool(t, pool.Config{Upstreams: []string{h.Addr()}, IdleTimeout: 100 * time.Millisecond})
	a := newActivation(1, 6, false, false)
	if _, err := p.Call(context.Background(), srcA, a.call); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	st := p.Stats().Upstreams[0]
	if st.AgedOut != 1 || st.Open != 0 || st.HostClosed != 0 {
		t.Errorf("stats %+v: want the idle association aged out", st)
	}
	checkHostSaw(t, h)
}

// TestBadCalls: the pool sends RequestActivation only.
func TestBadCalls(t *testing.T) {
	p := newPool(t, pool.Config{Upstreams: []string{"127.0.0.1:1"}})
	for _, c := range []pool.Call{{Opnum: 1, Stub: []byte{0}}, {Stub: make([]byte, pool.DefaultMaxCallBytes+1)}} {
		if _, err := p.Call(context.Background(), srcA, c); !errors.Is(err, pool.ErrBadCall) {
			t.Errorf("Call(opnum %d, %d bytes) = %v, want ErrBadCall", c.Opnum, len(c.Stub), err)
		}
	}
	if st := p.Stats(); st.Dials() != 0 {
		t.Errorf("%d dials for refused calls", st.Dials())
	}
}

// TestCloseEndsEverything: Close fails waiting and in-flight calls and
// leaves no goroutine of the pool behind.
func TestCloseEndsEverything(t *testing.T) {
	h := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub(), fixture.AnswerDelay(2*time.Second))
	p := pool.New(pool.Config{Upstreams: []string{h.Addr()}, MaxAssociations: 2})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := newActivation(i, 6, false, false)
			_, err := p.Call(context.Background(), srcA, a.call)
			errs <- err
		}()
	}
	deadline := time.Now().Add(2 * time.Second)
	for p.Stats().Waiting < 6 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	t0 := time.Now()
	p.Close()
	wg.Wait()
	close(errs)
	if took := time.Since(t0); took > 500*time.Millisecond {
		t.Errorf("Close took %v", took)
	}
	for err := range errs {
		if !errors.Is(err, pool.ErrPoolClosed) {
			t.Errorf("call ended with %v, want ErrPoolClosed", err)
		}
	}
	if _, err := p.Call(context.Background(), srcA, pool.Call{Stub: []byte{0}}); !errors.Is(err, pool.ErrPoolClosed) {
		t.Errorf("Call after Close = %v", err)
	}
	if n, stack := poolGoroutines(); n > 0 {
		t.Errorf("%d goroutines of the pool left after Close:\n%s", n, stack)
	}
}

// TestLazy: New dials nothing and starts nothing; the first Negotiation
// dials once and leaves the association idle for the call that follows.
func TestLazy(t *testing.T) {
	h := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub())
	dc := &dialCounter{}
	p := newPool(t, pool.Config{Upstreams: []string{h.Addr()}, Dial: dc.dial})
	if n, _ := poolGoroutines(); n != 0 || dc.n.Load() != 0 || h.Connections() != 0 {
		t.Fatalf("after New: %d goroutines, %d dials, %d host connections", n, dc.n.Load(), h.Connections())
	}
	for range 3 {
		if _, err := p.Negotiation(context.Background(), srcA, false); err != nil {
			t.Fatal(err)
		}
	}
	a := newActivation(1, 6, true, false)
	if res, err := p.Call(context.Background(), srcA, a.call); err != nil || a.checkReply(res) != nil || res.ContextID != 1 {
		t.Fatalf("call: %v (%+v)", err, res)
	}
	if dc.n.Load() != 1 || h.Connections() != 1 {
		t.Errorf("%d dials, %d host connections; want the one association", dc.n.Load(), h.Connections())
	}
	checkHostSaw(t, h)
}

// TestQueueWaitBounded: a caller waits for an association at most
// QueueTimeout or until its context ends, then gets ErrBusy (or its
// context's error); the association it did not get serves the next one.
func TestQueueWaitBounded(t *testing.T) {
	h := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub(), fixture.AnswerDelay(400*time.Millisecond))
	var waits atomic.Int64
	p := newPool(t, pool.Config{Upstreams: []string{h.Addr()}, MaxAssociations: 1, QueueTimeout: 100 * time.Millisecond,
		OnWait: func(time.Duration) { waits.Add(1) }})
	a := newActivation(1, 6, false, false)
	first := make(chan error, 1)
	go func() {
		res, err := p.Call(context.Background(), srcA, a.call)
		if err == nil {
			err = a.checkReply(res)
		}
		first <- err
	}()
	time.Sleep(50 * time.Millisecond)
	t0 := time.Now()
	if _, err := p.Call(context.Background(), srcB, a.call); !errors.Is(err, pool.ErrBusy) || time.Since(t0) > 300*time.Millisecond {
		t.Errorf("queued call = %v after %v, want ErrBusy after 100 ms", err, time.Since(t0))
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(30 * time.Millisecond); cancel() }()
	if _, err := p.Call(ctx, srcB, a.call); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled call = %v, want context.Canceled", err)
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if res, err := p.Call(context.Background(), srcB, a.call); err != nil || a.checkReply(res) != nil || res.Waited != 0 {
		t.Errorf("next call: %v (%+v)", err, res)
	}
	st := p.Stats()
	if st.Waits != 2 || waits.Load() != 2 || st.MaxWait < 30*time.Millisecond || st.Waiting != 0 || h.Connections() != 1 {
		t.Errorf("stats %+v, %d OnWait calls, %d host connections", st, waits.Load(), h.Connections())
	}
	checkHostSaw(t, h)
}
