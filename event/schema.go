package event

import (
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// Actions (DESIGN Events). They are the event.action values SIEM searches
// key on; never rename one.
const (
	ActionConnectionAccepted  = "connection-accepted"
	ActionConnectionRefused   = "connection-refused"
	ActionBindAllowed         = "bind-allowed"
	ActionBindRefused         = "bind-refused"
	ActionRequestRefused      = "request-refused"
	ActionKMSActivation       = "kms-activation"
	ActionProtocolViolation   = "protocol-violation"
	ActionUpstreamUnavailable = "upstream-unavailable"
	ActionConnectionClosed    = "connection-closed"
	ActionConfigReloaded      = "config-reloaded"
	ActionConfigReloadFailed  = "config-reload-failed"
	ActionShadowDecision      = "shadow-decision"
	ActionKMSDuplicateCMID    = "kms-duplicate-cmid"
	ActionKMSClockSkew        = "kms-clock-skew"
	ActionRateLimited         = "rate-limited"
	// ActionPolicyAllowsNothing warns that the policy loaded at start or
	// installed by a reload has no allow rule: every connection is refused
	// at accept. Valid (a block-everything policy), never silent.
	ActionPolicyAllowsNothing = "policy-allows-nothing"
	// ActionLogEventsDropped is the event.action of the warning the syslog
	// sink's owner logs when events were dropped (syslog.LogDrops).
	ActionLogEventsDropped = "log-events-dropped"
	// ActionStateDegraded: the shared state (state.redis) failed or was
	// too slow; the replica decides on its local state until
	// ActionStateRestored.
	ActionStateDegraded = "state-degraded"
	ActionStateRestored = "state-restored"
)

// Outcomes: the event.outcome values.
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
	OutcomeUnknown = "unknown"
)

// Reasons the proxy itself produces for its refusals and alerts (acl,
// rpcparse, rpcparse/kms and assoc name their own).
const (
	ReasonConnectionLimit       = "connection-limit"
	ReasonSourceConnectionLimit = "source-connection-limit"
	ReasonHandshakeTimeout      = "handshake-timeout"
	ReasonIdleTimeout           = "idle-timeout"
	ReasonUpstreamUnreachable   = "upstream-unreachable"
	ReasonShutdown              = "shutdown"
	ReasonProxyHeader           = "proxy-header"
	ReasonFDBudget              = "fd-budget"
	ReasonInvalidConfig         = "invalid-config"
	ReasonNoAllowRule           = "no-allow-rule" // policy-allows-nothing
	ReasonClockSkew             = "clock-skew"
	ReasonDuplicateCMID         = "duplicate-cmid"
	// ReasonPoolBusy: every pooled host association was in use and the
	// wait queue (or this source's share of it) was full.
	ReasonPoolBusy = "upstream-pool-busy"
	// ReasonNotTerminable: an alter_context for another interface, or with
	// authentication, on an association that ends at the proxy.
	ReasonNotTerminable = "alter-context-not-terminable"
	// ReasonGatewayAnswer: an answer the proxy built did not frame (a bug,
	// never seen: the connection ends rather than send it).
	ReasonGatewayAnswer = "gateway-answer-malformed"
)

// Close reasons: why a connection ended, in connection-closed's
// kmsproxy.close_reason when it was not a refusal, a violation or one of
// the reasons above.
const (
	ReasonClientClosed       = "client-closed"
	ReasonClientEOFMidPDU    = "client-eof-mid-pdu"
	ReasonClientReadError    = "client-read-error"
	ReasonClientWriteError   = "client-write-error"
	ReasonUpstreamClosed     = "upstream-closed"
	ReasonUpstreamReadError  = "upstream-read-error"
	ReasonUpstreamWriteError = "upstream-write-error"
)

// KMS results: the kmsproxy.kms_result of a kms-activation event and the
// result label of kmsproxy_kms_activations_total.
const (
	KMSResultSuccess        = "success"
	KMSResultRefusedByHost  = "refused-by-host"
	KMSResultFault          = "fault"
	KMSResultMalformedReply = "malformed-reply"
	KMSResultNoReply        = "no-reply"
	KMSResultRefused        = "refused" // by the proxy's policy; metric only
)

// Actions lists every action in the order the documentation gives them:
// the event.action values of DESIGN's Events, the two warnings
// (policy-allows-nothing, log-events-dropped), the shared state's
// (state-degraded, state-restored: package state) and the DNS
// responder's (dns-query, dns-refused: event/dns.go). The SIEM content
// (the Elastic samples, one per action) is checked against it.
var Actions = []string{
	ActionConnectionAccepted, ActionConnectionRefused, ActionBindAllowed, ActionBindRefused,
	ActionRequestRefused, ActionKMSActivation, ActionProtocolViolation, ActionUpstreamUnavailable,
	ActionConnectionClosed, ActionConfigReloaded, ActionConfigReloadFailed, ActionShadowDecision,
	ActionKMSDuplicateCMID, ActionKMSClockSkew, ActionRateLimited, ActionPolicyAllowsNothing,
	ActionLogEventsDropped, ActionStateDegraded, ActionStateRestored, ActionDNSQuery, ActionDNSRefused,
}

// The ECS categorization of each action: event.kind, event.category and
// event.type, following ECS 8.11's categorization tables, where every
// event.type is one ECS expects for each of the event's categories
// (network: access, allowed, connection, denied, end, info, protocol,
// start; configuration: access, change, creation, deletion, info;
// intrusion_detection: allowed, denied, info). test/ecs holds those
// tables and checks every event the tests produce against them.
//
//   - A failure is event.outcome: failure, never an event.type (ECS has
//     "error" for the database and web categories only): upstream-unavailable
//     is a connection that failed, config-reload-failed a change that failed.
//   - The alerts only report (the activation went on): network and
//     intrusion_detection, info. ECS's "indicator" belongs to the threat
//     category, for threat intelligence, which these are not.
//   - Config events are configuration alone: network expects no change.
//   - kms-activation is the call the proxy let through (allowed; the
//     host's answer is event.outcome): under log.allowed: summary it is the
//     only allowed event a connection writes besides connection-closed.
var categorizations = map[string]categorization{
	ActionConnectionAccepted:  categorize(kindEvent, catNetwork, "connection", "start", "allowed"),
	ActionConnectionRefused:   categorize(kindEvent, catNetwork, "connection", "denied"),
	ActionBindAllowed:         categorize(kindEvent, catNetwork, "protocol", "allowed"),
	ActionBindRefused:         categorize(kindEvent, catNetwork, "protocol", "denied"),
	ActionRequestRefused:      categorize(kindEvent, catNetwork, "protocol", "denied"),
	ActionKMSActivation:       categorize(kindEvent, catNetwork, "protocol", "allowed"),
	ActionProtocolViolation:   categorize(kindEvent, catNetwork, "protocol", "denied"),
	ActionUpstreamUnavailable: categorize(kindEvent, catNetwork, "connection"),
	ActionConnectionClosed:    categorize(kindEvent, catNetwork, "connection", "end"),
	ActionConfigReloaded:      categorize(kindEvent, catConfiguration, "change"),
	ActionConfigReloadFailed:  categorize(kindEvent, catConfiguration, "change"),
	ActionShadowDecision:      categorize(kindEvent, catNetwork, "info"),
	ActionKMSDuplicateCMID:    categorize(kindAlert, catNetworkIDS, "info"),
	ActionKMSClockSkew:        categorize(kindAlert, catNetworkIDS, "info"),
	ActionRateLimited:         categorize(kindEvent, catNetwork, "protocol", "denied"),
	ActionPolicyAllowsNothing: categorize(kindEvent, catConfiguration, "info"),
	// The syslog sink's own warning: a gap in what the collector got.
	ActionLogEventsDropped: categorize(kindPipelineError, catNetwork, "info"),
	// The shared state's health (package state): what the replica decides on.
	ActionStateDegraded: categorize(kindEvent, catNetwork, "info"),
	ActionStateRestored: categorize(kindEvent, catNetwork, "info"),
	// The DNS responder's (event/dns.go): an answer from its zones, a refusal.
	ActionDNSQuery:   categorize(kindEvent, catNetwork, "protocol", "allowed"),
	ActionDNSRefused: categorize(kindEvent, catNetwork, "protocol", "denied"),
}

const (
	kindEvent         = "event"
	kindAlert         = "alert"
	kindPipelineError = "pipeline_error"
)

var (
	catNetwork       = []string{"network"}
	catConfiguration = []string{"configuration"}
	catNetworkIDS    = []string{"network", "intrusion_detection"}
)

// categorization holds an action's first three fields built once, so an
// event's categorization costs no allocation.
type categorization struct{ kind, category, typ zap.Field }

func categorize(kind string, category []string, types ...string) categorization {
	return categorization{zap.String("event.kind", kind), zap.Strings("event.category", category), zap.Strings("event.type", types)}
}

// Category is the event.category of the network events.
var Category = zap.Strings("event.category", catNetwork)

// fieldsCap is how many fields an action's event carries at most, so
// building one allocates its slice once and never regrows it, yet small
// events (a flood of connection-accepted) stay small.
func fieldsCap(action string) int {
	switch action {
	case ActionKMSActivation:
		return 40
	case ActionBindAllowed, ActionBindRefused, ActionRequestRefused, ActionRateLimited, ActionShadowDecision:
		return 24
	}
	return 18 // connection-refused: 6 + the connection's 10 + rule.name
}

// Fields returns the fields every event carries besides the connection's
// own: event.kind, event.category, event.type, event.action,
// event.outcome (always at index 4) and event.reason when there is one.
// The fields every event shares whatever its action (observer.*,
// event.module, event.dataset, data_stream.*) are the logger's
// (NewLogger).
func Fields(action, outcome, reason string) []zap.Field {
	c, ok := categorizations[action]
	if !ok {
		// Not an action of ours: no categorization rather than a wrong one
		// (test/ecs fails such an event).
		c = categorization{kind: zap.String("event.kind", kindEvent), category: zap.Skip(), typ: zap.Skip()}
	}
	f := make([]zap.Field, 0, fieldsCap(action))
	f = append(f,
		c.kind,
		c.category,
		c.typ,
		zap.String("event.action", action),
		zap.String("event.outcome", outcome),
	)
	if reason != "" {
		f = append(f, zap.String("event.reason", reason))
	}
	return f
}

// configFields are a configuration event's: it also says when the config
// was loaded.
func configFields(action, outcome, reason string) []zap.Field {
	return append(Fields(action, outcome, reason), zap.Time("kmsproxy.config.loaded_at", time.Now()))
}

// ConnFields are the fields of a client connection, on each of its events.
// The source's zone is both kmsproxy.zone (what existing searches use) and
// observer.ingress.zone (ECS's name for the zone traffic entered the
// observer from), the same value, "" for a source in no zone. There is no
// observer.egress.zone: the KMS hosts are upstreams, not a zone of the
// policy, so there is nothing honest to put there.
func ConnFields(id uint64, src, dst netip.AddrPort, zone string) []zap.Field {
	return []zap.Field{
		zap.String("source.ip", src.Addr().String()),
		zap.Uint16("source.port", src.Port()),
		zap.String("destination.ip", dst.Addr().String()),
		zap.Uint16("destination.port", dst.Port()),
		zap.String("network.transport", "tcp"),
		zap.String("network.protocol", "dcerpc"),
		zap.String("network.community_id", CommunityID(src, dst)),
		zap.Uint64("kmsproxy.connection_id", id),
		zap.String("kmsproxy.zone", zone),
		zap.String("observer.ingress.zone", zone),
	}
}

// ZoneLabel is a zone's metric label: "none" for a source in no zone.
func ZoneLabel(z string) string {
	if z == "" {
		return "none"
	}
	return z
}

// CommunityID computes the Community ID flow hash v1 (seed 0) for a TCP
// flow, so events join with Suricata and Zeek records of the same flow.
func CommunityID(src, dst netip.AddrPort) string {
	const protoTCP = 6
	a, b := src, dst
	// Order the endpoints so both directions hash alike.
	if c := a.Addr().Unmap().Compare(b.Addr().Unmap()); c > 0 || (c == 0 && a.Port() > b.Port()) {
		a, b = b, a
	}
	buf := make([]byte, 0, 2+16+16+2+4)
	buf = append(buf, 0, 0) // seed
	buf = append(buf, a.Addr().Unmap().AsSlice()...)
	buf = append(buf, b.Addr().Unmap().AsSlice()...)
	buf = append(buf, protoTCP, 0)
	buf = binary.BigEndian.AppendUint16(buf, a.Port())
	buf = binary.BigEndian.AppendUint16(buf, b.Port())
	sum := sha1.Sum(buf)
	return "1:" + base64.StdEncoding.EncodeToString(sum[:])
}

// UUIDText returns the text of a well-known interface UUID without
// allocating; other UUIDs are formatted.
func UUIDText(u rpcparse.UUID) string {
	if t, ok := wellKnownUUIDText[u]; ok {
		return t
	}
	return u.String()
}

var wellKnownUUIDText = func() map[rpcparse.UUID]string {
	m := make(map[rpcparse.UUID]string, len(rpcparse.WellKnownInterfaces))
	for _, i := range rpcparse.WellKnownInterfaces {
		m[i.UUID] = i.UUID.String()
	}
	return m
}()

// VersionText is an interface version as dcerpc.interface.version shows
// it ("1.0").
func VersionText(s rpcparse.SyntaxID) string {
	if s.Major < 10 && s.Minor < 10 {
		return smallVersions[s.Major*10+s.Minor] // no allocation for the usual x.y
	}
	return itoa(int(s.Major)) + "." + itoa(int(s.Minor))
}

var smallVersions = func() (v [100]string) {
	for i := range v {
		v[i] = itoa(i/10) + "." + itoa(i%10)
	}
	return v
}()

func itoa(n int) string {
	var b [12]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// AppendBind adds a bind's (or alter_context's) first context and its
// auth to f.
func AppendBind(f []zap.Field, p *rpcparse.PDU) []zap.Field {
	it := p.Bind.Contexts()
	if it.Next() {
		c := it.Context()
		f = append(f,
			zap.String("dcerpc.interface.uuid", UUIDText(c.Abstract.UUID)),
			zap.String("dcerpc.interface.name", rpcparse.InterfaceName(c.Abstract.UUID)),
			zap.String("dcerpc.interface.version", VersionText(c.Abstract)),
		)
	}
	f = append(f, zap.Uint8("dcerpc.context_count", p.Bind.NumContexts))
	return AppendAuth(f, p)
}

// AppendAuth adds a PDU's authentication (dcerpc.auth.*, kmsproxy.auth_class)
// to f.
func AppendAuth(f []zap.Field, p *rpcparse.PDU) []zap.Field {
	if !p.HasAuth {
		return AppendAuthOf(f, false, 0, 0, rpcparse.AuthClassNone)
	}
	return AppendAuthOf(f, true, p.Auth.Type, p.Auth.Level, rpcparse.ClassifyAuth(p))
}

// AppendAuthOf adds an authentication (dcerpc.auth.*, kmsproxy.auth_class)
// to f: present false is none, and only dcerpc.auth.type says so. For
// events that report what an association negotiated rather than what one
// PDU carried (kms-activation).
func AppendAuthOf(f []zap.Field, present bool, t rpcparse.AuthType, l rpcparse.AuthLevel, class rpcparse.AuthClass) []zap.Field {
	if !present {
		return append(f, zap.String("dcerpc.auth.type", "none"))
	}
	return append(f,
		zap.String("dcerpc.auth.type", t.String()),
		zap.String("dcerpc.auth.level", l.String()),
		zap.String("kmsproxy.auth_class", class.String()),
	)
}

// TransferSyntaxText is dcerpc.transfer_syntax: the transfer syntax a
// context was accepted with, "ndr64" or "ndr20" (the only two the proxy
// accepts for a presentation context).
func TransferSyntaxText(ndr64 bool) string {
	if ndr64 {
		return transferNDR64
	}
	return transferNDR20
}

var transferNDR20, transferNDR64 = rpcparse.TransferNDR20.String(), rpcparse.TransferNDR64.String()
