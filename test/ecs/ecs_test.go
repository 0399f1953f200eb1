package ecs_test

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/test/ecs"
)

// The table is one table: names unique, ECS names outside the custom
// namespaces and custom names inside them, known types, no name both a
// field and an object, and the categorization lists closed over Types.
func TestTableConsistent(t *testing.T) {
	seen := map[string]bool{}
	custom := func(name string) bool {
		return slices.Contains(ecs.CustomNamespaces, strings.SplitN(name, ".", 2)[0])
	}
	for _, f := range ecs.ECSFields {
		if custom(f.Name) {
			t.Errorf("ECS field %s is in a custom namespace", f.Name)
		}
	}
	for _, f := range ecs.CustomFields {
		if !custom(f.Name) {
			t.Errorf("custom field %s is outside %v", f.Name, ecs.CustomNamespaces)
		}
	}
	for _, f := range ecs.All() {
		if seen[f.Name] {
			t.Errorf("%s listed twice", f.Name)
		}
		seen[f.Name] = true
		switch f.Type {
		case ecs.Keyword, ecs.ConstantKeyword, ecs.MatchOnlyText, ecs.Long, ecs.Date, ecs.IP, ecs.Boolean:
		default:
			t.Errorf("%s: unknown type %q", f.Name, f.Type)
		}
		if f.Values != nil && f.Type != ecs.Keyword && f.Type != ecs.ConstantKeyword {
			t.Errorf("%s: values on a %s field", f.Name, f.Type)
		}
	}
	if _, err := ecs.Properties(ecs.All()); err != nil {
		t.Error(err)
	}
	for c, types := range ecs.CategoryTypes {
		for _, ty := range types {
			if !slices.Contains(ecs.Types, ty) {
				t.Errorf("category %s expects %q, which is no event.type", c, ty)
			}
		}
	}
}

// A field that is both a value and an object cannot be indexed; the
// template generator refuses it.
func TestPropertiesRefusesObjectConflicts(t *testing.T) {
	for _, fields := range [][]ecs.Field{
		{{Name: "kmsproxy.listen", Type: ecs.Keyword}, {Name: "kmsproxy.listen.current", Type: ecs.Keyword}},
		{{Name: "error.message.x", Type: ecs.Keyword}, {Name: "error.message", Type: ecs.Keyword}},
	} {
		if _, err := ecs.Properties(fields); err == nil {
			t.Errorf("%v: no error", fields)
		}
	}
}

// The events announce the version the table follows.
func TestEventsAnnounceTheTablesVersion(t *testing.T) {
	if event.ECSVersion != ecs.Version {
		t.Fatalf("events say ecs.version %s, the table follows %s", event.ECSVersion, ecs.Version)
	}
}

// valid is an event the validator accepts; each case below breaks it once.
func valid() map[string]any {
	return map[string]any{
		"@timestamp": "2026-12-01T21:10:21.469Z", "log.level": "info", "message": "bind-refused",
		"ecs.version": ecs.Version, "service.type": "kmsproxy",
		"observer.type": "firewall", "observer.vendor": "kmsproxy", "observer.product": "kmsproxy", "observer.version": "dev",
		"event.module": "kmsproxy", "event.dataset": "kmsproxy.events",
		"data_stream.type": "logs", "data_stream.dataset": "kmsproxy.events", "data_stream.namespace": "default",
		"event.kind": "event", "event.category": []any{"network"}, "event.type": []any{"protocol", "denied"},
		"event.action": "bind-refused", "event.outcome": "failure", "event.reason": "interface-not-allowed",
		"source.ip": "127.0.0.2", "source.port": json.Number("49209"), "kmsproxy.connection_id": 2.0,
		"kms.virtual_machine": false, "kms.client_time": "2026-11-22T07:05:07.000Z",
		"kmsproxy.upstreams": []any{"127.0.0.1:1688"},
	}
}

func TestValidate(t *testing.T) {
	if errs := ecs.Validate(valid()); errs != nil {
		t.Fatalf("a valid event: %v", errs)
	}
	for _, c := range []struct {
		name string
		edit func(map[string]any)
		want string
	}{
		{"unknown field", func(e map[string]any) { e["kmsproxy.nonsense"] = "x" }, "kmsproxy.nonsense: not an ECS"},
		{"zap's error key", func(e map[string]any) { e["error"] = "boom" }, "error: not an ECS"},
		{"pipeline's field", func(e map[string]any) { e["event.ingested"] = "2026-12-01T21:10:21Z" }, "set by the ingest pipeline"},
		{"ip", func(e map[string]any) { e["source.ip"] = "invalid IP" }, `source.ip: "invalid IP" is not an IP address`},
		{"ip type", func(e map[string]any) { e["source.ip"] = 1.0 }, "want an IP address string"},
		{"long", func(e map[string]any) { e["source.port"] = "49209" }, "source.port: \"49209\": want an integer"},
		{"long fraction", func(e map[string]any) { e["source.port"] = 1.5 }, "want an integer"},
		{"date", func(e map[string]any) { e["kms.client_time"] = "2026-11-22T07:05:07.000+0100" }, "not an RFC 3339 date"},
		{"boolean", func(e map[string]any) { e["kms.virtual_machine"] = "false" }, "want true or false"},
		{"keyword", func(e map[string]any) { e["rule.name"] = 3.0 }, "want a string"},
		{"array where a value goes", func(e map[string]any) { e["event.action"] = []any{"bind-refused"} }, "event.action: [\"bind-refused\"]: want a string"},
		{"value where an array goes", func(e map[string]any) { e["event.category"] = "network" }, "want an array"},
		{"empty array", func(e map[string]any) { e["event.type"] = []any{} }, "event.type: empty array"},
		{"kind", func(e map[string]any) { e["event.kind"] = "events" }, `event.kind: "events" is not one of`},
		{"outcome", func(e map[string]any) { e["event.outcome"] = "denied" }, `event.outcome: "denied" is not one of`},
		{"category", func(e map[string]any) { e["event.category"] = []any{"firewall"} }, `event.category: [0]: "firewall" is not one of`},
		{"type", func(e map[string]any) { e["event.type"] = []any{"failure"} }, `event.type: [0]: "failure" is not one of`},
		{"network error", func(e map[string]any) { e["event.type"] = []any{"connection", "error"} }, `event.type "error" is not one ECS 8.11.0 expects for event.category "network"`},
		{"network indicator", func(e map[string]any) { e["event.type"] = []any{"indicator", "info"} }, `event.type "indicator" is not one`},
		{"network change", func(e map[string]any) {
			e["event.category"] = []any{"network", "configuration"}
			e["event.type"] = []any{"change"}
		}, `"change" is not one ECS 8.11.0 expects for event.category "network"`},
		{"every category", func(e map[string]any) { e["event.category"] = []any{"network", "intrusion_detection"} }, `"protocol" is not one ECS 8.11.0 expects for event.category "intrusion_detection"`},
		{"version", func(e map[string]any) { e["ecs.version"] = "1.6.0" }, `ecs.version: "1.6.0" is not one of 8.11.0`},
		{"data stream type", func(e map[string]any) { e["data_stream.type"] = "log" }, "data_stream.type"},
		{"no observer", func(e map[string]any) { delete(e, "observer.type") }, "observer.type: missing"},
		{"no dataset", func(e map[string]any) { delete(e, "event.dataset") }, "event.dataset: missing"},
		{"no outcome", func(e map[string]any) { delete(e, "event.outcome") }, "event.outcome: missing"},
		{"no timestamp", func(e map[string]any) { delete(e, "@timestamp") }, "@timestamp: missing"},
	} {
		ev := valid()
		c.edit(ev)
		errs := ecs.Validate(ev)
		found := false
		for _, err := range errs {
			found = found || strings.Contains(err.Error(), c.want)
		}
		if !found {
			t.Errorf("%s: errors %v, want one containing %q", c.name, errs, c.want)
		}
	}
	// A process message (no event.action) needs no categorization.
	ev := valid()
	for _, k := range []string{"event.kind", "event.category", "event.type", "event.action", "event.outcome", "event.reason"} {
		delete(ev, k)
	}
	if errs := ecs.Validate(ev); errs != nil {
		t.Errorf("process message: %v", errs)
	}
}

// Decode refuses what Elasticsearch would: a key twice, not one object.
func TestDecode(t *testing.T) {
	for _, bad := range []string{`{"a":1,"a":2}`, `[1]`, `{"a":1} {"b":2}`, `{"a":`} {
		if _, err := ecs.Decode([]byte(bad)); err == nil {
			t.Errorf("%s: decoded", bad)
		}
	}
	ev, err := ecs.Decode([]byte(`{"source.port":49209,"event.type":["info"]}`))
	if err != nil || ev["source.port"] != json.Number("49209") {
		t.Fatalf("%v %v", ev, err)
	}
}

// Every action's event, as the event package builds it and the logger
// writes it, is valid: the categorization table of event/schema.go
// against ECS's, without traffic (test/siem drives each action for real).
func TestEveryActionsSchemaFields(t *testing.T) {
	var buf bytes.Buffer
	log, err := event.NewLoggerWith(event.LoggerOptions{Level: "debug", Format: "ecs", Version: "9.9.9", Out: &buf})
	if err != nil {
		t.Fatal(err)
	}
	src, dst := netip.MustParseAddrPort("192.0.2.7:49152"), netip.MustParseAddrPort("192.0.2.1:1688")
	conn := log.With(event.ConnFields(1, src, dst, "dmz")...)
	for _, a := range event.Actions {
		buf.Reset()
		switch a {
		case event.ActionConfigReloaded, event.ActionConfigReloadFailed, event.ActionPolicyAllowsNothing:
			log.Info(a, event.NewConfig(a, event.OutcomeSuccess, "").Fields...)
		default:
			conn.Info(a, event.New(a, event.OutcomeUnknown, "a-reason").Fields...)
		}
		ecs.Check(t, a, buf.String(), false)
		ev, err := ecs.Decode(bytes.TrimSpace(buf.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		for k, want := range map[string]any{
			"observer.version": "9.9.9", "observer.type": "firewall", "event.dataset": "kmsproxy.events",
			"data_stream.dataset": "kmsproxy.events", "event.action": a,
		} {
			if ev[k] != want {
				t.Errorf("%s: %s = %v, want %v", a, k, ev[k], want)
			}
		}
		if a != event.ActionConfigReloaded && a != event.ActionConfigReloadFailed && a != event.ActionPolicyAllowsNothing &&
			ev["observer.ingress.zone"] != ev["kmsproxy.zone"] {
			t.Errorf("%s: observer.ingress.zone %v, kmsproxy.zone %v", a, ev["observer.ingress.zone"], ev["kmsproxy.zone"])
		}
	}
	// An action the schema does not know gets no categorization, which
	// the validator reports.
	buf.Reset()
	log.Info("x", event.New("no-such-action", event.OutcomeUnknown, "").Fields...)
	if len(ecs.CheckLines(buf.String(), false)) != 1 {
		t.Errorf("an uncategorized action passed: %s", buf.String())
	}
}

// The fields every line shares are the logger's, encoded once: an event
// built from the schema costs one allocation, its field slice.
func TestSchemaFieldsAllocateOnce(t *testing.T) {
	n := testing.AllocsPerRun(100, func() { _ = event.New(event.ActionKMSDuplicateCMID, event.OutcomeUnknown, event.ReasonDuplicateCMID) })
	if n != 1 {
		t.Errorf("event.New: %v allocations, want 1", n)
	}
}
