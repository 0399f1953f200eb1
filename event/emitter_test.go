package event

import (
	"testing"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func count(t *testing.T, m *Metrics, action, reason string) float64 {
	t.Helper()
	var out dto.Metric
	if err := m.Decisions.WithLabelValues(action, reason).Write(&out); err != nil {
		t.Fatal(err)
	}
	return out.GetCounter().GetValue()
}

// Decision logs the event at its level with its fields in order and counts
// it under its action and reason; Log only logs.
func TestEmitterDecisionLogsAndCounts(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	m := NewMetrics()
	em := NewEmitter(zap.New(core), m).With(zap.String("kmsproxy.zone", "dmz"))

	ev := New(ActionProtocolViolation, OutcomeFailure, "second-bind")
	ev.Add(zap.String("network.direction", "inbound"))
	em.Decision(zap.WarnLevel, "protocol violation", ev)
	em.Log(zap.InfoLevel, "connection closed", New(ActionConnectionClosed, OutcomeSuccess, ""))

	all := logs.All()
	if len(all) != 2 {
		t.Fatalf("%d events", len(all))
	}
	e := all[0]
	if e.Level != zapcore.WarnLevel || e.Message != "protocol violation" {
		t.Fatalf("event %v %q", e.Level, e.Message)
	}
	var keys []string
	for _, f := range e.Context {
		keys = append(keys, f.Key)
	}
	want := []string{"kmsproxy.zone", "event.kind", "event.category", "event.type", "event.action", "event.outcome", "event.reason", "network.direction"}
	if len(keys) != len(want) {
		t.Fatalf("fields %v, want %v", keys, want)
	}
	for i := range want {
		if keys[i] != want[i] {
			t.Fatalf("fields %v, want %v", keys, want)
		}
	}
	if n := count(t, m, ActionProtocolViolation, "second-bind"); n != 1 {
		t.Errorf("protocol-violation/second-bind counted %v times", n)
	}
	if n := count(t, m, ActionConnectionClosed, ""); n != 0 {
		t.Errorf("Log counted connection-closed %v times", n)
	}
}

// bind-allowed has no event.reason and is counted under reason allowed.
func TestEmitterBindAllowedCountedAsAllowed(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	m := NewMetrics()
	NewEmitter(zap.New(core), m).Decision(zap.InfoLevel, ActionBindAllowed, New(ActionBindAllowed, OutcomeSuccess, ""))
	if _, ok := logs.All()[0].ContextMap()["event.reason"]; ok {
		t.Error("bind-allowed carries an event.reason")
	}
	if n := count(t, m, ActionBindAllowed, "allowed"); n != 1 {
		t.Errorf("bind-allowed/allowed = %v", n)
	}
	if n := count(t, m, ActionBindAllowed, ""); n != 0 {
		t.Errorf("bind-allowed/\"\" = %v", n)
	}
}

// Count counts a decision as Decision would, and logs nothing: the
// bind-allowed that log.allowed: summary does not write.
func TestEmitterCountOnly(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	m := NewMetrics()
	em := NewEmitter(zap.New(core), m)
	em.Count(ActionBindAllowed, "")
	em.Decision(zap.InfoLevel, ActionBindAllowed, New(ActionBindAllowed, OutcomeSuccess, ""))
	if n := logs.Len(); n != 1 {
		t.Errorf("%d events logged, want 1 (Decision's)", n)
	}
	if n := count(t, m, ActionBindAllowed, "allowed"); n != 2 {
		t.Errorf("bind-allowed/allowed = %v, want 2", n)
	}
}
