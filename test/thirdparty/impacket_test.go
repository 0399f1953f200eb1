package thirdparty

import (
	"strings"
	"testing"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// Interface UUIDs as the proxy logs them (dcerpc.interface.uuid).
const (
	uuidSAMR   = "12345778-1234-abcd-ef00-0123456789ac"
	uuidLSARPC = "12345778-1234-abcd-ef00-0123456789ab"
	uuidEPM    = "e1af8308-5d1f-11c9-91a4-08002b14a0fa"
	uuidMGMT   = "afa8bd80-7d8a-11c9-bef4-08002b102989"
	uuidKMS    = "51c82175-844e-4750-b0d8-ec255555bc06"
	uuidSRVSVC = "4b324fc8-1670-01d3-1278-5a47bf6ee188"
)

// TestImpacketBindRefused binds SAMR, LSARPC and EPM with impacket over
// ncacn_ip_tcp to the proxy, with no auth and as an NTLM NULL session, and
// KMS as an NTLM NULL session. Each must end in impacket's bind_nak error,
// with a bind-refused event carrying a reason, and nothing at the host:
// no PDU and not even a TCP connection. In both host-side modes.
func TestImpacketBindRefused(t *testing.T) {
	requireImpacket(t)
	cases := []struct {
		iface, auth, uuid string
		wantErr           string // impacket's message for the bind_nak
		wantReason        string // event.reason; "" = any non-empty
	}{
		{"samr", "none", uuidSAMR, "Bind context rejected: reason_not_specified", "interface-not-allowed"},
		{"lsarpc", "none", uuidLSARPC, "Bind context rejected: reason_not_specified", "interface-not-allowed"},
		{"epm", "none", uuidEPM, "Bind context rejected: reason_not_specified", "interface-not-allowed"},
		{"samr", "null", uuidSAMR, "Bind context rejected", ""},
		{"lsarpc", "null", uuidLSARPC, "Bind context rejected", ""},
		{"epm", "null", uuidEPM, "Bind context rejected", ""},
		// bind_nak reason 8; impacket words it as an RPC status.
		{"kms", "null", uuidKMS, "Authentication type not recognized", "auth-not-allowed"},
	}
	inModes(t, func(t *testing.T, m fixture.HostSide) {
		for _, c := range cases {
			t.Run(c.iface+"/"+c.auth, func(t *testing.T) {
				t.Parallel()
				env := startEnv(t, m)
				o := impacketBind(t, env.Addr, c.iface, c.auth)
				if o.Result != "refused" {
					t.Fatalf("impacket bind %s (auth %s): %q; want refused\nproxy events:\n%s", c.iface, c.auth, o.Result, env.Log.String())
				}
				if o.ErrorType != "DCERPCException" || !strings.Contains(o.Error, c.wantErr) {
					t.Errorf("impacket error %s: %q; want a DCERPCException containing %q (the bind_nak)", o.ErrorType, o.Error, c.wantErr)
				}
				evs := refusals(t, env, 1)
				if len(evs) != 1 {
					t.Errorf("%d bind-refused events; want 1", len(evs))
				}
				ev := evs[0]
				if ev["dcerpc.interface.uuid"] != c.uuid {
					t.Errorf("bind-refused interface %v; want %s", ev["dcerpc.interface.uuid"], c.uuid)
				}
				if c.wantReason != "" && ev["event.reason"] != c.wantReason {
					t.Errorf("bind-refused reason %v; want %s", ev["event.reason"], c.wantReason)
				}
				if c.auth == "null" && ev["dcerpc.auth.type"] != "ntlm" {
					t.Errorf("bind-refused dcerpc.auth.type %v; want ntlm (the NULL session's NTLMSSP negotiate)", ev["dcerpc.auth.type"])
				}
				if n := len(env.Events("bind-allowed")); n != 0 {
					t.Errorf("%d bind-allowed events; want 0", n)
				}
				assertNothingAtHost(t, env)
			})
		}
	})
}

// TestImpacketKMSBindAccepted is the positive control: the same script, the
// same proxy config, binding KMS with no auth gets a bind_ack from the host
// through the proxy. So the refusals above are the policy at work, not a
// broken tool, script or setup. In both host-side modes: behind the
// gateway the bind_ack is the proxy's, and the host sees only the pool's
// own bind and alter_context.
func TestImpacketKMSBindAccepted(t *testing.T) {
	requireImpacket(t)
	t.Parallel()
	inModes(t, testImpacketKMSBindAccepted)
}

func testImpacketKMSBindAccepted(t *testing.T, m fixture.HostSide) {
	env := startEnv(t, m)
	o := impacketBind(t, env.Addr, "kms", "none")
	if o.Result != "bind_ack" {
		t.Fatalf("impacket KMS bind: %+v; want bind_ack\nproxy events:\n%s", o, env.Log.String())
	}
	env.WaitEvent("bind-allowed", map[string]any{"dcerpc.interface.uuid": uuidKMS, "rule.name": "dmz-activation"})
	settle()
	if m.Gateway {
		assertOnlyKMSBinds(t, m, env, 1)
	} else {
		got := env.Host.Received()
		if len(got) != 1 || env.Host.Connections() != 1 {
			t.Fatalf("host got %d PDUs on %d connections; want the one bind on one", len(got), env.Host.Connections())
		}
		p := fixture.Parse(t, got[0].Bytes)
		if p.Type != rpcparse.PTypeBind {
			t.Errorf("host received a %v; want the bind", p.Type)
		}
		if !strings.Contains(hexString(got[0].Bytes), "7521c8514e845047b0d8ec255555bc06") {
			t.Errorf("the bind the host received does not name the KMS interface: %x", got[0].Bytes)
		}
	}
	if n := len(env.Events("bind-refused")); n != 0 {
		t.Errorf("%d bind-refused events; want 0", n)
	}
}
