package ecs

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Always are the fields every line kmsproxy writes carries, event or
// process message: where it comes from, for routing and for the data
// stream.
var Always = []string{
	"@timestamp", "message", "log.level", "ecs.version",
	"observer.type", "observer.vendor", "observer.product", "observer.version",
	"event.module", "event.dataset",
	"data_stream.type", "data_stream.dataset", "data_stream.namespace",
}

// EventFields are the fields every event (a line with an event.action)
// carries besides Always.
var EventFields = []string{"event.kind", "event.category", "event.type", "event.action", "event.outcome"}

// Validate checks one decoded event (a JSON object, numbers as float64 or
// json.Number) against the table and returns what is wrong, nil for a
// valid one: every key a field of the table, every value of its type
// (an ip parses as an address, a date as RFC 3339, a long is an integer,
// arrays only where the table has them), values from the field's fixed
// set where it has one, the required fields present, and the
// categorization as ECS allows it: each event.type one ECS expects for
// every event.category of the event.
func Validate(ev map[string]any) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	keys := make([]string, 0, len(ev))
	for k := range ev {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f, ok := Lookup(k)
		if !ok {
			fail("%s: not an ECS %s field the table lists, nor a listed field of %s", k, Version, strings.Join(CustomNamespaces, ".*, ")+".*")
			continue
		}
		if f.Pipeline {
			fail("%s: set by the ingest pipeline, not by kmsproxy", k)
		}
		for _, err := range checkValue(f, ev[k]) {
			fail("%s: %v", k, err)
		}
	}
	required := Always
	if _, ok := ev["event.action"]; ok {
		required = append(append([]string(nil), Always...), EventFields...)
	}
	for _, k := range required {
		if _, ok := ev[k]; !ok {
			fail("%s: missing", k)
		}
	}
	errs = append(errs, checkCategorization(ev)...)
	return errs
}

// checkValue checks v against f's type, shape and values.
func checkValue(f Field, v any) []error {
	if f.Array {
		a, ok := v.([]any)
		if !ok {
			return []error{fmt.Errorf("%s: want an array of %s, got %s", jsonText(v), f.Type, jsonKind(v))}
		}
		if len(a) == 0 {
			return []error{errors.New("empty array")}
		}
		var errs []error
		for i, e := range a {
			if err := checkScalar(f, e); err != nil {
				errs = append(errs, fmt.Errorf("[%d]: %w", i, err))
			}
		}
		return errs
	}
	if err := checkScalar(f, v); err != nil {
		return []error{err}
	}
	return nil
}

func checkScalar(f Field, v any) error {
	switch f.Type {
	case Keyword, ConstantKeyword, MatchOnlyText:
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: want a string (%s), got %s", jsonText(v), f.Type, jsonKind(v))
		}
		if f.Values != nil && !slices.Contains(f.Values, s) {
			return fmt.Errorf("%q is not one of %s", s, strings.Join(f.Values, ", "))
		}
	case IP:
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: want an IP address string, got %s", jsonText(v), jsonKind(v))
		}
		if _, err := netip.ParseAddr(s); err != nil {
			return fmt.Errorf("%q is not an IP address", s)
		}
	case Date:
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: want an RFC 3339 date string, got %s", jsonText(v), jsonKind(v))
		}
		if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
			return fmt.Errorf("%q is not an RFC 3339 date", s)
		}
	case Long:
		if !isInteger(v) {
			return fmt.Errorf("%s: want an integer, got %s", jsonText(v), jsonKind(v))
		}
	case Boolean:
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: want true or false, got %s", jsonText(v), jsonKind(v))
		}
	default:
		return fmt.Errorf("the table has no check for type %s", f.Type)
	}
	return nil
}

func isInteger(v any) bool {
	switch n := v.(type) {
	case json.Number:
		if _, err := strconv.ParseInt(n.String(), 10, 64); err == nil {
			return true
		}
		_, err := strconv.ParseUint(n.String(), 10, 64)
		return err == nil
	case float64:
		return n == math.Trunc(n) && !math.IsInf(n, 0)
	}
	return false
}

// checkCategorization checks the categorization fields together: each
// event.type one ECS expects for every event.category.
func checkCategorization(ev map[string]any) []error {
	cats, ok1 := strings_(ev["event.category"])
	types, ok2 := strings_(ev["event.type"])
	if !ok1 || !ok2 {
		return nil // reported as a type error, or missing
	}
	var errs []error
	for _, c := range cats {
		expected, ok := CategoryTypes[c]
		if !ok {
			continue // reported by Values
		}
		for _, t := range types {
			if !slices.Contains(expected, t) {
				errs = append(errs, fmt.Errorf("event.type %q is not one ECS %s expects for event.category %q (%s)", t, Version, c, strings.Join(expected, ", ")))
			}
		}
	}
	return errs
}

func strings_(v any) ([]string, bool) {
	a, ok := v.([]any)
	if !ok {
		return nil, false
	}
	out := make([]string, 0, len(a))
	for _, e := range a {
		s, ok := e.(string)
		if !ok {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case float64, json.Number:
		return "a number"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil || len(b) > 80 {
		return fmt.Sprintf("%.80v", v)
	}
	return string(b)
}

// Decode decodes one JSON line as Validate wants it (numbers as
// json.Number), refusing what Elasticsearch would refuse before mapping:
// anything but one object, and a key given twice.
func Decode(line []byte) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader(line))
	d.UseNumber()
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	ev := map[string]any{}
	for d.More() {
		tok, err := d.Token()
		if err != nil {
			return nil, err
		}
		k := tok.(string)
		var v any
		if err := d.Decode(&v); err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		if _, dup := ev[k]; dup {
			return nil, fmt.Errorf("%s: the key appears twice", k)
		}
		ev[k] = v
	}
	if _, err := d.Token(); err != nil {
		return nil, err
	}
	if _, err := d.Token(); err == nil {
		return nil, errors.New("bytes after the JSON object")
	}
	return ev, nil
}

// Problem is one line of a log that is not a valid event.
type Problem struct {
	Line string
	Errs []error
}

func (p Problem) String() string {
	var b strings.Builder
	for _, err := range p.Errs {
		b.WriteString("  " + err.Error() + "\n")
	}
	return b.String() + "  in " + p.Line
}

// CheckLines validates every line of log (what kmsproxy wrote to stdout)
// and returns the lines that are not valid events. Lines that are not
// JSON are problems too unless skipNonJSON (a process's stdout and stderr
// in one buffer: a Go runtime message or a command's usage text on stderr
// is no event).
func CheckLines(log string, skipNonJSON bool) []Problem {
	var out []Problem
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if skipNonJSON && line[0] != '{' {
			continue
		}
		ev, err := Decode(line)
		if err != nil {
			out = append(out, Problem{Line: sc.Text(), Errs: []error{err}})
			continue
		}
		if errs := Validate(ev); len(errs) > 0 {
			out = append(out, Problem{Line: sc.Text(), Errs: errs})
		}
	}
	if err := sc.Err(); err != nil {
		out = append(out, Problem{Line: "(reading the log)", Errs: []error{err}})
	}
	return out
}

// TB is the part of testing.TB Check uses.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
}

// Check fails t with every line of log that is not a valid event, at most
// max of them spelled out; name says whose log it is.
func Check(t TB, name, log string, skipNonJSON bool) {
	t.Helper()
	const max = 10
	probs := CheckLines(log, skipNonJSON)
	for i, p := range probs {
		if i == max {
			t.Errorf("%s: %d more events not valid against ECS %s", name, len(probs)-max, Version)
			break
		}
		t.Errorf("%s: event not valid against ECS %s (test/ecs):\n%s", name, Version, p)
	}
}

func sortStrings(s []string) { sort.Strings(s) }
