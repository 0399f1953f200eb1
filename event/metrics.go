package event

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/kmsproxy/kmsproxy/acl"
)

// Metrics are the Prometheus series of DESIGN Metrics. Label values come
// from fixed token sets (actions, reasons, zones from config, application
// names), so cardinality is bounded by configuration, never by traffic.
type Metrics struct {
	Registry            *prometheus.Registry
	Connections         *prometheus.CounterVec // zone, outcome
	ConnectionsActive   prometheus.Gauge
	Decisions           *prometheus.CounterVec // action, reason
	KMSActivations      *prometheus.CounterVec // application, version, result
	UpstreamDialSeconds prometheus.Histogram
	UpstreamErrors      *prometheus.CounterVec // upstream
	Bytes               *prometheus.CounterVec // direction
	ConfigReloads       *prometheus.CounterVec // result
	LogEventsDropped    prometheus.Counter
	ShadowDifferences   *prometheus.CounterVec // live, shadow
	ConfigLastReload    prometheus.Gauge

	// Children of the vectors above that every activation touches, looked
	// up once instead of hashing label values per PDU.
	bindAllowed                prometheus.Counter
	bytesToHost, bytesToClient prometheus.Counter
}

// NewMetrics creates and registers the series on a fresh registry.
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		Connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsproxy_connections_total", Help: "Client connections by source zone and outcome (accepted, refused).",
		}, []string{"zone", "outcome"}),
		ConnectionsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kmsproxy_connections_active", Help: "Client connections currently open.",
		}),
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsproxy_decisions_total", Help: "Decision events by action and reason.",
		}, []string{"action", "reason"}),
		KMSActivations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsproxy_kms_activations_total", Help: "KMS activation calls by application, protocol version and result.",
		}, []string{"application", "version", "result"}),
		UpstreamDialSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kmsproxy_upstream_dial_seconds", Help: "Time to connect to a KMS host.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		UpstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsproxy_upstream_errors_total", Help: "Failed connections to a KMS host.",
		}, []string{"upstream"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsproxy_bytes_total", Help: "Bytes relayed, by direction (client_to_host, host_to_client).",
		}, []string{"direction"}),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsproxy_config_reloads_total", Help: "Configuration reloads by result (success, failure).",
		}, []string{"result"}),
		LogEventsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kmsproxy_log_events_dropped_total", Help: "Events the syslog sink dropped because its queue was full.",
		}),
		ShadowDifferences: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsproxy_shadow_differences_total", Help: "Decisions where the shadow policy differs from the live one.",
		}, []string{"live", "shadow"}),
		ConfigLastReload: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kmsproxy_config_last_reload_successful", Help: "1 if the last configuration load succeeded.",
		}),
	}
	m.bindAllowed = m.Decisions.WithLabelValues(ActionBindAllowed, acl.ReasonAllowed)
	m.bytesToHost = m.Bytes.WithLabelValues("client_to_host")
	m.bytesToClient = m.Bytes.WithLabelValues("host_to_client")
	// The runtime's and the process's own series (go_goroutines,
	// go_memstats_*, process_open_fds, process_resident_memory_bytes…), so a
	// leak of goroutines, heap or descriptors shows on the same dashboard.
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	r.MustRegister(m.Connections, m.ConnectionsActive, m.Decisions, m.KMSActivations, m.UpstreamDialSeconds,
		m.UpstreamErrors, m.Bytes, m.ConfigReloads, m.LogEventsDropped, m.ShadowDifferences, m.ConfigLastReload)
	return m
}

// AddBytesToHost counts n bytes relayed from a client to its host.
func (m *Metrics) AddBytesToHost(n int) { m.bytesToHost.Add(float64(n)) }

// AddBytesToClient counts n bytes relayed from a host to its client.
func (m *Metrics) AddBytesToClient(n int) { m.bytesToClient.Add(float64(n)) }

// countDecision counts one kmsproxy_decisions_total{action, reason}.
// bind-allowed, which every activation makes, carries no event.reason and
// is counted under reason "allowed" (acl.ReasonAllowed), on its child
// looked up once.
func (m *Metrics) countDecision(action, reason string) {
	if action == ActionBindAllowed {
		m.bindAllowed.Inc()
		return
	}
	m.Decisions.WithLabelValues(action, reason).Inc()
}
