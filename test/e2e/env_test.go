package e2e

import (
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// Sources used as distinct clients on loopback.
const (
	srcDMZ     = "127.0.0.2" // zone dmz: KMS allowed
	srcOffice  = "127.0.0.3" // zone office-only
	srcNowhere = "127.0.0.9" // in no zone
)

// baseConfig is the policy most tests run under. UPSTREAM is replaced by
// the fixture host's address.
//
// It runs the host side in relay mode (upstream_pool.enabled: false, one
// relayed host association per client), not the default gateway: most
// tests here assert relay facts — the host received the client's PDUs
// byte for byte, so many PDUs or connections per client, the host's own
// answers byte for byte, scripted hosts misbehaving on the relayed
// association, upstream dials. Tests whose point is that nothing
// disallowed reaches the host run in both modes (inModes: the threat and
// holes tables, the mutation test, big-endian clients, the KMS checks,
// zones, reloads, rate and flood limits, store and forward, cancels,
// parked sessions, the process's reload, drain and shutdown), their host
// assertions per mode; gateway_test.go and gateway_failure_test.go run
// the gateway.
const baseConfig = `
listen: "127.0.0.1:1688" # tests bind their own listener
upstreams: ["UPSTREAM"]
zones:
  dmz: ["127.0.0.2/32", "127.0.0.5/32", "127.0.0.6/32"]
  office-only: ["127.0.0.3/32"]
rules:
  - name: dmz-activation
    from: [dmz]
    interface: kms
    opnums: [0]
    auth: [none]
    kms:
      versions: [4, 5, 6]
      reject_malformed: true
    action: allow
  - name: office-activation
    from: [office-only]
    interface: kms
    opnums: [0]
    auth: [none]
    kms:
      applications: [office2013]
    action: allow
on_deny: reject
limits:
  max_call_bytes: 8192
  connections_per_source: 4
  handshake_timeout: 2s
  idle_timeout: 2s
  upstream_connect_timeout: 1s
management: { listen: "127.0.0.1:0" }
upstream_pool: { enabled: false }
`

// detailLog, appended to a config, logs the allowed path in detail
// (connection-accepted, bind-allowed): for the tests that assert those
// events, present or absent, which log.allowed: summary never writes.
const detailLog = "log: { allowed: detail }\n"

type env = fixture.Env

// startEnv starts a fixture host in mode and a proxy with cfgText. Host
// options (a widened invariant checker) need a comment saying why the
// test's policy lets more than KMS through.
func startEnv(t *testing.T, mode fixture.Mode, cfgText string, opts ...fixture.HostOption) *env {
	t.Helper()
	return fixture.StartEnv(t, mode, cfgText, opts...)
}

func startProxy(t *testing.T, host *fixture.Host, cfgText string) *env {
	t.Helper()
	return fixture.StartProxy(t, host, cfgText)
}

// inModes runs f as a subtest per host-side mode (relay, gateway) with
// cfg (baseConfig or one derived from it) in that mode.
func inModes(t *testing.T, cfg string, f func(t *testing.T, m fixture.HostSide, cfg string)) {
	t.Helper()
	for _, m := range fixture.HostSides {
		t.Run(m.Name, func(t *testing.T) { f(t, m, m.Apply(cfg)) })
	}
}

// checkPooled waits for the connection-closed event of a bound session
// (events reads the proxy's events) and checks it says the association
// ended at the proxy exactly when m is the gateway: a gateway-mode run
// that silently relayed would prove nothing about the gateway.
func checkPooled(t *testing.T, m fixture.HostSide, events func() []map[string]any) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		for _, ev := range events() {
			if ev["event.action"] != "connection-closed" {
				continue
			}
			if pooled, ok := ev["kmsproxy.pooled"]; ok {
				if pooled != m.Gateway {
					t.Fatalf("connection-closed says kmsproxy.pooled %v in %s mode", pooled, m.Name)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection-closed event with kmsproxy.pooled")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// settle gives in-flight bytes time to reach the fixture before asserting
// that nothing did. Absence can only be checked after some wait.
func settle() { time.Sleep(150 * time.Millisecond) }
