// Package kmsproxy_test guards the package map of STYLE.md for the whole
// module: which of our packages each one may import, so the layout keeps
// showing the architecture. rpcparse (TestStandardLibraryOnly) and acl
// (TestImports) guard their own imports the same way, more strictly.
package kmsproxy_test

import (
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/kmsproxy/kmsproxy"

// mayImport is the package map, innermost first: each non-test package of
// ours and the packages of ours its non-test files may import. The arrows
// point inward only:
//
//	cmd/kmsproxy → proxy, admin, replay, probe, kmsdns, state → pool, assoc, kmswatch, event (event/syslog), capture → config → acl → rpcparse/kms → rpcparse
//
// internal/... holds small standard-library helpers below everything
// (internal/errwriter, for the printers of config, kmsdns and probe).
//
// test/... is the outer ring: it may import anything, and nothing outside it
// may import it (its packages are not listed here). A package missing from
// the map fails the test: place it before it lands.
var mayImport = map[string][]string{
	"internal/errwriter": {},
	"rpcparse":           {},
	"rpcparse/kms":       {"rpcparse"},
	"acl":                {"rpcparse", "rpcparse/kms"},
	"config":             {"acl", "rpcparse", "rpcparse/kms", "internal/errwriter"},
	"assoc":              {"acl", "rpcparse", "rpcparse/kms"},
	"event":              {"config", "acl", "rpcparse", "rpcparse/kms"},
	"event/syslog":       {"event", "config", "acl", "rpcparse", "rpcparse/kms"},
	"kmswatch":           {"event", "config", "acl", "rpcparse", "rpcparse/kms"},
	"state":              {"kmswatch", "inventory", "event", "config", "acl", "rpcparse", "rpcparse/kms"},
	"capture":            {"rpcparse", "rpcparse/kms"},
	"inventory":          {},
	"pool":               {"rpcparse"},
	"probe":              {"rpcparse", "rpcparse/kms", "internal/errwriter"},
	"proxy":              {"pool", "assoc", "kmswatch", "inventory", "event", "config", "acl", "rpcparse", "rpcparse/kms"},
	"admin":              {"kmswatch", "inventory", "event", "config", "acl", "rpcparse", "rpcparse/kms"},
	"replay":             {"assoc", "capture", "event", "config", "acl", "rpcparse", "rpcparse/kms"},
	"kmsdns":             {"event", "config", "acl", "rpcparse", "rpcparse/kms", "internal/errwriter"},
	"cmd/kmsproxy":       {"proxy", "pool", "admin", "inventory", "replay", "probe", "kmsdns", "capture", "assoc", "kmswatch", "state", "event", "event/syslog", "config", "acl", "rpcparse", "rpcparse/kms"},
}

// pure packages decide without touching the world: no sockets, files,
// processes or clock, and no third-party code (zap, prometheus).
var pure = map[string]bool{"rpcparse": true, "acl": true, "assoc": true}

// stdlibOnly packages import nothing from outside the module and the
// standard library.
var stdlibOnly = map[string]bool{"internal/errwriter": true, "rpcparse": true, "rpcparse/kms": true, "acl": true, "assoc": true}

// impure are the standard packages a pure package may not import.
func impure(path string) bool {
	switch {
	case path == "net", strings.HasPrefix(path, "net/") && path != "net/netip":
		return true
	case path == "os", strings.HasPrefix(path, "os/"), path == "syscall", path == "time",
		path == "io/ioutil", path == "io/fs", path == "log", strings.HasPrefix(path, "log/"):
		return true
	}
	return false
}

type pkg struct {
	path     string // module-relative ("" for the module root)
	standard bool
	imports  []string
}

// listPackages runs go list over the module and its dependencies.
func listPackages(t *testing.T) map[string]*pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}|{{.Standard}}|{{join .Imports " "}}`, "./...").Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string]*pkg{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.SplitN(line, "|", 3)
		if len(f) != 3 {
			t.Fatalf("go list line %q", line)
		}
		std, _ := strconv.ParseBool(f[1])
		pkgs[f[0]] = &pkg{path: f[0], standard: std, imports: strings.Fields(f[2])}
	}
	return pkgs
}

// ours returns the module-relative path of an import path of ours.
func ours(path string) (string, bool) {
	if path == module {
		return "", true
	}
	rel, ok := strings.CutPrefix(path, module+"/")
	return rel, ok
}

func isTest(rel string) bool { return rel == "test" || strings.HasPrefix(rel, "test/") }

func TestImportDirection(t *testing.T) {
	pkgs := listPackages(t)
	var names []string
	for path := range pkgs {
		names = append(names, path)
	}
	sort.Strings(names)
	seen := map[string]bool{}
	for _, path := range names {
		rel, ok := ours(path)
		if !ok || isTest(rel) || rel == "" {
			continue // not ours, the outer ring, or this test's own package
		}
		seen[rel] = true
		allowed, placed := mayImport[rel]
		if !placed {
			t.Errorf("package %s is not in the package map (mayImport): say what it may import", rel)
			continue
		}
		for _, imp := range pkgs[path].imports {
			if irel, ok := ours(imp); ok {
				switch {
				case isTest(irel):
					t.Errorf("%s imports %s: nothing outside test/ may import test code", rel, irel)
				case !slices.Contains(allowed, irel):
					t.Errorf("%s imports %s: the package map allows %s only %v", rel, irel, rel, allowed)
				}
				continue
			}
			p := pkgs[imp]
			standard := p != nil && p.standard
			switch {
			case !standard && stdlibOnly[rel]:
				t.Errorf("%s imports %s: it may import only the standard library and the packages of ours it is allowed", rel, imp)
			case standard && pure[rel] && impure(imp):
				t.Errorf("%s imports %s: it is pure (no sockets, files, processes or clock)", rel, imp)
			}
		}
	}
	for rel := range mayImport {
		if !seen[rel] {
			t.Errorf("package map names %s, which go list did not find", rel)
		}
	}
}

// TestMapPointsInward checks the map itself: it has no cycle, so no import
// it allows can point back.
func TestMapPointsInward(t *testing.T) {
	const (
		unvisited = iota
		visiting
		done
	)
	state := map[string]int{}
	var visit func(string, []string)
	visit = func(p string, stack []string) {
		switch state[p] {
		case visiting:
			t.Errorf("the package map has a cycle: %s", strings.Join(append(stack, p), " → "))
			return
		case done:
			return
		}
		state[p] = visiting
		for _, q := range mayImport[p] {
			if _, ok := mayImport[q]; !ok {
				t.Errorf("%s may import %s, which is not in the map", p, q)
				continue
			}
			visit(q, append(stack, p))
		}
		state[p] = done
	}
	for p := range mayImport {
		visit(p, nil)
	}
}
