// Package dns tests KMS discovery by DNS (issue 17) with real clients
// against the real binary: dig (Debian bind9-dnsutils) asks `kmsproxy
// serve`'s responder for SRV, A, AAAA, SOA, NS and ANY, over UDP and TCP,
// with and without EDNS0, names outside its zones and sources outside
// dns.allow_from; a flood from one source is dropped while another is
// answered; `kmsproxy probe --discover` finds the proxy through the
// responder and fails (exit 1) for a record that points elsewhere.
//
// TestSystemResolver re-executes the test binary in new network and mount
// namespaces (as root), binds a private /etc/resolv.conf naming the
// responder on port 53, and finds the proxy through the system resolver
// the way a KMS client does: dig without @server, `kmsproxy probe
// --discover` without --resolver, then a real activation to the address
// and port the SRV lookup gave (Go's resolver, reading /etc/resolv.conf).
// No KMS client that does its own SRV lookup (vlmcs) can be installed
// here, so this is the same path driven by Go's resolver instead.
//
//	go test ./test/dns
//
// dig missing is a failure naming the package to install, not a skip.
// The test package has no non-test code; this file only documents it.
package dns
