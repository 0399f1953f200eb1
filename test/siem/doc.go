// Package siem holds the end-to-end tests of what a SIEM receives: events
// shipped by the syslog sink to a real rsyslog (UDP, TCP) and to a TLS
// listener, parsed back field by field, and the Prometheus metrics scraped
// over HTTP after a scripted mix of traffic. The tests start rsyslogd
// themselves (Debian package rsyslog); there is no non-test code here.
package siem
