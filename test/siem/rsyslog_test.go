package siem

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// rsyslog is a real rsyslogd listening on loopback UDP and TCP ports
// picked by the test, writing each received message verbatim (%rawmsg%),
// one per line, to udp.log and tcp.log.
type rsyslog struct {
	t        *testing.T
	dir      string
	UDPAddr  string
	TCPAddr  string
	cmd      *exec.Cmd
	exitErr  chan error
	probeSeq int
}

const rsyslogConf = `global(workDirectory="{{DIR}}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="fromudp") { action(type="omfile" file="{{DIR}}/udp.log" template="raw") }
ruleset(name="fromtcp") { action(type="omfile" file="{{DIR}}/tcp.log" template="raw") }
input(type="imudp" address="127.0.0.1" port="{{UDP}}" ruleset="fromudp")
input(type="imtcp" address="127.0.0.1" port="{{TCP}}" ruleset="fromtcp")
`

func rsyslogdPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"rsyslogd", "/usr/sbin/rsyslogd"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("KMSPROXY_SKIP_RSYSLOG") != "" {
		t.Skip("rsyslogd not installed and KMSPROXY_SKIP_RSYSLOG set")
	}
	t.Fatal("rsyslogd not found: apt-get install -y rsyslog (or set KMSPROXY_SKIP_RSYSLOG=1 to skip)")
	return ""
}

// freePort returns a loopback port free for network at the time of asking.
func freePort(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		_, port, _ := net.SplitHostPort(pc.LocalAddr().String())
		return port
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

func startRsyslog(t *testing.T) *rsyslog {
	t.Helper()
	bin := rsyslogdPath(t)
	dir := t.TempDir()
	udp, tcp := freePort(t, "udp"), freePort(t, "tcp")
	conf := strings.NewReplacer("{{DIR}}", dir, "{{UDP}}", udp, "{{TCP}}", tcp).Replace(rsyslogConf)
	confPath := filepath.Join(dir, "rsyslog.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(filepath.Join(dir, "rsyslogd.out"))
	if err != nil {
		t.Fatal(err)
	}
	r := &rsyslog{t: t, dir: dir, UDPAddr: "127.0.0.1:" + udp, TCPAddr: "127.0.0.1:" + tcp, exitErr: make(chan error, 1)}
	r.cmd = exec.Command(bin, "-n", "-f", confPath, "-i", filepath.Join(dir, "rsyslogd.pid"))
	r.cmd.Stdout, r.cmd.Stderr = out, out
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start rsyslogd: %v", err)
	}
	go func() { r.exitErr <- r.cmd.Wait(); out.Close() }()
	t.Cleanup(r.stop)
	// Ready when a probe sent over each transport has been written out.
	deadline := time.Now().Add(15 * time.Second)
	for _, tr := range []string{"udp", "tcp"} {
		for !r.probe(tr) {
			select {
			case err := <-r.exitErr:
				t.Fatalf("rsyslogd exited: %v\n%s", err, r.output())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("rsyslogd not receiving on %s\n%s", tr, r.output())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return r
}

func (r *rsyslog) output() string {
	b, _ := os.ReadFile(filepath.Join(r.dir, "rsyslogd.out"))
	return string(b)
}

func (r *rsyslog) stop() {
	if r.cmd.Process == nil {
		return
	}
	r.cmd.Process.Kill()
	select {
	case <-r.exitErr:
	case <-time.After(5 * time.Second):
	}
}

// probe sends one marker message over transport and reports whether it
// (or any earlier one) was written.
func (r *rsyslog) probe(transport string) bool {
	r.probeSeq++
	msg := fmt.Sprintf("<14>1 - - probe - probe - ready-%d", r.probeSeq)
	addr := r.UDPAddr
	if transport == "tcp" {
		addr = r.TCPAddr
		msg = fmt.Sprintf("%d %s", len(msg), msg)
	}
	c, err := net.DialTimeout(transport, addr, time.Second)
	if err != nil {
		return false
	}
	c.Write([]byte(msg))
	c.Close()
	time.Sleep(50 * time.Millisecond)
	for _, l := range r.lines(transport) {
		if strings.Contains(l, " probe - ready-") {
			return true
		}
	}
	return false
}

// lines returns what rsyslog wrote for transport, probes excluded.
func (r *rsyslog) lines(transport string) []string {
	f, err := os.Open(filepath.Join(r.dir, transport+".log"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// messages returns the kmsproxy messages received over transport.
func (r *rsyslog) messages(transport string) []string {
	var out []string
	for _, l := range r.lines(transport) {
		if !strings.Contains(l, " probe - ready-") {
			out = append(out, l)
		}
	}
	return out
}

// waitMessages waits until at least n kmsproxy messages arrived.
func (r *rsyslog) waitMessages(transport string, n int) []string {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := r.messages(transport)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("rsyslog got %d messages over %s, want %d:\n%s\nrsyslogd:\n%s",
				len(got), transport, n, strings.Join(got, "\n"), r.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
