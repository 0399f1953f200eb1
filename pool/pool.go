package pool

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// Call is one RequestActivation to forward: the stub that passed every
// check, in the client's transfer syntax and byte order.
type Call struct {
	Opnum     uint16 // must be 0 (RequestActivation)
	NDR64     bool   // the client's context is NDR64 (else NDR 2.0)
	BigEndian bool   // the client's data representation is big-endian
	Stub      []byte
	// Dst, when not nil, is where the response stub is appended (from
	// Dst[:0]), so a caller can reuse one buffer; nil allocates.
	Dst []byte
}

// Result is the host's answer to a Call.
type Result struct {
	// Stub is the reassembled response stub (a fault has none), in the
	// host's byte order, HostBigEndian: the gateway's response to the
	// client carries that data representation.
	Stub          []byte
	Fault         bool
	FaultStatus   uint32
	HostBigEndian bool
	// Assoc names the host association that carried the call
	// ("10.0.0.5:1688#3"), CallID and ContextID what the call used on it.
	Assoc     string
	CallID    uint32
	ContextID uint16
	// Retried: the first association died before any byte of the answer
	// and the call went again on another one.
	Retried bool
	// Waited is how long the call waited in the queue for an association.
	Waited time.Duration
}

// need is what a call asks of an association.
type need struct {
	big    bool
	syntax rpcparse.TransferKind // NDR20 or NDR64; TransferUnknown: any
}

func order(big bool) int {
	if big {
		return 1
	}
	return 0
}

// upstream is one KMS host of Config.Upstreams and its associations.
type upstream struct {
	addr string
	seq  uint64 // association numbers

	open    int             // associations counted against MaxAssociations (handshaking, in use, idle)
	dialing int             // of which handshaking
	live    [2]int          // bound associations per byte order
	idle    []*hostConn     // most recently used last
	neg     [2]*Negotiation // the last negotiation per byte order
	negAt   [2]time.Time

	healthy   bool      // the last dial and bind succeeded
	downUntil time.Time // skipped until then after a failed dial or bind

	streak       int       // associations in a row the host closed right after an answer
	perCallUntil time.Time // one association per call until then

	st UpstreamStats
}

// canDial: under MaxAssociations, and only one dial at a time while the
// upstream has not been seen to work, so a dead host costs one dial per
// DownBackoff however many callers arrive.
func (u *upstream) canDial(max int) bool {
	return u.open < max && (u.healthy || u.dialing == 0)
}

func (u *upstream) perCall(now time.Time) bool { return now.Before(u.perCallUntil) }

// waiter is a caller queued for an association. Its outcome is set under
// Pool.mu before ready is closed: a checked-out association, a reserved
// dial slot, an error, or nothing (look again).
type waiter struct {
	src       netip.Addr
	need      need
	ready     chan struct{}
	signalled bool
	conn      *hostConn
	dial      *upstream
	err       error
}

// srcQueue is one source's waiters, oldest first.
type srcQueue struct {
	src netip.Addr
	ws  []*waiter
}

// Pool is a bounded set of the proxy's own associations to the KMS hosts,
// shared by every client whose association ends at the proxy. It is safe
// for concurrent use.
type Pool struct {
	cfg  Config
	life context.Context // cancelled by Close: ends dials
	stop context.CancelFunc
	done chan struct{}
	wg   sync.WaitGroup // Calls and Negotiations in progress, readers, the janitor

	mu      sync.Mutex
	closed  bool
	ups     []*upstream
	conns   map[*hostConn]struct{}
	queues  map[netip.Addr]*srcQueue
	ring    []*srcQueue // sources with waiters, served round robin
	rr      int
	nwait   int
	janitor bool
	st      Stats
}

// New returns a pool for cfg; nothing is dialled until the first
// Negotiation or Call.
func New(cfg Config) *Pool {
	cfg = cfg.withDefaults()
	p := &Pool{cfg: cfg, done: make(chan struct{}), conns: map[*hostConn]struct{}{}, queues: map[netip.Addr]*srcQueue{}}
	p.life, p.stop = context.WithCancel(context.Background())
	for _, a := range cfg.Upstreams {
		p.ups = append(p.ups, &upstream{addr: a, st: UpstreamStats{Addr: a}})
	}
	return p
}

// enter registers a Call or Negotiation with Close.
func (p *Pool) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.wg.Add(1)
	return true
}

// Negotiation returns what the host answered the pool's bind for
// associations of the given byte order: that of a live association of the
// first available upstream, else it checks one out (dialling and binding
// it if need be) and puts it back idle for the call that follows; in one
// association per call mode a negotiation younger than IdleTimeout is
// reused. The errors are Call's. src is the client whose bind asks (its
// queue share). After a failover the upstream in use may have answered
// differently: a later call in a syntax it refused is ErrNoSyntax.
func (p *Pool) Negotiation(ctx context.Context, src netip.Addr, bigEndian bool) (Negotiation, error) {
	if !p.enter() {
		return Negotiation{}, ErrPoolClosed
	}
	defer p.wg.Done()
	o := order(bigEndian)
	now := time.Now()
	p.mu.Lock()
	if up := p.pickLocked(now); up != nil && up.neg[o] != nil &&
		(up.live[o] > 0 || (up.perCall(now) && up.healthy && now.Sub(up.negAt[o]) < p.cfg.IdleTimeout)) {
		n := *up.neg[o]
		p.mu.Unlock()
		return n, nil
	}
	p.mu.Unlock()
	c, _, err := p.checkout(ctx, src, need{big: bigEndian}, false)
	if err != nil {
		return Negotiation{}, err
	}
	n := c.neg
	p.putBack(c)
	return n, nil
}

// Call forwards one activation call and returns the host's answer. It
// checks out an association of the call's byte order (idle, else newly
// dialled under MaxAssociations, else it waits in the bounded queue),
// sends the call, and puts the association back. An association that
// died before any byte of the answer is replaced and the call sent once
// more (Result.Retried); a timeout or a partial answer is returned, never
// retried. Errors wrap one of the Err classes, or the context's error.
func (p *Pool) Call(ctx context.Context, src netip.Addr, call Call) (Result, error) {
	res := Result{Stub: call.Dst[:0]}
	if call.Opnum != 0 {
		return res, fmt.Errorf("%w: opnum %d is not RequestActivation", ErrBadCall, call.Opnum)
	}
	if len(call.Stub) > p.cfg.MaxCallBytes {
		return res, fmt.Errorf("%w: stub of %d bytes over %d", ErrBadCall, len(call.Stub), p.cfg.MaxCallBytes)
	}
	if !p.enter() {
		return res, ErrPoolClosed
	}
	defer p.wg.Done()
	n := need{big: call.BigEndian, syntax: rpcparse.TransferNDR20}
	if call.NDR64 {
		n.syntax = rpcparse.TransferNDR64
	}
	for stale := 0; ; {
		c, waited, err := p.checkout(ctx, src, n, res.Retried)
		res.Waited += waited
		if err != nil {
			return res, err
		}
		err = c.roundTrip(ctx, &call, &res)
		if err == nil {
			p.checkin(c)
			p.countCall()
			return res, nil
		}
		if errors.Is(err, errLate) {
			p.putBack(c) // nothing was sent on it
			if errors.Is(err, context.DeadlineExceeded) {
				return res, fmt.Errorf("%w: %w", ErrTimeout, err)
			}
			return res, fmt.Errorf("pool: call abandoned: %w", err)
		}
		p.discard(c)
		switch {
		case errors.Is(err, errStale) && stale < 3:
			// Found dead before anything was sent: not a retry.
			stale++
		case errors.Is(err, errNoAnswer) && !res.Retried:
			res.Retried = true
			p.countRetry()
		case errors.Is(err, errNoAnswer), errors.Is(err, errStale):
			return res, fmt.Errorf("%w: %w", ErrClosed, err)
		default:
			return res, err
		}
	}
}

// ---- checkout and checkin ----

// checkout returns an association that supports n, checked out to the
// caller, and how long the caller waited in the queue. fresh asks for a
// new association when one can be dialled (the retry of a call).
func (p *Pool) checkout(ctx context.Context, src netip.Addr, n need, fresh bool) (*hostConn, time.Duration, error) {
	var waited time.Duration
	var lastErr error
	var qtimer *time.Timer
	defer func() {
		if qtimer != nil {
			qtimer.Stop()
		}
	}()
	p.mu.Lock()
	for {
		if p.closed {
			p.mu.Unlock()
			return nil, waited, ErrPoolClosed
		}
		now := time.Now()
		up := p.pickLocked(now)
		if up == nil {
			p.mu.Unlock()
			if lastErr != nil {
				return nil, waited, lastErr
			}
			return nil, waited, fmt.Errorf("%w: every upstream failed within the last %v (%v)", ErrUnavailable, p.cfg.DownBackoff, p.cfg.Upstreams)
		}
		if ng := up.neg[order(n.big)]; ng != nil && n.syntax != rpcparse.TransferUnknown && !ng.Accepts(n.syntax) {
			p.mu.Unlock()
			return nil, waited, fmt.Errorf("%w: %s did not accept %v (big-endian %v)", ErrNoSyntax, up.addr, n.syntax, n.big)
		}
		if !fresh || !up.canDial(p.cfg.MaxAssociations) {
			if c := p.takeIdleLocked(up, n, now); c != nil {
				p.mu.Unlock()
				return c, waited, nil
			}
		}
		var dialUp *upstream
		if !up.canDial(p.cfg.MaxAssociations) {
			p.makeRoomLocked(up)
		}
		if up.canDial(p.cfg.MaxAssociations) {
			up.open++
			up.dialing++
			dialUp = up
		} else {
			// Wait in the queue.
			if p.nwait >= p.cfg.MaxWaiters {
				p.st.Busy++
				p.mu.Unlock()
				return nil, waited, fmt.Errorf("%w: %d callers already waiting", ErrBusy, p.cfg.MaxWaiters)
			}
			if q := p.queues[src]; q != nil && len(q.ws) >= p.cfg.MaxWaitersPerSource {
				p.st.Busy++
				p.mu.Unlock()
				return nil, waited, fmt.Errorf("%w: source %v already has %d callers waiting", ErrBusy, src, p.cfg.MaxWaitersPerSource)
			}
			w := p.enqueueLocked(src, n)
			p.mu.Unlock()
			if qtimer == nil {
				qtimer = time.NewTimer(p.cfg.QueueTimeout)
			}
			t0 := time.Now()
			var wakeErr error
			select {
			case <-w.ready:
			case <-ctx.Done():
				wakeErr = ctx.Err()
				if errors.Is(wakeErr, context.DeadlineExceeded) {
					wakeErr = fmt.Errorf("%w: waited for an association until the deadline: %w", ErrBusy, wakeErr)
				}
			case <-qtimer.C:
				wakeErr = fmt.Errorf("%w: no association free within %v", ErrBusy, p.cfg.QueueTimeout)
			case <-p.done:
				wakeErr = ErrPoolClosed
			}
			d := time.Since(t0)
			waited += d
			if p.cfg.OnWait != nil {
				p.cfg.OnWait(d)
			}
			p.mu.Lock()
			p.st.Waits++
			p.st.WaitTime += d
			p.st.MaxWait = max(p.st.MaxWait, d)
			if wakeErr != nil {
				if w.signalled {
					p.giveBackLocked(w)
				} else {
					p.dequeueLocked(w)
				}
				p.mu.Unlock()
				return nil, waited, wakeErr
			}
			switch {
			case w.conn != nil:
				p.mu.Unlock()
				return w.conn, waited, nil
			case w.err != nil:
				p.mu.Unlock()
				return nil, waited, w.err
			case w.dial == nil:
				continue // look again
			}
			dialUp = w.dial
		}
		p.mu.Unlock()
		c, err := p.dial(ctx, dialUp, n.big)
		if err == nil {
			if n.syntax != rpcparse.TransferUnknown && !c.supports(n) {
				p.putBack(c)
				return nil, waited, fmt.Errorf("%w: %s did not accept %v (big-endian %v)", ErrNoSyntax, dialUp.addr, n.syntax, n.big)
			}
			return c, waited, nil
		}
		if ctx.Err() != nil || errors.Is(err, ErrPoolClosed) {
			return nil, waited, err
		}
		// That upstream is now down: the next pick fails over.
		lastErr = err
		fresh = false
		p.mu.Lock()
	}
}

// pickLocked returns the first upstream not in its DownBackoff.
func (p *Pool) pickLocked(now time.Time) *upstream {
	for _, u := range p.ups {
		if !now.Before(u.downUntil) {
			return u
		}
	}
	return nil
}

// takeIdleLocked checks out the most recently used idle association of up
// that supports n and is still alive; dead ones found on the way are
// dropped (readLoop usually has already).
func (p *Pool) takeIdleLocked(up *upstream, n need, now time.Time) *hostConn {
	for i := len(up.idle) - 1; i >= 0; i-- {
		c := up.idle[i]
		if !c.supports(n) {
			continue
		}
		up.idle = slices.Delete(up.idle, i, i+1)
		c.mu.Lock()
		err, lastResp := c.err, c.lastResp
		if c.noReuse && err == nil {
			err = errShutdown
		}
		c.mu.Unlock()
		if err != nil {
			p.releaseLocked(c)
			c.nc.Close()
			continue
		}
		if !lastResp.IsZero() && now.Sub(lastResp) > closeAfterResponseWindow {
			up.streak = 0 // the host kept it open after answering
		}
		c.state = stateInUse
		return c
	}
	return nil
}

// checkin takes back an association whose call completed.
func (p *Pool) checkin(c *hostConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.calls++; c.calls >= 2 {
		c.up.streak = 0 // the host kept it for a second call
	}
	p.putBackLocked(c)
}

// putBack takes back an association that carried no call (a Negotiation).
func (p *Pool) putBack(c *hostConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.putBackLocked(c)
}

// putBackLocked hands a checked-out association to a waiter that can use
// it, else makes it idle, else (MaxIdle, one association per call, dead,
// closing) closes it.
func (p *Pool) putBackLocked(c *hostConn) {
	up := c.up
	now := time.Now()
	if c.dead() != nil || p.closed || up.perCall(now) {
		p.closeLocked(c)
		return
	}
	if w := p.pickWaiterLocked(func(w *waiter) bool { return c.supports(w.need) }); w != nil {
		w.conn = c
		p.signalLocked(w)
		return
	}
	if len(up.idle) >= p.cfg.MaxIdle {
		p.closeLocked(c)
		return
	}
	c.state, c.idleSince = stateIdle, now
	up.idle = append(up.idle, c)
	p.startJanitorLocked()
	p.kickLocked()
}

// discard drops an association the caller found broken.
func (p *Pool) discard(c *hostConn) {
	c.closeByPool()
	p.mu.Lock()
	p.releaseLocked(c)
	p.kickLocked()
	p.mu.Unlock()
}

// closeLocked closes an association on the pool's account and frees its
// slot for a waiter.
func (p *Pool) closeLocked(c *hostConn) {
	c.closeByPool()
	p.releaseLocked(c)
	p.kickLocked()
}

// releaseLocked stops counting an association (once).
func (p *Pool) releaseLocked(c *hostConn) {
	if c.state == stateGone {
		return
	}
	up := c.up
	if c.state == stateIdle {
		if i := slices.Index(up.idle, c); i >= 0 {
			up.idle = slices.Delete(up.idle, i, i+1)
		}
	}
	if c.state == stateHandshaking {
		up.dialing--
	} else {
		up.live[order(c.big)]--
	}
	c.state = stateGone
	up.open--
	delete(p.conns, c)
}

// giveBackLocked returns what a waiter was handed after it stopped waiting.
func (p *Pool) giveBackLocked(w *waiter) {
	switch {
	case w.conn != nil:
		p.putBackLocked(w.conn)
	case w.dial != nil:
		w.dial.open--
		w.dial.dialing--
		p.kickLocked()
	}
}

// ---- the wait queue ----

func (p *Pool) enqueueLocked(src netip.Addr, n need) *waiter {
	w := &waiter{src: src, need: n, ready: make(chan struct{})}
	q := p.queues[src]
	if q == nil {
		q = &srcQueue{src: src}
		p.queues[src] = q
		p.ring = append(p.ring, q)
	}
	q.ws = append(q.ws, w)
	p.nwait++
	return w
}

// pickWaiterLocked takes the oldest waiter matching of the next source in
// round robin order, so each source with waiters is served in turn.
func (p *Pool) pickWaiterLocked(match func(*waiter) bool) *waiter {
	n := len(p.ring)
	for i := 0; i < n; i++ {
		j := (p.rr + i) % n
		q := p.ring[j]
		for k, w := range q.ws {
			if !match(w) {
				continue
			}
			q.ws = slices.Delete(q.ws, k, k+1)
			p.nwait--
			// rr is taken modulo the ring's length when used, so a source
			// that joins at the end after the last one was served is next.
			if len(q.ws) == 0 {
				p.dropQueueLocked(j)
				p.rr = j // the next source moved into j
			} else {
				p.rr = j + 1
			}
			return w
		}
	}
	return nil
}

func (p *Pool) dropQueueLocked(j int) {
	delete(p.queues, p.ring[j].src)
	p.ring = slices.Delete(p.ring, j, j+1)
}

// dequeueLocked removes a waiter that gave up.
func (p *Pool) dequeueLocked(w *waiter) {
	q := p.queues[w.src]
	if q == nil {
		return
	}
	if k := slices.Index(q.ws, w); k >= 0 {
		q.ws = slices.Delete(q.ws, k, k+1)
		p.nwait--
	}
	if len(q.ws) == 0 {
		j := slices.Index(p.ring, q)
		p.dropQueueLocked(j)
		if j < p.rr {
			p.rr--
		}
	}
}

func (p *Pool) signalLocked(w *waiter) {
	w.signalled = true
	close(w.ready)
}

// kickLocked hands what is free to the waiters: idle associations to
// those they suit, dial slots of the first available upstream to the
// others in turn; when every upstream is down, every waiter fails at
// once. Idle associations nobody waiting can use (the other byte order)
// are closed to make room when the upstream is full.
func (p *Pool) kickLocked() {
	if p.nwait == 0 {
		return
	}
	for _, up := range p.ups {
		for i := len(up.idle) - 1; i >= 0 && p.nwait > 0; i-- {
			c := up.idle[i]
			if c.dead() != nil {
				continue // readLoop is dropping it
			}
			if w := p.pickWaiterLocked(func(w *waiter) bool { return c.supports(w.need) }); w != nil {
				up.idle = slices.Delete(up.idle, i, i+1)
				c.state = stateInUse
				w.conn = c
				p.signalLocked(w)
			}
		}
	}
	now := time.Now()
	up := p.pickLocked(now)
	if up == nil {
		err := fmt.Errorf("%w: every upstream failed within the last %v (%v)", ErrUnavailable, p.cfg.DownBackoff, p.cfg.Upstreams)
		p.failWaitersLocked(err)
		return
	}
	for p.nwait > 0 {
		if up.canDial(p.cfg.MaxAssociations) {
			w := p.pickWaiterLocked(func(*waiter) bool { return true })
			up.open++
			up.dialing++
			w.dial = up
			p.signalLocked(w)
			continue
		}
		if !p.makeRoomLocked(up) {
			return
		}
	}
}

// makeRoomLocked closes the least recently used idle association of a
// full upstream, for a caller none of the idle ones suits (the other byte
// order or transfer syntax). It reports whether it closed one.
func (p *Pool) makeRoomLocked(up *upstream) bool {
	if up.open < p.cfg.MaxAssociations || len(up.idle) == 0 {
		return false
	}
	c := up.idle[0]
	c.closeByPool()
	p.releaseLocked(c)
	return true
}

func (p *Pool) failWaitersLocked(err error) {
	for len(p.ring) > 0 {
		w := p.pickWaiterLocked(func(*waiter) bool { return true })
		w.err = err
		p.signalLocked(w)
	}
}

// ---- dialling ----

// dial opens and binds a new association on up, whose slot the caller
// reserved (open and dialing counted). It returns it checked out.
func (p *Pool) dial(ctx context.Context, up *upstream, big bool) (*hostConn, error) {
	dctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	stopLife := context.AfterFunc(p.life, cancel)
	t0 := time.Now()
	nc, err := p.cfg.Dial(dctx, "tcp", up.addr)
	stopLife()
	cancel()
	took := time.Since(t0)
	if p.cfg.OnDial != nil {
		p.cfg.OnDial(up.addr, took, err)
	}
	p.mu.Lock()
	up.st.Dials++
	if err != nil {
		up.open--
		up.dialing--
		switch {
		case p.closed:
			err = ErrPoolClosed
		case ctx.Err() != nil:
			err = fmt.Errorf("pool: dial %s abandoned: %w", up.addr, err)
		default:
			up.st.DialFailures++
			p.markDownLocked(up)
			err = fmt.Errorf("%w: dial %s: %w", ErrUnavailable, up.addr, err)
		}
		p.kickLocked()
		p.mu.Unlock()
		return nil, err
	}
	if p.closed {
		up.open--
		up.dialing--
		p.mu.Unlock()
		nc.Close()
		return nil, ErrPoolClosed
	}
	up.seq++
	c := newHostConn(p, up, nc, big, up.seq)
	c.state = stateHandshaking
	p.conns[c] = struct{}{}
	p.mu.Unlock()

	err = c.handshake(ctx)

	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil && p.closed {
		err = ErrPoolClosed
	}
	if err != nil {
		nc.Close()
		p.releaseLocked(c)
		if errors.Is(err, errViolation) {
			up.st.Violations++
		}
		if !p.closed && ctx.Err() == nil {
			up.st.BindFailures++
			p.markDownLocked(up)
		}
		p.kickLocked()
		return nil, err
	}
	o := order(big)
	up.dialing--
	up.live[o]++
	up.healthy, up.downUntil = true, time.Time{}
	neg := c.neg
	up.neg[o], up.negAt[o] = &neg, time.Now()
	c.state = stateInUse
	p.wg.Add(1)
	go c.readLoop()
	p.startJanitorLocked()
	p.kickLocked() // healthy now: waiters may dial too
	return c, nil
}

func (p *Pool) markDownLocked(up *upstream) {
	up.healthy = false
	up.downUntil = time.Now().Add(p.cfg.DownBackoff)
	up.st.DownPeriods++
}

// hostClosed is readLoop's report of an association that ended without
// the pool closing it: counted, dropped if idle (a checked-out one is
// dropped by its caller), and, when the end came right after an answer,
// taken as a sign of a host that closes after every response.
func (p *Pool) hostClosed(c *hostConn, err error, lastResp time.Time, midAnswer bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	up := c.up
	now := time.Now()
	switch {
	case errors.Is(err, errViolation):
		up.st.Violations++
	default:
		up.st.HostClosed++
		if !midAnswer && closedByPeer(err) && !lastResp.IsZero() && now.Sub(lastResp) < closeAfterResponseWindow {
			up.st.ClosedAfterResponse++
			up.streak++
			if up.streak >= perCallStreak {
				if !up.perCall(now) {
					up.st.PerCallSwitches++
				}
				up.perCallUntil = now.Add(p.cfg.PerCallRecheck)
			}
		}
	}
	if c.state == stateIdle {
		p.releaseLocked(c)
		p.kickLocked()
	}
}

// closedByPeer: readLoop reads without a deadline, so an error that is
// not a violation is the host ending the association (end of stream,
// reset, shutdown).
func closedByPeer(err error) bool {
	return !errors.Is(err, errViolation) && !isTimeout(err)
}

// ---- ageing out ----

func (p *Pool) startJanitorLocked() {
	if p.janitor || p.closed {
		return
	}
	p.janitor = true
	p.wg.Add(1)
	go p.sweepLoop()
}

// sweepLoop closes idle associations older than IdleTimeout, checking
// every quarter of it.
func (p *Pool) sweepLoop() {
	defer p.wg.Done()
	t := time.NewTicker(max(p.cfg.IdleTimeout/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case now := <-t.C:
			p.sweep(now)
		}
	}
}

func (p *Pool) sweep(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, up := range p.ups {
		for i := 0; i < len(up.idle); {
			c := up.idle[i]
			if now.Sub(c.idleSince) < p.cfg.IdleTimeout {
				i++
				continue
			}
			up.st.AgedOut++
			c.closeByPool()
			p.releaseLocked(c) // removes idle[i]
		}
	}
	p.kickLocked()
}

// ---- counters ----

func (p *Pool) countCall() {
	p.mu.Lock()
	p.st.Calls++
	p.mu.Unlock()
}

func (p *Pool) countRetry() {
	p.mu.Lock()
	p.st.Retries++
	p.mu.Unlock()
}

func (p *Pool) countTimeout(up *upstream) {
	p.mu.Lock()
	up.st.Timeouts++
	p.mu.Unlock()
}

// Close fails every waiting caller, closes every association, and
// returns once every Call, Negotiation and goroutine of the pool ended.
func (p *Pool) Close() error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.done)
		p.stop()
		for c := range p.conns {
			c.closeByPool()
		}
		p.failWaitersLocked(ErrPoolClosed)
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}
