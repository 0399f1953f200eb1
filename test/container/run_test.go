//go:build linux

package container

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

const (
	// clientIP is a DMZ client: zone dmz-web (192.0.2.0/24) in the image's
	// config, examples/dmz.yaml. It is added to loopback in the child's own
	// network namespace.
	clientIP = "192.0.2.10"
	// outsideIP is in no zone of the image's config.
	outsideIP = "127.0.0.1"
	// The image's default addresses, free in a fresh network namespace.
	proxyAddr  = "127.0.0.1:1688"
	healthzURL = "http://127.0.0.1:9464/healthz"
)

// spec is what the child needs to run the image.
type spec struct {
	Runner       string // chroot | podman
	Rootfs       string // the mounted image (chroot)
	Image        string // podman
	PodmanBin    string
	PodmanGlobal []string
	Entrypoint   []string
	Cmd          []string
	Env          []string
	WorkingDir   string
	Health       []string // the HEALTHCHECK command, without "CMD"
}

// runChild re-executes this test binary in new network and mount namespaces
// (Go makes the new mount namespace private) and relays its verdict.
func runChild(t *testing.T, sp *spec) {
	t.Helper()
	js, err := json.Marshal(sp)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestImage$", "-test.v", "-test.count=1", "-test.timeout=3m")
	cmd.Env = append(os.Environ(), specEnv+"="+string(js))
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	t.Logf("run (%s runner, own network namespace):\n%s", sp.Runner, indent(string(out)))
	if err != nil {
		t.Fatalf("running the image failed: %v", err)
	}
}

// runImage is the child: it runs the image's entrypoint, command, env and
// user on its default ports with only the upstream overridden, and drives
// clients through it, once per host-side mode: as shipped (the image's
// config leaves upstream_pool at its default, the terminating gateway),
// and in relay mode with upstream_pool.enabled turned off from the
// environment, as an operator would.
func runImage(t *testing.T, sp *spec) {
	ip(t, "link", "set", "lo", "up")
	ip(t, "addr", "add", clientIP+"/32", "dev", "lo")
	for _, m := range fixture.HostSides {
		t.Run(m.Name, func(t *testing.T) { runImageIn(t, sp, m) })
	}
}

func runImageIn(t *testing.T, sp *spec, m fixture.HostSide) {
	host := fixture.StartHost(t, fixture.Replay, m.HostOptions()...)
	host.UseCapture("win10-v6")
	override := []string{"KMSPROXY_UPSTREAMS=" + host.Addr()}
	if !m.Gateway {
		override = append(override, "KMSPROXY_UPSTREAM_POOL_ENABLED=false")
	}

	var l launcher
	switch sp.Runner {
	case "chroot":
		l = newChrootLauncher(t, sp)
	case "podman":
		l = &podmanLauncher{t: t, sp: sp, name: "kmsproxy-container-test-" + m.Name}
	default:
		t.Fatalf("%s=%q: want chroot or podman", runnerEnv, sp.Runner)
	}
	t.Logf("start %q as %s, env %q", append(append([]string(nil), sp.Entrypoint...), sp.Cmd...), wantUser, override)
	l.start(override)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			l.stop()
		}
		if t.Failed() {
			t.Logf("proxy output:\n%s", indent(l.logs()))
		}
	})
	waitHealthy(t, l)

	// The HEALTHCHECK command, as the container engine would run it.
	code, out := l.exec(sp.Health)
	t.Logf("HEALTHCHECK %q: exit %d %s", sp.Health, code, strings.TrimSpace(out))
	if code != 0 {
		t.Fatalf("HEALTHCHECK exited %d while the proxy runs: %s", code, out)
	}

	// A Windows 10 KMS V6 activation from the DMZ: bind, alter_context,
	// request, each answered. Relayed, each byte reaches the host
	// unchanged; behind the gateway the host gets the pool's own bind and
	// alter_context and one request of the pool's carrying the client's
	// stub, and the client the proxy's bind answers and the host's reply.
	capture, err := fixture.LoadCapture("win10-v6")
	if err != nil {
		t.Fatal(err)
	}
	c := fixture.Dial(t, clientIP, proxyAddr)
	for i, pdu := range capture.C2S {
		c.Send(pdu)
		got := c.MustRecv()
		if !m.SameAnswer(got, capture.S2C[i]) {
			t.Fatalf("activation PDU %d: got %d bytes ptype %d, want the host's %d-byte reply", i, len(got), got[2], len(capture.S2C[i]))
		}
	}
	c.Conn.Close()
	got := host.Received()
	if m.Gateway {
		checkGatewayHost(t, host, capture)
	} else {
		if len(got) != len(capture.C2S) {
			t.Fatalf("host received %d PDUs, want %d", len(got), len(capture.C2S))
		}
		for i, r := range got {
			if !bytes.Equal(r.Bytes, capture.C2S[i]) {
				t.Fatalf("host PDU %d differs from what the client sent", i)
			}
		}
	}
	pooled := waitEvent(t, l, "connection-closed", clientIP)["kmsproxy.pooled"]
	if pooled != m.Gateway {
		t.Errorf("connection-closed says kmsproxy.pooled %v in %s mode", pooled, m.Name)
	}
	t.Logf("activation win10-v6 from %s (%s): bind_ack, alter_context_resp, response; host received %d PDUs", clientIP, m.Name, len(got))

	// A SAMR bind from the same DMZ client: bind_nak, closed, nothing at the host.
	conns, pdus := host.Connections(), len(host.Received())
	s := fixture.Dial(t, clientIP, proxyAddr)
	s.Send(samrBind())
	nak := s.MustRecv()
	if rpcparse.PType(nak[2]) != rpcparse.PTypeBindNak {
		t.Fatalf("SAMR bind answered with ptype %d, want bind_nak (%d)", nak[2], rpcparse.PTypeBindNak)
	}
	s.ExpectClosed(5 * time.Second)

	// A source in no zone: closed at accept.
	o := fixture.Dial(t, outsideIP, proxyAddr)
	o.Send(capture.C2S[0])
	o.ExpectClosed(5 * time.Second)
	time.Sleep(200 * time.Millisecond)
	if host.Connections() != conns || len(host.Received()) != pdus {
		t.Fatalf("refused clients reached the host: %d connections, %d PDUs (before: %d, %d)",
			host.Connections(), len(host.Received()), conns, pdus)
	}
	t.Logf("SAMR bind from %s: bind_nak (%d bytes), closed; %s (no zone): closed; host saw nothing", clientIP, len(nak), outsideIP)

	// The self-audit a deployment guide tells admins to run, from the image.
	code, out = l.exec([]string{wantBinary, "probe", "--source", clientIP, proxyAddr})
	t.Logf("kmsproxy probe --source %s %s: exit %d\n%s", clientIP, proxyAddr, code, indent(out))
	if code != 0 {
		t.Errorf("probe against the image exited %d", code)
	}

	// The events on stdout say the same, with the DMZ source and zone.
	waitEvent(t, l, "kms-activation", clientIP)
	waitEvent(t, l, "bind-refused", clientIP)

	// The activation is in the inventory on the image's volume, read by
	// the image's own binary while the proxy runs.
	checkInventory(t, l)

	// SIGTERM: a clean exit, after which the health check fails.
	stopped = true
	if code := l.stop(); code != 0 {
		t.Errorf("proxy exited %d on SIGTERM, want 0", code)
	}
	code, out = l.exec(sp.Health)
	t.Logf("HEALTHCHECK after stop: exit %d %s", code, strings.TrimSpace(out))
	if code == 0 {
		t.Errorf("HEALTHCHECK exited 0 with the proxy stopped")
	}
}

// checkGatewayHost checks what the host received behind the gateway for
// one activation of capture: on one connection, the pool's bind and
// alter_context and one request, its own, whose stub is the client's.
// (The proxy's readiness check dials the host too, and sends nothing.)
func checkGatewayHost(t *testing.T, host *fixture.Host, capture fixture.Capture) {
	t.Helper()
	var want []byte
	for _, b := range capture.C2S {
		if p := fixture.Parse(t, b); p.Type == rpcparse.PTypeRequest {
			want = p.Request.Stub
		}
	}
	requests, conns := 0, map[int]bool{}
	for i, r := range host.Received() {
		conns[r.Conn] = true
		switch p := fixture.Parse(t, r.Bytes); p.Type {
		case rpcparse.PTypeBind, rpcparse.PTypeAlterContext:
		case rpcparse.PTypeRequest:
			requests++
			if !bytes.Equal(p.Request.Stub, want) {
				t.Fatalf("host request %d does not carry the client's stub", i)
			}
		default:
			t.Fatalf("host PDU %d is a %v", i, p.Type)
		}
	}
	if requests != 1 || len(conns) != 1 {
		t.Fatalf("host received %d requests on %d connections, want 1 on the pool's one", requests, len(conns))
	}
}

// samrBind is a one-context bind to SAMR over NDR 2.0.
func samrBind() []byte {
	it, ok := rpcparse.InterfaceByName("samr")
	if !ok {
		panic("no samr interface")
	}
	return rpcparse.AppendBind(nil,
		rpcparse.PDUHead{Type: rpcparse.PTypeBind, Flags: rpcparse.FlagFirstFrag | rpcparse.FlagLastFrag, DataRep: rpcparse.LittleEndianDataRep, CallID: 1},
		rpcparse.BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Contexts: []rpcparse.ContextSpec{{
			Abstract:  rpcparse.SyntaxID{UUID: it.UUID, Major: it.Major, Minor: it.Minor},
			Transfers: []rpcparse.SyntaxID{{UUID: rpcparse.NDR20UUID, Major: 2}},
		}}}, nil)
}

func waitHealthy(t *testing.T, l launcher) {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := client.Get(healthzURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) || l.exited() {
			t.Fatalf("proxy not healthy (%v); output:\n%s", err, indent(l.logs()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitEvent waits for an ECS event with this action and source.ip and
// returns it (nil, the test failed, when none came).
func waitEvent(t *testing.T, l launcher, action, src string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		sc := bufio.NewScanner(strings.NewReader(l.logs()))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var ev map[string]any
			if json.Unmarshal(sc.Bytes(), &ev) == nil && ev["event.action"] == action && ev["source.ip"] == src {
				t.Logf("event %s: zone %v rule %v reason %v", action, ev["kmsproxy.zone"], ev["rule.name"], ev["event.reason"])
				return ev
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("no %s event from %s on stdout", action, src)
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "    (nothing)"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

// launcher runs the image's entrypoint and commands inside it.
type launcher interface {
	start(env []string)
	exited() bool
	// exec runs argv in the image as its user and returns the exit code.
	exec(argv []string) (int, string)
	// stop sends SIGTERM and returns the exit code.
	stop() int
	logs() string
}

// chrootLauncher runs the image's files chrooted, read-only, as the image's
// numeric user with no supplementary groups: what a container engine does,
// minus the namespaces this test already set up.
type chrootLauncher struct {
	t    *testing.T
	sp   *spec
	root string // read-only bind mount of sp.Rootfs
	uid  uint32
	gid  uint32

	cmd  *exec.Cmd
	out  syncBuffer
	done chan struct{}
	code int
}

func newChrootLauncher(t *testing.T, sp *spec) *chrootLauncher {
	root := t.TempDir()
	if err := syscall.Mount(sp.Rootfs, root, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount %s: %v", sp.Rootfs, err)
	}
	t.Cleanup(func() { syscall.Unmount(root, syscall.MNT_DETACH) })
	if err := syscall.Mount("", root, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY|syscall.MS_NOSUID|syscall.MS_NODEV, ""); err != nil {
		t.Fatalf("remount %s read-only: %v", root, err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(root, &st); err != nil || st.Flags&1 == 0 { // ST_RDONLY
		t.Fatalf("%s is not read-only (flags %#x, %v)", root, st.Flags, err)
	}
	if err := os.WriteFile(root+"/probe-write", nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("writing to the image root: %v, want EROFS", err)
	}
	uid, gid := parseUser(t, wantUser)
	// The image's VOLUME, as an engine provides it: a writable directory
	// of the image user's mounted over the read-only root's.
	vol := t.TempDir()
	if err := os.Chown(vol, int(uid), int(gid)); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(vol, root+wantInventoryDir, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount the inventory volume: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(root+wantInventoryDir, syscall.MNT_DETACH) })
	t.Logf("image root %s bind-mounted read-only at %s, a volume at %s; user %d:%d", sp.Rootfs, root, wantInventoryDir, uid, gid)
	return &chrootLauncher{t: t, sp: sp, root: root, uid: uid, gid: gid, done: make(chan struct{})}
}

func parseUser(t *testing.T, user string) (uint32, uint32) {
	u, g, _ := strings.Cut(user, ":")
	uid, err1 := strconv.ParseUint(u, 10, 32)
	gid, err2 := strconv.ParseUint(g, 10, 32)
	if err1 != nil || err2 != nil || uid == 0 {
		t.Fatalf("image user %q is not a numeric non-root uid:gid", user)
	}
	return uint32(uid), uint32(gid)
}

func (l *chrootLauncher) command(ctx context.Context, argv []string, env []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Path = argv[0] // resolved inside the chroot, not here
	cmd.Env = append(append([]string(nil), l.sp.Env...), env...)
	cmd.Dir = "/"
	if l.sp.WorkingDir != "" {
		cmd.Dir = l.sp.WorkingDir
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Chroot:     l.root,
		Credential: &syscall.Credential{Uid: l.uid, Gid: l.gid, Groups: []uint32{}},
		Pdeathsig:  syscall.SIGKILL,
	}
	return cmd
}

func (l *chrootLauncher) start(env []string) {
	argv := append(append([]string(nil), l.sp.Entrypoint...), l.sp.Cmd...)
	l.cmd = l.command(context.Background(), argv, env)
	l.cmd.Stdout, l.cmd.Stderr = &l.out, &l.out
	if err := l.cmd.Start(); err != nil {
		l.t.Fatalf("start %q: %v", argv, err)
	}
	go func() {
		l.cmd.Wait()
		l.code = l.cmd.ProcessState.ExitCode()
		close(l.done)
	}()
}

func (l *chrootLauncher) exited() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

func (l *chrootLauncher) exec(argv []string) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := l.command(ctx, argv, nil).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		l.t.Fatalf("run %q: %v", argv, err)
	}
	if ee != nil {
		return ee.ExitCode(), string(out)
	}
	return 0, string(out)
}

func (l *chrootLauncher) stop() int {
	l.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-l.done:
	case <-time.After(20 * time.Second):
		l.cmd.Process.Kill()
		<-l.done
		l.t.Errorf("proxy ignored SIGTERM for 20s")
	}
	return l.code
}

func (l *chrootLauncher) logs() string { return l.out.String() }

// podmanLauncher runs the image in a real container: read-only, no
// capabilities, on this namespace's network.
type podmanLauncher struct {
	t    *testing.T
	sp   *spec
	name string
}

func (l *podmanLauncher) podman(timeout time.Duration, args ...string) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, l.sp.PodmanBin, append(append([]string(nil), l.sp.PodmanGlobal...), args...)...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		l.t.Fatalf("podman %s: %v", strings.Join(args, " "), err)
	}
	return 0, string(out)
}

func (l *podmanLauncher) start(env []string) {
	args := []string{"run", "-d", "--name", l.name, "--read-only", "--cap-drop", "ALL",
		"--security-opt", "no-new-privileges", "--network", "host", "--no-healthcheck"}
	for _, e := range env {
		args = append(args, "--env", e)
	}
	if code, out := l.podman(time.Minute, append(args, l.sp.Image)...); code != 0 {
		l.t.Fatalf("podman run: exit %d\n%s", code, out)
	}
	l.t.Cleanup(func() { l.podman(time.Minute, "rm", "-f", l.name) })
}

func (l *podmanLauncher) exited() bool {
	_, out := l.podman(30*time.Second, "inspect", "--format", "{{.State.Running}}", l.name)
	return strings.TrimSpace(out) != "true"
}

func (l *podmanLauncher) exec(argv []string) (int, string) {
	return l.podman(time.Minute, append([]string{"exec", l.name}, argv...)...)
}

func (l *podmanLauncher) stop() int {
	l.podman(time.Minute, "stop", "-t", "20", l.name)
	_, out := l.podman(30*time.Second, "inspect", "--format", "{{.State.ExitCode}}", l.name)
	code, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		l.t.Errorf("container exit code %q: %v", out, err)
		return -1
	}
	return code
}

func (l *podmanLauncher) logs() string {
	_, out := l.podman(30*time.Second, "logs", l.name)
	return out
}

// syncBuffer is a bytes.Buffer safe for a process writing while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// checkInventory waits for the activation's row in the inventory, read by
// `kmsproxy inventory --json` inside the container (the image's config and
// KMSPROXY_INVENTORY_PATH).
func checkInventory(t *testing.T, l launcher) {
	t.Helper()
	var out string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var code int
		code, out = l.exec([]string{wantBinary, "inventory", "--json"})
		var doc struct {
			Rows []struct {
				Zone       string `json:"last_zone"`
				Source     string `json:"last_source"`
				LastResult string `json:"last_result"`
			} `json:"rows"`
		}
		if code == 0 && json.Unmarshal([]byte(out), &doc) == nil && len(doc.Rows) == 1 {
			r := doc.Rows[0]
			if r.Source != clientIP || r.LastResult != "success" || r.Zone == "" {
				t.Errorf("inventory row %+v: want the activation from %s", r, clientIP)
			}
			t.Logf("kmsproxy inventory --json in the image: 1 row from %s, zone %s, %s", r.Source, r.Zone, r.LastResult)
			return
		}
	}
	t.Errorf("no inventory row for the activation:\n%s", out)
}
