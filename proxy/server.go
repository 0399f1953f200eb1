package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/kmswatch"
	"github.com/kmsproxy/kmsproxy/pool"
)

// Dialer connects to an upstream KMS host. Tests inject their own.
type Dialer func(ctx context.Context, network, address string) (net.Conn, error)

// Server accepts client connections and runs one session per connection.
type Server struct {
	log     *zap.Logger
	metrics *event.Metrics
	emit    event.Emitter // log and metrics, for server-wide events
	rt      atomic.Pointer[config.Runtime]
	dial    Dialer

	nextID     atomic.Uint64
	lastDialOK atomic.Int64 // unix nanoseconds of the last successful upstream dial
	rate       *rateLimiter
	watch      *kmswatch.Watch
	hosts      *kmswatch.Hosts // the KMS host's counts and error codes, from replies
	sink       ActivationSink  // the inventory; nil: none
	parking    parker
	fdBudget   int // descriptors connections may use (fdbudget.go); 0 = no cap

	// The terminating gateway's pool (gateway.go), made at the first
	// terminated bind and remade when a reload changes the upstreams or
	// the pool's settings; poolKey says which config it was made from.
	poolMu   sync.Mutex
	pool     *pool.Pool
	poolKey  string
	group    uint32 // association group ids the proxy hands out start here
	poolWait prometheus.Histogram

	mu        sync.Mutex
	active    int
	perSource map[netip.Addr]int
	sessions  map[*session]struct{}
	listeners map[net.Listener]struct{}
	closing   bool
	fdsInUse  int // client and upstream descriptors of open sessions
	wg        sync.WaitGroup
}

// New returns a server enforcing rt. metrics may be nil.
func New(rt *config.Runtime, log *zap.Logger, metrics *event.Metrics) *Server {
	if log == nil {
		log = zap.NewNop()
	}
	if metrics == nil {
		metrics = event.NewMetrics()
	}
	s := &Server{
		log:       log,
		metrics:   metrics,
		emit:      event.NewEmitter(log, metrics),
		perSource: make(map[netip.Addr]int),
		sessions:  make(map[*session]struct{}),
		listeners: make(map[net.Listener]struct{}),
		rate:      newRateLimiter(),
		watch:     kmswatch.New(),
		hosts:     kmswatch.NewHosts(metrics),
	}
	s.rt.Store(rt)
	if rt != nil {
		// The server starts with a loaded, valid config: the last load
		// succeeded (Reload keeps this 1 or sets 0 from then on).
		metrics.ConfigLastReload.Set(1)
		s.warnIfAllowsNothing(rt.Config)
	}
	var nofile uint64
	s.fdBudget, nofile = fdBudget()
	if s.fdBudget > 0 && rt != nil && 2*rt.Config.Limits.Connections > s.fdBudget {
		log.Warn("limits.connections exceeds what the file-descriptor limit allows when every client is bound; connections and upstream dials past the budget are refused",
			zap.Int("kmsproxy.limits.connections", rt.Config.Limits.Connections),
			zap.Int("kmsproxy.fd_budget", s.fdBudget), zap.Uint64("kmsproxy.rlimit_nofile", nofile))
	}
	s.dial = upstreamDialer()
	s.group = uint32(time.Now().UnixNano()) &^ 0xffff
	s.poolWait = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kmsproxy_upstream_pool_wait_seconds",
		Help: "Time a terminated call waited for a pooled host association.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)})
	// A second Server on the same registry (tests) keeps the first's.
	if err := metrics.Registry.Register(poolCollector{stats: s.PoolStats}); err == nil {
		metrics.Registry.MustRegister(s.poolWait)
	}
	return s
}

// upstreamPool returns the pool for the policy in force, or nil when the
// pool is off. The first call makes it (nothing is dialled until a call
// needs an association); a reload that changed the upstreams or the pool's
// settings gets a new one, and the old one is closed once its calls are
// done.
func (s *Server) upstreamPool() *pool.Pool {
	rt := s.rt.Load()
	if rt == nil || !rt.Config.UpstreamPool.Enabled {
		return nil
	}
	key := fmt.Sprintf("%v %+v %v %v %v", rt.Config.Upstreams, rt.Config.UpstreamPool,
		rt.Config.Limits.UpstreamConnectTimeout, rt.Config.Limits.IdleTimeout, rt.Config.Limits.MaxCallBytes)
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	if s.pool != nil && s.poolKey == key {
		return s.pool
	}
	if old := s.pool; old != nil {
		time.AfterFunc(rt.Config.Limits.IdleTimeout+time.Second, func() { old.Close() })
	}
	s.pool, s.poolKey = s.newPool(rt), key
	return s.pool
}

// closePool closes the pool at shutdown, after every session ended.
func (s *Server) closePool() {
	s.poolMu.Lock()
	p := s.pool
	s.pool = nil
	s.poolMu.Unlock()
	if p != nil {
		p.Close()
	}
}

// PoolStats is the pool's state for metrics and the status page (zero
// when no pool was made).
func (s *Server) PoolStats() (pool.Stats, bool) {
	s.poolMu.Lock()
	p := s.pool
	s.poolMu.Unlock()
	if p == nil {
		return pool.Stats{}, false
	}
	return p.Stats(), true
}

// assocGroup is the association group id the proxy gives a terminated
// client association: its own, unique per connection.
func (s *Server) assocGroup(conn uint64) uint32 { return s.group + uint32(conn) }

// SetDialer replaces the upstream dialer (tests).
func (s *Server) SetDialer(d Dialer) { s.dial = d }

// Runtime returns the policy generation in force.
func (s *Server) Runtime() *config.Runtime { return s.rt.Load() }

// SetRuntime swaps in a new policy generation atomically.
func (s *Server) SetRuntime(rt *config.Runtime) { s.rt.Store(rt) }

// Metrics returns the server's metric set.
func (s *Server) Metrics() *event.Metrics { return s.metrics }

// LastUpstreamOK returns when an upstream was last reached, zero if never.
func (s *Server) LastUpstreamOK() time.Time {
	n := s.lastDialOK.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// MarkUpstreamOK records a successful upstream contact (readiness checks).
func (s *Server) MarkUpstreamOK() { s.lastDialOK.Store(time.Now().UnixNano()) }

// ActiveConnections returns the number of open client connections.
func (s *Server) ActiveConnections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Serve accepts connections on ln until Shutdown or a permanent error.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			if isTemporaryAccept(err) {
				// Out of file descriptors or a transient error: say so and
				// back off rather than spin.
				backoff = min(max(backoff*2, 5*time.Millisecond), time.Second)
				ev := event.New(event.ActionConnectionRefused, event.OutcomeFailure, event.ReasonFDBudget)
				ev.Add(zap.String("error.message", err.Error()), zap.Duration("kmsproxy.backoff", backoff))
				s.emit.Decision(zap.WarnLevel, "accept failed; backing off", ev)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("proxy: accept: %w", err)
		}
		backoff = 0
		s.admit(c)
	}
}

func isTemporaryAccept(err error) bool {
	var ne interface{ Temporary() bool }
	if errors.As(err, &ne) && ne.Temporary() {
		return true
	}
	return errors.Is(err, errEMFILE) || errors.Is(err, errENFILE)
}

// admit applies the accept-time checks (DESIGN rule 1 and the connection
// limits) before any byte is read or any upstream is dialled. A trusted
// load balancer's connection is admitted, in its own goroutine, once its
// PROXY header said whose connection it is (proxyproto.go).
func (s *Server) admit(c net.Conn) {
	rt := s.rt.Load()
	src := addrPort(c.RemoteAddr())
	dst := addrPort(c.LocalAddr())
	if isTrustedProxy(rt.Config.ProxyProtocol.TrustedPrefixes, src.Addr()) {
		go s.admitProxied(c, src, dst)
		return
	}
	s.admitFrom(rt, &sniffConn{Conn: c}, src, dst)
}

// admitFrom admits c as a connection from src to dst; extra fields go on
// every event of the connection.
func (s *Server) admitFrom(rt *config.Runtime, c net.Conn, src, dst netip.AddrPort, extra ...zap.Field) {
	id := s.nextID.Add(1)
	zone := rt.Policy.Zone(src.Addr())
	// The connection's fields go on each event; a logger holding them is
	// made only when the session starts reading, so refused and parked
	// connections cost no encoder clone.
	fields := append(event.ConnFields(id, src, dst, zone), extra...)

	refuse := func(reason, rule string) {
		ev := event.New(event.ActionConnectionRefused, event.OutcomeFailure, reason)
		ev.Add(fields...)
		if rule != "" {
			ev.Add(zap.String("rule.name", rule))
		}
		s.emit.From(src.Addr(), zone).Decision(zap.InfoLevel, "connection refused", ev)
		s.metrics.Connections.WithLabelValues(event.ZoneLabel(zone), "refused").Inc()
		// Close with RST-less FIN: nothing has been read.
		c.Close()
	}

	if d := rt.Policy.AdmitSource(src.Addr()); d.Verdict != acl.Allow {
		refuse(d.Reason, d.Rule)
		return
	}
	lim := rt.Config.Limits
	s.mu.Lock()
	switch {
	case s.closing:
		s.mu.Unlock()
		refuse(event.ReasonShutdown, "")
		return
	case s.active >= lim.Connections:
		s.mu.Unlock()
		refuse(event.ReasonConnectionLimit, "")
		return
	case s.fdBudget > 0 && s.fdsInUse >= s.fdBudget:
		s.mu.Unlock()
		refuse(event.ReasonFDBudget, "")
		return
	case s.perSource[src.Addr()] >= lim.ConnectionsPerSource:
		s.mu.Unlock()
		refuse(event.ReasonSourceConnectionLimit, "")
		return
	}
	s.active++
	s.fdsInUse++
	s.perSource[src.Addr()]++
	sess := newSession(s, c, id, src, dst, zone, extra)
	s.sessions[sess] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()

	s.metrics.Connections.WithLabelValues(event.ZoneLabel(zone), "accepted").Inc()
	s.metrics.ConnectionsActive.Inc()
	s.metrics.Recent.Count(event.WindowConnections)
	// connection-accepted is written under log.allowed: detail only (the
	// connection's fields are on each of its events, connection-closed
	// included); it is counted above either way. The mode is read now, not
	// from rt: a proxied connection's rt predates its PROXY header.
	if s.rt.Load().Config.Log.AllowedDetail() {
		ev := event.New(event.ActionConnectionAccepted, event.OutcomeSuccess, "")
		ev.Add(fields...)
		s.emit.Log(zap.InfoLevel, "connection accepted", ev)
	}
	s.start(sess)
}

// start runs a session's client loop. A connection that has sent nothing
// yet is parked instead (park_linux.go): one epoll registration and no
// goroutine or buffer until its first bytes arrive or its handshake
// deadline passes, so idle connections cost about what the kernel socket does.
func (s *Server) start(sess *session) {
	sess.parkUntil = sess.start.Add(s.rt.Load().Config.Limits.HandshakeTimeout)
	if s.park(sess) {
		return
	}
	go sess.run()
}

func (s *Server) release(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess)
	s.active--
	s.fdsInUse--
	if sess.upstream != nil {
		s.fdsInUse--
	}
	if n := s.perSource[sess.src.Addr()] - 1; n > 0 {
		s.perSource[sess.src.Addr()] = n
	} else {
		delete(s.perSource, sess.src.Addr())
	}
	s.mu.Unlock()
	s.metrics.ConnectionsActive.Dec()
	s.wg.Done()
}

// Shutdown stops accepting, lets open sessions finish until ctx is done,
// then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	defer s.closePool()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.unparkAll()
	s.mu.Lock()
	for sess := range s.sessions {
		sess.abort(event.ReasonShutdown)
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
