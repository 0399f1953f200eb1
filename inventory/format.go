package inventory

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxCell is the most runes a table cell shows; a longer one is cut and
// ends in "…".
const MaxCell = 64

// escapeRune reports whether r is shown as an escape rather than as
// itself: C0 and C1 controls, DEL, the line and paragraph separators and
// every format character (Cf: the bidi embeddings, overrides and isolates
// U+202A–U+202E and U+2066–U+2069, the marks U+200E/U+200F and U+061C,
// zero-width characters, U+FEFF…), which a terminal or a viewer would act
// on or hide.
func escapeRune(r rune) bool {
	return r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) ||
		r == 0x2028 || r == 0x2029 || unicode.Is(unicode.Cf, r)
}

// appendEscaped appends s with every byte that is not valid UTF-8 as
// \xNN, every ASCII control as \xNN, every other rune escapeRune names as
// \u{NNNN}, and the backslash as \\ (so an escape in the output always
// means an escaped character). It stops after max runes of output, if max
// > 0, reporting whether it cut.
func appendEscaped(b []byte, s string, max int) ([]byte, bool) {
	n := 0
	var tok [16]byte
	for i := 0; i < len(s); {
		// Printable ASCII, the bulk of every cell, is itself.
		if c := s[i]; c >= 0x20 && c < 0x7f && c != '\\' {
			if max > 0 && n+1 > max {
				return b, true
			}
			b = append(b, c)
			n++
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		t := tok[:0]
		switch {
		case r == utf8.RuneError && size == 1:
			t = fmt.Appendf(t, `\x%02x`, s[i])
		case r == '\\':
			t = append(t, `\\`...)
		case escapeRune(r) && r < 0x80:
			t = fmt.Appendf(t, `\x%02x`, r)
		case escapeRune(r):
			t = fmt.Appendf(t, `\u{%04x}`, r)
		default:
			t = append(t, s[i:i+size]...)
		}
		w := utf8.RuneCount(t)
		if max > 0 && n+w > max {
			return b, true
		}
		b = append(b, t...)
		n += w
		i += size
	}
	return b, false
}

// Sanitize is s made safe to print on a terminal: control and format
// characters and invalid bytes as escapes (see WriteTable), cut to MaxCell
// runes with "…".
func Sanitize(s string) string {
	return sanitize(s, MaxCell)
}

func sanitize(s string, max int) string {
	if plain(s) && (max <= 0 || len(s) <= max) {
		return s // nothing to escape or cut: no copy
	}
	if max <= 0 {
		b, _ := appendEscaped(nil, s, 0)
		return string(b)
	}
	b, cut := appendEscaped(make([]byte, 0, len(s)), s, max)
	if !cut {
		return string(b)
	}
	// Cut to max-1 runes and the ellipsis: max runes in all.
	b, _ = appendEscaped(b[:0], s, max-1)
	return string(b) + "…"
}

// plain reports whether s is printable ASCII without a backslash: shown
// as it is.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '\\' {
			return false
		}
	}
	return true
}

// escapeAll is s with the escapes of Sanitize and no length limit.
func escapeAll(s string) string { return sanitize(s, 0) }

var tableHeader = []string{
	"WORKSTATION", "APPLICATION", "SKU", "STATUS", "VM", "LAST SEEN (UTC)", "REQUESTS",
	"LAST SOURCE", "ZONE", "HOST RESULT", "COUNT", "CMID",
}

// WriteTable writes rows as aligned columns for people. Every string
// that came off the wire is escaped for a terminal (C0 and C1 controls,
// ESC, CR, LF, tab, DEL, Unicode bidi controls and other format
// characters, invalid UTF-8 as \xNN or \u{…}; a backslash as \\) and a
// cell longer than MaxCell runes is cut with "…". Times are UTC, RFC 3339
// to the second; an empty cell shows "-".
func WriteTable(w io.Writer, rows []Row) error {
	// Two passes of our own rather than text/tabwriter, which costs more
	// than the query on 100,000 rows: the cells, with each column's width
	// in runes, then the padded lines.
	const cols = 12
	cells := make([][cols]string, 0, len(rows)+1)
	cells = append(cells, [cols]string(tableHeader))
	for i := range rows {
		r := &rows[i]
		vm := "no"
		if r.VirtualMachine {
			vm = "yes"
		}
		count := ""
		if r.CurrentCount > 0 || r.EPID != "" {
			count = strconv.FormatUint(uint64(r.CurrentCount), 10)
		}
		cells = append(cells, [cols]string{
			Sanitize(r.Workstation), Sanitize(r.Application), Sanitize(r.SKU), Sanitize(r.LicenseStatus), vm,
			formatTime(r.LastSeen), strconv.FormatInt(r.Requests, 10), Sanitize(r.LastSource), Sanitize(r.LastZone),
			Sanitize(hostResult(r)), count, Sanitize(r.CMID),
		})
	}
	var width [cols]int
	for i := range cells {
		for c := range cols {
			if cells[i][c] == "" {
				cells[i][c] = "-"
			}
			width[c] = max(width[c], utf8.RuneCountInString(cells[i][c]))
		}
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	const gap = "  "
	for i := range cells {
		for c := range cols {
			v := cells[i][c]
			bw.WriteString(v)
			if c == cols-1 {
				break
			}
			for pad := width[c] - utf8.RuneCountInString(v); pad > 0; pad-- {
				bw.WriteByte(' ')
			}
			bw.WriteString(gap)
		}
		bw.WriteByte('\n')
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("inventory: table: %w", err)
	}
	return nil
}

// hostResult is the table's host result cell: the call's result, and the
// host's HRESULT and its name when it is not S_OK.
func hostResult(r *Row) string {
	s := r.LastResult
	if r.LastHRESULT != "" && r.LastHRESULT != "0x00000000" {
		s = strings.TrimSpace(s + " " + r.LastHRESULT)
		if r.LastHRESULTName != "" {
			s += " " + r.LastHRESULTName
		}
	}
	return s
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// csvHeader is the CSV's first row: the JSON names of Row's fields.
var csvHeader = []string{
	"client_machine_id", "application_id", "application", "workstation", "sku_id", "sku",
	"kms_counted_id", "kms_counted_name", "license_status", "virtual_machine", "kms_version",
	"first_seen", "last_seen", "requests", "last_source", "last_zone", "last_rule", "last_result",
	"last_hresult", "last_hresult_name", "host_current_count", "host_epid",
}

// csvCell is a string cell for a spreadsheet: escaped like the table (no
// length limit), and, against formula injection (OWASP), prefixed with a
// single quote when it starts with =, +, -, @, tab or CR.
func csvCell(s string) string {
	e := escapeAll(s)
	if s != "" && strings.IndexByte("=+-@\t\r", s[0]) >= 0 {
		return "'" + e
	}
	return e
}

// WriteCSV writes rows as CSV (encoding/csv) with a header row of the JSON
// field names. String cells are escaped as in the table, uncut, and
// protected against formula injection; times are UTC RFC 3339 with
// nanoseconds; booleans true/false.
func WriteCSV(w io.Writer, rows []Row) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return fmt.Errorf("inventory: csv: %w", err)
	}
	rec := make([]string, len(csvHeader))
	for i := range rows {
		r := &rows[i]
		copy(rec, []string{
			csvCell(r.CMID), csvCell(r.ApplicationID), csvCell(r.Application), csvCell(r.Workstation),
			csvCell(r.SKUID), csvCell(r.SKU), csvCell(r.KMSCountedID), csvCell(r.KMSCountedName),
			csvCell(r.LicenseStatus), strconv.FormatBool(r.VirtualMachine), strconv.FormatUint(uint64(r.Version), 10),
			csvTime(r.FirstSeen), csvTime(r.LastSeen), strconv.FormatInt(r.Requests, 10),
			csvCell(r.LastSource), csvCell(r.LastZone), csvCell(r.LastRule), csvCell(r.LastResult),
			csvCell(r.LastHRESULT), csvCell(r.LastHRESULTName), strconv.FormatUint(uint64(r.CurrentCount), 10),
			csvCell(r.EPID),
		})
		if err := cw.Write(rec); err != nil {
			return fmt.Errorf("inventory: csv: %w", err)
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("inventory: csv: %w", err)
	}
	return nil
}

func csvTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// WriteJSON writes {"rows":[…],"summary":{…}}: the rows exactly as
// stored and their Summary. encoding/json escapes the C0 controls, <, >,
// & and U+2028/U+2029 itself (the document is safe inside HTML); the other
// characters a terminal would act on (DEL, C1 controls, bidi and other
// format characters) are written as \u escapes too, so the document is as
// safe to print as the table, and decodes to exactly the stored strings.
func WriteJSON(w io.Writer, rows []Row) error {
	if rows == nil {
		rows = []Row{}
	}
	// Streamed a row at a time: one document of 100,000 rows built in
	// memory costs more in growing its buffer than in encoding it.
	bw := bufio.NewWriterSize(w, 64<<10)
	bw.WriteString(`{"rows":[`)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for i := range rows {
		buf.Reset()
		if i > 0 {
			buf.WriteByte(',')
		}
		if err := enc.Encode(&rows[i]); err != nil {
			return fmt.Errorf("inventory: json: %w", err)
		}
		bw.Write(jsonEscapeTerminal(bytes.TrimSuffix(buf.Bytes(), []byte("\n"))))
	}
	sum, err := json.Marshal(Summarize(rows))
	if err != nil {
		return fmt.Errorf("inventory: json: %w", err)
	}
	bw.WriteString(`],"summary":`)
	bw.Write(jsonEscapeTerminal(sum))
	bw.WriteString("}\n")
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("inventory: json: %w", err)
	}
	return nil
}

// jsonEscapeTerminal rewrites the runes escapeRune names that
// encoding/json leaves raw as \uXXXX (surrogate pairs above the BMP).
// They can only stand inside strings, where the escape means the same
// rune.
func jsonEscapeTerminal(b []byte) []byte {
	var out []byte
	last := 0
	for i := 0; i < len(b); {
		if b[i] < 0x7f {
			i++
			continue
		}
		r, size := utf8.DecodeRune(b[i:])
		if r < 0x20 || !escapeRune(r) {
			i += size
			continue
		}
		if out == nil {
			out = make([]byte, 0, len(b)+64)
		}
		out = append(out, b[last:i]...)
		if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
			out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
		} else {
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		i += size
		last = i
	}
	if out == nil {
		return b
	}
	return append(out, b[last:]...)
}
