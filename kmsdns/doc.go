// Package kmsdns lets DMZ clients find the proxy by DNS without asking
// internal DNS (issue 17). A KMS client looks up the SRV record
// _vlmcs._tcp under its primary DNS suffix; this package prints the
// records an admin publishes for it, and serves them itself when asked to.
//
//	kmsdns.WriteRecords(os.Stdout, kmsdns.SiteFor(cfg, "dmz.example.com")) // zone file, dnsmasq, unbound, PowerShell, per-client
//
//	srv, err := kmsdns.Listen(cfg, log, metrics) // dns.listen, UDP and TCP
//	srv.Start()
//	srv.Apply(newCfg) // on reload: zones, allow_from, rate
//	defer srv.Close()
//
//	res := responder.Answer(query, src, udp, buf) // the query path alone: one Result, no I/O
//
// The responder is authoritative for dns.zones and nothing else: per
// zone, the SRV record (_vlmcs._tcp.<zone> SRV 0 0 <port> <target>, the
// target's A/AAAA added), the target's A and AAAA, and the apex's SOA
// and NS, so the DMZ's DNS server can delegate the zone to it. Names are
// case-insensitive; NXDOMAIN and NODATA carry the SOA; ANY gets one
// record set (RFC 8482); EDNS0 sizes the UDP answer (capped at
// dns.max_udp_size), and an answer that does not fit is truncated with
// TC set. Every message is read and written by golang.org/x/net's
// dnsmessage.
//
// The order is the threat order: each source's token bucket first (over
// it, the query is dropped, as response rate limiting does: an answer,
// even a truncated one, to a spoofed source is reflection); then a source
// outside dns.allow_from's zones gets REFUSED; then the query is checked
// (FORMERR, NOTIMP, BADVERS); then a name outside the zones, another
// class or a zone transfer gets REFUSED. A message that is itself a
// response is never answered.
//
// It never recurses, forwards, transfers a zone, accepts an update or
// NOTIFY, or signs (no DNSSEC). It holds no records beyond the config's.
package kmsdns
