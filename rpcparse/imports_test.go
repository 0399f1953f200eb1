package rpcparse

import (
	"go/build"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestStandardLibraryOnly guards the package map (STYLE.md): rpcparse is
// the innermost ring and imports nothing but the standard library. Test
// files may import more, so they are not checked.
func TestStandardLibraryOnly(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if !isStdlib(path) {
				t.Errorf("%s imports %q: rpcparse may import only the standard library", name, path)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no package files found")
	}
}

// isStdlib asks go/build where the package lives: standard packages are
// under GOROOT and have no dot in their first path element.
func isStdlib(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	if strings.Contains(first, ".") {
		return false
	}
	pkg, err := build.Default.Import(path, "", build.FindOnly)
	if err != nil {
		return false
	}
	return pkg.Goroot || strings.HasPrefix(pkg.Dir, filepath.Join(build.Default.GOROOT, "src")+string(os.PathSeparator))
}
