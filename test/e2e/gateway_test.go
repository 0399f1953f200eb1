package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
	"github.com/kmsproxy/kmsproxy/test/fixture"
	"github.com/kmsproxy/kmsproxy/test/kmsgen"
)

// The terminating gateway: with upstream_pool on, a KMS client's
// association ends at the proxy and the host sees only the pool's own
// associations.

var gatewayConfig = strings.NewReplacer("connections_per_source: 4",
	"connections_per_source: 128\n  activations_per_minute_per_source: 100000",
	fixture.RelaySide.Config,
	"upstream_pool: { enabled: true, max_associations: 4, max_idle: 4, max_waiters: 256, max_waiters_per_source: 128 }\n").Replace(baseConfig)

// clientCallBase marks the PDUs clients write here: their call ids start
// at it, far above any the pool uses on its own associations, so a host
// PDU carrying one came from a client.
const clientCallBase = 100000

// withCall returns a copy of a little-endian PDU with call id id.
func withCall(pdu []byte, id uint32) []byte {
	out := bytes.Clone(pdu)
	binary.LittleEndian.PutUint32(out[12:16], id)
	return out
}

// sentByClient reports whether the host received a PDU a client wrote.
func sentByClient(host *fixture.Host) bool {
	for _, r := range host.Received() {
		if len(r.Bytes) >= 16 && binary.LittleEndian.Uint32(r.Bytes[12:16]) >= clientCallBase {
			return true
		}
	}
	return false
}

// Every capture through the gateway: the proxy's bind and alter_context
// answers give the host's results, the activation replies are the host's
// bytes, and nothing the client wrote reaches the host.
func TestGatewayCaptures(t *testing.T) {
	caps, err := fixture.AllCaptures()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range caps {
		t.Run(c.Name, func(t *testing.T) {
			host := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub())
			e := startProxy(t, host, strings.ReplaceAll(gatewayConfig, "UPSTREAM", host.Addr()))
			cl := e.Dial(srcDMZ)
			for i, pdu := range c.C2S {
				id := clientCallBase + uint32(i)
				cl.Send(withCall(pdu, id))
				got := cl.MustRecv()
				want := withCall(c.S2C[i], id)
				gp, wp := fixture.Parse(t, got), fixture.Parse(t, want)
				if gp.Type != wp.Type || gp.CallID != wp.CallID {
					t.Fatalf("PDU %d answered %v call %d, the host answered %v call %d", i, gp.Type, gp.CallID, wp.Type, wp.CallID)
				}
				switch wp.Type {
				case rpcparse.PTypeBindAck, rpcparse.PTypeAlterContextResp:
					for j := 0; j < int(wp.BindAck.NumResults); j++ {
						if g, w := gp.BindAck.Result(j), wp.BindAck.Result(j); g.Result != w.Result || g.Reason != w.Reason {
							t.Fatalf("PDU %d result %d: %+v, the host: %+v", i, j, g, w)
						}
					}
				default:
					if !bytes.Equal(got, want) {
						t.Fatalf("PDU %d: the gateway's answer differs from the host's:\n%x\n%x", i, got, want)
					}
				}
			}
			cl.Conn.Close()
			ev := e.WaitEvent("connection-closed", nil)
			if b, _ := ev["destination.bytes"].(float64); b == 0 {
				t.Fatalf("connection-closed counts no bytes from the host side: %v", ev)
			}
			if ev["kmsproxy.pooled"] != true {
				t.Fatalf("connection-closed does not say the session was pooled: %v", ev)
			}
			act := e.WaitEvent("kms-activation", nil)
			if act["kmsproxy.host_association"] == nil || act["kmsproxy.kms_result"] != "success" && c.Name != "error-unknown-kmsid-v6" {
				t.Fatalf("activation event %v", act)
			}
			if sentByClient(e.Host) {
				t.Fatal("the host received a PDU the client wrote")
			}
		})
	}
}

// 64 clients at once through a pool of 4: each answered with the reply to
// its own request (the CMID in the decoded reply), the host at most 4
// connections, never a client's bind.
func TestGateway64Clients(t *testing.T) {
	host := fixture.StartHost(t, fixture.Replay, fixture.AnswerByStub())
	e := startProxy(t, host, strings.ReplaceAll(gatewayConfig, "UPSTREAM", host.Addr()))
	win := mustCapture(t, "win10-v6")
	var reqCtx uint16
	ndr64 := false
	if p := fixture.Parse(t, win.C2S[2]); p.Type == rpcparse.PTypeRequest {
		reqCtx = p.Request.ContextID
		_, err := kms.ParseRequestStub(p.Request.Stub, kms.Encoding{})
		ndr64 = err != nil
	}
	const clients = 64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			req := kmsgen.NewRequest(6)
			req.CMID = rpcparse.MustUUID(fmt.Sprintf("6a6a6a6a-0000-4000-8000-%012x", i))
			stub := kmsgen.RequestStub(kmsgen.EncodeRequest(&req, kmsgen.IV(byte(i))), ndr64)
			conn, err := fixture.DialErr(srcDMZ, e.Addr)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			fr := rpcparse.NewFramer(conn, rpcparse.MaxFragmentLimit)
			var resp []byte
			id := clientCallBase + uint32(10*i)
			for _, pdu := range [][]byte{withCall(win.C2S[0], id), withCall(win.C2S[1], id+1), kmsgen.RequestPDU(id+2, reqCtx, stub)} {
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := conn.Write(pdu); err != nil {
					errs <- err
					return
				}
				b, err := fr.Next()
				if err != nil {
					errs <- fmt.Errorf("client %d: %w", i, err)
					return
				}
				resp = b
			}
			var p rpcparse.PDU
			if err := p.Parse(resp, 0); err != nil || p.Type != rpcparse.PTypeResponse || p.CallID != id+2 {
				errs <- fmt.Errorf("client %d: answered %v call %d (%v)", i, p.Type, p.CallID, err)
				return
			}
			blob, hr, err := kms.ParseResponseStub(p.Response.Stub, kms.Encoding{NDR64: ndr64})
			if err != nil || hr != 0 {
				errs <- fmt.Errorf("client %d: reply stub %v %#x", i, err, hr)
				return
			}
			var r kms.Response
			if err := kms.DecodeResponse(blob, &req, &r); err != nil || !r.CMIDMatch {
				errs <- fmt.Errorf("client %d: reply for CMID %v, not its own (%v)", i, r.CMID, err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := host.Connections(); n > 4 {
		t.Fatalf("the host saw %d connections, more than the pool's 4", n)
	}
	if sentByClient(host) {
		t.Fatal("a client's PDU reached the host")
	}
	// What operators see of it.
	got := map[string]float64{}
	mfs, err := e.Srv.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				if l.GetName() == "state" || l.GetName() == "result" {
					key += "/" + l.GetValue()
				}
			}
			switch {
			case m.GetCounter() != nil:
				got[key] += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				got[key] += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				got[key] += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	if got["kmsproxy_upstream_pool_calls_total"] != clients || got["kmsproxy_upstream_pool_associations/open"] > 4 ||
		got["kmsproxy_upstream_pool_dials_total/ok"] < 1 || got["kmsproxy_upstream_pool_dials_total/ok"] > 4 || got["kmsproxy_upstream_pool_wait_seconds"] == 0 {
		t.Fatalf("pool metrics: calls %v, open %v, dials %v, waits %v", got["kmsproxy_upstream_pool_calls_total"],
			got["kmsproxy_upstream_pool_associations/open"], got["kmsproxy_upstream_pool_dials_total/ok"], got["kmsproxy_upstream_pool_wait_seconds"])
	}
}

// The threat table runs behind the gateway too: TestThreats, in both
// host-side modes.
