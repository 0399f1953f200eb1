package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/capture"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/replay"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// The differential test holds the live proxy and `kmsproxy replay` to one
// another: every stream is played through the real proxy (loopback, the
// recording host) and, as the capture a tap would have taken of it, through
// replay; per PDU they must agree on what reached the host and on which PDU
// was refused or violated, for what reason.

// diffConfig is the e2e policy with rate and connection limits out of the
// way: replay does not model them (they are timing, not protocol). It runs
// in relay mode, explicitly: replay models the client-side association,
// which is the same in both host-side modes, and per PDU compares what it
// forwards with what reached the host, which only relay mode sends on as
// the client wrote it (behind the gateway the host sees the pool's own
// PDUs; TestThreats, TestHoles and the mutation test hold that mode).
var diffConfig = fixture.RelaySide.Apply(strings.NewReplacer(
	"connections_per_source: 4", "connections_per_source: 4096\n  activations_per_minute_per_source: 1000000\n  connections: 8192",
).Replace(baseConfig))

// diffStream is one client byte stream (PDUs in order; a stream may end in
// bytes that do not frame).
type diffStream struct {
	name  string
	bytes []byte
	// pipelined sends the client's PDUs before any host answer in the
	// capture given to replay (a client that does not wait).
	pipelined bool
}

// liveRun is what the live proxy did with one stream.
type liveRun struct {
	hostGot  []fixture.Record // on this stream's host connection(s)
	refusals []map[string]any // failure events of this connection (not connection-closed)
}

func runLive(t *testing.T, e *env, s diffStream) liveRun {
	t.Helper()
	before := e.Host.Connections()
	beforeRecs := len(e.Host.Received())
	// Every earlier stream's events were written before its
	// connection-closed, which runLive waited for: this stream's events
	// are the ones after these. (Source ports are reused, so a port alone
	// does not tell connections apart.)
	beforeEvents := len(e.Events(""))
	cl := e.Dial(srcDMZ)
	local := cl.Conn.LocalAddr().String()
	cl.SendErr(s.bytes)
	// The proxy ends the connection (refusal, violation) or the client
	// half-closes after its last PDU; wait for connection-closed.
	cl.Conn.(interface{ CloseWrite() error }).CloseWrite()
	readUntilClosed(t, cl.Conn, 5*time.Second)
	port := float64(cl.Conn.LocalAddr().(interface{ AddrPort() netip.AddrPort }).AddrPort().Port())
	var closed map[string]any
	deadline := time.Now().Add(5 * time.Second)
	for closed == nil && time.Now().Before(deadline) {
		for _, ev := range e.Events("")[beforeEvents:] {
			if ev["event.action"] == "connection-closed" && ev["source.port"] == port {
				closed = ev
			}
		}
		if closed == nil {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if closed == nil {
		t.Fatalf("%s: no connection-closed for %s", s.name, local)
	}
	var r liveRun
	for _, ev := range e.Events("")[beforeEvents:] {
		if ev["source.port"] == port && refusalActions[fmt.Sprint(ev["event.action"])] {
			r.refusals = append(r.refusals, ev)
		}
	}
	recs := e.Host.Received()[beforeRecs:]
	for _, rec := range recs {
		if rec.Conn >= before {
			r.hostGot = append(r.hostGot, rec)
		}
	}
	return r
}

// framePDUs cuts a client stream into records as a tap would see them.
func framePDUs(stream []byte, maxFrag int) [][]byte {
	var out [][]byte
	for off := 0; off < len(stream); {
		n, err := rpcparse.Split(stream[off:], maxFrag)
		if err != nil || n == 0 {
			return append(out, stream[off:]) // the tail that does not frame
		}
		out = append(out, stream[off:off+n])
		off += n
	}
	return out
}

// captureOf is the capture of a live run: the client's PDUs, each
// followed by the host's answer when the host received it (or, pipelined,
// every answer after the client's last PDU).
func captureOf(s diffStream, live liveRun, maxFrag int) []capture.Record {
	cli := netip.MustParseAddrPort(srcDMZ + ":50000")
	srv := netip.MustParseAddrPort("127.0.0.1:1688")
	var recs []capture.Record
	add := func(dir capture.Direction, b []byte) {
		r := capture.Record{Stream: 0, Direction: dir, Line: len(recs) + 1, Bytes: b, Src: cli, Dst: srv}
		if dir == capture.ServerToClient {
			r.Src, r.Dst = srv, cli
		}
		if _, err := rpcparse.Split(b, maxFrag); err != nil {
			r.Bytes, r.Err = nil, err
		} else if n, _ := rpcparse.Split(b, maxFrag); n == 0 {
			r.Bytes, r.Err = nil, fmt.Errorf("%d bytes after the last whole PDU: %w", len(b), errTruncated)
		}
		recs = append(recs, r)
	}
	got := live.hostGot
	var late [][]byte
	for _, pdu := range framePDUs(s.bytes, maxFrag) {
		add(capture.ClientToServer, pdu)
		if len(got) > 0 && bytes.Equal(got[0].Bytes, pdu) {
			if got[0].Reply != nil {
				if s.pipelined {
					late = append(late, got[0].Reply)
				} else {
					add(capture.ServerToClient, got[0].Reply)
				}
			}
			got = got[1:]
		}
	}
	for _, b := range late {
		add(capture.ServerToClient, b)
	}
	return recs
}

var errTruncated = errors.New("truncated")

// refusalActions are the events of a proxy decision that stopped a
// connection (a host that refused an activation is not one).
var refusalActions = map[string]bool{"bind-refused": true, "request-refused": true, "rate-limited": true, "protocol-violation": true, "upstream-unavailable": true}

// expectedForward is what replay's decisions say reaches the host: allowed
// client PDUs, a held fragment only once its call was forwarded whole.
func expectedForward(ds []*replay.Decision, recs []capture.Record) [][]byte {
	var out, held [][]byte
	var heldCall uint32
	for _, d := range ds {
		if d.Direction != "c2s" {
			continue
		}
		b := recs[d.Line-1].Bytes // decisions come in the order replay plays records
		switch {
		case d.Verdict != replay.VerdictAllow:
			return out
		case d.Stage == string(replay.StageCancel):
			if d.CallID != nil && *d.CallID == heldCall {
				held = nil
			}
		case d.Reason == "fragment-held":
			held, heldCall = append(held, b), *d.CallID
		default:
			out = append(append(out, held...), b)
			held = nil
		}
	}
	return out
}

func runReplay(t *testing.T, cfg *config.Config, recs []capture.Record) []*replay.Decision {
	t.Helper()
	var ds []*replay.Decision
	if _, err := replay.Run(recs, cfg, replay.Options{}, func(d *replay.Decision) error {
		ds = append(ds, d)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ds
}

// compare checks one stream and returns the number of PDUs compared.
func compareRun(t *testing.T, s diffStream, live liveRun, recs []capture.Record, ds []*replay.Decision) int {
	t.Helper()
	want := expectedForward(ds, recs)
	if len(want) != len(live.hostGot) {
		t.Errorf("%s: replay forwards %d PDUs, the live host received %d\n%s", s.name, len(want), len(live.hostGot), explain(ds))
		return len(ds)
	}
	for i := range want {
		if !bytes.Equal(want[i], live.hostGot[i].Bytes) {
			t.Errorf("%s: forwarded PDU %d differs\n%s", s.name, i, explain(ds))
		}
	}
	var stop *replay.Decision
	for _, d := range ds {
		if d.Verdict == replay.VerdictDeny || d.Verdict == replay.VerdictViolation {
			stop = d
			break
		}
	}
	switch {
	case stop == nil && len(live.refusals) > 0:
		t.Errorf("%s: replay refuses nothing, the proxy logged %v/%v\n%s", s.name, live.refusals[0]["event.action"], live.refusals[0]["event.reason"], explain(ds))
	case stop != nil && len(live.refusals) == 0:
		t.Errorf("%s: replay says %s %s at %s, the proxy refused nothing\n%s", s.name, stop.Verdict, stop.Reason, stop.PType, explain(ds))
	case stop != nil:
		ev := live.refusals[0]
		violation := ev["event.action"] == "protocol-violation"
		if ev["event.reason"] != stop.Reason || violation != (stop.Verdict == replay.VerdictViolation) {
			t.Errorf("%s: replay says %s %s at %s, the proxy logged %v %v\n%s", s.name, stop.Verdict, stop.Reason, stop.PType, ev["event.action"], ev["event.reason"], explain(ds))
		}
	}
	return len(ds)
}

func explain(ds []*replay.Decision) string {
	var b strings.Builder
	for _, d := range ds {
		fmt.Fprintf(&b, "    %s %-22s %-9s %-9s %s\n", d.Direction, d.PType, d.Verdict, d.Stage, d.Reason)
	}
	return b.String()
}

// diffStreams is every stream the differential test plays: the threat and
// hole tables, the captures, the drift rows of issue 12, mutated streams.
func diffStreams(t *testing.T) []diffStream {
	var out []diffStream
	join := func(name string, pre, send [][]byte) {
		out = append(out, diffStream{name: name, bytes: bytes.Join(append(append([][]byte(nil), pre...), send...), nil)})
	}
	for _, th := range threats(t) {
		var pre [][]byte
		if th.prefix != nil {
			pre = [][]byte{th.prefix}
		}
		join("threat "+th.name, pre, th.send)
	}
	for _, h := range holes(t) {
		join("hole "+h.name, h.prefix, h.send)
	}
	caps, err := fixture.AllCaptures()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range caps {
		join("capture "+c.Name, nil, c.C2S)
	}
	// The drift rows: replay once allowed the first two and called the
	// third a violation, against what the proxy did.
	join("first fragment and 1000 empty fragments", [][]byte{kmsBind()}, emptyFragments(1000))
	var alters [][]byte
	for i := 0; i < 20; i++ {
		var ctxs []rpcparse.ContextSpec
		for j := 0; j < 8; j++ {
			ctxs = append(ctxs, ctx(uint16(1+i*8+j), kmsIface))
		}
		alters = append(alters, bindPDU(le, rpcparse.PTypeAlterContext, uint32(3+i), nil, ctxs...))
	}
	join("20 alter_contexts of 8 KMS contexts", [][]byte{kmsBind()}, alters)
	win := caps[len(caps)-1]
	for _, c := range caps {
		if c.Name == "win10-v6" {
			win = c
		}
	}
	out = append(out, diffStream{name: "the same call id twice before the response", pipelined: true,
		bytes: bytes.Join([][]byte{win.C2S[0], win.C2S[1], win.C2S[2], win.C2S[2]}, nil)})

	var seeds [][]byte
	for _, c := range caps {
		seeds = append(seeds, bytes.Join(c.C2S, nil))
	}
	seeds = append(seeds,
		append(kmsBind(), requestPDU(3, whole, 0, 1, make([]byte, 16))...),
		append(kmsBind(), requestPDU(3, first, 0, 0, make([]byte, 100))...),
	)
	rng := rand.New(rand.NewPCG(12, 0x51c82175))
	for n := 0; n < 300; n++ {
		out = append(out, diffStream{name: fmt.Sprintf("mutated stream %d", n), bytes: mutate(rng, seeds)})
	}
	return out
}

func TestReplayAgreesWithProxy(t *testing.T) {
	e := startEnv(t, fixture.Replay, diffConfig)
	path := filepath.Join(t.TempDir(), "kmsproxy.yaml")
	os.WriteFile(path, []byte(strings.ReplaceAll(diffConfig, "UPSTREAM", e.Host.Addr())), 0o600)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	streams, pdus := 0, 0
	for _, s := range diffStreams(t) {
		live := runLive(t, e, s)
		recs := captureOf(s, live, cfg.Limits.MaxFragment)
		pdus += compareRun(t, s, live, recs, runReplay(t, cfg, recs))
		streams++
	}
	t.Logf("differential: %d streams, %d PDUs compared between the live proxy and replay", streams, pdus)
	fmt.Printf("differential: %d streams, %d PDUs compared between the live proxy and replay\n", streams, pdus)
}
