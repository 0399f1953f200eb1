package siem

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/event/syslog"
	"github.com/kmsproxy/kmsproxy/test/fixture"
)

// testCA is a throwaway certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var serial int64

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue signs a leaf for name (a DNS SAN) with the given usage and
// returns PEM certificate and key.
func (ca *testCA) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// tlsCollector is a loopback RFC 5425 receiver requiring a client
// certificate from clientCA. It records every frame and every handshake.
type tlsCollector struct {
	ln net.Listener
	mu sync.Mutex
	// frames holds the messages received, in order.
	frames     []string
	handshakes []error
	states     []tls.ConnectionState
	framingErr error
}

func startTLSCollector(t *testing.T, serverCA, clientCA *testCA, name string) *tlsCollector {
	t.Helper()
	certPEM, keyPEM := serverCA.issue(t, name, x509.ExtKeyUsageServerAuth)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(clientCA.cert)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
		MinVersion: tls.VersionTLS12,
	})
	if err != nil {
		t.Fatal(err)
	}
	c := &tlsCollector{ln: ln}
	go c.serve()
	t.Cleanup(func() { ln.Close() })
	return c
}

func (c *tlsCollector) serve() {
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			tc := conn.(*tls.Conn)
			tc.SetDeadline(time.Now().Add(30 * time.Second))
			err := tc.Handshake()
			c.mu.Lock()
			c.handshakes = append(c.handshakes, err)
			if err == nil {
				c.states = append(c.states, tc.ConnectionState())
			}
			c.mu.Unlock()
			if err != nil {
				return
			}
			r := bufio.NewReader(tc)
			for {
				msg, err := readOctetCounted(r)
				if err != nil {
					if !strings.Contains(err.Error(), "EOF") && !strings.Contains(err.Error(), "closed") {
						c.mu.Lock()
						c.framingErr = err
						c.mu.Unlock()
					}
					return
				}
				c.mu.Lock()
				c.frames = append(c.frames, msg)
				c.mu.Unlock()
			}
		}()
	}
}

func (c *tlsCollector) snapshot() (frames []string, handshakes []error, states []tls.ConnectionState, framingErr error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.frames...), append([]error(nil), c.handshakes...), append([]tls.ConnectionState(nil), c.states...), c.framingErr
}

// TLS (RFC 5425): mutual authentication with certificates generated
// here, octet-counted frames parsed back; a sink trusting another CA, or
// expecting another server name, delivers nothing and counts drops.
func TestTLSCollector(t *testing.T) {
	dir := t.TempDir()
	serverCA, clientCA, otherCA := newCA(t, "siem server CA"), newCA(t, "kmsproxy client CA"), newCA(t, "unrelated CA")
	const serverName = "siem.test"
	col := startTLSCollector(t, serverCA, clientCA, serverName)
	clientCert, clientKey := clientCA.issue(t, "kmsproxy-gw1", x509.ExtKeyUsageClientAuth)
	base := syslog.Options{
		Address: "tls://" + col.ln.Addr().String(), Level: "info", ServerName: serverName,
		CAFile:   writeFile(t, dir, "server-ca.pem", serverCA.pem),
		CertFile: writeFile(t, dir, "client.pem", clientCert), KeyFile: writeFile(t, dir, "client.key", clientKey),
		WarnInterval: 100 * time.Millisecond,
	}

	t.Run("verified", func(t *testing.T) {
		s := newSink(t, base, nil)
		e := fixture.StartEnvWith(t, fixture.Replay, baseConfig, s.Opts)
		activate(t, e, srcDMZ)
		waitCount(t, e, "connection-closed", 1)
		s.Sink.Close()
		want := stdoutLines(e)
		deadline := time.Now().Add(10 * time.Second)
		frames, hs, states, ferr := col.snapshot()
		for len(frames) < len(want) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			frames, hs, states, ferr = col.snapshot()
		}
		if ferr != nil {
			t.Fatalf("framing: %v", ferr)
		}
		if len(frames) != len(want) {
			t.Fatalf("collector got %d frames, stdout has %d events", len(frames), len(want))
		}
		if len(hs) != 1 || hs[0] != nil || len(states) != 1 {
			t.Fatalf("handshakes %v", hs)
		}
		st := states[0]
		if st.Version < tls.VersionTLS12 || len(st.PeerCertificates) == 0 || st.PeerCertificates[0].Subject.CommonName != "kmsproxy-gw1" {
			t.Fatalf("TLS version %x, client certificate %v", st.Version, st.PeerCertificates)
		}
		for i, f := range frames {
			m, err := parse5424(f)
			if err != nil {
				t.Fatal(err)
			}
			if m.Msg != want[i] {
				t.Fatalf("frame %d MSG differs from stdout:\n got %s\nwant %s", i, m.Msg, want[i])
			}
			ev, err := m.event()
			if err != nil {
				t.Fatal(err)
			}
			checkMessage(t, m, ev)
		}
	})

	for _, c := range []struct {
		name string
		mod  func(o *syslog.Options)
	}{
		{"wrong CA", func(o *syslog.Options) { o.CAFile = writeFile(t, dir, "other-ca.pem", otherCA.pem) }},
		{"wrong server name", func(o *syslog.Options) { o.ServerName = "elsewhere.test" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			before, _, _, _ := col.snapshot()
			o := base
			c.mod(&o)
			s := newSink(t, o, nil)
			// Events queued before the first handshake fails wait for a
			// reconnect; once it has failed, new events are dropped.
			for deadline := time.Now().Add(10 * time.Second); s.Sink.Stats().Connected; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("sink never noticed the failed handshake")
				}
			}
			e := fixture.StartEnvWith(t, fixture.Replay, baseConfig, s.Opts)
			activate(t, e, srcDMZ) // the proxy works regardless
			waitCount(t, e, "connection-closed", 1)
			e.WaitEvent(event.ActionLogEventsDropped, map[string]any{"event.reason": "syslog-disconnected"})
			if s.Sink.Stats().Connected || s.Sink.Stats().Dropped == 0 {
				t.Fatalf("stats %+v: want disconnected with drops", s.Sink.Stats())
			}
			ev := e.Events(event.ActionLogEventsDropped)[0]
			if msg := str(ev["error.message"]); !strings.Contains(msg, "certificate") {
				t.Fatalf("drop warning error.message %q does not name the certificate problem", msg)
			}
			s.Sink.Close()
			if after, _, _, _ := col.snapshot(); len(after) != len(before) {
				t.Fatalf("collector received %d messages over an unverified connection", len(after)-len(before))
			}
		})
	}
}
