package siem

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/test/ecs"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// samplesDir holds deploy/siem/elastic's sample documents, one per action.
const samplesDir = "../../deploy/siem/elastic/samples"

// denyOnlyConfig: baseConfig whose one rule denies; a proxy on it writes
// policy-allows-nothing at start.
var denyOnlyConfig = baseConfig[:strings.Index(baseConfig, "rules:")] + `rules:
  - name: incident-block-kms
    from: [dmz, office-only]
    interface: kms
    opnums: [0]
    action: deny
` + baseConfig[strings.Index(baseConfig, "on_deny:"):]

// Real traffic through real proxies produces every action of
// event.Actions; each event is valid against ECS (test/ecs) and has the
// fields and JSON types of its sample document in
// deploy/siem/elastic/samples. With KMSPROXY_ELASTIC_UPDATE=1 the samples
// are rewritten from this run's first event of each action (stdout, as
// an ndjson shipper reads it).
func TestElasticSamples(t *testing.T) {
	cfg := everyActionConfig(t)
	// A sink aimed at a closed port: its drop warnings go to stdout.
	opts, deadAddr := withDeadSink(t, nil)
	e := fixture.StartEnvWith(t, fixture.Replay, cfg, opts)
	driveProxyActions(t, e, cfg)
	// What serve runs beside the proxy: the DNS responder (dns-query,
	// dns-refused) and the shared state (state-degraded, state-restored),
	// on a logger at debug (dns-query is a debug event), as under
	// log.level: debug.
	side := sideLogger(t)
	dnsActions(t, side.log, e.Host.Addr())
	side.wait(t, event.ActionDNSQuery)
	if ev := side.wait(t, event.ActionDNSRefused); ev["event.reason"] != event.ReasonDNSSourceNotAllowed || ev["source.ip"] != srcNowhere {
		t.Fatalf("dns-refused: %v", ev)
	}
	stateActions(t, side.log, e.Host.Addr())
	side.wait(t, event.ActionStateDegraded)
	side.wait(t, event.ActionStateRestored)
	waitCount(t, e, event.ActionLogEventsDropped, 1)

	// No upstream reachable: upstream-unavailable.
	e2 := fixture.StartProxyWith(t, e.Host, strings.ReplaceAll(baseConfig+detailLog, "UPSTREAM", deadAddr), fixture.ProxyOptions{Level: "info"})
	upstreamUnavailable(t, e2)
	// A policy without an allow rule: policy-allows-nothing.
	e3 := fixture.StartProxyWith(t, e.Host, strings.ReplaceAll(denyOnlyConfig, "UPSTREAM", e.Host.Addr()), fixture.ProxyOptions{Level: "info"})
	waitCount(t, e3, event.ActionPolicyAllowsNothing, 1)

	first := map[string][]byte{}
	for _, log := range []*fixture.LogBuffer{e.Log, e2.Log, e3.Log, side.buf} {
		for _, line := range strings.Split(log.String(), "\n") {
			ev, err := ecs.Decode([]byte(line))
			if err != nil {
				continue
			}
			for _, err := range ecs.Validate(ev) {
				t.Errorf("%v\n  in %s", err, line)
			}
			if a, _ := ev["event.action"].(string); a != "" && first[a] == nil {
				first[a] = []byte(line)
			}
		}
	}
	var missing []string
	for _, a := range event.Actions {
		if first[a] == nil {
			missing = append(missing, a)
		}
	}
	if missing != nil {
		t.Fatalf("no event of %v", missing)
	}
	if os.Getenv("KMSPROXY_ELASTIC_UPDATE") != "" {
		writeSamples(t, first)
	}
	for _, a := range event.Actions {
		want, err := os.ReadFile(filepath.Join(samplesDir, a+".json"))
		if err != nil {
			t.Errorf("%v (KMSPROXY_ELASTIC_UPDATE=1 go test ./test/siem -run TestElasticSamples)", err)
			continue
		}
		if g, w := shape(t, first[a]), shape(t, want); g != w {
			t.Errorf("%s: the sample's fields differ from this run's (KMSPROXY_ELASTIC_UPDATE=1 go test ./test/siem -run TestElasticSamples)\n  run:    %s\n  sample: %s", a, g, w)
		}
	}
}

// writeSamples replaces the samples with the events given, indented, keys
// in the order kmsproxy wrote them.
func writeSamples(t *testing.T, first map[string][]byte) {
	t.Helper()
	old, _ := filepath.Glob(filepath.Join(samplesDir, "*.json"))
	for _, f := range old {
		os.Remove(f)
	}
	if err := os.MkdirAll(samplesDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range event.Actions {
		var b bytes.Buffer
		if err := json.Indent(&b, first[a], "", "  "); err != nil {
			t.Fatal(err)
		}
		b.WriteByte('\n')
		if err := os.WriteFile(filepath.Join(samplesDir, a+".json"), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// shape is an event's field names with their JSON kinds, sorted: what a
// sample must share with the events of today's code.
func shape(t *testing.T, line []byte) string {
	t.Helper()
	ev, err := ecs.Decode(bytes.TrimSpace(line))
	if err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	var out []string
	for k, v := range ev {
		kind := "string"
		switch v.(type) {
		case json.Number:
			kind = "number"
		case bool:
			kind = "bool"
		case []any:
			kind = "array"
		case nil:
			kind = "null"
		}
		out = append(out, k+":"+kind)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}
