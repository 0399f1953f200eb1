//go:build linux

package container

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// podman runs podman on a private store under a temporary directory, so the
// test neither sees nor changes the machine's images. vfs needs no overlay
// support from the kernel or from the file system the store is on.
type podman struct {
	t      testing.TB
	bin    string
	global []string
}

func newPodman(t testing.TB, bin, dir string) *podman {
	return &podman{t: t, bin: bin, global: []string{
		"--root", filepath.Join(dir, "root"),
		"--runroot", filepath.Join(dir, "runroot"),
		"--storage-driver", "vfs",
		"--cgroup-manager", "cgroupfs",
		"--events-backend", "file",
	}}
}

// run runs podman args within timeout and returns stdout; stderr goes into
// the error.
func (p *podman) run(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.bin, append(append([]string(nil), p.global...), args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("podman %s: %w\n%s%s", strings.Join(args, " "), err, tail(stdout.String(), 40), tail(stderr.String(), 40))
	}
	return stdout.String(), nil
}

// must is run that fails the test on error.
func (p *podman) must(timeout time.Duration, args ...string) string {
	p.t.Helper()
	out, err := p.run(timeout, args...)
	if err != nil {
		p.t.Fatal(err)
	}
	return out
}

// tail keeps the last n lines of s.
func tail(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n {
		lines = append([]string{"…\n"}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "")
}

// goImageSkip is what the build image leaves out of GOROOT: nothing
// `go build` reads, only tests, docs and API lists.
func goImageSkip(rel string, d fs.DirEntry) bool {
	switch rel {
	case "test", "doc", "api", "misc", "pkg/obj":
		return d.IsDir()
	}
	if d.IsDir() {
		return d.Name() == "testdata"
	}
	return strings.HasSuffix(d.Name(), "_test.go")
}

// writeGoImage writes a root file system holding goroot at /usr/local/go and
// a world-writable /tmp: enough for an exec-form `go build` with
// CGO_ENABLED=0, no shell, no libc.
func writeGoImage(w io.Writer, goroot string) error {
	tw := tar.NewWriter(w)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: time.Unix(0, 0)})
	}
	for _, d := range []struct {
		name string
		mode int64
	}{{"tmp/", 0o1777}, {"root/", 0o700}, {"usr/", 0o755}, {"usr/local/", 0o755}} {
		if err := dir(d.name, d.mode); err != nil {
			return err
		}
	}
	err := filepath.WalkDir(goroot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(goroot, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel != "." && goImageSkip(rel, d) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		h.Name = "usr/local/go"
		if rel != "." {
			h.Name += "/" + rel
		}
		if d.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// copyContext copies the repository at root to dst as `podman build .`
// would see it (podman itself applies .dockerignore), leaving out .git,
// vendor/ (made afresh) and load test results. test/ stays: `go mod vendor`
// reads every package's test imports.
func copyContext(root, dst string) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		if rel == ".git" || rel == "vendor" || rel == filepath.Join("test", "load", "results") {
			return filepath.SkipDir
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case info.Mode().IsRegular():
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(target, data, info.Mode().Perm())
		}
		return nil // sockets, symlinks: nothing the build needs
	})
}

// imageInfo is what the test reads from `podman image inspect`.
type imageInfo struct {
	ID           string
	Architecture string
	Os           string
	Size         int64
	Config       struct {
		User         string
		Entrypoint   []string
		Cmd          []string
		Env          []string
		WorkingDir   string
		ExposedPorts map[string]struct{}
		Volumes      map[string]struct{}
		Labels       map[string]string
	}
	// Docker-format images keep HEALTHCHECK; OCI-format ones drop it.
	HealthCheck *struct {
		Test     []string
		Interval time.Duration
		Timeout  time.Duration
		Retries  int
	}
}
