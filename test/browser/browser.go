// Package browser drives a real headless Chromium for tests of the pages
// kmsproxy serves: the DOM as the browser built it (DumpDOM, Load), what
// the browser reported on its console while loading, Content Security
// Policy violations among it, and screenshots (Screenshot).
//
// Each run is a fresh chromium process with a fresh profile directory,
// removed afterwards, and nothing the browser would fetch on its own
// (component updates, sync, QUIC, first-run pages). The process runs in
// its own process group, killed whole when ctx ends or the default
// timeout passes, so a hung renderer never outlives the test.
//
// Debian: apt-get install chromium (the binary is /usr/bin/chromium).
package browser

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// InstallHint is the command that installs what Find looks for.
const InstallHint = "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium"

// DefaultTimeout bounds a run when ctx has no deadline.
const DefaultTimeout = 60 * time.Second

// candidates are the names Find tries, in order, after $CHROMIUM.
var candidates = []string{"/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"}

// Find returns the Chromium binary: $CHROMIUM when set, else
// /usr/bin/chromium or the first of chromium, chromium-browser and
// google-chrome on $PATH. The error says how to install it.
func Find() (string, error) {
	if p := os.Getenv("CHROMIUM"); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			return "", fmt.Errorf("browser: $CHROMIUM=%s: %v", p, err)
		}
		return p, nil
	}
	for _, c := range candidates {
		if p, err := exec.LookPath(c); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("browser: no chromium found (tried %s); install it: %s", strings.Join(candidates, ", "), InstallHint)
}

// Page is what one headless load of a URL produced.
type Page struct {
	// DOM is the document as serialised by --dump-dom after load: the
	// tree the browser built, not the bytes the server sent.
	DOM string
	// Console is each console message Chromium logged while loading
	// (its CONSOLE log lines, in order).
	Console []string
	// CSPViolations are the Console lines that report a Content Security
	// Policy violation (a blocked inline script or style, a blocked
	// fetch or form target).
	CSPViolations []string
}

// Load opens url headless and returns its DOM and console messages.
func Load(ctx context.Context, url string) (*Page, error) {
	stdout, stderr, err := run(ctx, "--dump-dom", url)
	if err != nil {
		return nil, err
	}
	p := &Page{DOM: string(stdout)}
	for _, line := range strings.Split(string(stderr), "\n") {
		if !strings.Contains(line, ":CONSOLE") {
			continue
		}
		p.Console = append(p.Console, line)
		if isCSP(line) {
			p.CSPViolations = append(p.CSPViolations, line)
		}
	}
	return p, nil
}

func isCSP(line string) bool {
	return strings.Contains(line, "Content Security Policy") || strings.Contains(line, "Content-Security-Policy")
}

// DumpDOM returns the DOM of url after load, as Chromium serialises it.
func DumpDOM(ctx context.Context, url string) (string, error) {
	p, err := Load(ctx, url)
	if err != nil {
		return "", err
	}
	return p.DOM, nil
}

// Screenshot writes a width×height PNG of url (the viewport, scrollbars
// hidden) to pngPath.
func Screenshot(ctx context.Context, url, pngPath string, width, height int) error {
	if width <= 0 || height <= 0 {
		return fmt.Errorf("browser: screenshot size %dx%d", width, height)
	}
	if _, _, err := run(ctx, "--screenshot="+pngPath, "--hide-scrollbars",
		"--window-size="+strconv.Itoa(width)+","+strconv.Itoa(height), url); err != nil {
		return err
	}
	st, err := os.Stat(pngPath)
	if err != nil {
		return fmt.Errorf("browser: chromium wrote no screenshot: %v", err)
	}
	if st.Size() == 0 {
		return fmt.Errorf("browser: chromium wrote an empty screenshot %s", pngPath)
	}
	return nil
}

// run starts chromium with the fixed headless flags plus args, in a fresh
// profile directory and its own process group, and waits for it.
func run(ctx context.Context, args ...string) (stdout, stderr []byte, err error) {
	bin, err := Find()
	if err != nil {
		return nil, nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	profile, err := os.MkdirTemp("", "kmsproxy-chromium-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(profile)

	flags := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
		"--user-data-dir=" + profile,
		"--enable-logging=stderr", "--v=0",
	}
	cmd := exec.Command(bin, append(flags, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Dir = profile
	// No D-Bus session to look for (the errors it logs are noise).
	cmd.Env = append(os.Environ(), "DBUS_SESSION_BUS_ADDRESS=disabled:")
	ownGroup(cmd)
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("browser: start %s: %v", bin, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		// The whole group: chromium forks zygote, renderer and GPU processes.
		killGroup(cmd)
		<-done
		return out.Bytes(), errb.Bytes(), fmt.Errorf("browser: chromium %s: %w (killed its process group)", strings.Join(args, " "), ctx.Err())
	}
	// Children left behind by a browser that exited (rare) go too.
	killGroup(cmd)
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out.Bytes(), errb.Bytes(), fmt.Errorf("browser: chromium %s: %v\n%s", strings.Join(args, " "), err, tail(errb.String(), 20))
		}
		return out.Bytes(), errb.Bytes(), fmt.Errorf("browser: chromium: %v", err)
	}
	return out.Bytes(), errb.Bytes(), nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
