package event

import (
	"net/netip"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Event is one event under construction: its action and reason, and its
// fields, the schema's first (New), then whatever the caller appends.
type Event struct {
	Action string
	Reason string // event.reason and the decision's reason label; "" for none
	Fields []zap.Field
}

// New starts an event with the schema fields of action, outcome and
// reason (Fields).
func New(action, outcome, reason string) Event {
	return Event{Action: action, Reason: reason, Fields: Fields(action, outcome, reason)}
}

// NewConfig starts a configuration event (config-reloaded,
// config-reload-failed, policy-allows-nothing): its event.category adds
// configuration and it carries kmsproxy.config.loaded_at.
func NewConfig(action, outcome, reason string) Event {
	return Event{Action: action, Reason: reason, Fields: configFields(action, outcome, reason)}
}

// Add appends fields to the event.
func (e *Event) Add(f ...zap.Field) { e.Fields = append(e.Fields, f...) }

// Emitter writes events to a logger and counts decisions in the metrics,
// so an event and its count never disagree. The zero Emitter is not
// usable; a copy is as good as the original.
type Emitter struct {
	log  *zap.Logger
	m    *Metrics
	src  netip.Addr // the connection's source, for the status page and per-zone series
	zone string
}

// NewEmitter returns an emitter logging to log and counting in m.
func NewEmitter(log *zap.Logger, m *Metrics) Emitter { return Emitter{log: log, m: m} }

// With returns an emitter whose events carry fields too (a connection's,
// ConnFields).
func (e Emitter) With(fields ...zap.Field) Emitter {
	return Emitter{log: e.log.With(fields...), m: e.m, src: e.src, zone: e.zone}
}

// From returns an emitter whose decisions are counted for source src in
// zone ("" for none): kmsproxy_zone_refusals_total and the status page's
// list need them, and the log fields alone are not read back.
func (e Emitter) From(src netip.Addr, zone string) Emitter {
	e.src, e.zone = src, zone
	return e
}

// Logger is the emitter's logger.
func (e Emitter) Logger() *zap.Logger { return e.log }

// Metrics is the emitter's metric set.
func (e Emitter) Metrics() *Metrics { return e.m }

// Decision logs ev at level with message msg and counts it in
// kmsproxy_decisions_total{action, reason}: one call for what the proxy
// decided and why.
func (e Emitter) Decision(level zapcore.Level, msg string, ev Event) {
	e.log.Log(level, msg, ev.Fields...)
	e.m.countDecision(ev.Action, ev.Reason)
	if kind := notableKind(ev.Action); kind != "" {
		n := Notable{Kind: kind, Action: ev.Action, Reason: ev.Reason, Zone: e.zone, Message: msg}
		if e.src.IsValid() {
			n.Source = e.src.String()
		}
		e.m.Recent.Note(n)
		if kind == NotableRefusal {
			e.m.ZoneRefusals.WithLabelValues(ZoneLabel(e.zone), ev.Action, ev.Reason).Inc()
		}
	}
}

// Count counts a decision in kmsproxy_decisions_total{action, reason}
// without logging it: for an allowed decision whose event log.allowed:
// summary leaves out (bind-allowed), so the series reads the same in
// either mode.
func (e Emitter) Count(action, reason string) { e.m.countDecision(action, reason) }

// Log logs ev without counting a decision: for the events that have
// series of their own (connection-accepted and connection-closed in
// kmsproxy_connections_total and _active, kms-activation in
// kmsproxy_kms_activations_total).
func (e Emitter) Log(level zapcore.Level, msg string, ev Event) {
	e.log.Log(level, msg, ev.Fields...)
}
