package kmswatch

import (
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// HostGroup is the KMS host's count for one product group (KMS counted
// ID) as its last successful reply gave it, beside the count clients of the
// group need: a count below Required means the host answers and clients
// still fail with 0xC004F038 (SL_E_VL_NOT_ENOUGH_COUNT).
type HostGroup struct {
	KMSCountedID string    `json:"kms_counted_id"`
	Name         string    `json:"name"`
	CurrentCount uint32    `json:"current_count"`
	Required     uint32    `json:"required_count"` // highest N policy its clients asked for
	LastReply    time.Time `json:"last_reply"`
}

// Below reports whether the host's count is under what clients need.
func (g HostGroup) Below() bool { return g.CurrentCount < g.Required }

// HostError is one error HRESULT the host returned, how often, and when
// last.
type HostError struct {
	HRESULT   string    `json:"hresult"`
	Name      string    `json:"name"`
	Count     uint64    `json:"count"`
	Last      time.Time `json:"last"`
	LastGroup string    `json:"last_kms_counted_name"`
}

// maxHostEntries bounds each table. Groups are added only from replies the
// host answered with success, so only IDs the host knows; error codes come
// from the host too. The bound is for a host that misbehaves.
const maxHostEntries = 64

// Hosts is the KMS host view: per product group the count the host
// reported, and the error codes it returned. It feeds
// kmsproxy_kms_host_current_clients, _required_count and _errors_total and
// the status page. Safe for concurrent use.
type Hosts struct {
	m      *event.Metrics
	mu     sync.Mutex
	groups map[string]*HostGroup
	errs   map[uint32]*HostError
}

// NewHosts returns an empty host view counting in m.
func NewHosts(m *event.Metrics) *Hosts {
	return &Hosts{m: m, groups: make(map[string]*HostGroup), errs: make(map[uint32]*HostError)}
}

// ObserveReply records the host's answer to req: hr its HRESULT and, when
// hr is 0, currentCount from the decoded reply.
func (h *Hosts) ObserveReply(req *kms.Request, hr, currentCount uint32) {
	if h == nil {
		return
	}
	now := time.Now()
	group := groupName(req)
	h.mu.Lock()
	defer h.mu.Unlock()
	if hr != 0 {
		e := h.errs[hr]
		if e == nil {
			if len(h.errs) >= maxHostEntries {
				return
			}
			name := kms.HRESULTName(hr)
			if name == "" {
				name = "unknown"
			}
			e = &HostError{HRESULT: hresultHex(hr), Name: name}
			h.errs[hr] = e
		}
		e.Count++
		e.Last, e.LastGroup = now, group
		h.m.KMSHostErrors.WithLabelValues(e.HRESULT, e.Name).Inc()
		return
	}
	id := req.KMSCountedID.String()
	g := h.groups[id]
	if g == nil {
		if len(h.groups) >= maxHostEntries {
			return
		}
		g = &HostGroup{KMSCountedID: id, Name: group}
		h.groups[id] = g
	}
	g.CurrentCount, g.LastReply = currentCount, now
	if req.RequiredCount > g.Required {
		g.Required = req.RequiredCount
	}
	h.m.KMSHostCurrentCount.WithLabelValues(g.KMSCountedID, g.Name).Set(float64(g.CurrentCount))
	h.m.KMSHostRequiredCount.WithLabelValues(g.KMSCountedID, g.Name).Set(float64(g.Required))
}

// Groups returns the product groups by name.
func (h *Hosts) Groups() []HostGroup {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]HostGroup, 0, len(h.groups))
	for _, g := range h.groups {
		out = append(out, *g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Errors returns the host's error codes, most recent first.
func (h *Hosts) Errors() []HostError {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]HostError, 0, len(h.errs))
	for _, e := range h.errs {
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Last.After(out[j].Last) })
	return out
}

func groupName(req *kms.Request) string {
	if n := kms.KMSCountedIDName(req.KMSCountedID); n != "" {
		return n
	}
	return req.KMSCountedID.String()
}

func hresultHex(hr uint32) string {
	s := strings.ToUpper(strconv.FormatUint(uint64(hr), 16))
	return "0x" + strings.Repeat("0", 8-len(s)) + s
}
