package pool

import (
	"context"
	"errors"
	"net"
	"time"
)

// Defaults of Config. Each bounds what a busy or hostile moment can cost.
const (
	// DefaultMaxAssociations bounds the associations to one upstream, in
	// use or idle: a burst of clients costs the KMS host at most this many.
	DefaultMaxAssociations = 4
	// DefaultMaxIdle bounds the idle associations kept per upstream.
	DefaultMaxIdle = 4
	// DefaultIdleTimeout ages an idle association out before the host's
	// own idle timeout closes it (vlmcsd: 30 s): with sweeps every quarter
	// of it, an idle association lives at most 25 s.
	DefaultIdleTimeout = 20 * time.Second
	// DefaultConnectTimeout bounds one dial of one upstream.
	DefaultConnectTimeout = 3 * time.Second
	// DefaultCallTimeout bounds the wait for the host's answer to a bind,
	// an alter_context or a call (limits.idle_timeout today).
	DefaultCallTimeout = 30 * time.Second
	// DefaultMaxWaiters bounds the callers waiting for an association.
	DefaultMaxWaiters = 256
	// DefaultMaxWaitersPerSource is one source's share of the queue, so a
	// flood from one address cannot fill it for everyone else.
	DefaultMaxWaitersPerSource = 16
	// DefaultMaxFragment is the max_xmit_frag/max_recv_frag of the pool's
	// bind (what Windows sends) and the largest host PDU read.
	DefaultMaxFragment = 5840
	// DefaultMaxCallBytes bounds a request stub the pool sends and
	// DefaultMaxResponseBytes a reassembled response stub it accepts (a
	// KMS reply is under 300 bytes; a host sending more is misbehaving).
	DefaultMaxCallBytes     = 65536
	DefaultMaxResponseBytes = 65536
	// DefaultDownBackoff is how long an upstream whose dial or bind failed
	// is skipped: callers fail fast meanwhile instead of each dialling.
	DefaultDownBackoff = time.Second
	// DefaultPerCallRecheck is how long an upstream stays in one
	// association per call mode before one association is kept again to
	// see whether the host still closes after every answer.
	DefaultPerCallRecheck = 5 * time.Minute
)

// Detection of a host that closes after every answer (vlmcsd -d, py-kms).
const (
	// closeAfterResponseWindow: an end of stream read this soon after a
	// complete response is the host closing because it answered, not
	// because the association idled. Such a FIN follows the response's
	// last segment directly, so it arrives well within it on any network.
	closeAfterResponseWindow = 50 * time.Millisecond
	// perCallStreak is how many associations in a row must be closed that
	// way before the upstream is served one association per call.
	perCallStreak = 3
	// minFragment is the smallest fragment size every implementation must
	// accept (C706 12.6.3.7, MustRecvFragSize); a host claiming less is
	// refused.
	minFragment = 1432
)

// Config is the pool's configuration; zero fields take the defaults above.
type Config struct {
	Upstreams       []string      // host:port, tried in order: the first reachable wins
	MaxAssociations int           // per upstream, both byte orders together
	MaxIdle         int           // idle associations kept per upstream (at most MaxAssociations)
	IdleTimeout     time.Duration // age out idle associations (keep it below the host's own)
	ConnectTimeout  time.Duration // one dial
	CallTimeout     time.Duration // the host's answer to a bind, alter_context or call
	// QueueTimeout bounds a caller's wait for an association (the caller's
	// context may end it sooner); default CallTimeout.
	QueueTimeout        time.Duration
	MaxWaiters          int
	MaxWaitersPerSource int
	MaxFragment         int
	MaxCallBytes        int
	MaxResponseBytes    int
	DownBackoff         time.Duration
	PerCallRecheck      time.Duration
	// Dial opens a connection to an upstream; default a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnWait, when set, is called with the time a checkout waited in the
	// queue (for a histogram); OnDial with each dial's duration and error.
	// Both are called without the pool's lock held and must not block.
	OnWait func(time.Duration)
	OnDial func(addr string, took time.Duration, err error)
}

func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.MaxAssociations, DefaultMaxAssociations)
	def(&c.MaxIdle, DefaultMaxIdle)
	c.MaxIdle = min(c.MaxIdle, c.MaxAssociations)
	defd(&c.IdleTimeout, DefaultIdleTimeout)
	defd(&c.ConnectTimeout, DefaultConnectTimeout)
	defd(&c.CallTimeout, DefaultCallTimeout)
	defd(&c.QueueTimeout, c.CallTimeout)
	def(&c.MaxWaiters, DefaultMaxWaiters)
	def(&c.MaxWaitersPerSource, DefaultMaxWaitersPerSource)
	c.MaxWaitersPerSource = min(c.MaxWaitersPerSource, c.MaxWaiters)
	def(&c.MaxFragment, DefaultMaxFragment)
	c.MaxFragment = min(max(c.MaxFragment, minFragment), 65535)
	def(&c.MaxCallBytes, DefaultMaxCallBytes)
	def(&c.MaxResponseBytes, DefaultMaxResponseBytes)
	defd(&c.DownBackoff, DefaultDownBackoff)
	defd(&c.PerCallRecheck, DefaultPerCallRecheck)
	if c.Dial == nil {
		var d net.Dialer
		c.Dial = d.DialContext
	}
	c.Upstreams = append([]string(nil), c.Upstreams...)
	return c
}

// Error classes. Every error the pool returns wraps exactly one of them
// (match with errors.Is), with the upstream and cause in its text.
var (
	// ErrUnavailable: no upstream could be dialled and bound (or every one
	// is in its DownBackoff). The gateway answers a bind with bind_nak
	// "temporary congestion", a call with a fault.
	ErrUnavailable = errors.New("pool: no KMS host reachable")
	// ErrBusy: the wait queue (or the source's share of it) is full, or
	// the wait for an association outlasted QueueTimeout.
	ErrBusy = errors.New("pool: every host association busy")
	// ErrTimeout: the host did not answer within CallTimeout (or the
	// caller's deadline). Never retried: the host may still be working.
	ErrTimeout = errors.New("pool: KMS host did not answer in time")
	// ErrBroken: the association broke after some of the answer arrived,
	// or the host's answer broke the protocol. Never retried.
	ErrBroken = errors.New("pool: host association broke mid-answer")
	// ErrClosed: the host closed the association before any byte of the
	// answer, on the call's association and again on its one retry.
	ErrClosed = errors.New("pool: KMS host closed the association before answering")
	// ErrNoSyntax: the host accepted no context with the call's transfer
	// syntax (NDR 2.0 or NDR64) on the association's byte order.
	ErrNoSyntax = errors.New("pool: KMS host did not accept the call's transfer syntax")
	// ErrBadCall: a call the pool never sends (an opnum other than
	// RequestActivation, a stub over MaxCallBytes).
	ErrBadCall = errors.New("pool: call refused")
	// ErrPoolClosed: Close was called.
	ErrPoolClosed = errors.New("pool: closed")
)
