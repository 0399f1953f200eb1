// Package event is kmsproxy's event schema: the Elastic Common Schema
// fields every event carries, the actions, outcomes and reasons it may
// name (as constants), the logger that writes events as JSON lines, the
// Prometheus series that count them, and one Emitter that logs a decision
// and counts it in the same call.
//
//	log, _ := event.NewLoggerWith(event.LoggerOptions{Level: cfg.Log.Level, Format: cfg.Log.Format, Version: version, Out: os.Stdout})
//	m := event.NewMetrics()
//	em := event.NewEmitter(log, m).With(event.ConnFields(id, src, dst, zone)...)
//
//	ev := event.New(event.ActionProtocolViolation, event.OutcomeFailure, reason)
//	ev.Add(zap.String("network.direction", "inbound"))
//	em.Decision(zap.WarnLevel, "protocol violation", ev) // one event, one kmsproxy_decisions_total{action, reason}
//
//	em.Log(zap.InfoLevel, "connection closed", event.New(event.ActionConnectionClosed, event.OutcomeSuccess, ""))
//
// Every event follows ECS 8.11 (ECSVersion): its event.kind,
// event.category and event.type are values ECS allows together, and the
// logger puts the fields every event shares on each line once (observer.*
// naming kmsproxy, event.module and event.dataset, data_stream.* for
// logs-kmsproxy.events-default). test/ecs holds the ECS table and checks
// every event the tests produce against it.
//
// Action, field and metric names are what SIEM searches, parsers and
// dashboards key on: never rename one. Label values come from fixed token
// sets (actions, reasons, zones from config, application names), so the
// cardinality of every series is bounded by configuration, never by
// traffic; a GUID or a workstation name is a field, never a label.
//
// It decides nothing (acl and assoc do) and reads no socket. It ships
// events nowhere but the logger's writer and the extra cores given to
// NewLogger (event/syslog is the remote sink), and it does not serve the
// metrics (admin does).
package event
