package event

import (
	"sync/atomic"

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

	// What admins alert on (issue 14): the KMS host's own view, per zone
	// series, the build, each upstream's health and the inventory's sink.
	KMSHostCurrentCount  *prometheus.GaugeVec   // kms_counted_id, name
	KMSHostRequiredCount *prometheus.GaugeVec   // kms_counted_id, name
	KMSHostErrors        *prometheus.CounterVec // hresult, name
	ZoneActivations      *prometheus.CounterVec // zone, result
	ZoneRefusals         *prometheus.CounterVec // zone, action, reason
	KMSCallSeconds       prometheus.Histogram
	BuildInfo            *prometheus.GaugeVec // version, revision, goversion
	UpstreamUp           *prometheus.GaugeVec // upstream
	UpstreamLastSuccess  *prometheus.GaugeVec // upstream
	// inventory reads the inventory writer's counts at scrape time
	// (SetInventoryStats); nil: no inventory, no series.
	inventory atomic.Pointer[func() InventoryStats]

	// Recent is what the status page shows of the last hour.
	Recent *Recent
	// upstreams is each upstream's health for the status page.
	upstreams upstreamHealth

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
		// Named _clients, not _count: promtool check metrics reserves a
		// _count suffix for histograms and summaries.
		KMSHostCurrentCount: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kmsproxy_kms_host_current_clients", Help: "The KMS host's current count per product group, from its last successful reply; clients need at least the group's required count.",
		}, []string{"kms_counted_id", "name"}),
		KMSHostRequiredCount: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kmsproxy_kms_host_required_clients", Help: "The highest required client count (N policy) clients of a product group asked for: 25 client OS, 5 server OS and Office.",
		}, []string{"kms_counted_id", "name"}),
		KMSHostErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsproxy_kms_host_errors_total", Help: "Activation replies in which the KMS host returned an error HRESULT.",
		}, []string{"hresult", "name"}),
		ZoneActivations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsproxy_kms_zone_activations_total", Help: "KMS activation calls by source zone and result.",
		}, []string{"zone", "result"}),
		ZoneRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsproxy_zone_refusals_total", Help: "Refusals, protocol violations and rate limits by source zone, action and reason.",
		}, []string{"zone", "action", "reason"}),
		KMSCallSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kmsproxy_kms_call_duration_seconds", Help: "Time from forwarding a KMS call to the host's answer.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		BuildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kmsproxy_build_info", Help: "Always 1; the labels say which build runs.",
		}, []string{"version", "revision", "goversion"}),
		UpstreamUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kmsproxy_upstream_up", Help: "1 if the last connection or reachability check to the upstream succeeded.",
		}, []string{"upstream"}),
		UpstreamLastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kmsproxy_upstream_last_success_timestamp_seconds", Help: "Unix time of the last successful connection to the upstream.",
		}, []string{"upstream"}),
		Recent: NewRecent(50),
	}
	m.bindAllowed = m.Decisions.WithLabelValues(ActionBindAllowed, acl.ReasonAllowed)
	m.bytesToHost = m.Bytes.WithLabelValues("client_to_host")
	m.bytesToClient = m.Bytes.WithLabelValues("host_to_client")
	// The runtime's and the process's own series (go_goroutines,
	// go_memstats_*, process_open_fds, process_resident_memory_bytes…), so a
	// leak of goroutines, heap or descriptors shows on the same dashboard.
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	r.MustRegister(m.Connections, m.ConnectionsActive, m.Decisions, m.KMSActivations, m.UpstreamDialSeconds,
		m.UpstreamErrors, m.Bytes, m.ConfigReloads, m.LogEventsDropped, m.ShadowDifferences, m.ConfigLastReload,
		m.KMSHostCurrentCount, m.KMSHostRequiredCount, m.KMSHostErrors, m.ZoneActivations, m.ZoneRefusals,
		m.KMSCallSeconds, m.BuildInfo, m.UpstreamUp, m.UpstreamLastSuccess,
		inventoryCollector{m})
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

// notableKind is the status page's kind of a decision's action, "" for
// one it does not list (allowed binds, reloads that worked, shadow
// decisions).
func notableKind(action string) string {
	switch action {
	case ActionConnectionRefused, ActionBindRefused, ActionRequestRefused, ActionProtocolViolation, ActionRateLimited:
		return NotableRefusal
	case ActionKMSDuplicateCMID, ActionKMSClockSkew:
		return NotableAlert
	case ActionUpstreamUnavailable, ActionConfigReloadFailed, ActionPolicyAllowsNothing, ActionLogEventsDropped:
		return NotableError
	}
	return ""
}

// SetBuildInfo sets kmsproxy_build_info.
func (m *Metrics) SetBuildInfo(version, revision, goVersion string) {
	m.BuildInfo.WithLabelValues(version, revision, goVersion).Set(1)
}

// InventoryStats are the inventory writer's counts.
type InventoryStats struct {
	Written, Dropped, Failed uint64
}

// SetInventoryStats makes the kmsproxy_inventory_* series read stats at
// every scrape.
func (m *Metrics) SetInventoryStats(stats func() InventoryStats) { m.inventory.Store(&stats) }

var (
	inventoryWrittenDesc = prometheus.NewDesc("kmsproxy_inventory_written_total", "Activations written to the inventory database.", nil, nil)
	inventoryDroppedDesc = prometheus.NewDesc("kmsproxy_inventory_dropped_total", "Activations the inventory dropped because its queue was full.", nil, nil)
	inventoryFailedDesc  = prometheus.NewDesc("kmsproxy_inventory_write_errors_total", "Activations lost because a write to the inventory database failed.", nil, nil)
)

type inventoryCollector struct{ m *Metrics }

func (c inventoryCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- inventoryWrittenDesc
	ch <- inventoryDroppedDesc
	ch <- inventoryFailedDesc
}

func (c inventoryCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.m.inventory.Load()
	if f == nil {
		return
	}
	st := (*f)()
	ch <- prometheus.MustNewConstMetric(inventoryWrittenDesc, prometheus.CounterValue, float64(st.Written))
	ch <- prometheus.MustNewConstMetric(inventoryDroppedDesc, prometheus.CounterValue, float64(st.Dropped))
	ch <- prometheus.MustNewConstMetric(inventoryFailedDesc, prometheus.CounterValue, float64(st.Failed))
}
