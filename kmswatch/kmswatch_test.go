package kmswatch

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/kmsproxy/kmsproxy/assoc"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
	"github.com/kmsproxy/kmsproxy/test/kmsgen"
)

// The KMS detectors (kms-duplicate-cmid, kms-clock-skew) run on every
// decoded, allowed activation request: the session hands the decoded
// request to its server's Watch.Observe with the connection's emitter.
// These tests drive Observe with requests from kmsgen, under a loaded
// config, and read the events each connection's emitter logged.

const (
	watchSrcA = "192.0.2.10"
	watchSrcB = "198.51.100.20"
)

var (
	cmidA = rpcparse.MustUUID("0a0a0a0a-0000-4000-8000-00000000000a")
	cmidB = rpcparse.MustUUID("0b0b0b0b-0000-4000-8000-00000000000b")
	cmidC = rpcparse.MustUUID("0c0c0c0c-0000-4000-8000-00000000000c")
)

type watchRig struct {
	t       *testing.T
	w       *Watch
	rt      *config.Runtime
	metrics *event.Metrics
	emit    event.Emitter
	logs    *observer.ObservedLogs
	conn    uint64
}

// newWatchRig loads a config with the given kms_watch block (so the values
// are ones validation accepts) and builds a Watch, as a server does.
func newWatchRig(t *testing.T, kmsWatch string) *watchRig {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kms.yaml")
	yaml := `
upstreams: ["127.0.0.1:11688"]
zones: { dmz: ["192.0.2.0/24"], office: ["198.51.100.0/24"] }
rules:
  - { name: kms-activation, from: [dmz, office], interface: kms, opnums: [0], auth: [none], kms: { versions: [4, 5, 6] }, action: allow }
kms_watch: ` + kmsWatch + "\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := config.NewRuntime(cfg)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	m := event.NewMetrics()
	return &watchRig{t: t, w: New(), rt: rt, metrics: m, emit: event.NewEmitter(zap.New(core), m), logs: logs}
}

// conn is one client connection as a session sees it: its source and an
// emitter holding its fields.
type conn struct {
	src  netip.AddrPort
	emit event.Emitter
}

// session returns a fresh connection from src, logging with the
// connection fields as a running session does.
func (r *watchRig) session(src string) *conn {
	r.conn++
	c := &conn{src: netip.AddrPortFrom(netip.MustParseAddr(src), uint16(49152+r.conn))}
	c.emit = r.emit.With(event.ConnFields(r.conn, c.src, netip.MustParseAddrPort("192.0.2.1:1688"), "dmz")...)
	return c
}

// request is a decodable V6 request stamped now (so the clock check is quiet).
func watchRequest(cmid rpcparse.UUID, workstation string) kms.Request {
	req := kmsgen.NewRequest(6)
	req.CMID = cmid
	if !req.SetWorkstation(workstation) {
		panic("workstation name too long")
	}
	req.ClientTime = kms.TimeToFiletime(time.Now())
	return req
}

// observe runs the detectors on one activation from src.
func (r *watchRig) observe(src string, req kms.Request) {
	c := r.session(src)
	r.w.Observe(c.emit, r.rt.Config.KMSWatch, c.src.Addr(), &req, "kms-activation")
}

func (r *watchRig) activate(src string, cmid rpcparse.UUID, workstation string) {
	r.observe(src, watchRequest(cmid, workstation))
}

func (r *watchRig) events(action string) []observer.LoggedEntry {
	return r.logs.FilterMessage(action).All()
}

// expectDuplicates asserts how many kms-duplicate-cmid events there are in
// all, and returns the fields of the last one.
func (r *watchRig) expectDuplicates(n int) map[string]any {
	r.t.Helper()
	evs := r.events(event.ActionKMSDuplicateCMID)
	if len(evs) != n {
		r.t.Fatalf("%d kms-duplicate-cmid events, want %d: %v", len(evs), n, evs)
	}
	if got := decisionCount(r.t, r.metrics, event.ActionKMSDuplicateCMID, "duplicate-cmid"); got != float64(n) {
		r.t.Fatalf("kmsproxy_decisions_total{action=kms-duplicate-cmid} = %v, want %d", got, n)
	}
	if n == 0 {
		return nil
	}
	return evs[n-1].ContextMap()
}

// age makes the watch's record of cmid d older, as if it had been seen d
// earlier: Observe reads time.Now itself, so this is how a test moves past
// duplicate_window without waiting for it.
func (r *watchRig) age(cmid rpcparse.UUID, d time.Duration) {
	r.t.Helper()
	w := r.w
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.byID[cmid]
	if !ok {
		r.t.Fatalf("CMID %v is not tracked", cmid)
	}
	e.Value.(*cmidSeen).seen = e.Value.(*cmidSeen).seen.Add(-d)
}

func (r *watchRig) tracked(cmid rpcparse.UUID) bool {
	w := r.w
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.byID[cmid]
	return ok
}

// checkBound asserts the watch holds at most max CMIDs and that its map
// and its recency list agree.
func (r *watchRig) checkBound(max int) {
	r.t.Helper()
	w := r.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.byID) != w.order.Len() || w.order.Len() > max {
		r.t.Fatalf("watch holds %d ids in the map and %d in the list, max_tracked %d", len(w.byID), w.order.Len(), max)
	}
	for e := w.order.Front(); e != nil; e = e.Next() {
		if w.byID[e.Value.(*cmidSeen).cmid] != e {
			r.t.Fatalf("list entry %v is not the map's", e.Value.(*cmidSeen).cmid)
		}
	}
}

func decisionCount(t *testing.T, m *event.Metrics, action, reason string) float64 {
	t.Helper()
	var out dto.Metric
	if err := m.Decisions.WithLabelValues(action, reason).Write(&out); err != nil {
		t.Fatal(err)
	}
	return out.GetCounter().GetValue()
}

// The same CMID from the same source address but under another
// workstation name is a clone (or a renamed image) and raises the alert;
// the same machine activating again does not.
func TestKMSWatchDuplicateSameSourceOtherWorkstation(t *testing.T) {
	r := newWatchRig(t, "{ duplicate_window: 1h, max_clock_skew: 4h, max_tracked: 100 }")
	r.activate(watchSrcA, cmidA, "dmz-ws01.corp.example")
	r.activate(watchSrcA, cmidA, "dmz-ws01.corp.example") // renewal of the same machine
	r.activate(watchSrcA, cmidB, "dmz-ws02.corp.example") // another machine, same source
	r.expectDuplicates(0)

	r.activate(watchSrcA, cmidA, "dmz-ws77.corp.example")
	ev := r.expectDuplicates(1)
	for k, want := range map[string]any{
		"event.action":                  event.ActionKMSDuplicateCMID,
		"event.kind":                    "alert",
		"event.reason":                  "duplicate-cmid",
		"rule.name":                     "kms-activation",
		"source.ip":                     watchSrcA,
		"kms.client_machine_id":         cmidA.String(),
		"kms.workstation":               "dmz-ws77.corp.example",
		"kmsproxy.previous.source_ip":   watchSrcA,
		"kmsproxy.previous.workstation": "dmz-ws01.corp.example",
	} {
		if ev[k] != want {
			t.Errorf("%s = %v, want %v", k, ev[k], want)
		}
	}
	if prev, ok := ev["kmsproxy.previous.seen"].(time.Time); !ok || time.Since(prev) > time.Minute {
		t.Errorf("kmsproxy.previous.seen = %v", ev["kmsproxy.previous.seen"])
	}
	if lvl := r.events(event.ActionKMSDuplicateCMID)[0].Level; lvl != zapcore.WarnLevel {
		t.Errorf("duplicate logged at %v, want warn", lvl)
	}

	// The record now says ws77: ws77 again is quiet, ws01 again is another
	// duplicate, naming ws77 as the previous one.
	r.activate(watchSrcA, cmidA, "dmz-ws77.corp.example")
	r.expectDuplicates(1)
	r.activate(watchSrcA, cmidA, "dmz-ws01.corp.example")
	if ev := r.expectDuplicates(2); ev["kmsproxy.previous.workstation"] != "dmz-ws77.corp.example" {
		t.Errorf("previous workstation %v, want dmz-ws77.corp.example", ev["kmsproxy.previous.workstation"])
	}
}

// The same CMID from another source is a duplicate only within
// duplicate_window of the previous sighting.
func TestKMSWatchDuplicateWindow(t *testing.T) {
	t.Run("just-inside", func(t *testing.T) {
		r := newWatchRig(t, "{ duplicate_window: 1h, max_clock_skew: 4h, max_tracked: 100 }")
		r.activate(watchSrcA, cmidA, "ws01")
		r.age(cmidA, time.Hour-time.Minute)
		r.activate(watchSrcB, cmidA, "ws01")
		if ev := r.expectDuplicates(1); ev["kmsproxy.previous.source_ip"] != watchSrcA || ev["source.ip"] != watchSrcB {
			t.Fatalf("duplicate event %v", ev)
		}
	})
	t.Run("past", func(t *testing.T) {
		r := newWatchRig(t, "{ duplicate_window: 1h, max_clock_skew: 4h, max_tracked: 100 }")
		r.activate(watchSrcA, cmidA, "ws01")
		r.age(cmidA, time.Hour+time.Second)
		r.activate(watchSrcB, cmidA, "ws02") // another source and name: still quiet
		r.expectDuplicates(0)
		// The late sighting replaced the record and restarted the window:
		// the first source straight after it is a duplicate of source B.
		r.activate(watchSrcA, cmidA, "ws01")
		if ev := r.expectDuplicates(1); ev["kmsproxy.previous.source_ip"] != watchSrcB || ev["kmsproxy.previous.workstation"] != "ws02" {
			t.Fatalf("duplicate event %v, want previous source %s ws02", ev, watchSrcB)
		}
	})
	t.Run("real-clock", func(t *testing.T) {
		// The same, with time actually passing on the clock observe reads.
		// Long enough that two back-to-back calls fall inside it on a busy machine.
		const window = 500 * time.Millisecond
		r := newWatchRig(t, fmt.Sprintf("{ duplicate_window: %v, max_clock_skew: 4h, max_tracked: 100 }", window))
		if got := r.rt.Config.KMSWatch.DuplicateWindow; got != window {
			t.Fatalf("duplicate_window loaded as %v", got)
		}
		r.activate(watchSrcA, cmidA, "ws01")
		r.activate(watchSrcB, cmidA, "ws01") // well inside the window
		r.expectDuplicates(1)
		time.Sleep(window + 100*time.Millisecond)
		r.activate(watchSrcA, cmidA, "ws01")
		r.expectDuplicates(1)
	})
}

// max_tracked bounds the watch; past it the least recently seen CMID is
// forgotten, so seeing it again from elsewhere is not a duplicate, while a
// CMID still tracked is.
func TestKMSWatchEvictsOldest(t *testing.T) {
	r := newWatchRig(t, "{ duplicate_window: 1h, max_clock_skew: 4h, max_tracked: 2 }")
	r.activate(watchSrcA, cmidA, "ws-a")
	r.activate(watchSrcA, cmidB, "ws-b")
	r.checkBound(2)
	r.activate(watchSrcA, cmidC, "ws-c") // A, the oldest, is evicted
	r.checkBound(2)
	if r.tracked(cmidA) || !r.tracked(cmidB) || !r.tracked(cmidC) {
		t.Fatalf("tracked A %v B %v C %v, want B and C", r.tracked(cmidA), r.tracked(cmidB), r.tracked(cmidC))
	}

	r.activate(watchSrcB, cmidA, "ws-a") // evicted: no memory of source A
	r.expectDuplicates(0)
	r.checkBound(2) // A is back, B (now the oldest) went

	r.activate(watchSrcB, cmidC, "ws-c") // still tracked from source A
	ev := r.expectDuplicates(1)
	if ev["kms.client_machine_id"] != cmidC.String() || ev["kmsproxy.previous.source_ip"] != watchSrcA {
		t.Fatalf("duplicate event %v, want CMID C previously from %s", ev, watchSrcA)
	}

	r.activate(watchSrcB, cmidB, "ws-b") // B was evicted when A came back
	r.expectDuplicates(1)
	r.checkBound(2)
}

// "Oldest" is by last sighting: a CMID seen again moves to the front and
// survives, the one not seen since goes.
func TestKMSWatchEvictsLeastRecentlySeen(t *testing.T) {
	r := newWatchRig(t, "{ duplicate_window: 1h, max_clock_skew: 4h, max_tracked: 2 }")
	r.activate(watchSrcA, cmidA, "ws-a")
	r.activate(watchSrcA, cmidB, "ws-b")
	r.activate(watchSrcA, cmidA, "ws-a") // renewal: A is now the most recent
	r.activate(watchSrcA, cmidC, "ws-c") // evicts B, not A
	r.checkBound(2)
	r.expectDuplicates(0)

	r.activate(watchSrcB, cmidB, "ws-b")
	r.expectDuplicates(0)
	r.activate(watchSrcB, cmidC, "ws-c") // C survived B's return (A went instead)
	r.expectDuplicates(1)
}

// Many distinct CMIDs never grow the watch past max_tracked.
func TestKMSWatchBounded(t *testing.T) {
	const max = 16
	r := newWatchRig(t, fmt.Sprintf("{ duplicate_window: 1h, max_clock_skew: 4h, max_tracked: %d }", max))
	var last rpcparse.UUID
	for i := 0; i < 10*max; i++ {
		last = rpcparse.MustUUID(fmt.Sprintf("%08x-0000-4000-8000-000000000000", i+1))
		r.activate(watchSrcA, last, "ws")
	}
	r.checkBound(max)
	if n := r.w.order.Len(); n != max {
		t.Fatalf("watch holds %d CMIDs after %d distinct ones, want %d", n, 10*max, max)
	}
	r.activate(watchSrcB, last, "ws")
	r.expectDuplicates(1)
}

// A client clock off by more than max_clock_skew either way raises
// kms-clock-skew with the signed difference (proxy time minus client time).
func TestKMSWatchClockSkew(t *testing.T) {
	r := newWatchRig(t, "{ duplicate_window: 1h, max_clock_skew: 4h, max_tracked: 100 }")
	for i, tc := range []struct {
		offset time.Duration
		flag   bool
	}{
		{0, false},
		{3*time.Hour + 59*time.Minute, false},
		{-(3*time.Hour + 59*time.Minute), false},
		{5 * time.Hour, true},
		{-5 * time.Hour, true},
	} {
		before := len(r.events(event.ActionKMSClockSkew))
		req := watchRequest(rpcparse.MustUUID(fmt.Sprintf("5c5c5c5c-0000-4000-8000-%012x", i)), "ws")
		req.ClientTime = kms.TimeToFiletime(time.Now().Add(tc.offset))
		r.observe(watchSrcA, req)
		evs := r.events(event.ActionKMSClockSkew)
		if got := len(evs) - before; (got == 1) != tc.flag || got > 1 {
			t.Fatalf("client clock %v off: %d clock-skew events", tc.offset, got)
		}
		if !tc.flag {
			continue
		}
		ev := evs[len(evs)-1].ContextMap()
		skew, _ := ev["kms.clock_skew"].(time.Duration)
		if d := skew + tc.offset; d < -time.Minute || d > time.Minute {
			t.Errorf("client %v off: kms.clock_skew = %v, want about %v", tc.offset, ev["kms.clock_skew"], -tc.offset)
		}
		if ev["event.kind"] != "alert" || ev["event.reason"] != "clock-skew" || ev["kms.client_machine_id"] != req.CMID.String() {
			t.Errorf("clock-skew event %v", ev)
		}
	}
	if got := decisionCount(t, r.metrics, event.ActionKMSClockSkew, "clock-skew"); got != 2 {
		t.Errorf("kmsproxy_decisions_total{action=kms-clock-skew} = %v, want 2", got)
	}
	r.expectDuplicates(0)
}

// Through the association: a request that arrives as NDR stub bytes is
// decoded and allowed by assoc, then observed as the session does; the
// workstation the detector compares is the one from the wire.
func TestKMSWatchThroughAssociation(t *testing.T) {
	r := newWatchRig(t, "{ duplicate_window: 1h, max_clock_skew: 4h, max_tracked: 100 }")
	le := rpcparse.LittleEndianDataRep
	env := &assoc.Env{Policy: r.rt.Policy, MaxCallBytes: 65536, Src: netip.MustParseAddr(watchSrcA)}
	for i, ws := range []string{"dmz-ws01.corp.example", "dmz-ws01.corp.example", "dmz-ws02.corp.example"} {
		s := r.session(watchSrcA)
		a := assoc.New(nil)
		var p rpcparse.PDU
		step := func(b []byte, host bool) assoc.Step {
			t.Helper()
			if err := p.Parse(b, 0); err != nil {
				t.Fatal(err)
			}
			if host {
				return a.Host(env, &p)
			}
			return a.Client(env, &p, b)
		}
		bind := rpcparse.AppendBind(nil, rpcparse.PDUHead{Type: rpcparse.PTypeBind, Flags: 3, DataRep: le, CallID: 1},
			rpcparse.BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Contexts: []rpcparse.ContextSpec{{
				Abstract: rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: 1}, Transfers: []rpcparse.SyntaxID{{UUID: rpcparse.NDR20UUID, Major: 2}}}}}, nil)
		if st := step(bind, false); st.Verdict != assoc.Forward {
			t.Fatalf("bind: %+v", st)
		}
		ack := rpcparse.AppendBindAck(nil, rpcparse.PDUHead{Type: rpcparse.PTypeBindAck, Flags: 3, DataRep: le, CallID: 1},
			rpcparse.BindAckSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Results: []rpcparse.Result{{Result: rpcparse.ResultAcceptance, Transfer: rpcparse.SyntaxID{UUID: rpcparse.NDR20UUID, Major: 2}}}})
		if st := step(ack, true); st.Verdict != assoc.Relay {
			t.Fatalf("bind_ack: %+v", st)
		}
		req := watchRequest(cmidA, ws)
		stub := kmsgen.RequestStub(kmsgen.EncodeRequest(&req, kmsgen.IV(byte(i))), false)
		st := step(kmsgen.RequestPDU(uint32(i+2), 0, stub), false)
		if st.Verdict != assoc.Forward || st.Call == nil || st.Call.KMS == nil || st.Call.KMS.DecodeErr != nil {
			t.Fatalf("activation %d: %+v", i, st)
		}
		if got := st.Call.KMS.Req.Workstation(); got != ws {
			t.Fatalf("activation %d decoded workstation %q", i, got)
		}
		r.w.Observe(s.emit, r.rt.Config.KMSWatch, s.src.Addr(), &st.Call.KMS.Req, st.Call.Rule.Rule) // as the session does
	}
	ev := r.expectDuplicates(1)
	if ev["kms.workstation"] != "dmz-ws02.corp.example" || ev["kmsproxy.previous.workstation"] != "dmz-ws01.corp.example" {
		t.Fatalf("duplicate event %v", ev)
	}
}
