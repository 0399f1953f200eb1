// Package syslog ships every event to a remote collector beside stdout:
// RFC 5424 (the ECS JSON as MSG, the key fields as structured data) or
// CEF, over UDP, TCP (octet-counted) or TLS (RFC 5425).
//
//	sink, core, err := syslog.NewSink(syslog.OptionsFromConfig(cfg.Log, version),
//		metrics.LogEventsDropped, func(d syslog.Drops) { syslog.LogDrops(log, d) })
//	log, _ := event.NewLogger(cfg.Log.Level, cfg.Log.Format, os.Stdout, core)
//	defer sink.Close() // flushes what is queued, for a short while
//
// The core's Write encodes the event (the same ECS JSON as stdout) and
// offers it to a bounded queue with a non-blocking send; one writer
// goroutine formats (RFC 5424 or CEF) and sends. A full queue, a collector
// that is down, or one that stops reading never slows a client connection:
// the event is dropped, counted in kmsproxy_log_events_dropped_total, and a
// log-events-dropped warning says how many, at most once per WarnInterval.
//
// NewSink refuses an address that is not udp://, tcp:// or tls://host:port,
// an unknown format or level, and a certificate without its key; the sink
// never speaks TLS below 1.2. It does not retry a
// message that failed to send, spool to disk, or follow config reloads (a
// new address needs a restart).
package syslog
