package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestCheckExampleConfig(t *testing.T) {
	out, err := runCLI(t, "check", "--config", "../../examples/kmsproxy.yaml")
	if err != nil {
		t.Fatalf("check failed: %v\n%s", err, out)
	}
	for _, want := range []string{"dmz-activation", "51c82175-844e-4750-b0d8-ec255555bc06", "(no match) → deny", "allowed summary",
		"host side:   terminating gateway: KMS-only unauthenticated clients end at the proxy; pooled associations, at most 4 per upstream (4 idle, aged out after 20s), 256 waiting calls (64 per source)",
		"OK"} {
		if !strings.Contains(out, want) {
			t.Errorf("effective policy lacks %q:\n%s", want, out)
		}
	}
}

// check prints the host-side mode: the terminating gateway when
// upstream_pool is left out (the default), relay when it is off.
func TestCheckHostSide(t *testing.T) {
	const policy = `upstreams: ["kms01:1688"]
zones: { dmz: ["192.0.2.0/24"] }
rules:
  - { name: a, from: [dmz], interface: kms, opnums: [0], auth: [none], action: allow }
`
	for _, tc := range []struct{ extra, want, not string }{
		{"", "host side:   terminating gateway:", "host side:   relay"},
		{"upstream_pool: { enabled: false }\n", "host side:   relay: one host association per client (upstream_pool.enabled false)", "terminating gateway"},
		{"upstream_pool: { max_associations: 2, max_idle: 1 }\n", "pooled associations, at most 2 per upstream (1 idle, aged out after 20s)", "host side:   relay"},
	} {
		path := filepath.Join(t.TempDir(), "kms.yaml")
		if err := os.WriteFile(path, []byte(policy+tc.extra), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := runCLI(t, "check", "--config", path)
		if err != nil {
			t.Fatalf("check %q: %v\n%s", tc.extra, err, out)
		}
		if !strings.Contains(out, tc.want) || strings.Contains(out, tc.not) {
			t.Errorf("check %q: want %q, not %q:\n%s", tc.extra, tc.want, tc.not, out)
		}
	}
}

// A bad config lists every problem by YAML path and exits 1.
func TestCheckInvalidConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(path, []byte(`
upstreams: ["kms01:1688"]
zones: { dmz: ["192.0.2.0/33"] }
rules:
  - { name: a, from: [dmz-wbe], interface: samrr, opnums: [0], action: allow }
bogus_key: 1
`), 0o600)
	out, err := runCLI(t, "check", "--config", path)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("want exit 1, got %v\n%s", err, out)
	}
	for _, want := range []string{"zones.dmz[0]", "rules[0].from[0]", "rules[0].interface", "bogus_key"} {
		if !strings.Contains(out, want) {
			t.Errorf("problem list lacks %q:\n%s", want, out)
		}
	}
}

func TestServeRefusesInvalidConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty-rules.yaml")
	os.WriteFile(path, []byte("upstreams: [\"kms01:1688\"]\nzones: { dmz: [\"192.0.2.0/24\"] }\nrules: []\n"), 0o600)
	out, err := runCLI(t, "serve", "--config", path)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("serve started on an invalid config: %v\n%s", err, out)
	}
	if _, err := runCLI(t, "serve", "--config", filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("serve started without a config file")
	}
}

// A policy that only denies is valid: check prints the policy, warns on
// stderr that it allows nothing, and exits 0.
func TestCheckDenyOnlyWarns(t *testing.T) {
	root := newRootCommand()
	var stdout, stderr bytes.Buffer
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	root.SetArgs([]string{"check", "--config", "../../config/testdata/only-deny.yaml"})
	if err := root.Execute(); err != nil {
		t.Fatalf("check failed on a deny-only policy (exit %d): %v\n%s%s", exitCode(err), err, stdout.String(), stderr.String())
	}
	const warning = "warning: no rule allows anything: every connection is refused at accept"
	if !strings.Contains(stderr.String(), warning) {
		t.Errorf("stderr lacks %q:\nstdout:\n%s\nstderr:\n%s", warning, stdout.String(), stderr.String())
	}
	for _, want := range []string{"(no match) → deny", "deny", "only-deny.yaml: OK"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
		}
	}

	// A policy with an allow rule has no such warning.
	out, err := runCLI(t, "check", "--config", "../../examples/kmsproxy.yaml")
	if err != nil || strings.Contains(out, "warning:") {
		t.Errorf("example config: %v\n%s", err, out)
	}
}

// The commands that read a config refuse alike: no config at all is
// errNoConfig (inventory adds its --file alternative), and one that does
// not load is exit status 1, before anything is printed or opened.
func TestConfigCommandsRefuse(t *testing.T) {
	t.Setenv("KMSPROXY_CONFIG", "")
	for _, args := range [][]string{{"dns"}, {"inventory"}} {
		_, err := runCLI(t, args...)
		if !errors.Is(err, errNoConfig) {
			t.Errorf("%v without a config: %v, want errNoConfig", args, err)
		}
		if args[0] == "inventory" && (err == nil || !strings.Contains(err.Error(), "(or --file DB)")) {
			t.Errorf("inventory without a config does not name --file: %v", err)
		}
	}
	bad := writeConfig(t, "upstreams: [\"kms01:1688\"]\nrules: []\n")
	for _, cmd := range []string{"dns", "inventory"} {
		out, err := runCLI(t, cmd, "--config", bad)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 1 || errors.Is(err, errNoConfig) {
			t.Errorf("%s on an invalid config: %v, want exit 1\n%s", cmd, err, out)
		}
	}
}
