//go:build unix

package admin

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/test/browser"
)

// needChromium fails (never skips) without a browser: the page's escaping
// and CSP are only proven in one.
func needChromium(t *testing.T) {
	t.Helper()
	if _, err := browser.Find(); err != nil {
		t.Fatalf("the status page tests need a real Chromium: %v\ninstall it: %s", err, browser.InstallHint)
	}
}

// In a real browser, hostile workstation names are text: the DOM Chromium
// built holds them escaped inside table cells and has no script element
// at all, the below-threshold group is marked, and loading the page
// (stylesheet, favicon, form) triggers no CSP violation.
func TestStatusPageInChromium(t *testing.T) {
	needChromium(t)
	inv := &fakeInventory{}
	f := newFixture(t, inv)
	f.fill(t)
	inv.addHostile()

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p, err := browser.Load(ctx, f.url+"/")
	if err != nil {
		t.Fatal(err)
	}
	dom := p.DOM
	if !strings.Contains(dom, `id="inventory"`) || !strings.Contains(dom, `id="kms-host"`) {
		t.Fatalf("the page did not render:\n%s", dom)
	}
	if regexp.MustCompile(`(?i)<script`).MatchString(dom) {
		t.Errorf("the DOM has a script element:\n%s", excerpt(dom, "<script"))
	}
	if regexp.MustCompile(`(?i)<img`).MatchString(dom) {
		t.Errorf("the DOM has an img element:\n%s", excerpt(dom, "<img"))
	}
	for _, want := range []string{
		`<td class="wrap strong">&lt;script&gt;alert(1)&lt;/script&gt;</td>`,
		`<td class="wrap strong">"&gt;&lt;img src=x onerror=alert(1)&gt;</td>`,
		`<td class="wrap strong">WS\x1b[31mRED\x00\u{202e}exe.txt\x7f</td>`,
		`<td class="wrap strong">` + longName + `</td>`,
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("the DOM lacks %s", want)
		}
	}
	below := regexp.MustCompile(`<tr class="row-bad">\s*<td[^>]*>Windows 10 2019 \(Volume\)</td>[\s\S]*?below threshold — clients will fail with 0xC004F038`)
	if !below.MatchString(dom) {
		t.Errorf("the host section does not mark Windows 10 2019 below threshold:\n%s", excerpt(dom, `id="kms-host"`))
	}
	if n := strings.Count(dom, "below threshold — clients will fail"); n != 1 {
		t.Errorf("%d groups marked below threshold, want 1", n)
	}
	if len(p.CSPViolations) > 0 {
		t.Errorf("CSP violations:\n%s", strings.Join(p.CSPViolations, "\n"))
	}
}

// TestStatusPageScreenshot renders the page filled with a realistic site
// in Chromium. With KMSPROXY_SCREENSHOT=path.png it writes the README's
// 1280×1600 screenshot there (a relative path is from this package's
// directory, as go test runs it):
//
//	KMSPROXY_SCREENSHOT=../docs/status-page.png go test ./admin -run Screenshot
//
// Without, it checks a PNG comes out.
func TestStatusPageScreenshot(t *testing.T) {
	needChromium(t)
	inv := &fakeInventory{}
	f := newFixture(t, inv)
	f.fill(t)
	out := os.Getenv("KMSPROXY_SCREENSHOT")
	if out == "" {
		out = filepath.Join(t.TempDir(), "status.png")
	} else if abs, err := filepath.Abs(out); err == nil {
		out = abs
	}
	if _, err := os.Stat(filepath.Dir(out)); err != nil {
		t.Fatalf("KMSPROXY_SCREENSHOT: %v (a relative path is from the admin directory)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := browser.Screenshot(ctx, f.url+"/", out, 1280, 1600); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) || len(b) < 10000 {
		t.Fatalf("%s: not a full PNG (%d bytes)", out, len(b))
	}
	t.Logf("screenshot %s: %d bytes", out, len(b))
}

// excerpt is the part of s around the first sub.
func excerpt(s, sub string) string {
	i := strings.Index(s, sub)
	if i < 0 {
		return "(" + sub + " not found)"
	}
	return s[max(0, i-200):min(len(s), i+1200)]
}
