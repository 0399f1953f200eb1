package state

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/event"
)

// ErrDegraded is returned, without asking Redis, while the replica is
// degraded: the caller decides on its local state.
var ErrDegraded = errors.New("state: shared state degraded")

// ErrRedis wraps every failure of a Redis call (errors.Is), with Redis's
// own error beside it.
var ErrRedis = errors.New("state: redis")

// Operations: the op label of the metrics, and what state-degraded's
// error.message starts with.
const (
	OpRate      = "rate"      // the activation rate limit
	OpCMID      = "cmid"      // the duplicate-CMID table
	OpInventory = "inventory" // shared inventory rows, out
	OpSync      = "sync"      // shared inventory rows, in
	OpProbe     = "probe"     // the health probe (at start and while degraded)
)

// Reasons: the event.reason of state-degraded.
const (
	ReasonTimeout = "redis-timeout" // no answer within state.redis.timeout
	ReasonAuth    = "redis-auth"    // the server refused the credentials or the command (WRONGPASS, NOAUTH, NOPERM)
	ReasonError   = "redis-error"   // anything else: refused connection, TLS, a server error
)

// minIdleConns are the connections kept open per node while idle.
const minIdleConns = 4

// backgroundTimeout bounds a call off the activation path: a batch of
// inventory rows out, a page of them in.
const backgroundTimeout = 5 * time.Second

// Options are what New needs besides the config.
type Options struct {
	Log     *zap.Logger    // events; nil: none
	Metrics *event.Metrics // the series register on its registry; nil: a private one
}

// Shared is the state every replica pointing at the same Redis (and key
// prefix) shares. It is safe for concurrent use.
type Shared struct {
	c       redis.UniversalClient
	cfg     config.Redis
	prefix  string
	timeout time.Duration
	emit    event.Emitter
	m       *metrics

	degraded atomic.Bool
	mu       sync.Mutex // orders entering and leaving degraded
	since    time.Time  // when it became degraded

	wake      chan struct{} // starts the probe loop
	quit      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// New connects to the Redis of cfg (which must be Enabled). Only what the
// config gets wrong is an error (a TLS file that does not load): a Redis
// that does not answer at start makes a degraded Shared, logged, that
// keeps probing.
func New(cfg config.Redis, o Options) (*Shared, error) {
	if !cfg.Enabled() {
		return nil, errors.New("state: state.redis names no server")
	}
	tc, err := tlsConfig(cfg.TLS)
	if err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Metrics == nil {
		o.Metrics = event.NewMetrics()
	}
	redis.SetLogger(clientLog{o.Log})
	s := &Shared{
		c:       newClient(cfg, tc),
		cfg:     cfg,
		prefix:  cfg.KeyPrefix,
		timeout: cfg.Timeout,
		emit:    event.NewEmitter(o.Log, o.Metrics),
		m:       newMetrics(o.Metrics.Registry),
		wake:    make(chan struct{}, 1),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go s.probeLoop()
	if err := s.probe(); err != nil {
		s.m.errors(OpProbe).Inc()
		s.fail(OpProbe, err)
	} else {
		o.Log.Info("shared state through redis") // kmsproxy check names the server
	}
	return s, nil
}

// newClient is the go-redis client of cfg: one server, the master behind
// sentinels, or a cluster. It never retries a command on its own (the
// caller's deadline is short and the local state is the retry), and it
// dials through dialer, which honours the caller's deadline for TLS too.
func newClient(cfg config.Redis, tc *tls.Config) redis.UniversalClient {
	o := &redis.UniversalOptions{
		Addrs:                 cfg.Addresses,
		DB:                    cfg.DB,
		Username:              cfg.Username,
		Password:              cfg.Password.Reveal(),
		MasterName:            cfg.MasterName,
		IsClusterMode:         cfg.Mode == config.RedisModeCluster,
		Protocol:              2,
		Dialer:                dialer(cfg.DialTimeout, tc),
		DialTimeout:           cfg.DialTimeout,
		DialerRetries:         1,
		ReadTimeout:           backgroundTimeout,
		WriteTimeout:          backgroundTimeout,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		PoolSize:              cfg.PoolSize,
		PoolTimeout:           cfg.Timeout,
		// Connections kept open, so an activation after a quiet spell does
		// not pay a connect (and TLS handshake) inside its deadline.
		MinIdleConns:    min(cfg.PoolSize, minIdleConns),
		ConnMaxIdleTime: 30 * time.Minute,
		ClientName:      "kmsproxy",
		DisableIdentity: true,
		// No TLSConfig: dialer speaks TLS (go-redis reads TLSConfig only in
		// its own dialer, whose handshake ignores the caller's deadline).
		MaintNotificationsConfig: &maintnotifications.Config{
			Mode: maintnotifications.ModeDisabled,
		},
	}
	// A plain client for one address, a failover client with MasterName,
	// else a cluster client.
	return redis.NewUniversalClient(o)
}

// dialer connects with the caller's context bounding the TCP connect and
// the TLS handshake alike (go-redis's own TLS dial ignores it). The
// certificate must name the host dialled unless tls.server_name says
// otherwise.
func dialer(timeout time.Duration, tc *tls.Config) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil || tc == nil {
			return c, err
		}
		cfg := tc
		if cfg.ServerName == "" {
			cfg = tc.Clone()
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tlsConn := tls.Client(c, cfg)
		if err := tlsConn.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		return tlsConn, nil
	}
}

// tlsConfig loads state.redis.tls: nil without it.
func tlsConfig(t config.RedisTLS) (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("state.redis.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("state.redis.tls.ca_file: %s holds no PEM certificate", t.CAFile)
		}
		tc.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("state.redis.tls.cert_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Degraded reports whether the replica decides on its local state now.
func (s *Shared) Degraded() bool { return s.degraded.Load() }

// Close stops the probe and closes the connections.
func (s *Shared) Close() error {
	s.closeOnce.Do(func() { close(s.quit) })
	<-s.done
	return s.c.Close()
}

// begin starts a call of op on the activation path: ErrDegraded while
// degraded, else a context bounded by state.redis.timeout.
func (s *Shared) begin(ctx context.Context, op string) (context.Context, context.CancelFunc, error) {
	if s.degraded.Load() {
		s.m.fallbacks(op).Inc()
		return nil, nil, ErrDegraded
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	return ctx, cancel, nil
}

// failed records a failed call of op on the activation path: counted,
// answered locally, and the replica degraded.
func (s *Shared) failed(op string, err error) error {
	s.m.errors(op).Inc()
	s.m.fallbacks(op).Inc()
	s.fail(op, err)
	return fmt.Errorf("%w: %s: %w", ErrRedis, op, err)
}

// fail makes the replica degraded, once: one state-degraded event, the
// gauge, and the probe loop woken.
func (s *Shared) fail(op string, err error) {
	s.mu.Lock()
	if s.degraded.Load() {
		s.mu.Unlock()
		return
	}
	s.since = time.Now()
	s.degraded.Store(true)
	s.mu.Unlock()
	s.m.degraded.Set(1)
	// error.message starts with the operation that met the failure (rate,
	// cmid, probe…): the fields of the ECS table say the rest.
	ev := event.New(event.ActionStateDegraded, event.OutcomeFailure, reason(err))
	ev.Add(zap.String("error.message", op+": "+err.Error()))
	s.emit.Log(zapcore.WarnLevel, "shared state unavailable; deciding on this replica's local state (rate limits and detectors stay on)", ev)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// restore ends degraded: one state-restored event.
func (s *Shared) restore() {
	s.mu.Lock()
	d := time.Since(s.since)
	s.degraded.Store(false)
	s.mu.Unlock()
	s.m.degraded.Set(0)
	ev := event.New(event.ActionStateRestored, event.OutcomeSuccess, "")
	ev.Add(zap.Duration("event.duration", d))
	s.emit.Log(zapcore.InfoLevel, "shared state restored; the replicas decide together again", ev)
}

// reason classifies a failure for event.reason.
func reason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return ReasonTimeout
	}
	msg := err.Error()
	for _, p := range []string{"WRONGPASS", "NOAUTH", "NOPERM", "ERR AUTH", "invalid password", "invalid username-password"} {
		if strings.Contains(msg, p) {
			return ReasonAuth
		}
	}
	return ReasonError
}

// probeLoop probes Redis every retry_interval while degraded.
func (s *Shared) probeLoop() {
	defer close(s.done)
	var restored time.Time
	interval := s.cfg.RetryInterval
	for {
		select {
		case <-s.quit:
			return
		case <-s.wake:
		}
		interval = retryAfter(interval, s.cfg.RetryInterval, time.Since(restored))
		t := time.NewTicker(interval)
		for s.degraded.Load() {
			select {
			case <-s.quit:
				t.Stop()
				return
			case <-t.C:
			}
			if err := s.probe(); err != nil {
				s.m.errors(OpProbe).Inc()
				continue
			}
			s.restore()
			restored = time.Now()
		}
		t.Stop()
	}
}

// flapWindow and maxRetryInterval damp a Redis that answers the probe
// but fails again soon after (an overloaded server or network): each
// spell that starts within flapWindow of the last restore waits twice as
// long before its first probe, up to maxRetryInterval, so the replica
// does not switch back and forth, logging a pair of events each time.
const (
	flapWindow       = time.Minute
	maxRetryInterval = time.Minute
)

// retryAfter is the probe interval of a degraded spell that starts
// sinceRestore after the last one ended, the last spell's being last.
func retryAfter(last, base, sinceRestore time.Duration) time.Duration {
	if sinceRestore >= flapWindow {
		return base
	}
	return min(max(2*last, base), max(maxRetryInterval, base))
}

// probe is what must work before the activation path asks Redis again:
// connect and authenticate (dial_timeout), then the rate limit's own call
// within the activation path's deadline, so a Redis that answers but too
// slowly stays degraded instead of flapping.
func (s *Shared) probe() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DialTimeout+s.timeout)
	defer cancel()
	if err := s.c.Ping(ctx).Err(); err != nil {
		return err
	}
	ctx, cancel = context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	return rateScript.Run(ctx, s.c, []string{s.prefix + "probe"}, 1_000_000, time.Now().UnixMilli(), bucketIdle.Milliseconds()).Err()
}

// clientLog sends go-redis's own log lines (pool and dial messages) to
// the event log at debug level: the events above say what matters.
type clientLog struct{ log *zap.Logger }

func (c clientLog) Printf(_ context.Context, format string, v ...any) {
	if ce := c.log.Check(zapcore.DebugLevel, "redis client"); ce != nil {
		ce.Message = "redis client: " + fmt.Sprintf(format, v...)
		ce.Write()
	}
}

// metrics are the kmsproxy_state_* series.
type metrics struct {
	degraded  prometheus.Gauge
	errorsV   *prometheus.CounterVec
	fallbackV *prometheus.CounterVec
	seconds   *prometheus.HistogramVec
	rows      *prometheus.CounterVec
	// children looked up once for the activation path's ops
	errRate, errCMID, fbRate, fbCMID prometheus.Counter
	secRate, secCMID                 prometheus.Observer
}

func newMetrics(r *prometheus.Registry) *metrics {
	m := &metrics{
		degraded: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kmsproxy_state_degraded",
			Help: "1 while the shared state (state.redis) failed and this replica decides on its local state."}),
		errorsV: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kmsproxy_state_errors_total",
			Help: "Failed or timed-out calls to the shared state, by operation (rate, cmid, inventory, sync, probe)."}, []string{"op"}),
		fallbackV: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kmsproxy_state_local_decisions_total",
			Help: "Activations decided on the local state because the shared state failed or was degraded, by operation (rate, cmid)."}, []string{"op"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "kmsproxy_state_call_duration_seconds",
			Help:    "Round trips to the shared state on the activation path, by operation (rate, cmid).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1}}, []string{"op"}),
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kmsproxy_state_inventory_rows_total",
			Help: "Inventory rows shared: written (out), dropped (queue full or degraded), failed (a failed batch), merged (in)."}, []string{"result"}),
	}
	// A second Shared on the same registry (tests) keeps the first's series.
	register := func(c prometheus.Collector) prometheus.Collector {
		var are prometheus.AlreadyRegisteredError
		if err := r.Register(c); errors.As(err, &are) {
			return are.ExistingCollector
		}
		return c
	}
	m.degraded = register(m.degraded).(prometheus.Gauge)
	m.errorsV = register(m.errorsV).(*prometheus.CounterVec)
	m.fallbackV = register(m.fallbackV).(*prometheus.CounterVec)
	m.seconds = register(m.seconds).(*prometheus.HistogramVec)
	m.rows = register(m.rows).(*prometheus.CounterVec)
	m.errRate, m.errCMID = m.errorsV.WithLabelValues(OpRate), m.errorsV.WithLabelValues(OpCMID)
	m.fbRate, m.fbCMID = m.fallbackV.WithLabelValues(OpRate), m.fallbackV.WithLabelValues(OpCMID)
	m.secRate, m.secCMID = m.seconds.WithLabelValues(OpRate), m.seconds.WithLabelValues(OpCMID)
	return m
}

func (m *metrics) errors(op string) prometheus.Counter {
	switch op {
	case OpRate:
		return m.errRate
	case OpCMID:
		return m.errCMID
	}
	return m.errorsV.WithLabelValues(op)
}

func (m *metrics) fallbacks(op string) prometheus.Counter {
	if op == OpCMID {
		return m.fbCMID
	}
	return m.fbRate
}
