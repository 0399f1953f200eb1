package admin

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/inventory"
)

// The page renders every section from the real sources: version, uptime,
// config path and load time, reload state, the effective rule table, the
// live counters, the refusals and alerts, the host view with the
// below-threshold group marked, upstream health and the inventory with
// its summary.
func TestStatusPageSections(t *testing.T) {
	inv := &fakeInventory{}
	f := newFixture(t, inv)
	f.fill(t)
	resp, body := f.get(t, "/", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %d\n%s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	for _, want := range []string{
		// Header, overview, config.
		`<span class="version">1.4.2</span>`,
		`<span class="value">1d 2h 17m</span>`,
		`<meta http-equiv="refresh" content="30">`,
		f.p.rt.Config.Path,
		timestamp(f.p.rt.LoadedAt),
		`<span class="badge ok">succeeded</span>`,
		"(1 succeeded, 0 failed)",
		`<pre class="effective">`,
		"rules (first match wins):",
		"dmz-windows", "lan-windows-office", "(no match) → deny",
		// Live counters.
		`<span class="label">Connections active</span><span class="value">3</span>`,
		// Refusals and alerts.
		`<span class="badge bad">alert</span>`, "kms-duplicate-cmid", "192.0.2.11",
		`<span class="badge warn">refusal</span>`, "source-not-in-zone", "203.0.113.9",
		// The host view.
		"Windows 10 2019 (Volume)", "Windows Server 2022", "Office 2016",
		"below threshold — clients will fail with 0xC004F038", "7 more clients needed",
		`<td class="mono nowrap">0xC004F038</td><td class="mono wrap">SL_E_VL_NOT_ENOUGH_COUNT</td><td class="num">3</td>`,
		"KMS host count for Windows 10 2019 (Volume) is 18 of the 25 required",
		// Upstreams.
		"kms01.corp.example:1688", `<span class="badge ok">up</span>`,
		"kms02.corp.example:1688", `<span class="badge bad">down</span>`, "connect: connection refused",
		"Upstream kms02.corp.example:1688 is down.",
		// The inventory, its search form and summary.
		`<form class="search" method="get" action="/">`,
		`name="q"`, `name="zone"`, `name="application"`, `name="status"`, `name="since"`,
		`<option value="dmz"></option>`,
		"6 machines · 9 rows",
		`<span class="chip">Windows 10 Enterprise <b>3</b></span>`,
		`<td class="wrap strong">LAN-WS-0412</td>`, "Office Professional Plus 2019", "6d1b4a52-8c3f-4e7a-9b21-0f5e3c7d9a10",
		`href="/inventory?format=csv"`, `href="/inventory"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if n := strings.Count(body, "below threshold — clients will fail"); n != 1 {
		t.Errorf("%d groups marked below threshold, want 1 (Windows 10 only)", n)
	}
	// The last hour's counts (the last minute's depend on the clock).
	for _, re := range []string{
		`<tr><td colspan="2">connections</td><td class="num">\d+</td><td class="num">42</td></tr>`,
		`<tr><td colspan="2">activations</td><td class="num">\d+</td><td class="num">31</td></tr>`,
		`<tr><td colspan="2">refusals</td><td class="num">\d+</td><td class="num">6</td></tr>`,
		`<td class="mono wrap">request-refused</td><td class="mono wrap">kms-application-not-allowed</td><td class="num">\d+</td><td class="num">2</td>`,
		`<td class="mono wrap">bind-refused</td><td class="mono wrap">denied-by-rule</td><td class="num">0</td><td class="num">1</td>`,
	} {
		if !regexp.MustCompile(re).MatchString(body) {
			t.Errorf("the traffic table lacks %s", re)
		}
	}
	if got := inv.lastFilter(); got.Limit != summaryRows {
		t.Errorf("page query limit %d, want %d", got.Limit, summaryRows)
	}
	// Nothing on the page changes state: one form, GET, to the page itself;
	// no script, no inline style.
	if n := strings.Count(body, "<form"); n != 1 {
		t.Errorf("%d forms", n)
	}
	for _, bad := range []string{`method="post"`, "<script", " style=", " onclick", " onerror", "javascript:"} {
		if strings.Contains(strings.ToLower(body), bad) {
			t.Errorf("the page has %q", bad)
		}
	}
}

// The page's search maps onto inventory.Filter, shows at most pageRows
// rows (newest first, as the reader returned them) and echoes the search
// into the form and the export links.
func TestStatusPageSearch(t *testing.T) {
	inv := &fakeInventory{}
	f := newFixture(t, inv)
	f.fill(t)
	before := time.Now()
	resp, body := f.get(t, "/?q=web&zone=dmz&application=windows&status=Licensed&since=7d", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%d\n%s", resp.StatusCode, body)
	}
	got := inv.lastFilter()
	if got.Search != "web" || got.Zone != "dmz" || got.Application != "windows" || got.Status != "Licensed" {
		t.Errorf("filter %+v", got)
	}
	if d := before.Sub(got.Since); d < 7*24*time.Hour-time.Minute || d > 7*24*time.Hour+time.Minute {
		t.Errorf("since 7d is %v before now", d)
	}
	for _, want := range []string{
		`name="q" value="web"`, `name="zone" value="dmz"`, `<option value="Licensed" selected>Licensed</option>`, `name="since" value="7d"`,
		`href="/inventory?application=windows&amp;format=csv&amp;q=web&amp;since=7d&amp;status=Licensed&amp;zone=dmz"`,
		"DMZ-WEB01", "DMZ-WEB02",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if strings.Contains(body, "LAN-WS-0412") {
		t.Error("the dmz search shows a lan row")
	}

	// More rows than the page shows: the newest pageRows, and it says so.
	inv.update(func(inv *fakeInventory) {
		inv.rows = nil
		for i := range pageRows + 20 {
			inv.rows = append(inv.rows, inventory.Row{CMID: "cmid-" + string(rune('a'+i%26)) + strings.Repeat("x", i), Workstation: "MANY-" + strings.Repeat("n", i%5), LastSeen: before.Add(-time.Duration(i) * time.Minute), LastResult: "success"})
		}
	})
	_, body = f.get(t, "/", "")
	if n := strings.Count(body, `<td class="wrap strong">MANY-`); n != pageRows {
		t.Errorf("%d rows on the page, want %d", n, pageRows)
	}
	if !strings.Contains(body, "The newest 100 rows by last seen") {
		t.Error("the page does not say it shows only the newest rows")
	}
}

// Wire data is text on the page, however hostile: html/template escapes
// it, control and format characters show as escapes, and a 1 KiB name is
// one wrapping cell.
func TestStatusPageEscapesWireData(t *testing.T) {
	inv := &fakeInventory{}
	f := newFixture(t, inv)
	f.fill(t)
	inv.addHostile()
	f.p.m.Recent.Note(event.Notable{Kind: event.NotableRefusal, Action: event.ActionRequestRefused, Reason: "kms-malformed",
		Source: "192.0.2.66", Zone: "dmz", Message: `workstation <script>alert(2)</script> "quoted" ` + "\x1b[2J"})
	resp, body := f.get(t, "/", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%d", resp.StatusCode)
	}
	for _, want := range []string{
		`<td class="wrap strong">&lt;script&gt;alert(1)&lt;/script&gt;</td>`,
		`<td class="wrap strong">&#34;&gt;&lt;img src=x onerror=alert(1)&gt;</td>`,
		`<td class="wrap strong">WS\x1b[31mRED\x00\u{202e}exe.txt\x7f</td>`,
		`<td class="wrap strong">` + longName + `</td>`,
		`<td class="wrap">` + strings.Repeat("S", 1024) + `</td>`,
		`<td class="wrap">Windows 10 Enterprise\x0d\x0aInjected: yes</td>`,
		`<td class="wrap">=HYPERLINK(&#34;http://x&#34;)</td>`,
		`workstation &lt;script&gt;alert(2)&lt;/script&gt; &#34;quoted&#34; \x1b[2J`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	for _, raw := range []string{"<script>alert", "<img", "onerror=alert(1)>", "\x1b", "\x00", "\u202e", "\x7f", "\r\nInjected"} {
		if strings.Contains(body, raw) {
			t.Errorf("the page has %q raw", raw)
		}
	}
	if !regexp.MustCompile(`\.wrap, dd, li, p \{ overflow-wrap: anywhere; \}`).MatchString(string(assets["status.css"].body)) {
		t.Error("the stylesheet does not wrap long values anywhere")
	}
}

func TestPrintable(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"LAN-WS-0412", "LAN-WS-0412"},
		{"Ünïcødé 工作站", "Ünïcødé 工作站"},
		{"a\x00b\tc\nd\x1be\x7f", `a\x00b\x09c\x0ad\x1be\x7f`},
		{"\u0085 C1", `\u{0085} C1`},
		{"evil\u202etxt.exe", `evil\u{202e}txt.exe`},
		{"zero\u200bwidth\ufeff", `zero\u{200b}width\u{feff}`},
		{"line\u2028sep", `line\u{2028}sep`},
		{"bad \xff\xfe utf8", `bad \xff\xfe utf8`},
		{`DOMAIN\host`, `DOMAIN\\host`},
		{"literal \ufffd kept", "literal \ufffd kept"},
	} {
		if got := printable(c.in); got != c.want {
			t.Errorf("printable(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// The security headers are on every management response: the page, its
// JSON, the inventory, the metrics, the probes, static files, 404s and
// 405s.
func TestSecurityHeaders(t *testing.T) {
	inv := &fakeInventory{}
	f := newFixture(t, inv)
	f.fill(t)
	want := map[string]string{
		"Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
		"X-Content-Type-Options":  "nosniff",
		"Referrer-Policy":         "no-referrer",
		"X-Frame-Options":         "DENY",
	}
	for _, c := range []struct {
		method, path string
		code         int
		cache        string
	}{
		{"GET", "/", 200, "no-store"},
		{"HEAD", "/", 200, "no-store"},
		{"GET", "/status.json", 200, "no-store"},
		{"GET", "/inventory", 200, "no-store"},
		{"GET", "/inventory?format=csv", 200, "no-store"},
		{"GET", "/metrics", 200, "no-store"},
		{"GET", "/healthz", 200, "no-store"},
		{"GET", "/readyz", 503, "no-store"},
		{"GET", "/nope", 404, "no-store"},
		{"POST", "/", 405, "no-store"},
		{"GET", "/static/status.css", 200, "public, max-age=31536000, immutable"},
		{"GET", "/static/favicon.svg", 200, "public, max-age=31536000, immutable"},
	} {
		resp, _ := f.do(t, c.method, c.path, "")
		if resp.StatusCode != c.code {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, resp.StatusCode, c.code)
		}
		for k, v := range want {
			if got := resp.Header.Get(k); got != v {
				t.Errorf("%s %s: %s %q, want %q", c.method, c.path, k, got, v)
			}
		}
		if got := resp.Header.Get("Cache-Control"); got != c.cache {
			t.Errorf("%s %s: Cache-Control %q, want %q", c.method, c.path, got, c.cache)
		}
	}
}

// Only GET and HEAD: anything else is 405 with Allow, on every route;
// unknown paths are 404, and /static/ lists nothing.
func TestMethodsAndPaths(t *testing.T) {
	f := newFixture(t, &fakeInventory{})
	f.fill(t)
	for _, path := range []string{"/", "/status.json", "/inventory", "/metrics", "/healthz", "/readyz", "/static/status.css"} {
		for _, method := range []string{"POST", "PUT", "DELETE", "PATCH", "OPTIONS"} {
			resp, _ := f.do(t, method, path, "")
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: %d, want 405", method, path, resp.StatusCode)
			}
			if allow := resp.Header.Get("Allow"); allow != "GET, HEAD" {
				t.Errorf("%s %s: Allow %q", method, path, allow)
			}
		}
	}
	resp, body := f.do(t, "HEAD", "/", "")
	if resp.StatusCode != 200 || body != "" {
		t.Errorf("HEAD /: %d, %d body bytes", resp.StatusCode, len(body))
	}
	for _, path := range []string{"/index.html", "/status", "/inventory/x", "/static/", "/static/nope.css", "/static/../admin.go", "/admin", "/status.json/x"} {
		if resp, _ := f.get(t, path, ""); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, resp.StatusCode)
		}
	}
	resp, body = f.get(t, "/static/status.css", "")
	if resp.Header.Get("Content-Type") != "text/css; charset=utf-8" || !strings.Contains(body, "overflow-wrap: anywhere") {
		t.Errorf("status.css: %q, %d bytes", resp.Header.Get("Content-Type"), len(body))
	}
	// The page links the stylesheet by a URL that changes with its content.
	_, page := f.get(t, "/", "")
	css, _ := assetURL("status.css")
	if !strings.Contains(page, `<link rel="stylesheet" href="`+css+`">`) || !strings.Contains(css, "?v=") {
		t.Errorf("the page does not link %s", css)
	}
	if resp, _ := f.get(t, css, ""); resp.StatusCode != 200 {
		t.Errorf("GET %s: %d", css, resp.StatusCode)
	}
}

// /inventory is JSON by default: inventory.WriteJSON's rows and summary,
// with the query parameters mapped to the filter.
func TestInventoryJSON(t *testing.T) {
	inv := &fakeInventory{}
	f := newFixture(t, inv)
	f.fill(t)
	inv.addHostile()
	resp, body := f.get(t, "/inventory?zone=dmz&limit=3&q=%3Cscript&application=windows&status=Licensed&since=2025-01-31", "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("%d %q\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	var doc struct {
		Rows    []inventory.Row   `json:"rows"`
		Summary inventory.Summary `json:"summary"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("%v\n%s", err, body)
	}
	got := inv.lastFilter()
	if got.Zone != "dmz" || got.Limit != 3 || got.Search != "<script" || got.Application != "windows" || got.Status != "Licensed" ||
		!got.Since.Equal(time.Date(2025, 1, 31, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("filter %+v", got)
	}
	if len(doc.Rows) != 1 || doc.Rows[0].Workstation != scriptName || doc.Summary.Rows != 1 {
		t.Errorf("rows %+v summary %+v", doc.Rows, doc.Summary)
	}
	if strings.Contains(body, "<script>") {
		t.Error("the JSON has <script> unescaped")
	}

	// Every row without a limit.
	_, body = f.get(t, "/inventory", "application/json")
	doc.Rows = nil
	if err := json.Unmarshal([]byte(body), &doc); err != nil || len(doc.Rows) != len(inv.rows) || inv.lastFilter().Limit != 0 {
		t.Errorf("all rows: %v, %d of %d, limit %d", err, len(doc.Rows), len(inv.rows), inv.lastFilter().Limit)
	}
}

// CSV for Accept: text/csv or ?format=csv (format wins over Accept), as
// an attachment, its cells guarded against formula injection.
func TestInventoryCSV(t *testing.T) {
	inv := &fakeInventory{}
	f := newFixture(t, inv)
	f.fill(t)
	inv.addHostile()
	for _, c := range []struct {
		path, accept string
		csv          bool
	}{
		{"/inventory", "text/csv", true},
		{"/inventory", "text/html, text/csv;q=0.5", true},
		{"/inventory", "TEXT/CSV", true},
		{"/inventory?format=csv", "", true},
		{"/inventory?format=csv", "application/json", true},
		{"/inventory", "text/csv;q=0", false},
		{"/inventory", "*/*", false},
		{"/inventory?format=json", "text/csv", false},
	} {
		resp, body := f.get(t, c.path, c.accept)
		if resp.StatusCode != 200 {
			t.Errorf("%s (Accept %q): %d", c.path, c.accept, resp.StatusCode)
			continue
		}
		isCSV := resp.Header.Get("Content-Type") == "text/csv; charset=utf-8"
		if isCSV != c.csv {
			t.Errorf("%s (Accept %q): Content-Type %q", c.path, c.accept, resp.Header.Get("Content-Type"))
			continue
		}
		if resp.Header.Get("Vary") != "Accept" {
			t.Errorf("%s: Vary %q", c.path, resp.Header.Get("Vary"))
		}
		if !c.csv {
			continue
		}
		if cd := resp.Header.Get("Content-Disposition"); cd != `attachment; filename="kmsproxy-inventory.csv"` {
			t.Errorf("Content-Disposition %q", cd)
		}
		recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
		if err != nil {
			t.Fatalf("CSV: %v\n%s", err, body)
		}
		if len(recs) != len(inv.rows)+1 {
			t.Fatalf("%d records for %d rows", len(recs), len(inv.rows))
		}
		col := map[string]int{}
		for i, h := range recs[0] {
			col[h] = i
		}
		sku, ok := col["sku"]
		if !ok {
			t.Fatalf("no sku column in %q", recs[0])
		}
		if got := recs[1][sku]; got != `'=HYPERLINK("http://x")` {
			t.Errorf("a cell starting with = is %q, want it quoted with a leading '", got)
		}
		if got := recs[1][col["workstation"]]; got != scriptName {
			t.Errorf("workstation %q", got)
		}
	}
}

// A bad since, limit or format is 400 with the reason; on the page a bad
// since is 400 too, shown beside the form with the rest of the page.
func TestInventoryBadParameters(t *testing.T) {
	inv := &fakeInventory{}
	f := newFixture(t, inv)
	f.fill(t)
	for _, c := range []struct{ path, want string }{
		{"/inventory?since=yesterday", `since "yesterday": want an age`},
		{"/inventory?since=-3d", `since "-3d"`},
		{"/inventory?limit=ten", `bad limit "ten"`},
		{"/inventory?limit=-1", `bad limit "-1"`},
		{"/inventory?format=xml", `bad format "xml"`},
	} {
		calls := inv.callCount()
		resp, body := f.get(t, c.path, "")
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %q, want 400 with %q", c.path, resp.StatusCode, body, c.want)
		}
		if inv.callCount() != calls {
			t.Errorf("%s: the inventory was queried", c.path)
		}
	}
	resp, body := f.get(t, "/?since=%3Cb%3Eyesterday", "")
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("page with a bad since: %d", resp.StatusCode)
	}
	for _, want := range []string{`<p class="error">since &#34;&lt;b&gt;yesterday&#34;: want an age`, `name="since" value="&lt;b&gt;yesterday"`, `id="kms-host"`, "Windows 10 2019 (Volume)"} {
		if !strings.Contains(body, want) {
			t.Errorf("page with a bad since lacks %q", want)
		}
	}
	resp, body = f.get(t, "/status.json?since=yesterday", "")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `"error": "since \"yesterday\": want an age`) {
		t.Errorf("status.json with a bad since: %d\n%s", resp.StatusCode, body)
	}
}

// A failing or panicking inventory is a 500 with a short message on
// /inventory; the page still renders, with the error in its section.
func TestInventoryQueryError(t *testing.T) {
	inv := &fakeInventory{err: errors.New("database is locked (5) (SQLITE_BUSY)" + strings.Repeat(" and more", 100))}
	f := newFixture(t, inv)
	f.fill(t)
	resp, body := f.get(t, "/inventory", "")
	if resp.StatusCode != http.StatusInternalServerError || !strings.HasPrefix(body, "inventory query failed: database is locked") || len(body) > 300 {
		t.Errorf("/inventory: %d %q", resp.StatusCode, body)
	}
	resp, body = f.get(t, "/", "")
	if resp.StatusCode != 200 || !strings.Contains(body, `<p class="error">inventory query failed: database is locked`) || !strings.Contains(body, "Windows 10 2019 (Volume)") {
		t.Errorf("page: %d\n%s", resp.StatusCode, excerptOf(body, `id="inventory"`))
	}
	inv.update(func(inv *fakeInventory) { inv.err, inv.panic = nil, true })
	resp, body = f.get(t, "/inventory?format=csv", "")
	if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(body, "inventory query failed: panic: fake inventory exploded") {
		t.Errorf("/inventory, panicking reader: %d %q", resp.StatusCode, body)
	}
	if resp, _ := f.get(t, "/", ""); resp.StatusCode != 200 {
		t.Errorf("page, panicking reader: %d", resp.StatusCode)
	}
}

// Without an inventory /inventory is 404 saying so, and the page says
// "inventory disabled" and links no export.
func TestInventoryDisabled(t *testing.T) {
	f := newFixture(t, nil)
	f.fill(t)
	resp, body := f.get(t, "/inventory", "text/csv")
	if resp.StatusCode != http.StatusNotFound || !strings.HasPrefix(body, "inventory disabled:") {
		t.Errorf("/inventory: %d %q", resp.StatusCode, body)
	}
	_, page := f.get(t, "/", "")
	if !strings.Contains(page, "Inventory disabled: this proxy keeps no activation inventory") {
		t.Error("the page does not say the inventory is disabled")
	}
	if strings.Contains(page, `href="/inventory`) || strings.Contains(page, "<form") {
		t.Error("the page links the disabled inventory")
	}
	_, js := f.get(t, "/status.json", "")
	if !strings.Contains(js, `"enabled": false`) {
		t.Errorf("status.json: %s", js)
	}
}

// /status.json is the page's snapshot: the same facts, for scripts.
func TestStatusJSON(t *testing.T) {
	inv := &fakeInventory{}
	f := newFixture(t, inv)
	f.fill(t)
	inv.addHostile()
	resp, body := f.get(t, "/status.json?zone=dmz", "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("%d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var s struct {
		Version           string  `json:"version"`
		UptimeSeconds     float64 `json:"uptime_seconds"`
		ConnectionsActive float64 `json:"connections_active"`
		Config            struct {
			Loaded     bool   `json:"loaded"`
			Path       string `json:"path"`
			Effective  string `json:"effective"`
			LastReload string `json:"last_reload"`
		} `json:"config"`
		Traffic  []event.WindowCount `json:"traffic"`
		Refusals []event.WindowCount `json:"refusals"`
		Notables []event.Notable     `json:"notables"`
		Host     struct {
			Groups []struct {
				Name         string `json:"name"`
				CurrentCount uint32 `json:"current_count"`
				Required     uint32 `json:"required_count"`
				Below        bool   `json:"below_threshold"`
			} `json:"groups"`
			Errors []struct {
				HRESULT string `json:"hresult"`
				Count   uint64 `json:"count"`
			} `json:"errors"`
		} `json:"kms_host"`
		Upstreams []event.UpstreamHealth `json:"upstreams"`
		Inventory struct {
			Enabled bool              `json:"enabled"`
			Rows    []inventory.Row   `json:"rows"`
			Summary string            `json:"summary"`
			Counts  inventory.Summary `json:"summary_counts"`
			Query   map[string]string `json:"query"`
		} `json:"inventory"`
		Attention []string `json:"attention"`
	}
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("%v\n%s", err, body)
	}
	if s.Version != "1.4.2" || s.UptimeSeconds < 26*3600 || s.ConnectionsActive != 3 || !s.Config.Loaded ||
		s.Config.Path != f.p.rt.Config.Path || !strings.Contains(s.Config.Effective, "dmz-windows") || s.Config.LastReload != "succeeded" {
		t.Errorf("overview: %+v", s)
	}
	if len(s.Traffic) != 3 || s.Traffic[0].Hour != 42 || s.Traffic[1].Hour != 31 || s.Traffic[2].Hour != 6 || len(s.Refusals) != 5 {
		t.Errorf("traffic %+v refusals %+v", s.Traffic, s.Refusals)
	}
	if len(s.Notables) != 7 || s.Notables[0].Action != event.ActionKMSDuplicateCMID {
		t.Errorf("notables %+v", s.Notables)
	}
	below := 0
	for _, g := range s.Host.Groups {
		if g.Below {
			below++
			if g.Name != "Windows 10 2019 (Volume)" || g.CurrentCount != 18 || g.Required != 25 {
				t.Errorf("below: %+v", g)
			}
		}
	}
	if len(s.Host.Groups) != 3 || below != 1 || len(s.Host.Errors) != 1 || s.Host.Errors[0].HRESULT != "0xC004F038" || s.Host.Errors[0].Count != 3 {
		t.Errorf("host %+v", s.Host)
	}
	if len(s.Upstreams) != 2 || !s.Upstreams[0].Up || s.Upstreams[1].Up {
		t.Errorf("upstreams %+v", s.Upstreams)
	}
	if !s.Inventory.Enabled || s.Inventory.Query["zone"] != "dmz" || s.Inventory.Counts.Machines == 0 || !strings.Contains(s.Inventory.Summary, "machines") {
		t.Errorf("inventory %+v", s.Inventory)
	}
	for _, r := range s.Inventory.Rows {
		if r.LastZone != "dmz" {
			t.Errorf("row of zone %q in a dmz search", r.LastZone)
		}
	}
	if len(s.Attention) != 2 {
		t.Errorf("attention %q", s.Attention)
	}
	if strings.Contains(body, "<script>") || !strings.Contains(body, `\u003cscript\u003e`) {
		t.Error("status.json does not escape <script>")
	}
}

// Before anything is set — no config, no status, no traffic — every
// route answers and the page says what is missing.
func TestStatusPageEmpty(t *testing.T) {
	p := &fakeProxy{m: event.NewMetrics()}
	m := New(p, time.Minute)
	h := m.Handler()
	code, body := get(t, h, "/")
	if code != 200 {
		t.Fatalf("GET /: %d\n%s", code, body)
	}
	for _, want := range []string{"No valid configuration is loaded.", "No host view yet.", "Inventory disabled", "No upstream contact recorded yet.",
		"Nothing refused or alerted since start.", "no reload since start", `<span class="version">unknown</span>`, `<span class="value">unknown</span>`} {
		if !strings.Contains(body, want) {
			t.Errorf("empty page lacks %q", want)
		}
	}
	if code, body := get(t, h, "/status.json"); code != 200 || !json.Valid([]byte(body)) {
		t.Errorf("status.json: %d\n%s", code, body)
	}
	// A host view with no replies yet.
	m.SetStatus(Status{Version: "dev", Started: time.Now()})
	p.rt = loadRuntime(t)
	if code, body := get(t, h, "/"); code != 200 || !strings.Contains(body, "no reload since start") {
		t.Errorf("page: %d", code)
	}
}

// Viewing the page adds no series to /metrics: counters are read by
// collecting, never by looking children up.
func TestPageViewAddsNoSeries(t *testing.T) {
	f := newFixture(t, &fakeInventory{})
	_, before := f.get(t, "/metrics", "")
	f.get(t, "/", "")
	f.get(t, "/status.json", "")
	_, after := f.get(t, "/metrics", "")
	series := func(s string) []string {
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, "kmsproxy_") {
				name, _, _ := strings.Cut(l, " ")
				out = append(out, name)
			}
		}
		return out
	}
	if b, a := series(before), series(after); strings.Join(b, "\n") != strings.Join(a, "\n") {
		t.Errorf("series before the page view:\n%s\nafter:\n%s", strings.Join(b, "\n"), strings.Join(a, "\n"))
	}
}

// A failed reload shows as such, with the running config kept.
func TestStatusPageReloadFailed(t *testing.T) {
	f := newFixture(t, nil)
	m := f.p.m
	m.ConfigReloads.WithLabelValues("success").Inc()
	m.ConfigReloads.WithLabelValues("failure").Inc()
	m.ConfigLastReload.Set(0)
	m.Recent.Note(event.Notable{Kind: event.NotableError, Action: event.ActionConfigReloadFailed, Reason: event.ReasonInvalidConfig,
		Message: "config reload failed; keeping the running policy"})
	_, body := f.get(t, "/", "")
	for _, want := range []string{
		"The last configuration reload failed: the previous configuration is still running.",
		`<span class="badge bad">failed</span> the previous configuration is still running`,
		"(1 succeeded, 1 failed)", "config reload failed; keeping the running policy",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
}

func excerptOf(s, sub string) string {
	i := strings.Index(s, sub)
	if i < 0 {
		return "(" + sub + " not found)"
	}
	return s[i:min(len(s), i+1500)]
}
