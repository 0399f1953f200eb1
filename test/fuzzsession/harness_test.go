package fuzzsession

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/pool"
	"github.com/kmsproxy/kmsproxy/proxy"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/fixture"
	"github.com/kmsproxy/kmsproxy/test/hostcheck"
)

// policy is test/e2e's base policy with limits no fuzz run reaches (so a
// refusal is always the session's decision, never a rate limit) and short
// timeouts. The dmz and office zones are /24s so each input dials from its
// own source: one source would run out of ports in TIME_WAIT.
const policy = `
listen: "127.0.0.1:1688"
upstreams: ["UPSTREAM"]
zones:
  dmz: ["127.0.0.2/32", "127.0.1.0/24"]
  office-only: ["127.0.2.0/24"]
rules:
  - name: dmz-activation
    from: [dmz]
    interface: kms
    opnums: [0]
    auth: [none]
    kms:
      versions: [4, 5, 6]
      reject_malformed: true
    action: allow
  - name: office-activation
    from: [office-only]
    interface: kms
    opnums: [0]
    auth: [none]
    kms:
      applications: [office2013]
    action: allow
on_deny: ON_DENY
limits:
  max_call_bytes: 8192
  connections: 4096
  connections_per_source: 4096
  activations_per_minute_per_source: 1000000
  handshake_timeout: 1s
  idle_timeout: 1s
  upstream_connect_timeout: 1s
management: { listen: "127.0.0.1:0" }
`

// Bounds of one input's run. Answers and closes come in well under a
// millisecond on loopback; these only end a wait that would otherwise
// hang, and the close bound is past every proxy timeout.
const (
	answerWait = 250 * time.Millisecond // per PDU that expects an answer, with gWait
	pauseFor   = 25 * time.Millisecond  // past the proxy's 20 ms idle park
	closeWait  = 5 * time.Second        // client FIN → the proxy has closed and released the session
)

// harness is one fixture host behind two proxies (on_deny reject and
// drop) in one host-side mode, made once per fuzz process and shared by
// every input, which run one at a time. The proxies dial the host through
// tap, which keeps every byte they write upstream.
type harness struct {
	side  fixture.HostSide
	host  *fixture.Host
	srvs  [2]*proxy.Server
	addrs [2]string
	log   eventLog
	tap   tap
	blobs [][]byte

	hostConns int           // host connections checked
	hostRecs  int           // host records consumed
	hostViols int           // host violations reported
	pooled    []*pooledConn // behind the gateway: every host connection, kept across inputs
	n         int           // inputs run
}

// newHarness starts the host (with opts) and the proxies under policyText
// in host-side mode side. The host answers as the plain Replay host in
// both modes (not by content behind the gateway): it accepts every KMS
// context it is offered, NDR 2.0 beside NDR64 too, so the same inputs get
// as far in both modes.
func newHarness(t testing.TB, policyText string, side fixture.HostSide, opts ...fixture.HostOption) *harness {
	t.Helper()
	h := &harness{side: side, host: fixture.StartHost(t, fixture.Replay, opts...), blobs: mustBlobs(t)}
	dir := t.TempDir()
	for i, onDeny := range []string{"reject", "drop"} {
		text := strings.NewReplacer("UPSTREAM", h.host.Addr(), "ON_DENY", onDeny).Replace(side.Apply(policyText))
		path := filepath.Join(dir, onDeny+".yaml")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(path)
		if err != nil {
			t.Fatalf("config: %v", err)
		}
		rt, err := config.NewRuntime(cfg)
		if err != nil {
			t.Fatal(err)
		}
		log, err := event.NewLogger("debug", "ecs", &h.log)
		if err != nil {
			t.Fatal(err)
		}
		srv := proxy.New(rt, log, nil)
		srv.SetDialer(h.tap.dial)
		ln, err := proxy.Listen(context.Background(), "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			srv.Shutdown(ctx)
		})
		h.srvs[i], h.addrs[i] = srv, ln.Addr().String()
	}
	return h
}

// result is what reached the host during one input.
type result struct {
	pdus  [][]byte // every PDU the proxy wrote upstream, in order
	conns int      // host connections opened
}

// requests counts the request PDUs that reached the host.
func (r result) requests() int {
	n := 0
	for _, p := range r.pdus {
		if len(p) > 2 && p[2] == byte(rpcparse.PTypeRequest) {
			n++
		}
	}
	return n
}

// run sends one input through a proxy and returns what reached the host,
// with an error if the invariant refuses any of it or the proxy did not
// let the connection go.
func (h *harness) run(in input) (result, error) {
	pdus := make([][]sent, len(in.ops))
	for i := range in.ops {
		pdus[i] = in.ops[i].build(h.blobs)
	}
	h.log.reset()
	srvIdx := 0
	if in.global&gDrop != 0 {
		srvIdx = 1
	}
	srv := h.srvs[srvIdx]
	c, err := h.dial(in.global&gOffice != 0, h.addrs[srvIdx])
	if err != nil {
		return result{}, err
	}
	h.send(c, in, pdus)
	// Half-close, then read until the proxy closes: it has then read every
	// PDU and written everything it will write to the host.
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(closeWait))
	_, err = io.Copy(io.Discard, c)
	c.Close()
	if isTimeout(err) {
		return result{}, fmt.Errorf("the proxy kept the connection open %v after the client's FIN\ninput:\n%s\nevents:\n%s", closeWait, describe(in, pdus), h.log.String())
	}
	deadline := time.Now().Add(closeWait)
	for srv.ActiveConnections() != 0 {
		if time.Now().After(deadline) {
			return result{}, fmt.Errorf("the proxy still holds the session %v after it closed the client\ninput:\n%s\nevents:\n%s", closeWait, describe(in, pdus), h.log.String())
		}
		time.Sleep(50 * time.Microsecond)
	}
	res, err := h.check()
	if err != nil {
		return res, fmt.Errorf("%w\ninput:\n%s\nreached the host:\n%s\nevents:\n%s", err, describe(in, pdus), hexLines(res.pdus), h.log.String())
	}
	return res, nil
}

func (h *harness) dial(office bool, addr string) (*net.TCPConn, error) {
	var last error
	for try := 0; try < 8; try++ {
		h.n++
		src := fmt.Sprintf("127.0.1.%d", 1+h.n%250)
		if office {
			src = fmt.Sprintf("127.0.2.%d", 1+h.n%250)
		}
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", addr)
		if err == nil {
			return c.(*net.TCPConn), nil
		}
		last = err
	}
	return nil, fmt.Errorf("dial %s: %w", addr, last)
}

// send writes the PDUs: all in one write (split at the pause) or one
// write each, then with gWait reads an answer after each PDU the proxy
// answers. Only the first pause of an input waits.
func (h *harness) send(c *net.TCPConn, in input, pdus [][]sent) {
	c.SetWriteDeadline(time.Now().Add(closeWait))
	paused := false
	pause := func(o op) bool {
		if o.kind != kPause || paused {
			return false // one pause per input keeps every input cheap
		}
		paused = true
		return true
	}
	if in.global&gOneWrite != 0 {
		var buf []byte
		for i, o := range in.ops {
			if pause(o) {
				if _, err := c.Write(buf); err != nil {
					return
				}
				buf = buf[:0]
				time.Sleep(pauseFor)
			}
			for _, p := range pdus[i] {
				buf = append(buf, p.b...)
			}
		}
		c.Write(buf)
		return
	}
	fr := rpcparse.NewFramer(c, rpcparse.MaxFragmentLimit)
	for i, o := range in.ops {
		if pause(o) {
			time.Sleep(pauseFor)
		}
		for _, p := range pdus[i] {
			if _, err := c.Write(p.b); err != nil {
				return
			}
			if in.global&gWait == 0 || !answered(p.b) {
				continue
			}
			c.SetReadDeadline(time.Now().Add(answerWait))
			if _, err := fr.Next(); err != nil && !isTimeout(err) {
				return // closed: nothing more will be read
			}
		}
	}
}

// answered reports whether the proxy answers this PDU once it frames:
// a bind, an alter_context, the last fragment of a request.
func answered(b []byte) bool {
	if len(b) < 16 || int(order(rpcparse.DataRep(b[4:8])).Uint16(b[8:])) != len(b) {
		return false
	}
	switch rpcparse.PType(b[2]) {
	case rpcparse.PTypeBind, rpcparse.PTypeAlterContext:
		return true
	case rpcparse.PTypeRequest:
		return b[3]&rpcparse.FlagLastFrag != 0
	}
	return false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// check holds every byte written to the host since the last input to a
// fresh hostcheck.Conn per host connection, then confirms the fixture host
// received exactly those bytes and its own checker agrees. Behind the
// gateway, checkPooled.
func (h *harness) check() (result, error) {
	if h.side.Gateway {
		return h.checkPooled()
	}
	var res result
	conns := h.tap.take()
	first := h.hostConns
	h.hostConns += len(conns)
	res.conns = len(conns)
	var firstErr error
	want := map[int][]byte{}
	for i, tc := range conns {
		if !tc.closed.Load() {
			// The session ended, so its upstream must be closed.
			firstErr = errors.Join(firstErr, fmt.Errorf("host connection %d still open after its session ended", first+i))
			tc.Close()
		}
		select {
		case <-tc.done:
		case <-time.After(2 * closeWait):
			firstErr = errors.Join(firstErr, fmt.Errorf("the fixture host kept connection %d open after the proxy closed it", first+i))
		}
		b := tc.sentBytes()
		want[first+i] = b
		pdus, err := checkStream(b)
		res.pdus = append(res.pdus, pdus...)
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("host connection %d: %w", first+i, err)
		}
	}
	if err := h.checkHost(first, want); err != nil {
		firstErr = errors.Join(firstErr, err)
	}
	return res, firstErr
}

// checkStream frames what one host connection received and runs a fresh
// hostcheck.Conn over it, ending it as a clean close.
func checkStream(b []byte) ([][]byte, error) {
	chk := hostcheck.NewConn(nil)
	pdus, err := checkPDUs(chk, b)
	if err != nil {
		return pdus, err
	}
	if err := chk.End(); err != nil {
		return pdus, err
	}
	return pdus, nil
}

// checkPDUs frames b, which must end at a PDU boundary, and holds each PDU
// to chk.
func checkPDUs(chk *hostcheck.Conn, b []byte) ([][]byte, error) {
	var pdus [][]byte
	for i := 0; len(b) > 0; i++ {
		if len(b) < 16 {
			return pdus, fmt.Errorf("%w: %d bytes after PDU %d do not frame: %x", hostcheck.ErrUnframed, len(b), i, b)
		}
		n := int(order(rpcparse.DataRep(b[4:8])).Uint16(b[8:]))
		if n < 16 || n > len(b) {
			return pdus, fmt.Errorf("%w: PDU %d says frag_length %d with %d bytes left: %x", hostcheck.ErrUnframed, i, n, len(b), b)
		}
		pdu := b[:n]
		b = b[n:]
		pdus = append(pdus, pdu)
		if err := chk.Check(pdu); err != nil {
			return pdus, fmt.Errorf("PDU %d (%x): %w", i, pdu, err)
		}
	}
	return pdus, nil
}

// pooledConn is one host connection behind the gateway: the pool's own
// association, carrying the calls of many inputs (or a relayed one, for a
// bind the gateway does not terminate), checked as one stream.
type pooledConn struct {
	tc      *tapConn
	idx     int             // the fixture host's index of the connection
	chk     *hostcheck.Conn // its checker, from its first PDU on
	off     int             // bytes the proxy wrote that are checked
	hostOff int             // of those, bytes the fixture host is known to have recorded
	ended   bool            // closed and ended
}

// checkPooled is check behind the gateway, where the host's connections
// outlive the inputs: every byte written to each since the last input is
// held to that connection's own hostcheck.Conn, the fixture host must have
// recorded exactly what the proxy wrote, no more than the pool's
// MaxAssociations stay open, and the host checker agrees.
func (h *harness) checkPooled() (result, error) {
	var res result
	for _, tc := range h.tap.take() {
		h.pooled = append(h.pooled, &pooledConn{tc: tc, idx: h.hostConns, chk: hostcheck.NewConn(nil)})
		h.hostConns++
		res.conns++
	}
	var firstErr error
	open := 0
	byIdx := map[int]*pooledConn{}
	for _, pc := range h.pooled {
		if pc.ended {
			continue
		}
		byIdx[pc.idx] = pc
		closed := pc.tc.closed.Load()
		if closed {
			select {
			case <-pc.tc.done:
			case <-time.After(2 * closeWait):
				firstErr = errors.Join(firstErr, fmt.Errorf("the fixture host kept connection %d open after the proxy closed it", pc.idx))
			}
		} else {
			open++
		}
		b := pc.tc.sentBytes()
		pdus, err := checkPDUs(pc.chk, b[pc.off:])
		pc.off = len(b)
		res.pdus = append(res.pdus, pdus...)
		if err == nil && closed {
			err = pc.chk.End()
		}
		if err != nil {
			firstErr = errors.Join(firstErr, fmt.Errorf("host connection %d: %w", pc.idx, err))
		}
	}
	if open > pool.DefaultMaxAssociations {
		firstErr = errors.Join(firstErr, fmt.Errorf("%d host connections open after the input, more than the pool's %d", open, pool.DefaultMaxAssociations))
	}
	// The host records each PDU before it answers, and the pool waited for
	// every answer; a PDU the host does not answer may still be in
	// flight, so wait a little for the record to match.
	deadline := time.Now().Add(closeWait)
	for {
		err, behind := h.matchPooled(byIdx)
		if err != nil || behind == nil {
			firstErr = errors.Join(firstErr, err)
			break
		}
		if time.Now().After(deadline) {
			firstErr = errors.Join(firstErr, behind)
			break
		}
		time.Sleep(time.Millisecond)
	}
	for _, pc := range byIdx {
		if pc.tc.closed.Load() {
			pc.ended = true
		}
	}
	vs := h.host.Violations()
	for _, v := range vs[h.hostViols:] {
		firstErr = errors.Join(firstErr, fmt.Errorf("fixture host checker: %v", v))
	}
	h.hostViols = len(vs)
	return res, firstErr
}

// matchPooled consumes the fixture host's new records, each of which must
// be the next bytes the proxy wrote on its connection (err otherwise), and
// reports in behind any connection whose record is behind what the proxy
// wrote.
func (h *harness) matchPooled(byIdx map[int]*pooledConn) (err, behind error) {
	recs := h.host.Received()[h.hostRecs:]
	h.hostRecs += len(recs)
	for _, r := range recs {
		pc := byIdx[r.Conn]
		if pc == nil {
			err = errors.Join(err, fmt.Errorf("the fixture host received bytes on connection %d, which the proxy had closed or never dialled", r.Conn))
			continue
		}
		b := pc.tc.sentBytes()
		if end := pc.hostOff + len(r.Bytes); r.Bytes == nil || end > len(b) || !bytes.Equal(b[pc.hostOff:end], r.Bytes) {
			err = errors.Join(err, fmt.Errorf("the fixture host recorded %x on connection %d, not what the proxy wrote there", r.Bytes, r.Conn))
			continue
		}
		pc.hostOff += len(r.Bytes)
	}
	for _, pc := range byIdx {
		if pc.hostOff != pc.off {
			behind = errors.Join(behind, fmt.Errorf("the fixture host recorded %d bytes on connection %d, the proxy wrote %d", pc.hostOff, pc.idx, pc.off))
		}
	}
	return err, behind
}

// checkHost compares what the fixture host recorded on the new
// connections (all of it: the host has closed each) with what the proxy
// wrote, and reads the host checker's new violations.
func (h *harness) checkHost(first int, want map[int][]byte) error {
	recs := h.host.Received()[h.hostRecs:]
	h.hostRecs += len(recs)
	got := map[int][]byte{}
	for _, r := range recs {
		got[r.Conn] = append(got[r.Conn], r.Bytes...)
	}
	var err error
	for i, b := range want {
		if g := got[i]; !bytes.Equal(g, b) && len(b) > 0 {
			err = errors.Join(err, fmt.Errorf("the fixture host recorded %d bytes on connection %d, the proxy wrote %d", len(g), i, len(b)))
		}
	}
	for i := range got {
		if i < first {
			err = errors.Join(err, fmt.Errorf("the fixture host received bytes on connection %d of an earlier input", i))
		}
	}
	vs := h.host.Violations()
	for _, v := range vs[h.hostViols:] {
		err = errors.Join(err, fmt.Errorf("fixture host checker: %v", v))
	}
	h.hostViols = len(vs)
	return err
}

func hexLines(pdus [][]byte) string {
	if len(pdus) == 0 {
		return "  (nothing)\n"
	}
	var b strings.Builder
	for _, p := range pdus {
		fmt.Fprintf(&b, "  %x\n", p)
	}
	return b.String()
}

// eventLog keeps the proxy's events of the current input, bounded.
type eventLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

const maxEventLog = 64 << 10

func (l *eventLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len() < maxEventLog {
		l.buf.Write(p)
	}
	return len(p), nil
}

func (l *eventLog) reset() {
	l.mu.Lock()
	l.buf.Reset()
	l.mu.Unlock()
}

func (l *eventLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// tap is the proxies' upstream dialer: a plain TCP dial whose connection
// keeps a copy of every byte written to it. The session sees a net.Conn
// with the socket's deadlines and raw conn. Only its close differs: it
// half-closes and reads the host's last answers until the host has closed
// too, so the host never writes into a reset and loses bytes it was sent
// (the fixture host answers every request fragment), and done says the
// host has read and recorded everything.
type tap struct {
	mu    sync.Mutex
	conns []*tapConn
}

func (tp *tap) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{KeepAlive: -1}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := &tapConn{c: c.(*net.TCPConn), done: make(chan struct{})}
	tp.mu.Lock()
	tp.conns = append(tp.conns, tc)
	tp.mu.Unlock()
	return tc, nil
}

// take returns the connections dialled since the last take.
func (tp *tap) take() []*tapConn {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	out := tp.conns
	tp.conns = nil
	return out
}

type tapConn struct {
	c      *net.TCPConn
	mu     sync.Mutex
	sent   []byte
	closed atomic.Bool
	once   sync.Once
	done   chan struct{} // closed once the host has closed its side
}

var (
	_ net.Conn     = (*tapConn)(nil)
	_ syscall.Conn = (*tapConn)(nil)
)

func (t *tapConn) Read(b []byte) (int, error) {
	if t.closed.Load() {
		return 0, net.ErrClosed
	}
	return t.c.Read(b)
}

func (t *tapConn) Write(b []byte) (int, error) {
	if t.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := t.c.Write(b)
	t.mu.Lock()
	t.sent = append(t.sent, b[:n]...)
	t.mu.Unlock()
	return n, err
}

func (t *tapConn) Close() error {
	t.once.Do(func() {
		t.closed.Store(true)
		go t.linger()
	})
	return nil
}

// linger ends the connection from the proxy's side and waits, bounded,
// for the host to end it from its own.
func (t *tapConn) linger() {
	defer close(t.done)
	defer t.c.Close()
	t.c.CloseWrite()
	t.c.SetReadDeadline(time.Now().Add(closeWait))
	io.Copy(io.Discard, t.c)
}

func (t *tapConn) sentBytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sent
}

func (t *tapConn) LocalAddr() net.Addr  { return t.c.LocalAddr() }
func (t *tapConn) RemoteAddr() net.Addr { return t.c.RemoteAddr() }

func (t *tapConn) SetDeadline(d time.Time) error {
	if t.closed.Load() {
		return net.ErrClosed
	}
	return t.c.SetDeadline(d)
}

func (t *tapConn) SetReadDeadline(d time.Time) error {
	if t.closed.Load() {
		return net.ErrClosed
	}
	return t.c.SetReadDeadline(d)
}

func (t *tapConn) SetWriteDeadline(d time.Time) error {
	if t.closed.Load() {
		return net.ErrClosed
	}
	return t.c.SetWriteDeadline(d)
}

func (t *tapConn) SyscallConn() (syscall.RawConn, error) { return t.c.SyscallConn() }
