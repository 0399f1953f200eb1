package inventory

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// hostile are workstation names a client may send.
var hostile = []string{
	"plain-ws",
	"bell\x07nul\x00del\x7f",
	"\x1b[2J\x1b[31mRED\x1b]0;title\x07",
	"line1\r\nline2\tTAB",
	"c1\u0085\u009bcsi",
	strings.Repeat("A", 1024),
	strings.Repeat("ü", 700),
	"<script>alert(1)</script>",
	"evil\u202egpj.exe",
	"iso\u2066late\u2069\u202a\u202b\u202c\u202d",
	"=cmd|' /C calc'!A0",
	"+1",
	"-2",
	"@SUM(1)",
	"\tTAB-LEAD",
	"\rCR-LEAD",
	`back\slash`,
	"bad\xff\xfeutf8",
	"zero\u200bwidth\ufeff",
	"tag\U000E0041char",
}

func hostileRows(t *testing.T) []Row {
	t.Helper()
	s, _ := openTest(t, Options{StoreWorkstation: true})
	var acts []Activation
	for i, name := range hostile {
		a := act(cmidN(i), t0.Add(time.Duration(i)*time.Second))
		a.Workstation = name
		a.SKU = name
		a.Zone = name
		acts = append(acts, a)
	}
	record(t, s, acts...)
	rows := query(t, s, Filter{})
	if len(rows) != len(hostile) {
		t.Fatalf("%d rows, want %d", len(rows), len(hostile))
	}
	// The store keeps the names exactly (JSON is the exact form).
	seen := map[string]bool{}
	for _, r := range rows {
		seen[r.Workstation] = true
	}
	for _, name := range hostile {
		if !seen[name] {
			t.Fatalf("the store did not keep %q exactly", name)
		}
	}
	return rows
}

// terminalSafe fails on anything a terminal would act on.
func terminalSafe(t *testing.T, what string, out []byte) {
	t.Helper()
	if !utf8.Valid(out) {
		t.Errorf("%s: not valid UTF-8", what)
	}
	for i, r := range string(out) {
		if (r < 0x20 && r != '\n') || r == 0x7f || (r >= 0x80 && r <= 0x9f) ||
			(r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) || r == 0x200b || r == 0xfeff {
			t.Errorf("%s: raw %U at byte %d", what, r, i)
		}
	}
}

func TestWriteTableHostile(t *testing.T) {
	rows := hostileRows(t)
	var buf bytes.Buffer
	if err := WriteTable(&buf, rows); err != nil {
		t.Fatal(err)
	}
	out := buf.Bytes()
	terminalSafe(t, "table", out)
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != len(rows)+1 {
		t.Fatalf("%d lines for %d rows: a name broke a line", len(lines), len(rows))
	}
	if !strings.HasPrefix(lines[0], "WORKSTATION") || !strings.Contains(lines[0], "CMID") {
		t.Errorf("header %q", lines[0])
	}
	// Every line is one row whose CMID ends it: the columns stayed columns.
	for i, l := range lines[1:] {
		if !strings.HasSuffix(l, rows[i].CMID) {
			t.Errorf("line %d does not end with its CMID: %q", i+1, l)
		}
	}
	for _, want := range []string{
		`\x1b[2J\x1b[31mRED\x1b]0;title\x07`, `line1\x0d\x0aline2\x09TAB`, `evil\u{202e}gpj.exe`,
		`c1\u{0085}\u{009b}csi`, `bad\xff\xfeutf8`, `back\\slash`, `zero\u{200b}width\u{feff}`,
		"<script>alert(1)</script>", strings.Repeat("A", 63) + "…", strings.Repeat("ü", 63) + "…",
		t0.Add(3 * time.Second).Format(time.RFC3339),
	} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if strings.Contains(buf.String(), strings.Repeat("A", 64)) {
		t.Error("a 1 KiB name was not cut to 64 runes")
	}
}

func TestSanitize(t *testing.T) {
	for in, want := range map[string]string{
		"":                         "",
		"WS-01":                    "WS-01",
		"a\x1bb":                   `a\x1bb`,
		"\u202e":                   `\u{202e}`,
		strings.Repeat("x", 64):    strings.Repeat("x", 64),
		strings.Repeat("x", 65):    strings.Repeat("x", 63) + "…",
		strings.Repeat("\x1b", 20): strings.Repeat(`\x1b`, 15) + "…", // 60 runes; one more escape would pass 63
	} {
		got := Sanitize(in)
		if got != want {
			t.Errorf("Sanitize(%q) = %q, want %q", in, got, want)
		}
		if n := utf8.RuneCountInString(got); n > MaxCell {
			t.Errorf("Sanitize(%q) is %d runes", in, n)
		}
	}
}

func TestWriteCSVHostile(t *testing.T) {
	rows := hostileRows(t)
	var buf bytes.Buffer
	if err := WriteCSV(&buf, rows); err != nil {
		t.Fatal(err)
	}
	terminalSafe(t, "csv", bytes.ReplaceAll(buf.Bytes(), []byte("\r\n"), []byte("\n")))
	recs, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(rows)+1 {
		t.Fatalf("%d records for %d rows", len(recs), len(rows))
	}
	head := recs[0]
	col := func(name string) int {
		for i, h := range head {
			if h == name {
				return i
			}
		}
		t.Fatalf("no column %q in %v", name, head)
		return -1
	}
	// The header is Row's JSON names.
	rt := reflect.TypeFor[Row]()
	if len(head) != rt.NumField() {
		t.Fatalf("header has %d columns, Row %d fields", len(head), rt.NumField())
	}
	for i := range rt.NumField() {
		if tag := strings.Split(rt.Field(i).Tag.Get("json"), ",")[0]; head[i] != tag {
			t.Errorf("column %d is %q, Row's field %s is %q", i, head[i], rt.Field(i).Name, tag)
		}
	}
	ws, sku, zone, cmid := col("workstation"), col("sku"), col("last_zone"), col("client_machine_id")
	for i, rec := range recs[1:] {
		r := rows[i]
		if rec[cmid] != r.CMID {
			t.Fatalf("record %d is not row %d", i, i)
		}
		want := escapeAll(r.Workstation)
		if r.Workstation != "" && strings.ContainsRune("=+-@\t\r", rune(r.Workstation[0])) {
			want = "'" + want
		}
		for _, c := range []int{ws, sku, zone} {
			if rec[c] != want {
				t.Errorf("cell %q, want %q (from %q)", rec[c], want, r.Workstation)
			}
		}
		if c := rec[ws]; c != "" && strings.ContainsRune("=+-@\t\r", rune(c[0])) {
			t.Errorf("formula cell %q left unquoted", c)
		}
	}
	for _, want := range []string{`'=cmd|' /C calc'!A0`, "'+1", "'-2", "'@SUM(1)", `'\x09TAB-LEAD`, `'\x0dCR-LEAD`} {
		found := false
		for _, rec := range recs[1:] {
			if rec[ws] == want {
				found = true
			}
		}
		if !found {
			t.Errorf("no cell %q", want)
		}
	}
	// A 1 KiB name is exported whole.
	found := false
	for _, rec := range recs[1:] {
		found = found || rec[ws] == strings.Repeat("A", 1024)
	}
	if !found {
		t.Error("the CSV cut the 1 KiB name")
	}
}

func TestWriteJSONHostile(t *testing.T) {
	rows := hostileRows(t)
	var buf bytes.Buffer
	if err := WriteJSON(&buf, rows); err != nil {
		t.Fatal(err)
	}
	terminalSafe(t, "json", buf.Bytes())
	if bytes.Contains(buf.Bytes(), []byte("\U000E0041")) || !bytes.Contains(buf.Bytes(), []byte(`tag\udb40\udc41char`)) {
		t.Error("JSON carries a raw tag character")
	}
	if bytes.Contains(buf.Bytes(), []byte("<script>")) {
		t.Error("JSON carries a raw <script>")
	}
	var doc struct {
		Rows    []Row   `json:"rows"`
		Summary Summary `json:"summary"`
	}
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Rows) != len(rows) {
		t.Fatalf("%d rows back, want %d", len(doc.Rows), len(rows))
	}
	for i := range rows {
		want := rows[i]
		if !utf8.ValidString(want.Workstation) {
			// JSON carries text: invalid UTF-8 comes back as U+FFFD.
			want.Workstation = strings.ToValidUTF8(want.Workstation, "\uFFFD\uFFFD")
			want.SKU, want.LastZone = want.Workstation, want.Workstation
		}
		if !reflect.DeepEqual(doc.Rows[i], want) {
			t.Errorf("row %d did not round-trip:\n got %+v\nwant %+v", i, doc.Rows[i], want)
		}
	}
	if doc.Summary.Machines != len(rows) || doc.Summary.Rows != len(rows) {
		t.Errorf("summary %+v", doc.Summary)
	}

	buf.Reset()
	if err := WriteJSON(&buf, nil); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(buf.String(), `{"rows":[],"summary":{"machines":0,"rows":0,`) {
		t.Errorf("empty: %s", buf.String())
	}
}

func TestSummarize(t *testing.T) {
	s, _ := openTest(t, Options{StoreWorkstation: true})
	w1 := act(cmidN(1), t0)
	w2 := act(cmidN(2), t0)
	o1 := act(cmidN(1), t0)
	o1.ApplicationID, o1.Application, o1.SKU = appOffice, "Office", "Office 2016"
	w3 := act(cmidN(3), t0)
	record(t, s, w1, w2, o1, w3)
	sum := Summarize(query(t, s, Filter{}))
	want := "3 machines, 4 rows; by product: Windows 10 Enterprise 3, Office 2016 1; by zone: dmz 3; by status: Licensed 3"
	if got := sum.String(); got != want {
		t.Errorf("String() =\n%q, want\n%q", got, want)
	}
	one := Summarize([]Row{{CMID: "x", Application: "Office 15", SKU: "ProPlus", LastZone: "\x1b[31m"}})
	if got, want := one.String(), `1 machine, 1 row; by product: Office 15 ProPlus 1; by zone: \x1b[31m 1; by status: (none) 1`; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got := Summarize(nil).String(); got != "0 machines, 0 rows" {
		t.Errorf("empty: %q", got)
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 3, 10, 15, 30, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"7d":                        now.Add(-7 * 24 * time.Hour),
		" 12h ":                     now.Add(-12 * time.Hour),
		"30m":                       now.Add(-30 * time.Minute),
		"1h30m":                     now.Add(-90 * time.Minute),
		"2d12h":                     now.Add(-60 * time.Hour),
		"0d":                        now,
		"2026-03-01":                time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC),
		"2026-03-01T08:00:00Z":      time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC),
		"2026-03-01T08:00:00+02:00": time.Date(2026, 3, 1, 6, 0, 0, 0, time.UTC),
	} {
		got, err := ParseSince(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseSince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "7", "d", "-7d", "-1h", "7x", "7d-1h", "yesterday", "2026-13-01", "7dd", "99999999d"} {
		if got, err := ParseSince(bad, now); err == nil {
			t.Errorf("ParseSince(%q) = %v, want an error", bad, got)
		}
	}
}

func TestQueryEmpty(t *testing.T) {
	s, _ := openTest(t, Options{})
	rows, err := s.Query(context.Background(), Filter{})
	if err != nil || rows == nil || len(rows) != 0 {
		t.Fatalf("Query of an empty store = %v, %v", rows, err)
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, rows); err != nil || strings.Count(buf.String(), "\n") != 1 {
		t.Fatalf("table of nothing: %q, %v", buf.String(), err)
	}
}
