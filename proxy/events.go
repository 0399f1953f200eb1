package proxy

import (
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"net/netip"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kmsproxy/kmsproxy/assoc"
	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// Event actions (DESIGN Events). They are the event.action values SIEM
// searches key on; never rename one.
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
)

// Reasons the proxy itself produces (acl and rpcparse have their own);
// the association's are package assoc's, named here too for the session.
const (
	ReasonConnectionLimit       = "connection-limit"
	ReasonSourceConnectionLimit = "source-connection-limit"
	ReasonHandshakeTimeout      = "handshake-timeout"
	ReasonIdleTimeout           = "idle-timeout"
	ReasonUpstreamUnreachable   = "upstream-unreachable"
	ReasonShutdown              = "shutdown"
	ReasonProxyHeader           = "proxy-header"
	ReasonFDBudget              = "fd-budget"

	ReasonFirstPDUNotBind      = assoc.ReasonFirstPDUNotBind
	ReasonSecondBind           = assoc.ReasonSecondBind
	ReasonWrongDirection       = assoc.ReasonWrongDirection
	ReasonHostWrongDirection   = assoc.ReasonHostWrongDirection
	ReasonContextNotLive       = assoc.ReasonContextNotLive
	ReasonObjectUUID           = assoc.ReasonObjectUUID
	ReasonFragmentMismatch     = assoc.ReasonFragmentMismatch
	ReasonCallInterleaved      = assoc.ReasonCallInterleaved
	ReasonCallTooLarge         = assoc.ReasonCallTooLarge
	ReasonFirstFragMissing     = assoc.ReasonFirstFragMissing
	ReasonUnexpectedResponse   = assoc.ReasonUnexpectedResponse
	ReasonResultCount          = assoc.ReasonResultCount
	ReasonBindPending          = assoc.ReasonBindPending
	ReasonRateLimited          = assoc.ReasonRateLimited
	ReasonAuthTrailerMismatch  = assoc.ReasonAuthTrailerMismatch
	ReasonAuth3Unauthenticated = assoc.ReasonAuth3Unauthenticated
	ReasonDataRepChanged       = assoc.ReasonDataRepChanged
)

// ecsEncoderConfig names the fixed keys the way Elastic Common Schema does.
func ecsEncoderConfig() zapcore.EncoderConfig {
	return zapcore.EncoderConfig{
		TimeKey:        "@timestamp",
		LevelKey:       "log.level",
		MessageKey:     "message",
		NameKey:        "log.logger",
		CallerKey:      "",
		StacktraceKey:  "",
		LineEnding:     zapcore.DefaultLineEnding,
		EncodeLevel:    zapcore.LowercaseLevelEncoder,
		EncodeTime:     zapcore.ISO8601TimeEncoder,
		EncodeDuration: zapcore.NanosDurationEncoder, // ECS event.duration is in nanoseconds
	}
}

// eventTypes are the ECS event.type values for each action.
var eventTypes = map[string][]string{
	ActionConnectionAccepted:  {"connection", "start", "allowed"},
	ActionConnectionRefused:   {"connection", "denied"},
	ActionBindAllowed:         {"protocol", "allowed"},
	ActionBindRefused:         {"protocol", "denied"},
	ActionRequestRefused:      {"protocol", "denied"},
	ActionKMSActivation:       {"protocol", "info"},
	ActionProtocolViolation:   {"protocol", "denied"},
	ActionUpstreamUnavailable: {"connection", "error"},
	ActionConnectionClosed:    {"connection", "end"},
	ActionConfigReloaded:      {"change"},
	ActionConfigReloadFailed:  {"change", "error"},
	ActionShadowDecision:      {"info"},
	ActionKMSDuplicateCMID:    {"indicator", "info"},
	ActionKMSClockSkew:        {"indicator", "info"},
	ActionRateLimited:         {"protocol", "denied"},
	ActionPolicyAllowsNothing: {"info"},
}

var eventCategory = zap.Strings("event.category", []string{"network"})

// eventFieldsCap is how many fields an action's event carries at most, so
// building one allocates its slice once and never regrows it, yet small
// events (a flood of connection-accepted) stay small.
func eventFieldsCap(action string) int {
	switch action {
	case ActionKMSActivation:
		return 40
	case ActionBindAllowed, ActionBindRefused, ActionRequestRefused, ActionRateLimited, ActionShadowDecision:
		return 24
	}
	return 16
}

// uuidText returns the text of a well-known interface UUID without
// allocating; other UUIDs are formatted.
func uuidText(u rpcparse.UUID) string {
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

// eventFields returns the fields every event carries besides the
// connection's own.
func eventFields(action, outcome, reason string) []zap.Field {
	kind := "event"
	if action == ActionKMSDuplicateCMID || action == ActionKMSClockSkew {
		kind = "alert"
	}
	// Sized for the largest event (kms-activation), so building one never
	// regrows the slice.
	f := make([]zap.Field, 0, eventFieldsCap(action))
	f = append(f,
		zap.String("event.kind", kind),
		eventCategory,
		zap.Strings("event.type", eventTypes[action]),
		zap.String("event.action", action),
		zap.String("event.outcome", outcome),
	)
	if reason != "" {
		f = append(f, zap.String("event.reason", reason))
	}
	return f
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
