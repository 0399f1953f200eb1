package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/inventory"
	"github.com/kmsproxy/kmsproxy/kmswatch"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
	testfixture "github.com/kmsproxy/kmsproxy/test/fixture"
)

// fakeInventory is an InventoryReader over fixed rows: it applies the
// filter's search, zone and limit (the real store's semantics are its own
// package's test), records the last filter and can fail or panic.
type fakeInventory struct {
	mu    sync.Mutex
	rows  []inventory.Row // newest first
	last  inventory.Filter
	calls int
	err   error
	panic bool
}

func (f *fakeInventory) Query(_ context.Context, flt inventory.Filter) ([]inventory.Row, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last, f.calls = flt, f.calls+1
	if f.panic {
		panic("fake inventory exploded")
	}
	if f.err != nil {
		return nil, f.err
	}
	var out []inventory.Row
	for _, r := range f.rows {
		if flt.Zone != "" && !strings.EqualFold(r.LastZone, flt.Zone) {
			continue
		}
		if flt.Search != "" && !strings.Contains(strings.ToLower(r.Workstation+" "+r.CMID+" "+r.SKU+" "+r.LastSource), strings.ToLower(flt.Search)) {
			continue
		}
		if !flt.Since.IsZero() && r.LastSeen.Before(flt.Since) {
			continue
		}
		out = append(out, r)
		if flt.Limit > 0 && len(out) == flt.Limit {
			break
		}
	}
	return out, nil
}

// update changes the fake under its lock (the server reads it from its
// own goroutines).
func (f *fakeInventory) update(fn func(*fakeInventory)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// addHostile puts hostileRows before the others.
func (f *fakeInventory) addHostile() {
	f.update(func(f *fakeInventory) { f.rows = append(hostileRows(time.Now()), f.rows...) })
}

func (f *fakeInventory) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeInventory) lastFilter() inventory.Filter {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// testConfig is a small real config: a dmz and a lan zone, a KMS rule for
// each and a SAMR deny, loaded and compiled as the proxy would.
const testConfig = `listen: "0.0.0.0:1688"
upstreams: ["kms01.corp.example:1688", "kms02.corp.example:1688"]
zones:
  dmz: ["192.0.2.0/24", "2001:db8:10::/64"]
  lan: ["10.0.0.0/8"]
rules:
  - name: no-samr
    from: [dmz]
    interface: samr
    action: deny
  - name: dmz-windows
    from: [dmz]
    interface: kms/1.0
    opnums: [0]
    auth: [none]
    kms: { versions: [5, 6], applications: [windows], reject_malformed: true }
    action: allow
  - name: lan-windows-office
    from: [lan]
    interface: kms/1.0
    opnums: [0]
    auth: [none]
    kms: { versions: [4, 5, 6], applications: [windows, office2010, office2013], reject_malformed: true }
    action: allow
inventory: { enabled: true, path: inventory.db }
`

func loadRuntime(t testing.TB) *config.Runtime {
	t.Helper()
	_, rt := testfixture.LoadConfig(t, testConfig)
	return rt
}

// fixture is a management server over real metrics, a real host view and
// a real config, served on 127.0.0.1.
type fixture struct {
	p     *fakeProxy
	m     *Management
	hosts *kmswatch.Hosts
	inv   *fakeInventory
	url   string
}

func newFixture(t testing.TB, inv *fakeInventory) *fixture {
	t.Helper()
	f := &fixture{p: &fakeProxy{m: event.NewMetrics(), rt: loadRuntime(t)}, inv: inv}
	f.hosts = kmswatch.NewHosts(f.p.m)
	f.m = New(f.p, time.Minute)
	st := Status{Version: "1.4.2", ConfigPath: "/etc/kmsproxy/kmsproxy.yaml", Started: time.Now().Add(-(26*time.Hour + 17*time.Minute)), Hosts: f.hosts}
	if inv != nil {
		st.Inventory = inv
	}
	f.m.SetStatus(st)
	srv := httptest.NewServer(f.m.Handler())
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

// request builds the decoded activation request of a client.
func request(t testing.TB, app, counted, sku string, required uint32, ws string) *kms.Request {
	t.Helper()
	appID, ok := kms.LookupApplication(app)
	if !ok {
		t.Fatalf("application %q", app)
	}
	r := &kms.Request{
		MajorVersion: 6, LicenseStatus: 2, BindingExpiration: 43200,
		ApplicationID: appID, SKUID: rpcparse.MustUUID(sku), KMSCountedID: rpcparse.MustUUID(counted),
		CMID: rpcparse.MustUUID("6d1b4a52-8c3f-4e7a-9b21-0f5e3c7d9a10"), RequiredCount: required,
		ClientTime: kms.TimeToFiletime(time.Now()),
	}
	if !r.SetWorkstation(ws) {
		t.Fatalf("workstation %q too long", ws)
	}
	return r
}

// Product groups and SKUs of the fixtures (rpcparse/kms tables).
const (
	win10Group    = "11b15659-e603-4cf1-9c1f-f0ec01b81888" // Windows 10 2019 (Volume), N = 25
	server22Group = "b74263e4-0f92-46c6-bcf8-c11d5efe2959" // Windows Server 2022, N = 5
	office16Group = "85b5f61b-320b-4be3-814a-b76b2bfafc82" // Office 2016, N = 5
	win10Ent      = "73111121-5638-40f6-bc11-f1d7b0d64300"
	server22DC    = "ef6cfc9f-8c5d-44ac-9aad-de6a2ea0ae03"
	officePP19    = "85dd8b5f-eaa4-4af3-a628-cce9e77c9a03"
)

// fill gives the fixture realistic state: Windows and Office activations
// the host answered (Windows 10 below its threshold), host errors, two
// upstreams (one down), refusals from the dmz zone, a duplicate-CMID
// alert, traffic counts, a config reload and an inventory.
func (f *fixture) fill(t testing.TB) {
	t.Helper()
	m := f.p.m
	em := event.NewEmitter(zap.NewNop(), m)

	// The host's replies: counts per product group and its errors.
	f.hosts.ObserveReply(request(t, "windows", win10Group, win10Ent, 25, "LAN-WS-0412"), 0, 18)
	f.hosts.ObserveReply(request(t, "windows", server22Group, server22DC, 5, "DMZ-WEB01"), 0, 9)
	f.hosts.ObserveReply(request(t, "office2013", office16Group, officePP19, 5, "LAN-WS-0412"), 0, 14)
	for range 3 {
		f.hosts.ObserveReply(request(t, "windows", win10Group, win10Ent, 25, "LAN-WS-0518"), kms.HResultNotEnoughCount, 0)
	}

	// Upstreams.
	m.UpstreamResult("kms02.corp.example:1688", errors.New("dial tcp 10.20.0.16:1688: connect: connection refused"))
	m.UpstreamResult("kms01.corp.example:1688", nil)

	// Traffic.
	m.ConnectionsActive.Set(3)
	for range 42 {
		m.Recent.Count(event.WindowConnections)
	}
	for range 31 {
		m.Recent.Count(event.WindowActivations)
	}

	// Refusals from the dmz zone: the last hour's history as Recent keeps
	// it, then two the proxy emits now.
	now := time.Now()
	for _, n := range []event.Notable{
		{Time: now.Add(-38 * time.Minute), Action: event.ActionBindRefused, Reason: acl.ReasonDeniedByRule, Source: "192.0.2.77", Message: event.ActionBindRefused},
		{Time: now.Add(-31 * time.Minute), Action: event.ActionBindRefused, Reason: acl.ReasonInterfaceNotAllowed, Source: "192.0.2.77", Message: event.ActionBindRefused},
		{Time: now.Add(-22 * time.Minute), Action: event.ActionRequestRefused, Reason: acl.ReasonKMSApplicationNotAllowed, Source: "192.0.2.31", Message: event.ActionRequestRefused},
		{Time: now.Add(-9 * time.Minute), Action: event.ActionProtocolViolation, Reason: acl.ReasonMalformedBind, Source: "192.0.2.140", Message: "protocol violation"},
	} {
		n.Kind, n.Zone = event.NotableRefusal, "dmz"
		m.Recent.Note(n)
	}
	dmz := func(ip string) event.Emitter { return em.From(netip.MustParseAddr(ip), "dmz") }
	dmz("192.0.2.31").Decision(zap.InfoLevel, event.ActionRequestRefused, event.New(event.ActionRequestRefused, event.OutcomeFailure, acl.ReasonKMSApplicationNotAllowed))
	em.From(netip.MustParseAddr("203.0.113.9"), "").Decision(zap.InfoLevel, "connection refused", event.New(event.ActionConnectionRefused, event.OutcomeFailure, acl.ReasonSourceNotInZone))

	// A duplicate client machine ID: a cloned image in the dmz.
	watch := kmswatch.New()
	wcfg := config.KMSWatch{DuplicateWindow: time.Hour, MaxTracked: 100}
	cloned := request(t, "windows", server22Group, server22DC, 5, "DMZ-WEB01")
	watch.Observe(dmz("192.0.2.10"), wcfg, netip.MustParseAddr("192.0.2.10"), cloned, "dmz-windows")
	cloned.SetWorkstation("DMZ-WEB02")
	watch.Observe(dmz("192.0.2.11"), wcfg, netip.MustParseAddr("192.0.2.11"), cloned, "dmz-windows")

	// One reload that worked.
	m.ConfigReloads.WithLabelValues("success").Inc()
	m.ConfigLastReload.Set(1)

	if f.inv != nil {
		f.inv.update(func(inv *fakeInventory) { inv.rows = realisticRows(time.Now()) })
	}
}

// realisticRows is an inventory of a small site, newest first.
func realisticRows(now time.Time) []inventory.Row {
	type r struct {
		ws, app, sku, status string
		vm                   bool
		age                  time.Duration
		reqs                 int64
		src, zone, result    string
		hr, hrName           string
		count                uint32
		cmid                 string
	}
	rows := []r{
		{"LAN-WS-0412", "windows", "Windows 10 Enterprise", "Licensed", false, 2 * time.Minute, 14, "10.1.4.12", "lan", "refused-by-host", "0xC004F038", "SL_E_VL_NOT_ENOUGH_COUNT", 0, "6d1b4a52-8c3f-4e7a-9b21-0f5e3c7d9a10"},
		{"DMZ-WEB02", "windows", "Windows Server 2022 Datacenter", "OOB grace", true, 4 * time.Minute, 1, "192.0.2.11", "dmz", "success", "0x00000000", "S_OK", 9, "c3a7e1f0-2b4d-4c59-8e16-7a9b0d2f4e61"},
		{"DMZ-WEB01", "windows", "Windows Server 2022 Datacenter", "Licensed", true, 5 * time.Minute, 22, "192.0.2.10", "dmz", "success", "0x00000000", "S_OK", 9, "c3a7e1f0-2b4d-4c59-8e16-7a9b0d2f4e61"},
		{"LAN-WS-0412", "office2013", "Office Professional Plus 2019", "Licensed", false, 9 * time.Minute, 14, "10.1.4.12", "lan", "success", "0x00000000", "S_OK", 14, "6d1b4a52-8c3f-4e7a-9b21-0f5e3c7d9a10"},
		{"LAN-WS-0518", "windows", "Windows 10 Enterprise", "OOB grace", false, 17 * time.Minute, 3, "10.1.5.18", "lan", "refused-by-host", "0xC004F038", "SL_E_VL_NOT_ENOUGH_COUNT", 0, "0a4f9e2c-71d3-4b8a-a6e5-3c2d1b0f9e87"},
		{"DMZ-MAIL01", "windows", "Windows Server 2019 Datacenter", "Licensed", true, 48 * time.Minute, 31, "192.0.2.25", "dmz", "success", "0x00000000", "S_OK", 9, "5e8d2c1b-9a4f-4e37-b0c6-d1f2a3b4c5d6"},
		{"LAN-VDI-031", "windows", "Windows 10 Enterprise", "Licensed", true, 3 * time.Hour, 8, "10.3.0.31", "lan", "success", "0x00000000", "S_OK", 18, "9f8e7d6c-5b4a-4392-8170-f6e5d4c3b2a1"},
		{"LAN-VDI-031", "office2013", "Office LTSC Professional Plus 2021", "Licensed", true, 3 * time.Hour, 8, "10.3.0.31", "lan", "success", "0x00000000", "S_OK", 14, "9f8e7d6c-5b4a-4392-8170-f6e5d4c3b2a1"},
		{"LAN-WS-0233", "windows", "Windows 10 Professional", "Notification", false, 26 * time.Hour, 41, "10.1.2.33", "lan", "success", "0x00000000", "S_OK", 17, "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"},
	}
	out := make([]inventory.Row, len(rows))
	for i, x := range rows {
		appID, _ := kms.LookupApplication(x.app)
		out[i] = inventory.Row{
			CMID: x.cmid, ApplicationID: appID.String(), Application: x.app, Workstation: x.ws,
			SKU: x.sku, LicenseStatus: x.status, VirtualMachine: x.vm, Version: 6,
			FirstSeen: now.Add(-x.age - 30*24*time.Hour), LastSeen: now.Add(-x.age), Requests: x.reqs,
			LastSource: x.src, LastZone: x.zone, LastRule: x.zone + "-windows", LastResult: x.result,
			LastHRESULT: x.hr, LastHRESULTName: x.hrName, CurrentCount: x.count,
		}
	}
	return out
}

// Hostile workstation names a client can send.
const (
	scriptName  = "<script>alert(1)</script>"
	imgName     = `"><img src=x onerror=alert(1)>`
	controlName = "WS\x1b[31mRED\x00\u202eexe.txt\x7f"
)

var longName = strings.Repeat("W", 1024)

// hostileRows are rows whose wire fields try to break the page.
func hostileRows(now time.Time) []inventory.Row {
	mk := func(ws, sku string, age time.Duration) inventory.Row {
		return inventory.Row{
			CMID: "00000000-0000-0000-0000-00000000000" + string(rune('1'+len(ws)%9)), Application: "windows",
			Workstation: ws, SKU: sku, LicenseStatus: "Licensed", LastSeen: now.Add(-age), Requests: 1,
			LastSource: "192.0.2.66", LastZone: "dmz", LastResult: "success", LastHRESULT: "0x00000000",
		}
	}
	return []inventory.Row{
		mk(scriptName, "=HYPERLINK(\"http://x\")", time.Minute),
		mk(imgName, "Windows 10 Enterprise", 2*time.Minute),
		mk(controlName, "Windows 10 Enterprise\r\nInjected: yes", 3*time.Minute),
		mk(longName, strings.Repeat("S", 1024), 4*time.Minute),
	}
}

// get fetches path from the fixture with an optional Accept header.
func (f *fixture) get(t testing.TB, path, accept string) (*http.Response, string) {
	t.Helper()
	return f.do(t, http.MethodGet, path, accept)
}

func (f *fixture) do(t testing.TB, method, path, accept string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}
