package event

// The DNS responder's actions (package kmsdns, issue 17): one event per
// query. dns-query is an answer from the configured zones (NOERROR or
// NXDOMAIN), logged at debug; dns-refused is a query the responder would
// not answer from them (REFUSED, FORMERR, NOTIMP, BADVERS, or dropped),
// logged at info, its event.reason one of the ReasonDNS* below.
const (
	ActionDNSQuery   = "dns-query"
	ActionDNSRefused = "dns-refused"
)

// Reasons of dns-refused, also the reason label of
// kmsproxy_dns_refused_total.
const (
	ReasonDNSSourceNotAllowed = "dns-source-not-allowed" // the source is in no zone of dns.allow_from: REFUSED
	ReasonDNSNotAuthoritative = "dns-not-authoritative"  // a name outside dns.zones, or a class other than IN: REFUSED
	ReasonDNSZoneTransfer     = "dns-zone-transfer"      // AXFR or IXFR: REFUSED
	ReasonDNSMalformed        = "dns-malformed"          // a query that does not parse: FORMERR, or dropped without a header
	ReasonDNSNotImplemented   = "dns-not-implemented"    // an opcode other than QUERY: NOTIMP
	ReasonDNSBadVersion       = "dns-bad-version"        // EDNS version above 0: BADVERS
	ReasonDNSResponse         = "dns-response"           // a message with QR set: dropped, never answered
	ReasonDNSOversize         = "dns-oversize"           // larger than dns.max_message_size: dropped
	ReasonDNSRateLimited      = "dns-rate-limited"       // over the source's rate: dropped (logged once per episode)
	ReasonDNSTCPLimit         = "dns-tcp-connection-limit"
)
