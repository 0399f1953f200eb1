//go:build unix

package browser

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func needChromium(t *testing.T) {
	t.Helper()
	if _, err := Find(); err != nil {
		t.Fatalf("%v", err)
	}
}

// page serves body as text/html under csp.
func page(t *testing.T, csp, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if csp != "" {
			w.Header().Set("Content-Security-Policy", csp)
		}
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/"
}

// The DOM is the browser's: markup the parser fixes up comes back fixed,
// and a script that ran changed it.
func TestLoadDOM(t *testing.T) {
	needChromium(t)
	url := page(t, "", `<!doctype html><title>t</title><p id=a>one<p id=b>two<script>document.getElementById("b").textContent="ran"</script>`)
	p, err := Load(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`<p id="a">one</p>`, `<p id="b">ran</p>`} {
		if !strings.Contains(p.DOM, want) {
			t.Errorf("DOM lacks %q:\n%s", want, p.DOM)
		}
	}
	if len(p.CSPViolations) != 0 {
		t.Errorf("CSP violations without a policy: %q", p.CSPViolations)
	}
}

// An inline style and an inline script under default-src 'none' are each
// reported; a page that needs neither reports nothing.
func TestCSPViolations(t *testing.T) {
	needChromium(t)
	const csp = "default-src 'none'"
	p, err := Load(context.Background(), page(t, csp, `<!doctype html><p style="color:red">x</p><script>1</script>`))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.CSPViolations) != 2 {
		t.Fatalf("want 2 CSP violations (inline style, inline script), got %d: %q\nconsole: %q", len(p.CSPViolations), p.CSPViolations, p.Console)
	}
	p, err = Load(context.Background(), page(t, csp, `<!doctype html><p>x</p>`))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.CSPViolations) != 0 {
		t.Fatalf("clean page: CSP violations %q", p.CSPViolations)
	}
}

func TestScreenshot(t *testing.T) {
	needChromium(t)
	png := filepath.Join(t.TempDir(), "shot.png")
	if err := Screenshot(context.Background(), page(t, "", `<!doctype html><h1>hello</h1>`), png, 400, 300); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(png)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("not a PNG: % x", b[:min(len(b), 8)])
	}
}

// A page that never answers: the run ends with ctx, the browser's process
// group killed.
func TestTimeoutKills(t *testing.T) {
	needChromium(t)
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(block)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	_, err := DumpDOM(ctx, srv.URL)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the deadline", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("took %v after a 3s deadline", d)
	}
}
