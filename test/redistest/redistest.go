// Package redistest runs Debian's redis-server for tests: on 127.0.0.1,
// a free port, a temporary directory, no persistence, stopped at the
// test's end. A missing redis-server fails the test (never skips it) with
// the command that installs it.
//
//	srv := redistest.Start(t)                        // or Start(t, redistest.Password("s3cret"))
//	srv.Addr()                                       // "127.0.0.1:NNNNN"
//	srv.Stop(); srv.Start()                          // same port, same options, empty again
//	certs := redistest.NewCerts(t)                   // a CA, a server and a client certificate
//	tls := redistest.Start(t, redistest.TLS(certs))  // TLS only, client certificates required
//	sen := redistest.StartSentinel(t, "kms", 3)      // a master, its replica, three sentinels (topology.go)
//	cl := redistest.StartCluster(t)                  // three masters, every slot assigned
//
// The sentinels and the cluster are the same redis-server, each process
// a Server, on ports picked together so no two collide.
package redistest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Install is the command that provides redis-server.
const Install = "DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server"

// Server is one redis-server process.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	conf string // a config file, redis-server's first argument (a sentinel's); "" for none
	args []string
	cmd  *exec.Cmd
	done chan struct{}
}

// Option configures Start.
type Option func(*Server)

// Password makes the server require pw (requirepass, the default user's).
func Password(pw string) Option {
	return func(s *Server) { s.args = append(s.args, "--requirepass", pw) }
}

// Args adds redis-server options, one word each ("--user", "kmsproxy", "on", ">pw", "~kmsproxy:*", "+ping").
func Args(args ...string) Option {
	return func(s *Server) { s.args = append(s.args, args...) }
}

// TLS makes the server speak TLS only, with c's server certificate,
// requiring a client certificate signed by c's CA.
func TLS(c *Certs) Option {
	return func(s *Server) {
		s.args = append(s.args, "--tls-port", "PORT", "--port", "0",
			"--tls-cert-file", c.ServerCert, "--tls-key-file", c.ServerKey,
			"--tls-ca-cert-file", c.CAFile, "--tls-auth-clients", "yes")
	}
}

// Start starts a redis-server and stops it when the test ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := &Server{t: t, bin: lookBin(t, "redis-server"), dir: t.TempDir()}
	for _, o := range opts {
		o(s)
	}
	if s.port == 0 {
		s.port = freePorts(t, 1)[0]
	}
	s.Start()
	t.Cleanup(s.kill)
	return s
}

// onPort makes Start use p, a port freePorts picked, instead of picking
// one: a topology picks all its ports at once so no two nodes share one.
func onPort(p int) Option {
	return func(s *Server) { s.port = p }
}

// freePorts are n distinct ports free on 127.0.0.1 now. Each listener is
// held until all are picked: closed one by one, the kernel could hand the
// same port out twice.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port is the server's port.
func (s *Server) Port() int { return s.port }

// Start starts the server (again) on its port, with its options; it
// starts empty.
func (s *Server) Start() {
	s.t.Helper()
	var args []string
	if s.conf != "" {
		args = append(args, s.conf) // redis-server reads a config file only as its first argument
	}
	args = append(args, "--bind", "127.0.0.1", "--port", strconv.Itoa(s.port), "--save", "", "--appendonly", "no",
		"--dir", s.dir, "--logfile", filepath.Join(s.dir, "redis.log"), "--daemonize", "no", "--protected-mode", "no")
	for _, a := range s.args {
		if a == "PORT" {
			a = strconv.Itoa(s.port)
		}
		args = append(args, a)
	}
	for attempt := 0; ; attempt++ {
		s.cmd = exec.Command(s.bin, args...)
		if err := s.cmd.Start(); err != nil {
			s.t.Fatalf("redis-server: %v", err)
		}
		s.done = make(chan struct{})
		go func(c *exec.Cmd, done chan struct{}) { c.Wait(); close(done) }(s.cmd, s.done)
		if s.waitListening(10 * time.Second) {
			return
		}
		s.kill()
		if attempt == 20 {
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			s.t.Fatalf("redis-server did not listen on %s:\n%s", s.Addr(), log)
		}
		time.Sleep(100 * time.Millisecond) // the port is still held (a restart right after a stop)
	}
}

// waitListening waits until the port accepts or the process exits.
func (s *Server) waitListening(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return false
		default:
		}
		if c, err := net.DialTimeout("tcp", s.Addr(), 100*time.Millisecond); err == nil {
			c.Close()
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// Stop stops the server with SIGTERM and waits for it.
func (s *Server) Stop() {
	s.t.Helper()
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.t.Fatal("redis-server did not stop within 10s of SIGTERM")
	}
}

func (s *Server) kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Kill()
	<-s.done
}

// Log is the server's log so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	return string(b)
}

// Certs are PEM files of a test CA and of a server (127.0.0.1, localhost)
// and a client certificate it signed.
type Certs struct {
	Dir                   string
	CAFile                string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	OtherCAFile           string // a CA that signed neither
	caKey                 *ecdsa.PrivateKey
	ca                    *x509.Certificate
}

// NewCerts makes the certificates in a temporary directory.
func NewCerts(t testing.TB) *Certs {
	t.Helper()
	c := &Certs{Dir: t.TempDir()}
	var caDER []byte
	c.ca, c.caKey, caDER = newCA(t, "kmsproxy test CA")
	c.CAFile = writePEM(t, c.Dir, "ca.pem", "CERTIFICATE", caDER)
	_, _, otherDER := newCA(t, "another CA")
	c.OtherCAFile = writePEM(t, c.Dir, "other-ca.pem", "CERTIFICATE", otherDER)
	c.ServerCert, c.ServerKey = c.leaf(t, "server", x509.ExtKeyUsageServerAuth)
	c.ClientCert, c.ClientKey = c.leaf(t, "client", x509.ExtKeyUsageClientAuth)
	return c
}

func newCA(t testing.TB, name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key, der
}

func (c *Certs) leaf(t testing.TB, name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "kmsproxy test " + name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.ca, &key.PublicKey, c.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, c.Dir, name+".pem", "CERTIFICATE", der), writePEM(t, c.Dir, name+"-key.pem", "EC PRIVATE KEY", kb)
}

func writePEM(t testing.TB, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Conf is a state.redis block for a kmsproxy config pointing at s, with
// extra keys ("timeout: 50ms") inside the braces. Without a timeout of its
// own it gets 1s, not the 25 ms default: on a CI machine running every
// package at once a loopback round trip can take longer than 25 ms, and a
// test about sharing must not turn into one about degrading.
func (s *Server) Conf(extra ...string) string { return conf(extra, []string{s.Addr()}) }

// conf is a state.redis block naming addrs, with keys, and a timeout of
// 1 s unless keys has one.
func conf(keys []string, addrs []string) string {
	quoted := make([]string, len(addrs))
	for i, a := range addrs {
		quoted[i] = strconv.Quote(a)
	}
	all := []string{"addresses: [" + strings.Join(quoted, ", ") + "]"}
	if !slices.ContainsFunc(keys, func(k string) bool { return strings.HasPrefix(k, "timeout:") }) {
		all = append(all, "timeout: 1s")
	}
	all = append(all, keys...)
	return "state:\n  redis: { " + strings.Join(all, ", ") + " }\n"
}
