package proxy

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsproxy/kmsproxy/pool"
)

// poolCollector exports the upstream pool's state at each scrape: what
// operators watch to see the gateway work (associations open, in use and
// idle per upstream; dials; host-closed associations; retries; refusals
// for a full queue; one-association-per-call hosts).
type poolCollector struct {
	stats func() (pool.Stats, bool)
}

var (
	poolAssocDesc = prometheus.NewDesc("kmsproxy_upstream_pool_associations",
		"Pooled host associations per upstream by state (open counts against max_associations; in_use, idle, dialing are parts of it).", []string{"upstream", "state"}, nil)
	poolDialsDesc = prometheus.NewDesc("kmsproxy_upstream_pool_dials_total",
		"Dials of pooled host associations per upstream, by result.", []string{"upstream", "result"}, nil)
	poolHostClosedDesc = prometheus.NewDesc("kmsproxy_upstream_pool_host_closed_total",
		"Pooled associations the host ended (idle, right after an answer, or mid-call).", []string{"upstream"}, nil)
	poolPerCallDesc = prometheus.NewDesc("kmsproxy_upstream_pool_per_call",
		"1 while an upstream is served one association per call (a host that closes after every answer).", []string{"upstream"}, nil)
	poolDownDesc = prometheus.NewDesc("kmsproxy_upstream_pool_down",
		"1 while an upstream is skipped after failed dials (fail fast, no dial storm).", []string{"upstream"}, nil)
	poolCallsDesc   = prometheus.NewDesc("kmsproxy_upstream_pool_calls_total", "Calls answered over pooled associations.", nil, nil)
	poolRetriesDesc = prometheus.NewDesc("kmsproxy_upstream_pool_retries_total",
		"Calls sent again because their association died before any byte of the answer.", nil, nil)
	poolBusyDesc    = prometheus.NewDesc("kmsproxy_upstream_pool_busy_total", "Calls refused because the wait queue or the source's share of it was full.", nil, nil)
	poolWaitingDesc = prometheus.NewDesc("kmsproxy_upstream_pool_waiting", "Calls waiting for a pooled association now.", nil, nil)
)

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolAssocDesc, poolDialsDesc, poolHostClosedDesc, poolPerCallDesc, poolDownDesc, poolCallsDesc, poolRetriesDesc, poolBusyDesc, poolWaitingDesc} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	st, ok := c.stats()
	if !ok {
		return // no pool made yet: nothing to say
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	for _, u := range st.Upstreams {
		gauge(poolAssocDesc, float64(u.Open), u.Addr, "open")
		gauge(poolAssocDesc, float64(u.InUse), u.Addr, "in_use")
		gauge(poolAssocDesc, float64(u.Idle), u.Addr, "idle")
		gauge(poolAssocDesc, float64(u.Dialing), u.Addr, "dialing")
		counter(poolDialsDesc, u.Dials-u.DialFailures, u.Addr, "ok")
		counter(poolDialsDesc, u.DialFailures, u.Addr, "failed")
		counter(poolHostClosedDesc, u.HostClosed, u.Addr)
		gauge(poolPerCallDesc, b(u.PerCall), u.Addr)
		gauge(poolDownDesc, b(u.Down), u.Addr)
	}
	counter(poolCallsDesc, st.Calls)
	counter(poolRetriesDesc, st.Retries)
	counter(poolBusyDesc, st.Busy)
	gauge(poolWaitingDesc, float64(st.Waiting))
}
