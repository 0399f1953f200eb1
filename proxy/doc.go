// Package proxy is kmsproxy's network side: it accepts client
// connections, admits them, runs one session per connection that drives
// the association state machine (package assoc) over the client and host
// sockets, dials the upstream KMS hosts, parks quiet connections and
// enforces the handshake and idle timers.
//
//	rt, err := config.NewRuntime(cfg)         // the live policy (and a shadow one)
//	srv := proxy.New(rt, log, metrics)        // log: event.NewLogger; metrics: event.NewMetrics
//	ln, err := proxy.Listen(ctx, cfg.Listen)
//	go srv.Serve(ln)
//	srv.Reload(path)                          // SIGHUP: the next PDU sees the new policy; a bad file keeps the old
//	srv.Shutdown(ctx)                         // stop accepting, let sessions finish, then close them
//
// At accept, before a byte is read or an upstream dialled, a connection is
// refused when its source is in no admitted zone (DESIGN rule 1), when
// limits.connections or limits.connections_per_source is reached, when the
// file-descriptor budget (RLIMIT_NOFILE) has no room for it, during
// shutdown, and, from a trusted load balancer, when its PROXY header does not
// parse. A connection that has sent nothing yet, or a bound one quiet
// between calls, is parked in one epoll set (Linux) with no goroutine and no
// buffers. The host is read only while the client waits for an answer;
// what it sends unasked is checked before the client's next PDU and at close.
//
// It holds no protocol rule of its own: every PDU goes through assoc,
// whose Step the session acts on in one place (forward, answer, close), and
// every policy decision is acl's. It does not parse PDUs (rpcparse), define
// the event schema or metrics (event), ship events (event/syslog), serve
// /metrics or the health checks (admin), detect CMID clones (kmswatch) or
// replay captures (replay). It never forwards a byte the association did
// not pass, never answers for the host, and does no TLS or load balancing:
// upstreams are tried in order.
package proxy
