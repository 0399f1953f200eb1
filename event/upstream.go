package event

import (
	"sort"
	"sync"
	"time"
)

// UpstreamHealth is what the status page says of one upstream KMS host.
type UpstreamHealth struct {
	Address     string    `json:"address"`
	Up          bool      `json:"up"`
	LastOK      time.Time `json:"last_ok"`
	LastFailure time.Time `json:"last_failure"`
	LastError   string    `json:"last_error"`
}

type upstreamHealth struct {
	mu sync.Mutex
	by map[string]*UpstreamHealth
}

// UpstreamResult records the outcome of a connection or reachability
// check to upstream addr (err nil: reached) in kmsproxy_upstream_up,
// kmsproxy_upstream_last_success_timestamp_seconds and the status page.
func (m *Metrics) UpstreamResult(addr string, err error) {
	now := time.Now()
	u := &m.upstreams
	u.mu.Lock()
	if u.by == nil {
		u.by = make(map[string]*UpstreamHealth)
	}
	h := u.by[addr]
	if h == nil {
		if len(u.by) >= maxUpstreamsTracked {
			u.mu.Unlock()
			return
		}
		h = &UpstreamHealth{Address: addr}
		u.by[addr] = h
	}
	if err == nil {
		h.Up, h.LastOK = true, now
	} else {
		h.Up, h.LastFailure, h.LastError = false, now, err.Error()
	}
	u.mu.Unlock()
	if err == nil {
		m.UpstreamUp.WithLabelValues(addr).Set(1)
		m.UpstreamLastSuccess.WithLabelValues(addr).Set(float64(now.UnixNano()) / 1e9)
	} else {
		m.UpstreamUp.WithLabelValues(addr).Set(0)
	}
}

// maxUpstreamsTracked bounds the health table: upstreams come from the
// config (validation caps them far lower), never from traffic.
const maxUpstreamsTracked = 1024

// Upstreams returns each upstream's health, by address.
func (m *Metrics) Upstreams() []UpstreamHealth {
	u := &m.upstreams
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]UpstreamHealth, 0, len(u.by))
	for _, h := range u.by {
		out = append(out, *h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}
