// Package ecs is the part of the Elastic Common Schema kmsproxy's events
// use, written down as this repository's own table, and a validator that
// holds every event to it:
//
//	for _, err := range ecs.Validate(ev) { t.Error(err) }
//	problems := ecs.CheckLines(stdout, false) // every line of a log
//	tmpl, _ := ecs.IndexTemplate()            // deploy/siem/elastic/index-template.json
//
// The table follows ECS 8.11 (Version, what the events announce in
// ecs.version): the ECS fields the events carry with their ECS types, the
// allowed values of event.kind, event.category, event.type and
// event.outcome, and for each category the event types ECS expects with
// it. kmsproxy's own fields, under the custom namespaces kmsproxy.*, kms.*
// and dcerpc.*, are listed with the types they are indexed as; the
// Elasticsearch index template is generated from the same table, so what
// the events carry, what the validator accepts and what the template maps
// cannot drift apart.
//
// It is test code: the proxy does not import it, and it validates what the
// proxy wrote, never events on their way out.
package ecs

// Version is the ECS version the table follows.
const Version = "8.11.0"

// Type is a field's Elasticsearch field type, as ECS gives it.
type Type string

// The types the events use.
const (
	Keyword         Type = "keyword"
	ConstantKeyword Type = "constant_keyword" // data_stream.*
	MatchOnlyText   Type = "match_only_text"  // message, error.message
	Long            Type = "long"
	Date            Type = "date"
	IP              Type = "ip"
	Boolean         Type = "boolean"
)

// Field is one field of the table.
type Field struct {
	Name string
	Type Type
	// Array: the value is a JSON array of the type's values (ECS
	// normalizes event.category and event.type to arrays; the custom lists
	// are arrays). Every other field is a single value.
	Array bool
	// Custom: one of kmsproxy's namespaces, not an ECS field.
	Custom bool
	// Text: ECS also indexes the keyword as a match_only_text multi-field,
	// <name>.text (file.path).
	Text bool
	// Values, when set, are the only values the field takes: ECS's allowed
	// values, or a fixed vocabulary of ours.
	Values []string
	// Pipeline: set by the ingest pipeline, never by kmsproxy.
	Pipeline bool
}

// Categorization: ECS 8.11's allowed values (ECS Categorization Fields).
var (
	// Kinds are the allowed event.kind values. (ECS 8.11 may list more,
	// such as a beta asset; the events need none of them.)
	Kinds = []string{"alert", "enrichment", "event", "metric", "state", "pipeline_error", "signal"}
	// Outcomes are the allowed event.outcome values.
	Outcomes = []string{"failure", "success", "unknown"}
	// Types are the allowed event.type values.
	Types = []string{"access", "admin", "allowed", "change", "connection", "creation", "deletion", "denied",
		"end", "error", "group", "indicator", "info", "installation", "protocol", "start", "user"}
	// CategoryTypes are the allowed event.category values, each with the
	// event types ECS expects with it.
	CategoryTypes = map[string][]string{
		"api":                 {"access", "admin", "allowed", "change", "creation", "deletion", "denied", "end", "info", "start", "user"},
		"authentication":      {"start", "end", "info"},
		"configuration":       {"access", "change", "creation", "deletion", "info"},
		"database":            {"access", "change", "info", "error"},
		"driver":              {"change", "end", "info", "start"},
		"email":               {"info"},
		"file":                {"access", "change", "creation", "deletion", "info"},
		"host":                {"access", "change", "end", "info", "start"},
		"iam":                 {"admin", "change", "creation", "deletion", "group", "info", "user"},
		"intrusion_detection": {"allowed", "denied", "info"},
		"library":             {"start"},
		"malware":             {"info"},
		"network":             {"access", "allowed", "connection", "denied", "end", "info", "protocol", "start"},
		"package":             {"access", "change", "deletion", "info", "installation", "start"},
		"process":             {"access", "change", "end", "info", "start"},
		"registry":            {"access", "change", "creation", "deletion"},
		"session":             {"start", "end", "info"},
		"threat":              {"indicator"},
		"vulnerability":       {"info"},
		"web":                 {"access", "error", "info"},
	}
)

// categories are CategoryTypes' keys, sorted.
func categories() []string {
	out := make([]string, 0, len(CategoryTypes))
	for c := range CategoryTypes {
		out = append(out, c)
	}
	sortStrings(out)
	return out
}

// ECSFields are the ECS fields the events use (and event.ingested, which
// the ingest pipeline adds), with their ECS 8.11 types.
var ECSFields = []Field{
	{Name: "@timestamp", Type: Date},
	{Name: "message", Type: MatchOnlyText},
	{Name: "log.level", Type: Keyword},
	{Name: "log.logger", Type: Keyword},
	{Name: "ecs.version", Type: Keyword, Values: []string{Version}},
	{Name: "service.type", Type: Keyword},
	{Name: "service.version", Type: Keyword},

	{Name: "observer.type", Type: Keyword},
	{Name: "observer.vendor", Type: Keyword},
	{Name: "observer.product", Type: Keyword},
	{Name: "observer.version", Type: Keyword},
	{Name: "observer.ingress.zone", Type: Keyword},

	{Name: "event.kind", Type: Keyword, Values: Kinds},
	{Name: "event.category", Type: Keyword, Array: true, Values: categories()},
	{Name: "event.type", Type: Keyword, Array: true, Values: Types},
	{Name: "event.action", Type: Keyword},
	{Name: "event.outcome", Type: Keyword, Values: Outcomes},
	{Name: "event.reason", Type: Keyword},
	{Name: "event.duration", Type: Long},
	{Name: "event.module", Type: Keyword},
	{Name: "event.dataset", Type: Keyword},
	{Name: "event.ingested", Type: Date, Pipeline: true},

	{Name: "data_stream.type", Type: ConstantKeyword, Values: []string{"logs", "metrics", "traces", "synthetics"}},
	{Name: "data_stream.dataset", Type: ConstantKeyword},
	{Name: "data_stream.namespace", Type: ConstantKeyword},

	{Name: "source.ip", Type: IP},
	{Name: "source.port", Type: Long},
	{Name: "source.bytes", Type: Long},
	{Name: "destination.ip", Type: IP},
	{Name: "destination.port", Type: Long},
	{Name: "destination.bytes", Type: Long},
	{Name: "network.transport", Type: Keyword},
	{Name: "network.protocol", Type: Keyword},
	{Name: "network.community_id", Type: Keyword},
	{Name: "network.direction", Type: Keyword, Values: []string{"ingress", "egress", "inbound", "outbound", "internal", "external", "unknown"}},

	// The DNS responder's events (dns-query, dns-refused: package kmsdns).
	{Name: "dns.id", Type: Keyword},
	{Name: "dns.type", Type: Keyword, Values: []string{"query", "answer"}},
	{Name: "dns.question.name", Type: Keyword},
	{Name: "dns.question.type", Type: Keyword},
	{Name: "dns.response_code", Type: Keyword},
	{Name: "dns.header_flags", Type: Keyword, Array: true, Values: []string{"AA", "TC", "RD", "RA", "AD", "CD", "DO"}},

	{Name: "rule.name", Type: Keyword},
	{Name: "error.message", Type: MatchOnlyText},
	{Name: "file.path", Type: Keyword, Text: true},
}

// CustomFields are kmsproxy's own fields, each with the type it is indexed
// as: every one an event may carry, process messages' included.
var CustomFields = []Field{
	// DCE/RPC facts of the PDU decided on.
	{Name: "dcerpc.ptype", Type: Keyword},
	{Name: "dcerpc.call_id", Type: Long},
	{Name: "dcerpc.context_id", Type: Long},
	{Name: "dcerpc.context_count", Type: Long},
	{Name: "dcerpc.opnum", Type: Long},
	{Name: "dcerpc.interface.uuid", Type: Keyword},
	{Name: "dcerpc.interface.name", Type: Keyword},
	{Name: "dcerpc.interface.version", Type: Keyword},
	{Name: "dcerpc.transfer_syntax", Type: Keyword, Values: []string{"ndr20", "ndr64"}},
	{Name: "dcerpc.auth.type", Type: Keyword},
	{Name: "dcerpc.auth.level", Type: Keyword},

	// KMS request facts.
	{Name: "kms.version", Type: Long},
	{Name: "kms.application", Type: Keyword},
	{Name: "kms.application_id", Type: Keyword},
	{Name: "kms.sku", Type: Keyword},
	{Name: "kms.sku_id", Type: Keyword},
	{Name: "kms.kms_counted_id", Type: Keyword},
	{Name: "kms.kms_counted_name", Type: Keyword},
	{Name: "kms.client_machine_id", Type: Keyword},
	{Name: "kms.workstation", Type: Keyword},
	{Name: "kms.license_status", Type: Keyword},
	{Name: "kms.client_time", Type: Date},
	{Name: "kms.client_filetime", Type: Keyword}, // instead of kms.client_time when that is no RFC 3339 date (year outside 1..9999)
	{Name: "kms.required_count", Type: Long},
	{Name: "kms.virtual_machine", Type: Boolean},
	{Name: "kms.error", Type: Keyword},
	{Name: "kms.clock_skew", Type: Long}, // nanoseconds, like event.duration; negative when the client is ahead
	// KMS reply facts.
	{Name: "kms.status", Type: Keyword},
	{Name: "kms.current_count", Type: Long},
	{Name: "kms.epid", Type: Keyword},
	{Name: "kms.activation_interval", Type: Long},
	{Name: "kms.renewal_interval", Type: Long},
	{Name: "kms.reply_cmid_match", Type: Boolean},
	{Name: "kms.reply_time_match", Type: Boolean},
	{Name: "kms.reply_verified", Type: Boolean},
	{Name: "kms.reply_error", Type: Keyword},

	// The connection and the decision.
	{Name: "kmsproxy.zone", Type: Keyword},
	{Name: "kmsproxy.connection_id", Type: Long},
	{Name: "kmsproxy.proxy_peer", Type: Keyword}, // address:port of the load balancer that sent the PROXY header
	{Name: "kmsproxy.auth_class", Type: Keyword},
	{Name: "kmsproxy.close_reason", Type: Keyword},
	{Name: "kmsproxy.client_pdus", Type: Long},
	{Name: "kmsproxy.host_pdus", Type: Long},
	{Name: "kmsproxy.pooled", Type: Boolean},
	{Name: "kmsproxy.host_association", Type: Keyword},
	{Name: "kmsproxy.upstream", Type: Keyword},
	{Name: "kmsproxy.upstreams", Type: Keyword, Array: true},
	// What a refusal's client got (bind-refused, request-refused,
	// rate-limited): reject, an answer then the close; drop, the close.
	{Name: "kmsproxy.on_deny", Type: Keyword, Values: []string{"reject", "drop"}}, // what a refused client got: an answer, or only the close
	{Name: "kmsproxy.kms_result", Type: Keyword, Values: []string{"success", "refused-by-host", "fault", "malformed-reply", "no-reply"}},
	{Name: "kmsproxy.kms_reply_error", Type: Keyword},
	{Name: "kmsproxy.backoff", Type: Long}, // nanoseconds
	{Name: "kmsproxy.live.verdict", Type: Keyword, Values: []string{"allow", "deny"}},
	{Name: "kmsproxy.live.reason", Type: Keyword},
	{Name: "kmsproxy.shadow.verdict", Type: Keyword, Values: []string{"allow", "deny"}},
	{Name: "kmsproxy.shadow.rule", Type: Keyword},
	{Name: "kmsproxy.shadow.reason", Type: Keyword},
	{Name: "kmsproxy.previous.source_ip", Type: IP},
	{Name: "kmsproxy.previous.workstation", Type: Keyword},
	{Name: "kmsproxy.previous.seen", Type: Date},

	// Configuration events.
	{Name: "kmsproxy.config.loaded_at", Type: Date},
	{Name: "kmsproxy.config.rules", Type: Long},
	{Name: "kmsproxy.config.shadow", Type: Boolean},
	{Name: "kmsproxy.config.problems", Type: Keyword, Array: true},

	// The syslog sink's drop warning.
	{Name: "kmsproxy.log.dropped", Type: Long},
	{Name: "kmsproxy.log.dropped_queue_full", Type: Long},
	{Name: "kmsproxy.log.dropped_disconnected", Type: Long},
	{Name: "kmsproxy.log.dropped_send_failed", Type: Long},

	// The DNS responder: the zone of dns.zones that answered (dns-query,
	// dns-refused), and its process messages (listening, a changed
	// dns.listen on reload).
	{Name: "kmsproxy.dns.zone", Type: Keyword},
	{Name: "kmsproxy.dns.listen", Type: Keyword},
	{Name: "kmsproxy.dns.listen_configured", Type: Keyword},
	{Name: "kmsproxy.dns.zones", Type: Keyword, Array: true},
	{Name: "kmsproxy.dns.allow_from", Type: Keyword, Array: true},

	// Process messages (listening, shutting down, warnings at start).
	{Name: "kmsproxy.listen", Type: Keyword},
	{Name: "kmsproxy.listen_current", Type: Keyword},
	{Name: "kmsproxy.listen_new", Type: Keyword},
	{Name: "kmsproxy.management", Type: Keyword},
	{Name: "kmsproxy.shutdown_grace", Type: Long}, // nanoseconds
	{Name: "kmsproxy.connections_active", Type: Long},
	{Name: "kmsproxy.limits.connections", Type: Long},
	{Name: "kmsproxy.fd_budget", Type: Long},
	{Name: "kmsproxy.rlimit_nofile", Type: Long},
	{Name: "kmsproxy.inventory.retention", Type: Long}, // nanoseconds
	{Name: "kmsproxy.inventory.store_workstation", Type: Boolean},
	{Name: "kmsproxy.inventory.errors_not_logged", Type: Long},
}

// CustomNamespaces are the top-level names of kmsproxy's own fields.
var CustomNamespaces = []string{"dcerpc", "kms", "kmsproxy"}

// All is every field of the table, ECS first.
func All() []Field { return append(append([]Field(nil), ECSFields...), CustomFields...) }

var byName = func() map[string]Field {
	m := map[string]Field{}
	for _, f := range ECSFields {
		m[f.Name] = f
	}
	for _, f := range CustomFields {
		f.Custom = true
		m[f.Name] = f
	}
	return m
}()

// Lookup returns the table's field name.
func Lookup(name string) (Field, bool) {
	f, ok := byName[name]
	return f, ok
}
