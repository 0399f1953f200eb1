package admin

import (
	"context"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
)

// Proxy is what the management server watches; *proxy.Server is one.
type Proxy interface {
	Runtime() *config.Runtime  // nil until a valid config is loaded
	Metrics() *event.Metrics   // served on /metrics
	LastUpstreamOK() time.Time // zero if never
	MarkUpstreamOK()           // CheckUpstreams reached one
}

// Management serves the status page, /status.json, /inventory, /metrics,
// /healthz and /readyz. It belongs on an internal address: it is never on
// the client-facing listener.
type Management struct {
	srv      Proxy
	bound    atomic.Bool
	interval time.Duration
	status   atomic.Pointer[Status]
}

// New returns the management handler set for srv. interval is how recent
// an upstream contact must be for /readyz (0: 30s).
func New(srv Proxy, interval time.Duration) *Management {
	if interval <= 0 {
		interval = 30 * time.Second
	}
	return &Management{srv: srv, interval: interval}
}

// SetListening records that the client listener is bound.
func (m *Management) SetListening(v bool) { m.bound.Store(v) }

// Handler returns the HTTP handler. Every route answers GET and HEAD
// only (405 with Allow otherwise), an unknown path is 404, and every
// response carries the headers of secure.
func (m *Management) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", m.servePage)
	mux.HandleFunc("GET /status.json", m.serveStatusJSON)
	mux.HandleFunc("GET /inventory", m.serveInventory)
	mux.Handle("GET /static/", http.HandlerFunc(serveStatic))
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.srv.Metrics().Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if why := m.notReady(); why != "" {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	return secure(mux)
}

// contentSecurityPolicy lets a page load only this server's stylesheet
// and images and submit forms only here: no script at all, nothing
// inline, no framing.
const contentSecurityPolicy = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// secure sets the headers every management response carries.
func secure(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", contentSecurityPolicy)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

func (m *Management) notReady() string {
	switch {
	case m.srv.Runtime() == nil:
		return "no valid config"
	case !m.bound.Load():
		return "listener not bound"
	case time.Since(m.srv.LastUpstreamOK()) > m.interval:
		return "no upstream reached in the last " + m.interval.String()
	}
	return ""
}

// CheckUpstreams dials each upstream with a plain TCP connect every
// interval until ctx ends, so /readyz and each upstream's health
// (kmsproxy_upstream_up, the status page) reflect reachability even
// without traffic. It sends no bytes: the host sees a connect and a close.
func (m *Management) CheckUpstreams(ctx context.Context) {
	t := time.NewTicker(m.interval / 3)
	defer t.Stop()
	for {
		rt := m.srv.Runtime()
		// Every upstream, not just the first that answers: each one's
		// health is a series (kmsproxy_upstream_up) and a status page row,
		// so a dead standby shows before it is needed.
		for _, addr := range rt.Config.Upstreams {
			d := net.Dialer{Timeout: rt.Config.Limits.UpstreamConnectTimeout}
			c, err := d.DialContext(ctx, "tcp", addr)
			if ctx.Err() != nil {
				return
			}
			m.srv.Metrics().UpstreamResult(addr, err)
			if err == nil {
				c.Close()
				m.srv.MarkUpstreamOK()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
