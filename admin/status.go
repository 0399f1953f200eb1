package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/inventory"
	"github.com/kmsproxy/kmsproxy/kmswatch"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// Status is what the status page knows besides the Proxy: set once with
// SetStatus before Handler is served.
type Status struct {
	Version    string
	ConfigPath string // the config file given on the command line
	Started    time.Time
	Hosts      *kmswatch.Hosts // nil: no host view yet
	Inventory  InventoryReader // nil: inventory disabled (/inventory answers 404)
}

// InventoryReader is the part of the inventory the management server
// reads; *inventory.Store is one.
type InventoryReader interface {
	Query(ctx context.Context, f inventory.Filter) ([]inventory.Row, error)
}

// SetStatus sets what the status page shows besides the proxy's own state.
func (m *Management) SetStatus(s Status) { m.status.Store(&s) }

// Page sizes.
const (
	pageRows      = 100   // inventory rows on the page and in /status.json
	summaryRows   = 20000 // rows the page's summary line covers at most
	notableRows   = 50    // refusals and alerts listed
	queryTimeout  = 10 * time.Second
	maxQueryParam = 256 // bytes kept of each search parameter
)

// snapshot is everything the page shows, read once per request: the
// template renders it and /status.json encodes it, so both say the same.
type snapshot struct {
	Version       string    `json:"version"`
	Now           time.Time `json:"now"`
	Started       time.Time `json:"started"` // zero when unknown
	UptimeSeconds float64   `json:"uptime_seconds"`

	Config configView `json:"config"`

	ConnectionsActive float64             `json:"connections_active"`
	Traffic           []event.WindowCount `json:"traffic"`  // connections, activations, refusals: always present
	Refusals          []event.WindowCount `json:"refusals"` // per action/reason
	Notables          []event.Notable     `json:"notables"` // newest first

	Hosts     *hostsView             `json:"kms_host"` // nil: no host view yet
	Upstreams []event.UpstreamHealth `json:"upstreams"`
	Inventory inventoryView          `json:"inventory"`

	// Attention lists what needs an operator, for the banner on top.
	Attention []string `json:"attention"`

	// status is the HTTP status the request earns (400 for a bad since).
	status int
}

type configView struct {
	Loaded    bool      `json:"loaded"` // a valid config is running
	Path      string    `json:"path"`
	LoadedAt  time.Time `json:"loaded_at"`
	Effective string    `json:"effective"` // the rule table as kmsproxy check prints it
	Zones     []string  `json:"zones"`

	ReloadsOK      uint64    `json:"reloads_succeeded"`
	ReloadsFailed  uint64    `json:"reloads_failed"`
	LastReload     string    `json:"last_reload"` // none, succeeded or failed
	LastFailure    time.Time `json:"last_failure,omitzero"`
	LastFailureMsg string    `json:"last_failure_message,omitempty"`
}

type hostsView struct {
	Groups []hostGroup          `json:"groups"`
	Errors []kmswatch.HostError `json:"errors"`
}

type hostGroup struct {
	kmswatch.HostGroup
	Below bool `json:"below_threshold"`
}

type inventoryView struct {
	Enabled bool `json:"enabled"`
	// Query is the search as the request gave it (the form shows it back).
	Query inventoryQuery  `json:"query"`
	Rows  []inventory.Row `json:"rows"`
	// Shown is len(Rows); More says the query matched beyond them.
	More      bool              `json:"more"`
	Summary   string            `json:"summary"` // the one-line summary (inventory.Summary.String)
	Counts    inventory.Summary `json:"summary_counts"`
	Truncated bool              `json:"summary_truncated"` // the summary covers the newest summaryRows only
	Error     string            `json:"error,omitempty"`
	ExportCSV string            `json:"-"`
	ExportJS  string            `json:"-"`
	bad       bool              // the search itself is wrong (a bad since): 400
}

type inventoryQuery struct {
	Q           string `json:"q"`
	Zone        string `json:"zone"`
	Application string `json:"application"`
	Status      string `json:"status"`
	Since       string `json:"since"`
}

func (q inventoryQuery) values() url.Values {
	v := url.Values{}
	for _, kv := range [][2]string{{"q", q.Q}, {"zone", q.Zone}, {"application", q.Application}, {"status", q.Status}, {"since", q.Since}} {
		if kv[1] != "" {
			v.Set(kv[0], kv[1])
		}
	}
	return v
}

// readQuery takes the inventory search parameters of a request.
func readQuery(v url.Values) inventoryQuery {
	g := func(k string) string {
		s := strings.TrimSpace(v.Get(k))
		if len(s) > maxQueryParam {
			s = s[:maxQueryParam]
		}
		return s
	}
	return inventoryQuery{Q: g("q"), Zone: g("zone"), Application: g("application"), Status: g("status"), Since: g("since")}
}

// filter maps the search to an inventory.Filter; the error is a bad since.
func (q inventoryQuery) filter(now time.Time) (inventory.Filter, error) {
	f := inventory.Filter{Search: q.Q, Zone: q.Zone, Application: q.Application, Status: q.Status}
	if q.Since != "" {
		t, err := inventory.ParseSince(q.Since, now)
		if err != nil {
			return f, errors.New(strings.TrimPrefix(err.Error(), "inventory: "))
		}
		f.Since = t
	}
	return f, nil
}

// snapshot reads everything the page shows.
func (m *Management) snapshot(ctx context.Context, v url.Values) *snapshot {
	st := m.statusOrZero()
	now := time.Now()
	s := &snapshot{Version: st.Version, Now: now, Started: st.Started, status: http.StatusOK}
	if !st.Started.IsZero() {
		s.UptimeSeconds = now.Sub(st.Started).Seconds()
	}
	if s.Version == "" {
		s.Version = "unknown"
	}

	met := m.srv.Metrics()
	s.Config = m.configView(st, met)
	if met != nil {
		s.ConnectionsActive = gaugeValue(met.ConnectionsActive)
		s.Traffic, s.Refusals = windows(met.Recent.Windows())
		s.Notables = met.Recent.Notables()
		if len(s.Notables) > notableRows {
			s.Notables = s.Notables[:notableRows]
		}
		s.Upstreams = met.Upstreams()
	} else {
		s.Traffic, _ = windows(nil)
	}
	if st.Hosts != nil {
		hv := &hostsView{Errors: st.Hosts.Errors()}
		for _, g := range st.Hosts.Groups() {
			hv.Groups = append(hv.Groups, hostGroup{HostGroup: g, Below: g.Below()})
		}
		s.Hosts = hv
	}
	s.Inventory = m.inventoryView(ctx, st, v, now)
	if s.Inventory.bad {
		s.status = http.StatusBadRequest
	}
	s.Attention = attention(s)
	return s
}

func (m *Management) statusOrZero() Status {
	if p := m.status.Load(); p != nil {
		return *p
	}
	return Status{}
}

func (m *Management) configView(st Status, met *event.Metrics) configView {
	c := configView{Path: st.ConfigPath, LastReload: "none"}
	if rt := m.srv.Runtime(); rt != nil && rt.Config != nil {
		c.Loaded, c.LoadedAt = true, rt.LoadedAt
		if rt.Config.Path != "" {
			c.Path = rt.Config.Path
		}
		var b bytes.Buffer
		if err := rt.Config.WriteEffective(&b); err != nil {
			fmt.Fprintf(&b, "\n(printing the rule table failed: %v)\n", err)
		}
		c.Effective = b.String()
		if rt.Config.Policy != nil {
			for _, z := range rt.Config.Policy.Zones() {
				c.Zones = append(c.Zones, z.Name)
			}
		}
	}
	if met == nil {
		return c
	}
	byResult := counterValues(met.ConfigReloads, "result")
	c.ReloadsOK, c.ReloadsFailed = uint64(byResult["success"]), uint64(byResult["failure"])
	if c.ReloadsOK+c.ReloadsFailed > 0 {
		c.LastReload = "succeeded"
		if gaugeValue(met.ConfigLastReload) != 1 {
			c.LastReload = "failed"
		}
	}
	for _, n := range met.Recent.Notables() {
		if n.Action == event.ActionConfigReloadFailed {
			c.LastFailure, c.LastFailureMsg = n.Time, n.Message
			break
		}
	}
	return c
}

// windows splits Recent.Windows into the three totals (present even at
// zero, in a fixed order) and the per action/reason refusal counts.
func windows(all []event.WindowCount) (totals, refusals []event.WindowCount) {
	totals = []event.WindowCount{{Key: event.WindowConnections}, {Key: event.WindowActivations}, {Key: event.WindowRefusals}}
	for _, w := range all {
		switch w.Key {
		case event.WindowConnections:
			totals[0] = w
		case event.WindowActivations:
			totals[1] = w
		case event.WindowRefusals:
			totals[2] = w
		default:
			if strings.Contains(w.Key, "/") {
				refusals = append(refusals, w)
			}
		}
	}
	return totals, refusals
}

func (m *Management) inventoryView(ctx context.Context, st Status, v url.Values, now time.Time) inventoryView {
	iv := inventoryView{Query: readQuery(v), Rows: []inventory.Row{}}
	vals := iv.Query.values()
	vals.Set("format", "csv")
	iv.ExportCSV = "/inventory?" + vals.Encode()
	vals.Del("format")
	iv.ExportJS = "/inventory"
	if len(vals) > 0 {
		iv.ExportJS += "?" + vals.Encode()
	}
	if st.Inventory == nil {
		return iv
	}
	iv.Enabled = true
	f, err := iv.Query.filter(now)
	if err != nil {
		iv.Error, iv.bad = err.Error(), true
		return iv
	}
	f.Limit = summaryRows
	rows, err := query(ctx, st.Inventory, f)
	if err != nil {
		iv.Error = err.Error()
		return iv
	}
	iv.Counts = inventory.Summarize(rows)
	iv.Summary = iv.Counts.String()
	iv.Truncated = len(rows) == summaryRows
	if len(rows) > pageRows {
		rows, iv.More = rows[:pageRows], true
	}
	iv.Rows = rows
	return iv
}

// query runs f with a timeout and turns a panic in the reader into an
// error: the page shows it, the rest of the page still renders.
func query(ctx context.Context, r InventoryReader, f inventory.Filter) (rows []inventory.Row, err error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			rows, err = nil, fmt.Errorf("inventory query failed: panic: %v", p)
		}
	}()
	rows, err = r.Query(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("inventory query failed: %s", shorten(err.Error(), 200))
	}
	if rows == nil {
		rows = []inventory.Row{}
	}
	return rows, nil
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// attention is the banner: what an operator should act on.
func attention(s *snapshot) []string {
	var out []string
	if !s.Config.Loaded {
		out = append(out, "No valid configuration is loaded.")
	}
	if s.Config.LastReload == "failed" {
		out = append(out, "The last configuration reload failed: the previous configuration is still running.")
	}
	if s.Hosts != nil {
		for _, g := range s.Hosts.Groups {
			if g.Below {
				out = append(out, fmt.Sprintf("KMS host count for %s is %d of the %d required: clients fail with 0xC004F038 (%s).",
					g.Name, g.CurrentCount, g.Required, kms.HRESULTName(kms.HResultNotEnoughCount)))
			}
		}
	}
	for _, u := range s.Upstreams {
		if !u.Up {
			out = append(out, "Upstream "+u.Address+" is down.")
		}
	}
	return out
}

// gaugeValue reads a gauge or counter without touching its labels.
func gaugeValue(m prometheus.Metric) float64 {
	if m == nil {
		return 0
	}
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		return 0
	}
	switch {
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	case d.Counter != nil:
		return d.Counter.GetValue()
	}
	return 0
}

// counterValues reads each child of a vector by one label's value. It
// collects what exists: looking a child up by labels would create it, and
// a page view must not add series to /metrics.
func counterValues(c prometheus.Collector, label string) map[string]float64 {
	out := map[string]float64{}
	ch := make(chan prometheus.Metric, 16)
	go func() { c.Collect(ch); close(ch) }()
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) != nil {
			continue
		}
		for _, lp := range d.GetLabel() {
			if lp.GetName() == label {
				out[lp.GetValue()] += gaugeValue(m)
			}
		}
	}
	return out
}

// servePage is GET /.
func (m *Management) servePage(w http.ResponseWriter, r *http.Request) {
	s := m.snapshot(r.Context(), r.URL.Query())
	var b bytes.Buffer
	if err := pageTemplate.Execute(&b, s); err != nil {
		http.Error(w, "status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(s.status)
	w.Write(b.Bytes())
}

// serveStatusJSON is GET /status.json: the page's snapshot as JSON.
func (m *Management) serveStatusJSON(w http.ResponseWriter, r *http.Request) {
	s := m.snapshot(r.Context(), r.URL.Query())
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		http.Error(w, "status: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(s.status)
	w.Write(append(b, '\n'))
}
