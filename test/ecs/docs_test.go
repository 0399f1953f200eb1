package ecs_test

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"

	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/test/ecs"
)

const elasticDoc = "../../docs/siem-elastic.md"

// section returns the table rows of the doc's section titled title, each
// split into its cells.
func section(t *testing.T, title string) [][]string {
	t.Helper()
	b, err := os.ReadFile(elasticDoc)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	i := strings.Index(text, "\n## "+title+"\n")
	if i < 0 {
		t.Fatalf("%s has no section %q", elasticDoc, title)
	}
	text = text[i+len(title)+5:]
	if j := strings.Index(text, "\n## "); j >= 0 {
		text = text[:j]
	}
	var rows [][]string
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for k := range cells {
			cells[k] = strings.TrimSpace(cells[k])
		}
		rows = append(rows, cells)
	}
	return rows
}

var codeRE = regexp.MustCompile("`([^`]+)`")

func codes(cell string) []string {
	var out []string
	for _, m := range codeRE.FindAllStringSubmatch(cell, -1) {
		out = append(out, m[1])
	}
	return out
}

// The doc's field table is the repository's: every field once, with its
// type and shape.
func TestDocFieldTableIsTheTables(t *testing.T) {
	listed := map[string]string{}
	for _, row := range section(t, "Fields") {
		name := codes(row[0])
		if len(name) != 1 || len(row) < 3 {
			t.Errorf("row %v", row)
			continue
		}
		if _, dup := listed[name[0]]; dup {
			t.Errorf("%s listed twice", name[0])
		}
		listed[name[0]] = row[1]
	}
	for _, f := range ecs.All() {
		want := "`" + string(f.Type) + "`"
		if f.Array {
			want += " array"
		}
		got, ok := listed[f.Name]
		if !ok {
			t.Errorf("%s is not in the doc's field table", f.Name)
			continue
		}
		if got != want {
			t.Errorf("%s: the doc says %s, the table %s", f.Name, got, want)
		}
		delete(listed, f.Name)
	}
	for name := range listed {
		t.Errorf("the doc lists %s, which the table does not", name)
	}
}

// The doc's categorization table is what the event package writes for
// each action, every action in it once.
func TestDocCategorizationIsTheEvents(t *testing.T) {
	seen := map[string]bool{}
	for _, row := range section(t, "Categorization") {
		if len(row) != 4 {
			continue // the "what changed" table has three columns
		}
		for _, a := range codes(row[0]) {
			seen[a] = true
			enc := zapcore.NewMapObjectEncoder()
			for _, f := range event.New(a, event.OutcomeUnknown, "").Fields {
				f.AddTo(enc)
			}
			got := []string{
				enc.Fields["event.kind"].(string),
				strings.Join(toStrings(enc.Fields["event.category"]), ", "),
				strings.Join(toStrings(enc.Fields["event.type"]), ", "),
			}
			if want := row[1:]; !slices.Equal(got, want) {
				t.Errorf("%s: the doc says %v, the event %v", a, want, got)
			}
		}
	}
	for _, a := range event.Actions {
		if !seen[a] {
			t.Errorf("%s is not in the doc's categorization table", a)
		}
	}
}
