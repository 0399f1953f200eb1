// Package admin is the management HTTP server: /metrics (the Prometheus
// series of package event, with the Go runtime's and the process's),
// /healthz (the process answers) and /readyz (a valid config, the client
// listener bound and an upstream reached within the ready interval).
//
//	mgmt := admin.New(srv, cfg.Management.ReadyInterval) // srv is the *proxy.Server
//	go http.Serve(mln, mgmt.Handler())                   // mln: the management listener
//	go mgmt.CheckUpstreams(ctx)                          // readiness without traffic
//	mgmt.SetListening(true)                              // once the client listener is bound
//
// It watches the proxy through the small Proxy interface and never imports
// package proxy.
//
// It belongs on an internal address: it is never on the client-facing
// listener, and it has no authentication of its own. It changes nothing:
// no endpoint reloads, reconfigures or stops the proxy. CheckUpstreams
// only connects and closes, sending no bytes, so a KMS host counts nothing.
package admin
