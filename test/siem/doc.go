// Package siem holds the end-to-end tests of what a SIEM receives: events
// shipped by the syslog sink to a real rsyslog (UDP, TCP) and to a TLS
// listener, parsed back field by field, and the Prometheus metrics scraped
// over HTTP after a scripted mix of traffic.
//
//	go test ./test/siem
//
// The tests start rsyslogd themselves (Debian package rsyslog) on loopback,
// with their own config, and fail without it unless KMSPROXY_SKIP_RSYSLOG
// is set; they touch no system syslog configuration. There is no non-test
// code here.
package siem
