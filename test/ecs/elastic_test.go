package ecs_test

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/event/syslog"
	"github.com/kmsproxy/kmsproxy/test/ecs"
)

// The Elastic content of deploy/siem/elastic.
const elasticDir = "../../deploy/siem/elastic"

// update rewrites the generated content (the index template) instead of
// comparing it: KMSPROXY_ELASTIC_UPDATE=1 go test ./test/ecs. The samples
// are written by test/siem, from real traffic, under the same variable.
var update = os.Getenv("KMSPROXY_ELASTIC_UPDATE") != ""

func readJSON(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

// templateMappings are the committed template's leaf mappings by name.
func templateMappings(t *testing.T) map[string]map[string]any {
	t.Helper()
	tmpl := readJSON(t, filepath.Join(elasticDir, "index-template.json"))
	props, _ := tmpl["template"].(map[string]any)["mappings"].(map[string]any)["properties"].(map[string]any)
	return ecs.Flatten(props)
}

// index-template.json is what the table generates, byte for byte, and
// maps every field of the table with the table's type (and nothing
// else); its data streams are kmsproxy's and run the pipeline.
func TestIndexTemplateIsTheTables(t *testing.T) {
	want, err := ecs.IndexTemplate()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(elasticDir, "index-template.json")
	if update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is not what test/ecs generates from the table: KMSPROXY_ELASTIC_UPDATE=1 go test ./test/ecs -run TestIndexTemplate", path)
	}
	mappings := templateMappings(t)
	for _, f := range ecs.All() {
		m, ok := mappings[f.Name]
		if !ok {
			t.Errorf("%s is not mapped", f.Name)
			continue
		}
		if m["type"] != string(f.Type) {
			t.Errorf("%s mapped as %v, the table says %s", f.Name, m["type"], f.Type)
		}
		if f.Text {
			if sub := mappings[f.Name+".text"]; sub == nil || sub["type"] != string(ecs.MatchOnlyText) {
				t.Errorf("%s.text mapped as %v", f.Name, sub)
			}
		}
		delete(mappings, f.Name)
		delete(mappings, f.Name+".text")
	}
	for name := range mappings {
		t.Errorf("%s is mapped but not in the table", name)
	}
	tmpl := readJSON(t, path)
	if p := tmpl["index_patterns"]; !slices.Equal(toStrings(p), []string{"logs-kmsproxy.events-*"}) {
		t.Errorf("index_patterns %v", p)
	}
	if _, ok := tmpl["data_stream"].(map[string]any); !ok {
		t.Error("not a data stream template")
	}
	if p, _ := tmpl["priority"].(float64); p <= 100 {
		t.Errorf("priority %v: the built-in logs template (100) would win", p)
	}
	settings := tmpl["template"].(map[string]any)["settings"].(map[string]any)["index"].(map[string]any)
	if settings["default_pipeline"] != ecs.PipelineName {
		t.Errorf("default_pipeline %v, want %s", settings["default_pipeline"], ecs.PipelineName)
	}
}

func toStrings(v any) []string {
	a, _ := v.([]any)
	var out []string
	for _, e := range a {
		s, _ := e.(string)
		out = append(out, s)
	}
	return out
}

// samples/ holds exactly one document per action, each a valid event, of
// the action its name says, every field of which the template maps.
func TestSamplesOnePerActionAllMapped(t *testing.T) {
	dir := filepath.Join(elasticDir, "samples")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	var want []string
	for _, a := range event.Actions {
		want = append(want, a+".json")
	}
	sort.Strings(want)
	if !slices.Equal(names, want) {
		t.Fatalf("%s holds %v, want one sample per action: %v (KMSPROXY_ELASTIC_UPDATE=1 go test ./test/siem -run TestElasticSamples)", dir, names, want)
	}
	mappings := templateMappings(t)
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		ev, err := ecs.Decode(b)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		for _, err := range ecs.Validate(ev) {
			t.Errorf("%s: %v", name, err)
		}
		if a := ev["event.action"]; a != strings.TrimSuffix(name, ".json") {
			t.Errorf("%s is a sample of %v", name, a)
		}
		for k := range ev {
			if mappings[k] == nil {
				t.Errorf("%s: %s is not mapped by the index template", name, k)
			}
		}
	}
}

// The ingest pipeline is the one the template names, and what its grok
// keeps of a real RFC 5424 message of the sink, structured data holding
// brackets and braces a client chose, is the event's JSON exactly; its
// json step takes only what starts with '{'. (Go's regexp stands in for
// Elasticsearch's: the pattern uses nothing the two read differently.)
func TestIngestPipelineTakesTheJSONOutOfRFC5424(t *testing.T) {
	p := readJSON(t, filepath.Join(elasticDir, "ingest-pipeline.json"))
	var grok, jsonStep map[string]any
	procs, _ := p["processors"].([]any)
	for _, proc := range procs {
		m := proc.(map[string]any)
		for kind, body := range m {
			switch kind {
			case "grok":
				grok = body.(map[string]any)
			case "json":
				jsonStep = body.(map[string]any)
			case "set":
				if f := body.(map[string]any)["field"]; f != "event.ingested" {
					t.Errorf("the pipeline sets %v", f)
				}
			case "script":
				// The namespace is what follows the data stream's prefix.
				prefix := strings.TrimSuffix(ecs.DataStreamPattern, "*")
				src, _ := body.(map[string]any)["source"].(string)
				cond, _ := body.(map[string]any)["if"].(string)
				if !strings.Contains(cond, "startsWith('"+prefix+"')") || !strings.Contains(src, "substring("+strconv.Itoa(len(prefix))+")") {
					t.Errorf("the data stream script does not cut %q: if %s; %s", prefix, cond, src)
				}
			}
		}
	}
	if grok == nil || jsonStep == nil {
		t.Fatalf("no grok or json processor in %v", procs)
	}
	if jsonStep["field"] != "message" || jsonStep["add_to_root"] != true || !strings.Contains(jsonStep["if"].(string), "startsWith('{')") {
		t.Errorf("json processor %v", jsonStep)
	}
	pattern := toStrings(grok["patterns"])[0]
	re := regexp.MustCompile(strings.NewReplacer(
		"%{NONNEGINT}", `[0-9]+`, "%{NOTSPACE}", `\S+`, "%{GREEDYDATA:message}", `(?P<message>.*)`).Replace(pattern))

	// A real sink, over UDP to a listener here.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	sink, core, err := syslog.NewSink(syslog.Options{Address: "udp://" + pc.LocalAddr().String(), Level: "debug"},
		prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"}), nil)
	if err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	log, err := event.NewLoggerWith(event.LoggerOptions{Level: "debug", Out: &stdout, Extra: []zapcore.Core{core}})
	if err != nil {
		t.Fatal(err)
	}
	ev := event.New(event.ActionKMSDuplicateCMID, event.OutcomeUnknown, event.ReasonDuplicateCMID)
	ev.Add(zap.String("kms.workstation", `ws] {"x":"]\"} [a="b"]`), zap.String("rule.name", `r\]`))
	log.Warn(event.ActionKMSDuplicateCMID, ev.Fields...)
	log.Info("kmsproxy listening", zap.String("kmsproxy.listen", "127.0.0.1:1688")) // no structured data
	buf := make([]byte, 65536)
	var got []string
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < 2 {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("%d messages from the sink: %v", len(got), err)
		}
		got = append(got, string(buf[:n]))
	}
	sink.Close()
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	for i, msg := range got {
		m := re.FindStringSubmatch(msg)
		if m == nil {
			t.Errorf("grok does not match %s", msg)
			continue
		}
		if json := m[re.SubexpIndex("message")]; json != lines[i] {
			t.Errorf("grok kept\n  %s\nof\n  %s\nwant\n  %s", json, msg, lines[i])
		}
		if i == 0 && !strings.Contains(msg, `[kmsproxy@32473 `) {
			t.Errorf("the first message has no structured data: %s", msg)
		}
	}
	ecs.Check(t, "stdout", stdout.String(), false)
}
