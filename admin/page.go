package admin

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"html/template"
	"io/fs"
	"math"
	"net/http"
	"path"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/kmsproxy/kmsproxy/inventory"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// The page's template and its static files are compiled in: the page
// works offline, with no build step and nothing from elsewhere.
//
//go:embed templates/status.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// asset is one static file, served at /static/<name>.
type asset struct {
	body        []byte
	contentType string
	version     string // of its content: the page links name?v=version
}

var assets = loadAssets()

func loadAssets() map[string]asset {
	types := map[string]string{".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
	out := map[string]asset{}
	err := fs.WalkDir(staticFS, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := staticFS.ReadFile(p)
		if err != nil {
			return err
		}
		ct, ok := types[path.Ext(p)]
		if !ok {
			return fmt.Errorf("admin: static file %s: no content type for its extension", p)
		}
		sum := sha256.Sum256(b)
		out[strings.TrimPrefix(p, "static/")] = asset{body: b, contentType: ct, version: hex.EncodeToString(sum[:6])}
		return nil
	})
	if err != nil {
		panic(err)
	}
	return out
}

// serveStatic serves the embedded files by exact name: no directory
// listings, no index pages. A file's URL changes with its content, so it
// may be cached long.
func serveStatic(w http.ResponseWriter, r *http.Request) {
	a, ok := assets[strings.TrimPrefix(r.URL.Path, "/static/")]
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", a.contentType)
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	w.Write(a.body)
}

// assetURL is the versioned URL of a static file.
func assetURL(name string) (string, error) {
	a, ok := assets[name]
	if !ok {
		return "", fmt.Errorf("no static file %q", name)
	}
	return "/static/" + name + "?v=" + a.version, nil
}

var pageTemplate = template.Must(template.New("status.html").Funcs(template.FuncMap{
	"asset":     assetURL,
	"printable": printable,
	"sanitize":  inventory.Sanitize, // printable's escapes, cut to inventory.MaxCell runes
	"ts":        timestamp,
	"ago":       ago,
	"uptime":    uptime,
	"missing":   func(cur, req uint32) uint32 { return req - min(cur, req) },
	"threshold": func(req uint32) float64 { return math.Max(float64(req)-0.5, 0) },
	"eqFold":    strings.EqualFold,
	"statuses":  licenseStatuses,
	"apps":      func() []kms.Application { return kms.Applications },
	"lower":     strings.ToLower,
	"cut": func(key string) [2]string {
		a, r, _ := strings.Cut(key, "/")
		return [2]string{a, r}
	},
	"pair": func(label string, c []inventory.Count) countsView { return countsView{label, c} },
}).ParseFS(templateFS, "templates/status.html"))

// countsView is one "by …" part of the inventory summary.
type countsView struct {
	Label  string
	Counts []inventory.Count
}

func licenseStatuses() []string {
	var out []string
	for i := uint32(0); kms.LicenseStatusName(i) != ""; i++ {
		out = append(out, kms.LicenseStatusName(i))
	}
	return out
}

// printable makes text that came off the wire safe to read, not just safe
// to render (html/template escapes it for HTML): bytes that are not UTF-8
// and ASCII controls as \xNN, C1 controls, the line and paragraph
// separators and every format character (bidi overrides and isolates,
// zero-width characters: what a name could use to disguise itself) as
// \u{NNNN}, and the backslash as \\ so an escape always means one. The
// same escapes as the inventory's table and CSV.
func printable(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || r == '\\' || hidden(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\':
			b.WriteString(`\\`)
		case hidden(r) && r < 0x80:
			fmt.Fprintf(&b, `\x%02x`, r)
		case hidden(r):
			fmt.Fprintf(&b, `\u{%04x}`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// hidden reports the runes printable escapes: C0 and C1 controls, DEL,
// U+2028, U+2029 and the format characters (Cf).
func hidden(r rune) bool {
	return r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0x2028 || r == 0x2029 || unicode.Is(unicode.Cf, r)
}

// timestamp is how the page prints a time: UTC to the second; "—" for
// never.
func timestamp(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// ago is how long before now t was, coarsely; "" for never.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "in the future"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh %dm ago", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// uptime prints seconds as days, hours, minutes; "unknown" for 0.
func uptime(sec float64) string {
	if sec <= 0 {
		return "unknown"
	}
	d := time.Duration(sec * float64(time.Second))
	days, h, m := int(d.Hours()/24), int(d.Hours())%24, int(d.Minutes())%60
	switch {
	case days > 0:
		return fmt.Sprintf("%dd %dh %dm", days, h, m)
	case h > 0:
		return fmt.Sprintf("%dh %dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm %ds", m, int(d.Seconds())%60)
	}
	return fmt.Sprintf("%ds", int(d.Seconds()))
}
