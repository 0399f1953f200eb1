//go:build linux

package container

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	buildImage = "localhost/kmsproxy-test/go:local"
	image      = "localhost/kmsproxy-test/kmsproxy:test"
	version    = "0.0.0-container-test"
	commit     = "c0ffee0"

	// What the Dockerfile promises.
	wantBinary     = "/usr/local/bin/kmsproxy"
	wantConfigPath = "/etc/kmsproxy/kmsproxy.yaml"
	// wantInventoryDir is the image's one writable place, a VOLUME.
	wantInventoryDir = "/var/lib/kmsproxy"
	wantUser         = "65532:65532"
	wantUID          = 65532
	wantGID          = 65532

	// specEnv carries the run spec from the test to its re-executed self
	// inside fresh network and mount namespaces.
	specEnv = "KMSPROXY_CONTAINER_TEST_SPEC"
	// runnerEnv forces "chroot" or "podman"; by default podman run is used
	// where it works.
	runnerEnv = "KMSPROXY_CONTAINER_RUNNER"
)

// TestImage builds the Dockerfile with podman and runs the image. The steps
// that need private namespaces (a DMZ source address on loopback, the image's
// default ports, a read-only bind mount) run in a re-executed child; see
// runImage.
func TestImage(t *testing.T) {
	if s := os.Getenv(specEnv); s != "" {
		var sp spec
		if err := json.Unmarshal([]byte(s), &sp); err != nil {
			t.Fatalf("%s: %v", specEnv, err)
		}
		runImage(t, &sp)
		return
	}
	start := time.Now()
	podmanBin, err := exec.LookPath("podman")
	if err != nil {
		t.Fatalf("podman is required (Debian: apt-get install podman): %v", err)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the container test needs root: podman's vfs store, chroot, namespaces and mounts")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("ip (Debian: iproute2) is required: %v", err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	p := newPodman(t, podmanBin, filepath.Join(work, "podman"))
	ver, _ := p.run(30*time.Second, "--version")
	t.Logf("%s, storage vfs under %s", strings.TrimSpace(ver), work)

	// 1. A build image from this machine's Go toolchain: no registry here.
	goroot := strings.TrimSpace(mustOutput(t, goBin, "env", "GOROOT"))
	tarPath := filepath.Join(work, "go-image.tar")
	f, err := os.Create(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeGoImage(f, goroot); err != nil {
		t.Fatalf("build image tarball: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	p.must(2*time.Minute, "import",
		"--change", "ENV PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"--change", "ENV HOME=/root",
		"--change", "ENV GOPATH=/go",
		"--change", "ENV GOTOOLCHAIN=local",
		tarPath, buildImage)
	os.Remove(tarPath)
	t.Logf("build image %s from %s (%s)", buildImage, goroot, time.Since(start).Round(time.Second))

	// 2. The build context: the working tree plus vendor/, so the build
	// inside the image needs no network.
	ctxDir := filepath.Join(work, "context")
	if err := copyContext(root, ctxDir); err != nil {
		t.Fatalf("copy build context: %v", err)
	}
	vendor := exec.Command(goBin, "mod", "vendor")
	vendor.Dir = ctxDir
	vendor.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off", "GOTOOLCHAIN=local")
	if out, err := vendor.CombinedOutput(); err != nil {
		t.Fatalf("go mod vendor: %v\n%s", err, out)
	}

	// 3. Build. Docker format: OCI image configs have no HEALTHCHECK.
	buildStart := time.Now()
	out := p.must(10*time.Minute, "build",
		"--format", "docker", "--isolation", "chroot", "--pull=never", "--layers=false",
		"--build-arg", "BUILD_IMAGE="+buildImage,
		"--build-arg", "RUNTIME_IMAGE=scratch",
		"--build-arg", "VERSION="+version,
		"--build-arg", "COMMIT="+commit,
		"-t", image, "-f", filepath.Join(ctxDir, "Dockerfile"), ctxDir)
	t.Logf("podman build --format docker --isolation chroot --build-arg BUILD_IMAGE=%s --build-arg RUNTIME_IMAGE=scratch: %s\n%s",
		buildImage, time.Since(buildStart).Round(time.Second), tail(out, 6))

	// 4. The image config.
	var infos []imageInfo
	if err := json.Unmarshal([]byte(p.must(time.Minute, "image", "inspect", image)), &infos); err != nil || len(infos) != 1 {
		t.Fatalf("image inspect: %v (%d images)", err, len(infos))
	}
	info := infos[0]
	checkConfig(t, &info)

	// 5. The image's files.
	rootfs := strings.TrimSpace(p.must(time.Minute, "image", "mount", image))
	t.Cleanup(func() { p.run(time.Minute, "image", "unmount", image) })
	checkFiles(t, rootfs, filepath.Join(root, "examples", "dmz.yaml"))

	// 6. Run it: podman run where it works, else chroot.
	runner := os.Getenv(runnerEnv)
	if runner == "" {
		runner = "chroot"
		out, err := p.run(time.Minute, "run", "--rm", "--network", "none", "--read-only", "--no-healthcheck", image, "version")
		if err == nil && strings.Contains(out, version) {
			runner = "podman"
		} else {
			t.Logf("podman run does not work here, running the image chrooted instead: %s", lastLine(err))
		}
	}
	health := info.HealthCheck.Test[1:]
	sp := spec{
		Runner: runner, Rootfs: rootfs, Image: image, PodmanBin: podmanBin, PodmanGlobal: p.global,
		Entrypoint: info.Config.Entrypoint, Cmd: info.Config.Cmd, Env: info.Config.Env,
		WorkingDir: info.Config.WorkingDir, Health: health,
	}
	runChild(t, &sp)
	t.Logf("container test took %s", time.Since(start).Round(time.Second))
}

// checkConfig asserts the image config the Dockerfile promises.
func checkConfig(t *testing.T, info *imageInfo) {
	t.Helper()
	c := info.Config
	t.Logf("image %.12s %s/%s, %d bytes: User=%q Entrypoint=%q Cmd=%q Env=%q ExposedPorts=%v WorkingDir=%q",
		info.ID, info.Os, info.Architecture, info.Size, c.User, c.Entrypoint, c.Cmd, c.Env, keys(c.ExposedPorts), c.WorkingDir)
	if c.User != wantUser {
		t.Errorf("User = %q, want %q (numeric, non-root: scratch has no /etc/passwd)", c.User, wantUser)
	}
	if !slices.Equal(c.Entrypoint, []string{wantBinary}) {
		t.Errorf("Entrypoint = %q, want [%s]", c.Entrypoint, wantBinary)
	}
	if !slices.Equal(c.Cmd, []string{"serve"}) {
		t.Errorf("Cmd = %q, want [serve]", c.Cmd)
	}
	if !slices.Contains(c.Env, "KMSPROXY_INVENTORY_PATH="+wantInventoryDir+"/inventory.db") {
		t.Errorf("Env = %q, want KMSPROXY_INVENTORY_PATH=%s/inventory.db", c.Env, wantInventoryDir)
	}
	if _, ok := c.Volumes[wantInventoryDir]; !ok || len(c.Volumes) != 1 {
		t.Errorf("Volumes = %v, want only %s", keys(c.Volumes), wantInventoryDir)
	}
	if !slices.Contains(c.Env, "KMSPROXY_CONFIG="+wantConfigPath) {
		t.Errorf("Env = %q, want KMSPROXY_CONFIG=%s", c.Env, wantConfigPath)
	}
	if got := keys(c.ExposedPorts); !slices.Equal(got, []string{"1688/tcp"}) {
		t.Errorf("ExposedPorts = %v, want only 1688/tcp (management stays unexposed)", got)
	}
	if c.Labels["org.opencontainers.image.version"] != version || c.Labels["org.opencontainers.image.revision"] != commit {
		t.Errorf("labels = %v, want version %s revision %s", c.Labels, version, commit)
	}
	if info.HealthCheck == nil {
		t.Fatal("no HEALTHCHECK in the image config")
	}
	t.Logf("HEALTHCHECK %q interval %v timeout %v retries %d", info.HealthCheck.Test,
		info.HealthCheck.Interval, info.HealthCheck.Timeout, info.HealthCheck.Retries)
	if !slices.Equal(info.HealthCheck.Test, []string{"CMD", wantBinary, "healthcheck"}) {
		t.Fatalf("HEALTHCHECK = %q, want exec form [CMD %s healthcheck] (no shell in the image)", info.HealthCheck.Test, wantBinary)
	}
}

// checkFiles asserts the root file system holds exactly the binary and the
// config (the runtime base is scratch), owned by root and not writable by
// the image's user, and that the binary is static.
func checkFiles(t *testing.T, rootfs, dmzConfig string) {
	t.Helper()
	var listing []string
	err := filepath.WalkDir(rootfs, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(rootfs, path)
		if rel == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		listing = append(listing, fmt.Sprintf("%s %d:%d /%s", info.Mode(), st.Uid, st.Gid, rel))
		switch {
		case "/"+rel == wantInventoryDir:
			// The one directory the proxy writes: the inventory volume.
			if st.Uid != wantUID || !info.IsDir() || info.Mode().Perm()&0o022 != 0 {
				t.Errorf("%s (%v, uid %d): want a directory of uid %d writable by it alone", wantInventoryDir, info.Mode(), st.Uid, wantUID)
			}
		case st.Uid == wantUID || info.Mode().Perm()&0o022 != 0:
			t.Errorf("/%s (%v, uid %d) is writable by the image user", rel, info.Mode(), st.Uid)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image files:\n  %s", strings.Join(listing, "\n  "))
	want := []string{"/etc", "/etc/kmsproxy", wantConfigPath, "/usr", "/usr/local", "/usr/local/bin", wantBinary, "/var", "/var/lib", wantInventoryDir}
	var got []string
	for _, l := range listing {
		got = append(got, l[strings.LastIndexByte(l, ' ')+1:])
	}
	if !slices.Equal(got, want) {
		t.Errorf("image files = %v, want %v", got, want)
	}
	cfg, err := os.ReadFile(filepath.Join(rootfs, wantConfigPath))
	if err != nil {
		t.Fatal(err)
	}
	if dmz, err := os.ReadFile(dmzConfig); err != nil || !bytes.Equal(cfg, dmz) {
		t.Errorf("%s differs from examples/dmz.yaml (%v)", wantConfigPath, err)
	}
	bin := filepath.Join(rootfs, wantBinary)
	if fi, err := os.Stat(bin); err != nil || fi.Mode().Perm()&0o005 != 0o005 {
		t.Fatalf("%s: not executable by others: %v %v", wantBinary, fi.Mode(), err)
	}
	ef, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("%s: %v", wantBinary, err)
	}
	defer ef.Close()
	for _, prog := range ef.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Errorf("%s has an ELF interpreter: not static", wantBinary)
		}
	}
	if libs, _ := ef.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v", wantBinary, libs)
	}
	if ef.Section(".symtab") != nil {
		t.Errorf("%s has a symbol table: -ldflags -s missing", wantBinary)
	}
}

func keys(m map[string]struct{}) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func mustOutput(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out)
}

func lastLine(err error) string {
	if err == nil {
		return "version not printed"
	}
	s := strings.TrimSpace(err.Error())
	return s[strings.LastIndexByte(s, '\n')+1:]
}
