package e2e

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/inventory"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
	"github.com/kmsproxy/kmsproxy/test/browser"
	"github.com/kmsproxy/kmsproxy/test/fixture"
	"github.com/kmsproxy/kmsproxy/test/kmsgen"
)

// hostileWorkstations are names a DMZ client can send and the KMS decoder
// lets through (it refuses C0 controls and DEL): markup for the status
// page, a C1 CSI (0x9B, which some terminals obey) and a bidi override for
// the table, formulas for a spreadsheet opening the CSV. Each fits the
// 64-unit workstation field.
var hostileWorkstations = []string{
	"<script>alert(1)</script>",
	"ws\u009b31mRED\u009b0m",
	"\u202eexe.gnp-ws",
	"=cmd|' /C calc'!A0",
	"@SUM(1+1)",
	"+1-555-0100",
	"-2+3",
}

// inventoryConfig is the gateway config with the inventory at db.
func inventoryConfig(db string) string {
	return fixture.GatewaySide.Apply(baseConfig) + fmt.Sprintf("inventory: { path: %q }\n", db)
}

// managementAddr is the binary's management listener, from its start event.
func (p *proc) managementAddr(t *testing.T) string {
	t.Helper()
	ev := p.waitEvent(t, "", "kmsproxy listening")
	addr, _ := ev["kmsproxy.management"].(string)
	if addr == "" {
		t.Fatalf("no kmsproxy.management in %v", ev)
	}
	return addr
}

// inventoryCLI runs `kmsproxy inventory` with args and returns its stdout.
func inventoryCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(kmsproxyBinary(t), append([]string{"inventory"}, args...)...).Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("kmsproxy inventory %v: %v\n%s", args, err, msg)
	}
	return string(out)
}

type inventoryJSON struct {
	Rows    []inventory.Row `json:"rows"`
	Summary json.RawMessage `json:"summary"`
}

func inventoryRows(t *testing.T, args ...string) []inventory.Row {
	t.Helper()
	var doc inventoryJSON
	out := inventoryCLI(t, append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("inventory --json: %v\n%s", err, out)
	}
	return doc.Rows
}

func cmidN(n int) rpcparse.UUID {
	return rpcparse.MustUUID(fmt.Sprintf("1e1e1e1e-0000-4000-8000-%012x", n))
}

// Activations through the real binary land in the inventory with what the
// request and the host's reply said; `kmsproxy inventory` reads the file
// while the proxy runs and after a restart; hostile names stay inert in
// the table, the CSV and /inventory.
func TestInventoryThroughBinary(t *testing.T) {
	host := fixture.StartHost(t, fixture.Replay, fixture.GatewaySide.HostOptions()...)
	db := filepath.Join(t.TempDir(), "inventory.db")
	cfg := inventoryConfig(db)
	p := startProcess(t, host, cfg)
	g := newGWClient(t)

	names := append([]string{"dmz-ws01.corp.example"}, hostileWorkstations...)
	for i, name := range names {
		req := kmsgen.NewRequest(6)
		req.CMID = cmidN(i)
		req.SetWorkstation(name)
		if o := g.activateRequest(p.addr, srcDMZ, i, req, 10*time.Second); !o.ok {
			t.Fatalf("activation %d (%q): %s\n%s", i, name, o, p.out.String())
		}
	}
	// A name with a C0 control (ESC, CR, LF) is refused by the KMS decoder
	// (kms-malformed): it never reaches the host or the inventory.
	refused := kmsgen.NewRequest(6)
	refused.CMID = cmidN(99)
	refused.SetWorkstation("ws\x1b[31mRED\x1b[0m\r\nfake-row")
	if o := g.activateRequest(p.addr, srcDMZ, 99, refused, 10*time.Second); o.ok || o.err == nil || !strings.Contains(o.err.Error(), "fault 0x5 on the request") {
		t.Errorf("a workstation with C0 controls: %s, want the policy's fault (access denied)", o)
	}
	rows := waitInventoryRows(t, db, len(names))
	byCMID := map[string]inventory.Row{}
	for _, r := range rows {
		byCMID[r.CMID] = r
	}
	if _, ok := byCMID[cmidN(99).String()]; ok {
		t.Error("the refused activation is in the inventory")
	}
	req := kmsgen.NewRequest(6)
	for i, name := range names {
		r, ok := byCMID[cmidN(i).String()]
		if !ok {
			t.Fatalf("no row for activation %d (%q): %+v", i, name, rows)
		}
		if r.Workstation != name || r.Requests != 1 || r.LastZone != "dmz" || r.LastRule != "dmz-activation" ||
			r.LastSource != srcDMZ || r.LastResult != "success" || r.LastHRESULT != "0x00000000" ||
			r.Application != kms.ApplicationName(req.ApplicationID) || r.LicenseStatus != "OOB grace" || r.Version != 6 {
			t.Errorf("row %d: %+v", i, r)
		}
		// From the host's reply, not the request: the fixture answers with
		// kmsgen's reply (its ePID and count).
		if r.EPID != kmsgen.DefaultEPID || r.CurrentCount == 0 {
			t.Errorf("row %d: host ePID %q count %d, want the reply's", i, r.EPID, r.CurrentCount)
		}
	}

	// The table: one line per row plus header and summary, no raw control
	// (the C1 CSI and the bidi override are shown escaped).
	table := inventoryCLI(t, "--config", p.path)
	t.Logf("kmsproxy inventory:\n%s", table)
	if strings.ContainsAny(table, "\x1b\r\u009b\u202e") {
		t.Errorf("the table carries a raw control character:\n%q", table)
	}
	if !strings.Contains(table, "<script>alert(1)</script>") || !strings.Contains(table, "machines") {
		t.Errorf("table lacks a row or the summary:\n%s", table)
	}
	if n := strings.Count(strings.TrimRight(table, "\n"), "\n") + 1; n != len(names)+2 {
		t.Errorf("table has %d lines, want %d (header, rows, summary): a name broke a line\n%s", n, len(names)+2, table)
	}

	// The CSV: formula-like cells start with a quote, and a spreadsheet
	// reading it gets one record per row.
	recs, err := csv.NewReader(strings.NewReader(inventoryCLI(t, "--config", p.path, "--csv"))).ReadAll()
	if err != nil || len(recs) != len(names)+1 {
		t.Fatalf("csv: %d records, %v", len(recs), err)
	}
	checkNoFormulas(t, "kmsproxy inventory --csv", recs)

	// Filters.
	if got := inventoryRows(t, "--config", p.path, "--zone", "office-only"); len(got) != 0 {
		t.Errorf("--zone office-only: %d rows", len(got))
	}
	if got := inventoryRows(t, "--config", p.path, "--since", "1h", "--status", "OOB grace", "--zone", "dmz"); len(got) != len(names) {
		t.Errorf("--since 1h --status 'OOB grace' --zone dmz: %d rows, want %d", len(got), len(names))
	}

	// GET /inventory on the management listener: JSON, and CSV by Accept.
	mgmt := p.managementAddr(t)
	var doc inventoryJSON
	if err := json.Unmarshal(httpGet(t, "http://"+mgmt+"/inventory", ""), &doc); err != nil || len(doc.Rows) != len(names) {
		t.Fatalf("/inventory: %d rows, %v", len(doc.Rows), err)
	}
	recs, err = csv.NewReader(strings.NewReader(string(httpGet(t, "http://"+mgmt+"/inventory", "text/csv")))).ReadAll()
	if err != nil || len(recs) != len(names)+1 {
		t.Fatalf("/inventory as CSV: %d records, %v", len(recs), err)
	}
	checkNoFormulas(t, "/inventory text/csv", recs)

	// The status page in a real headless Chromium: the activations just
	// made are listed, the markup in a workstation name is text in its
	// cell (no script element exists in the document), the host view
	// shows the count the host returned, and the page triggers no CSP
	// violation.
	checkStatusPageInBrowser(t, "http://"+mgmt+"/")

	// A restart keeps every row; the next activation of a machine adds to
	// its count.
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.exited
	if got := inventoryRows(t, "--file", db); len(got) != len(names) {
		t.Fatalf("after the proxy stopped: %d rows, want %d", len(got), len(names))
	}
	p = startProcess(t, host, cfg)
	req = kmsgen.NewRequest(6)
	req.CMID = cmidN(0)
	if o := g.activateRequest(p.addr, srcDMZ, 0, req, 10*time.Second); !o.ok {
		t.Fatalf("activation after restart: %s", o)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := inventoryRows(t, "--file", db, "--search", cmidN(0).String())
		if len(got) == 1 && got[0].Requests == 2 {
			if !got[0].FirstSeen.Before(got[0].LastSeen) {
				t.Errorf("first seen %v not before last seen %v", got[0].FirstSeen, got[0].LastSeen)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the restart: %+v, want one row with 2 requests", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := inventoryRows(t, "--file", db); len(got) != len(names) {
		t.Errorf("after the restart: %d rows, want %d", len(got), len(names))
	}
}

// checkNoFormulas fails for a cell a spreadsheet would evaluate.
func checkNoFormulas(t *testing.T, what string, recs [][]string) {
	t.Helper()
	for _, rec := range recs {
		for _, cell := range rec {
			if cell != "" && strings.ContainsRune("=+-@\t\r", rune(cell[0])) {
				t.Errorf("%s: cell %q would be a formula", what, cell)
			}
		}
	}
}

func httpGet(t *testing.T, url, accept string) []byte {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return b
}

// waitInventoryRows waits until the database has n rows (the writer
// commits off the data path).
func waitInventoryRows(t *testing.T, db string, n int) []inventory.Row {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rows := inventoryRows(t, "--file", db)
		if len(rows) >= n {
			return rows
		}
		if time.Now().After(deadline) {
			t.Fatalf("inventory has %d rows after 10s, want %d", len(rows), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill -9 in the middle of a burst of activations leaves a database that
// opens, passes SQLite's integrity check and holds no more rows than
// activations were answered, and every row it holds is whole.
func TestInventorySurvivesKill9(t *testing.T) {
	host := fixture.StartHost(t, fixture.Replay, fixture.GatewaySide.HostOptions()...)
	db := filepath.Join(t.TempDir(), "inventory.db")
	p := startProcess(t, host, inventoryConfig(db))
	g := newGWClient(t)

	var answered atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n := w*100000 + i
				req := kmsgen.NewRequest(6)
				req.CMID = cmidN(n)
				if o := g.activateRequest(p.addr, gwSources[w], n, req, 5*time.Second); o.ok {
					answered.Add(1)
				}
			}
		}(w)
	}
	for answered.Load() < 150 {
		time.Sleep(5 * time.Millisecond)
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
	close(stop)
	wg.Wait()

	st, err := inventory.OpenReadOnly(db)
	if err != nil {
		t.Fatalf("the database does not open after kill -9: %v", err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if res, err := st.IntegrityCheck(ctx); err != nil || res != "ok" {
		t.Fatalf("integrity check after kill -9: %q, %v", res, err)
	}
	rows, err := st.Query(ctx, inventory.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(rows)) > answered.Load() || len(rows) == 0 {
		t.Errorf("%d rows after kill -9, %d activations answered", len(rows), answered.Load())
	}
	for _, r := range rows {
		if r.Requests != 1 || r.Workstation != kmsgen.DefaultWorkstation || r.LastZone != "dmz" || r.EPID == "" {
			t.Fatalf("a torn row: %+v", r)
		}
	}
	t.Logf("kill -9 after %d answered activations: %d rows committed, integrity ok", answered.Load(), len(rows))
	// The CLI reads it too.
	if got := inventoryRows(t, "--file", db); len(got) != len(rows) {
		t.Errorf("inventory --file: %d rows, the store %d", len(got), len(rows))
	}
}

func checkStatusPageInBrowser(t *testing.T, url string) {
	t.Helper()
	if _, err := browser.Find(); err != nil {
		t.Fatalf("%v (DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	page, err := browser.Load(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	dom := page.DOM
	for _, want := range []string{
		"dmz-ws01.corp.example",                 // the activation just made
		"&lt;script&gt;alert(1)&lt;/script&gt;", // markup shown as text
		"Windows 10 2015 (Volume)",              // the host view's product group
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("the status page lacks %q", want)
		}
	}
	if strings.Contains(strings.ToLower(dom), "<script") {
		t.Error("the status page's DOM holds a script element")
	}
	if len(page.CSPViolations) > 0 {
		t.Errorf("CSP violations: %q", page.CSPViolations)
	}
}
