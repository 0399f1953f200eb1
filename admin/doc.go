// Package admin is the management HTTP server: a read-only status page
// for the operator, its facts as JSON, the activation inventory, the
// Prometheus series and the health probes.
//
//	mgmt := admin.New(srv, cfg.Management.ReadyInterval) // srv is the *proxy.Server
//	mgmt.SetStatus(admin.Status{                         // before Handler is served
//		Version: version, ConfigPath: path, Started: start,
//		Hosts:     hosts, // the proxy's *kmswatch.Hosts; nil: no host view yet
//		Inventory: store, // an *inventory.Store; nil: inventory disabled
//	})
//	go http.Serve(mln, mgmt.Handler()) // mln: the management listener
//	go mgmt.CheckUpstreams(ctx)        // readiness without traffic
//	mgmt.SetListening(true)            // once the client listener is bound
//
// Endpoints:
//
//	/             the status page (HTML): version, uptime, config file and
//	              when it was loaded, the last reload, the effective rule
//	              table, connections and activations and refusals in the
//	              last minute and hour, the last 50 refusals and alerts,
//	              the KMS host's count per product group against what its
//	              clients need (below-threshold groups marked: clients fail
//	              with 0xC004F038), the host's error codes, upstream
//	              health, and the newest 100 inventory rows with a search
//	              form (q, zone, application, status, since) and a summary
//	/status.json  the same facts as JSON, from the same snapshot
//	/inventory    the inventory rows the search selects (the page's
//	              parameters and limit): JSON, or CSV for Accept: text/csv
//	              or ?format=csv; 404 when the inventory is disabled, 400
//	              for a bad since or limit
//	/static/…     the page's stylesheet and icon, compiled in
//	/metrics      the Prometheus series of package event, with the Go
//	              runtime's and the process's
//	/healthz      the process answers
//	/readyz       a valid config, the client listener bound and an
//	              upstream reached within the ready interval
//
// It watches the proxy through the small Proxy interface and never imports
// package proxy; it reads the inventory through InventoryReader.
//
// It belongs on an internal address: it is never on the client-facing
// listener, and it has no authentication of its own. It changes nothing:
// every route answers GET and HEAD only (anything else is 405 with Allow),
// no form or link reloads, reconfigures or stops the proxy (the one form
// is the inventory search, a GET to the page itself), and reading a
// counter for the page adds no series to /metrics. CheckUpstreams only
// connects and closes, sending no bytes, so a KMS host counts nothing.
//
// Everything a client sent (workstation names, SKU text, messages that
// quote it) reaches the page through html/template, which escapes it;
// control and invisible format characters are shown as escapes, and long
// values wrap instead of widening the layout. The page has no script and
// nothing inline: every response carries a Content-Security-Policy that
// allows only this server's stylesheet and images and forms submitted to
// it, no framing, with X-Content-Type-Options: nosniff, Referrer-Policy:
// no-referrer, X-Frame-Options: DENY and Cache-Control: no-store (the
// static files, whose URLs change with their content, are cached).
package admin
