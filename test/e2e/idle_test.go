package e2e

import (
	"math"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// A bound client that sends co_cancel (or orphaned) every 500 ms does no
// work, so its association still ends at idle_timeout (2 s here) — through
// the real binary, with nothing but the bind reaching the host (behind the
// gateway: the pool's own bind and alter_context). In both host-side
// modes.
func TestCancelDoesNotHoldAssociation(t *testing.T) { inModes(t, baseConfig, testCancelDoesNotHold) }

func testCancelDoesNotHold(t *testing.T, m fixture.HostSide, cfg string) {
	for _, typ := range []rpcparse.PType{rpcparse.PTypeCoCancel, rpcparse.PTypeOrphaned} {
		t.Run(typ.String(), func(t *testing.T) {
			t.Parallel()
			host := fixture.StartHost(t, fixture.Replay, m.HostOptions()...)
			p := startProcess(t, host, cfg)
			cl := fixture.Dial(t, srcDMZ, p.addr)
			cl.Send(kmsBind())
			if pdu := fixture.Parse(t, cl.MustRecv()); pdu.Type != rpcparse.PTypeBindAck {
				t.Fatalf("bind answered %v", pdu.Type)
			}
			start := time.Now()
			closed := false
			for time.Since(start) < 8*time.Second {
				if cl.SendErr(simplePDU(typ, le, 7, nil, nil)) != nil {
					closed = true
					break
				}
				if _, err := cl.Recv(500 * time.Millisecond); err != nil && !isTimeoutErr(err) {
					closed = true
					break
				}
			}
			if !closed {
				t.Fatalf("%v every 500 ms kept the association open for %v past idle_timeout 2s", typ, time.Since(start))
			}
			ev := waitClosed(t, p)
			if ev["kmsproxy.close_reason"] != "idle-timeout" {
				t.Fatalf("close reason %v, want idle-timeout", ev["kmsproxy.close_reason"])
			}
			if m.Gateway {
				// The binary's readiness check dials the host on its own.
				if err := host.PoolNegotiationOnly(math.MaxInt); err != nil {
					t.Fatal(err)
				}
			} else if got := host.Received(); len(got) != 1 {
				t.Fatalf("host received %d PDUs, want only the bind", len(got))
			}
		})
	}
}

func isTimeoutErr(err error) bool {
	type timeout interface{ Timeout() bool }
	te, ok := err.(timeout)
	return ok && te.Timeout()
}

func waitClosed(t *testing.T, p *proc) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if evs := eventsOf(p.out.String(), "connection-closed"); len(evs) > 0 {
			return evs[0]
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no connection-closed event:\n%s", p.out.String())
	return nil
}
