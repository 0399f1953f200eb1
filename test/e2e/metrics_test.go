package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/test/fixture"
	"github.com/kmsproxy/kmsproxy/test/kmsgen"
	"github.com/kmsproxy/kmsproxy/test/redistest"
)

// The binary's /metrics, after an activation and a refusal, is clean for
// `promtool check metrics` (Prometheus naming), carries the issue-14
// series, and every metric the monitoring mixin's dashboard and alert
// rules use exists (deploy/monitoring/check.sh with the names).
func TestMetricsLintAndMonitoringMixin(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus")
	}
	host := fixture.StartHost(t, fixture.Replay, fixture.GatewaySide.HostOptions()...)
	// With shared state on a real Redis, so its series are linted and the
	// mixin's state alert finds its metric.
	rs := redistest.Start(t)
	p := startProcess(t, host, inventoryConfig(filepath.Join(t.TempDir(), "inventory.db"))+rs.Conf())
	mgmt := p.managementAddr(t)
	g := newGWClient(t)
	if o := g.activate(p.addr, srcDMZ, 1, 10*time.Second); !o.ok {
		t.Fatalf("activation: %s", o)
	}
	// office-only allows Office 2013+ only: a Windows activation from there
	// is refused (request-refused, kms-application-not-allowed).
	req := kmsgen.NewRequest(6)
	if o := g.activateRequest(p.addr, srcOffice, 2, req, 10*time.Second); o.ok {
		t.Fatal("a Windows activation from office-only was allowed")
	}

	var scrape []byte
	deadline := time.Now().Add(10 * time.Second)
	for {
		scrape = httpGet(t, "http://"+mgmt+"/metrics", "")
		if bytes.Contains(scrape, []byte(`kmsproxy_zone_refusals_total{action="request-refused"`)) &&
			bytes.Contains(scrape, []byte("kmsproxy_inventory_written_total 1")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the scrape lacks the refusal or the inventory write:\n%s", scrape)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, want := range []string{
		`kmsproxy_kms_host_current_clients{kms_counted_id="58e2134f-8e11-4d17-9cb2-91069c151148"`,
		`kmsproxy_kms_host_required_clients{kms_counted_id="58e2134f-8e11-4d17-9cb2-91069c151148"`,
		`kmsproxy_kms_zone_activations_total{result="success",zone="dmz"} 1`,
		`kmsproxy_zone_refusals_total{action="request-refused",reason=`,
		`kmsproxy_kms_call_duration_seconds_count 1`,
		`kmsproxy_build_info{goversion="go`,
		`kmsproxy_upstream_up{upstream="` + host.Addr() + `"} 1`,
		`kmsproxy_upstream_last_success_timestamp_seconds{upstream="` + host.Addr() + `"}`,
		"kmsproxy_state_degraded 0",
	} {
		if !bytes.Contains(scrape, []byte(want)) {
			t.Errorf("the scrape lacks %s", want)
		}
	}

	lint := exec.Command(promtool, "check", "metrics")
	lint.Stdin = bytes.NewReader(scrape)
	if out, err := lint.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}

	// The names: what the scrape exports, and every series the metric set
	// defines (some have no sample until their event happens: a host
	// error, a shadow difference).
	names := map[string]bool{}
	for _, line := range strings.Split(string(scrape), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			names[f[2]] = true
		}
	}
	for _, n := range definedMetricNames(event.NewMetrics()) {
		names[n] = true
	}
	list := make([]string, 0, len(names))
	for n := range names {
		list = append(list, n)
	}
	sort.Strings(list)
	file := filepath.Join(t.TempDir(), "names")
	if err := os.WriteFile(file, []byte(strings.Join(list, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	check := exec.Command("bash", "../../deploy/monitoring/check.sh", file)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("deploy/monitoring/check.sh: %v\n%s", err, out)
	}
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// definedMetricNames are the names every collector field of m describes.
func definedMetricNames(m *event.Metrics) []string {
	var out []string
	v := reflect.ValueOf(m).Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		if !f.CanInterface() {
			continue
		}
		c, ok := f.Interface().(prometheus.Collector)
		if !ok || f.IsNil() {
			continue
		}
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			if s := fqName.FindStringSubmatch(d.String()); s != nil {
				out = append(out, s[1])
			}
		}
	}
	return out
}
