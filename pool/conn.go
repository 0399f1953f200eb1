package pool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// connState is where an association is in the pool; the pool's lock
// guards it.
type connState uint8

const (
	stateHandshaking connState = iota // dialled, bind not yet answered
	stateInUse                        // checked out to one caller
	stateIdle                         // in its upstream's idle list
	stateGone                         // closed and no longer counted
)

// Internal outcomes of one attempt; Call turns them into the exported
// classes.
var (
	// errNoAnswer: the association died before any byte of the answer
	// arrived (or before the request was fully written). Retryable once.
	errNoAnswer = errors.New("association closed before any byte of the answer")
	// errStale: the association was found dead when the call was about to
	// be sent; nothing was sent. Check out another.
	errStale = errors.New("association found closed at checkout")
	// errLate: the caller's context ended before the call was sent.
	errLate = errors.New("the caller gave up before the call was sent")
	// errByPool marks an association the pool closed itself.
	errByPool = errors.New("closed by the pool")
	// errShutdown: the host sent a shutdown PDU on an idle association.
	errShutdown = errors.New("host sent shutdown")
)

// hostConn is one of the pool's own associations to a KMS host. The
// caller that checked it out owns its write side and call state; one
// reader goroutine (readLoop) reads every host PDU, so a host that closes
// an idle association, or sends anything unasked, is seen at once.
type hostConn struct {
	p    *Pool
	up   *upstream
	nc   net.Conn
	id   string
	big  bool
	drep rpcparse.DataRep
	fr   *rpcparse.Framer

	// Set by the handshake, then read-only.
	neg          Negotiation
	has20, has64 bool
	maxBody      int    // request stub bytes per fragment
	nextCall     uint32 // owned by the checked-out caller
	out          []byte // request PDUs being written, reused
	timer        *time.Timer

	// Pool-owned (Pool.mu).
	state     connState
	idleSince time.Time
	calls     int

	mu       sync.Mutex // shared with readLoop; taken after Pool.mu
	err      error      // why the association is dead; nil while alive
	ours     bool       // the pool closed it
	noReuse  bool       // the host sent shutdown: finish the call, then close
	waiting  bool       // a call is outstanding
	callID   uint32
	ctxID    uint16
	frags    int    // response fragments of the outstanding call so far
	stub     []byte // its reassembled response stub
	hostBig  bool
	lastResp time.Time   // when the last answer completed
	done     chan answer // one answer per outstanding call
}

// answer is what readLoop hands the waiting caller.
type answer struct {
	fault   bool
	status  uint32
	hostBig bool
	err     error
}

func newHostConn(p *Pool, up *upstream, nc net.Conn, big bool, seq uint64) *hostConn {
	c := &hostConn{
		p: p, up: up, nc: nc, big: big,
		id:   fmt.Sprintf("%s#%d", up.addr, seq),
		drep: rpcparse.LittleEndianDataRep,
		fr:   rpcparse.NewFramer(nc, p.cfg.MaxFragment),
		done: make(chan answer, 1),
	}
	if big {
		c.drep = rpcparse.BigEndianDataRep
	}
	return c
}

// supports reports whether the association carries calls that need n.
func (c *hostConn) supports(n need) bool {
	if c.big != n.big {
		return false
	}
	switch n.syntax {
	case rpcparse.TransferNDR20:
		return c.has20
	case rpcparse.TransferNDR64:
		return c.has64
	}
	return true
}

// dead reports why the association cannot take another call, or nil.
func (c *hostConn) dead() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil && c.noReuse {
		return errShutdown
	}
	return c.err
}

// closeByPool closes the association on the pool's own account: readLoop
// then ends without counting it as closed by the host.
func (c *hostConn) closeByPool() {
	c.mu.Lock()
	c.ours = true
	if c.err == nil {
		c.err = errByPool
	}
	c.mu.Unlock()
	c.nc.Close()
}

// ---- handshake ----

// handshake sends the Windows-shaped bind and, when the host did not
// accept NDR 2.0 in it, the alter_context for NDR 2.0 alone, and checks
// the answers strictly. It runs before readLoop starts, on the caller's
// goroutine, bounded by CallTimeout and the caller's deadline.
func (c *hostConn) handshake(ctx context.Context) error {
	deadline := time.Now().Add(c.p.cfg.CallTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.nc.SetDeadline(deadline)
	defer c.nc.SetDeadline(time.Time{})

	mf := uint16(c.p.cfg.MaxFragment)
	head := rpcparse.PDUHead{Type: rpcparse.PTypeBind, Flags: rpcparse.FlagFirstFrag | rpcparse.FlagLastFrag | rpcparse.FlagConcMpx, DataRep: c.drep, CallID: 1}
	bind := rpcparse.BindSpec{MaxXmitFrag: mf, MaxRecvFrag: mf, Contexts: []rpcparse.ContextSpec{
		{ID: ctxNDR20, Abstract: kmsSyntax, Transfers: []rpcparse.SyntaxID{ndr20Syntax}},
		{ID: ctxNDR64, Abstract: kmsSyntax, Transfers: []rpcparse.SyntaxID{ndr64Syntax}},
		{ID: ctxBTFN, Abstract: kmsSyntax, Transfers: []rpcparse.SyntaxID{btfnSyntax}},
	}}
	var p rpcparse.PDU
	if err := c.exchange(rpcparse.AppendBind(c.out[:0], head, bind, nil), &p, "bind"); err != nil {
		return err
	}
	n := &c.neg
	*n = Negotiation{Upstream: c.up.addr, BigEndian: c.big}
	switch p.Type {
	case rpcparse.PTypeBindAck:
	case rpcparse.PTypeBindNak:
		if p.CallID != 1 {
			return c.hostViolation("bind_nak for call %d, the bind was call 1", p.CallID)
		}
		return fmt.Errorf("%w: %s refused the bind: bind_nak reason %d", ErrUnavailable, c.up.addr, p.BindNak.Reason)
	default:
		return c.hostViolation("%v in answer to the bind", p.Type)
	}
	a := &p.BindAck
	switch {
	case p.CallID != 1:
		return c.hostViolation("bind_ack for call %d, the bind was call 1", p.CallID)
	case a.NumResults != 3 || len(a.Extra) != 0:
		return c.hostViolation("bind_ack with %d results and %d trailing bytes for a bind of 3 contexts", a.NumResults, len(a.Extra))
	case a.MaxRecvFrag < minFragment || a.MaxXmitFrag < minFragment:
		return c.hostViolation("bind_ack max_xmit_frag %d / max_recv_frag %d below %d", a.MaxXmitFrag, a.MaxRecvFrag, minFragment)
	}
	n.HostBigEndian = p.BigEndian()
	n.MaxXmitFrag, n.MaxRecvFrag, n.AssocGroup = a.MaxXmitFrag, a.MaxRecvFrag, a.AssocGroup
	n.SecAddr = string(trimNUL(a.SecAddr))
	for i, want := range [3]rpcparse.SyntaxID{ndr20Syntax, ndr64Syntax, btfnSyntax} {
		n.Bind[i] = a.Result(i)
		if err := checkResult(n.Bind[i], want); err != nil {
			return c.hostViolation("bind_ack result %d: %v", i, err)
		}
	}
	c.nextCall = 2
	if n.Bind[ctxNDR20].Result != rpcparse.ResultAcceptance {
		if err := c.alterNDR20(&p); err != nil {
			return err
		}
	}
	c.has20, c.has64 = n.Accepts(rpcparse.TransferNDR20), n.Accepts(rpcparse.TransferNDR64)
	if !c.has20 && !c.has64 {
		return fmt.Errorf("%w: %s accepted neither NDR 2.0 nor NDR64 for KMS", ErrUnavailable, c.up.addr)
	}
	// A fragment is at most what the host receives and what we offered;
	// every fragment's stub but the last stays a multiple of 8.
	frag := min(int(n.MaxRecvFrag), c.p.cfg.MaxFragment)
	c.maxBody = (frag - rpcparse.HeaderLen - 8) &^ 7
	return nil
}

// alterNDR20 offers NDR 2.0 alone on context 0, as Windows does after a
// host rejected it beside NDR64.
func (c *hostConn) alterNDR20(p *rpcparse.PDU) error {
	n := &c.neg
	id := c.nextCall
	c.nextCall++
	mf := uint16(c.p.cfg.MaxFragment)
	head := rpcparse.PDUHead{Type: rpcparse.PTypeAlterContext, Flags: rpcparse.FlagFirstFrag | rpcparse.FlagLastFrag | rpcparse.FlagConcMpx, DataRep: c.drep, CallID: id}
	spec := rpcparse.BindSpec{MaxXmitFrag: mf, MaxRecvFrag: mf, Contexts: []rpcparse.ContextSpec{
		{ID: ctxNDR20, Abstract: kmsSyntax, Transfers: []rpcparse.SyntaxID{ndr20Syntax}},
	}}
	if err := c.exchange(rpcparse.AppendBind(c.out[:0], head, spec, nil), p, "alter_context"); err != nil {
		return err
	}
	if p.CallID != id {
		return c.hostViolation("%v for call %d, the alter_context was call %d", p.Type, p.CallID, id)
	}
	n.AlterSent = true
	switch p.Type {
	case rpcparse.PTypeAlterContextResp:
		if p.BindAck.NumResults != 1 || len(p.BindAck.Extra) != 0 {
			return c.hostViolation("alter_context_resp with %d results and %d trailing bytes for 1 context", p.BindAck.NumResults, len(p.BindAck.Extra))
		}
		n.Alter = p.BindAck.Result(0)
		if err := checkResult(n.Alter, ndr20Syntax); err != nil {
			return c.hostViolation("alter_context_resp: %v", err)
		}
	case rpcparse.PTypeFault:
		n.AlterFault = p.Fault.Status
		if n.AlterFault == 0 {
			n.AlterFault = rpcparse.StatusProtoError // a fault must carry a status
		}
	default:
		return c.hostViolation("%v in answer to the alter_context", p.Type)
	}
	return nil
}

// exchange writes one handshake PDU and reads and parses the answer.
func (c *hostConn) exchange(pdu []byte, p *rpcparse.PDU, what string) error {
	c.out = pdu
	if _, err := c.nc.Write(pdu); err != nil {
		return c.handshakeIOError(what, err)
	}
	frag, err := c.fr.Next()
	if err != nil {
		var pe *rpcparse.ParseError
		if errors.As(err, &pe) {
			return c.hostViolation("answer to the %s: %v", what, err)
		}
		return c.handshakeIOError(what, err)
	}
	if err := p.Parse(frag, c.p.cfg.MaxFragment); err != nil {
		return c.hostViolation("answer to the %s: %v", what, err)
	}
	if p.AuthLength != 0 {
		return c.hostViolation("auth trailer on the answer to an unauthenticated %s", what)
	}
	if p.Flags&(rpcparse.FlagFirstFrag|rpcparse.FlagLastFrag) != rpcparse.FlagFirstFrag|rpcparse.FlagLastFrag {
		return c.hostViolation("%v answering the %s is not a single fragment (flags %#02x)", p.Type, what, p.Flags)
	}
	return nil
}

func (c *hostConn) handshakeIOError(what string, err error) error {
	if isTimeout(err) {
		return fmt.Errorf("%w: %s did not answer the %s: %w", ErrTimeout, c.up.addr, what, err)
	}
	return fmt.Errorf("%w: %s: %s: %w", ErrUnavailable, c.up.addr, what, err)
}

// errViolation marks a host answer that broke the protocol.
var errViolation = errors.New("host protocol violation")

func (c *hostConn) hostViolation(format string, args ...any) error {
	return fmt.Errorf("%w: %s: %w: %s", ErrUnavailable, c.up.addr, errViolation, fmt.Sprintf(format, args...))
}

func trimNUL(b []byte) []byte {
	if len(b) > 0 && b[len(b)-1] == 0 {
		return b[:len(b)-1]
	}
	return b
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ---- calls ----

// roundTrip sends one call and waits for its answer. The response stub is
// appended to res.Stub; the caller owns the association throughout.
func (c *hostConn) roundTrip(ctx context.Context, call *Call, res *Result) error {
	ctxID := uint16(ctxNDR20)
	if call.NDR64 {
		ctxID = ctxNDR64
	}
	wait := c.p.cfg.CallTimeout
	if d, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(d))
	}
	if err := ctx.Err(); err != nil || wait <= 0 {
		if err == nil {
			err = context.DeadlineExceeded
		}
		return fmt.Errorf("%w: %w", errLate, err)
	}
	c.mu.Lock()
	if c.err != nil || c.noReuse {
		c.mu.Unlock()
		return errStale
	}
	id := c.nextCall
	c.nextCall++
	c.waiting, c.callID, c.ctxID, c.frags, c.stub = true, id, ctxID, 0, c.stub[:0]
	c.mu.Unlock()

	c.out = c.appendRequest(c.out[:0], id, ctxID, call.Opnum, call.Stub)
	c.nc.SetWriteDeadline(time.Now().Add(wait))
	if _, err := c.nc.Write(c.out); err != nil {
		c.abandon()
		if isTimeout(err) {
			// The host stopped reading: it may hold the whole call.
			c.p.countTimeout(c.up)
			return fmt.Errorf("%w: %s call %d: writing the request: %w", ErrTimeout, c.id, id, err)
		}
		// A call whose last fragment never left was never executed, and
		// one that did is idempotent for the host's count.
		return fmt.Errorf("%w: writing the request: %w", errNoAnswer, err)
	}
	if c.timer == nil {
		c.timer = time.NewTimer(wait)
	} else {
		c.timer.Reset(wait)
	}
	var a answer
	select {
	case a = <-c.done:
		c.timer.Stop()
	case <-c.timer.C:
		if !c.abandon() {
			a = <-c.done // it came as the timer fired
			break
		}
		c.p.countTimeout(c.up)
		return fmt.Errorf("%w: %s call %d: no answer within %v", ErrTimeout, c.id, id, wait)
	case <-ctx.Done():
		c.timer.Stop()
		if !c.abandon() {
			a = <-c.done
			break
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			c.p.countTimeout(c.up)
			return fmt.Errorf("%w: %s call %d: %w", ErrTimeout, c.id, id, ctx.Err())
		}
		return fmt.Errorf("pool: %s call %d abandoned: %w", c.id, id, ctx.Err())
	case <-c.p.done:
		c.timer.Stop()
		c.abandon()
		return ErrPoolClosed
	}
	if a.err != nil {
		return a.err
	}
	res.Fault, res.FaultStatus, res.HostBigEndian = a.fault, a.status, a.hostBig
	res.Assoc, res.CallID, res.ContextID = c.id, id, ctxID
	if !a.fault {
		// readLoop does not touch stub until the next call is registered.
		res.Stub = append(res.Stub, c.stub...)
	}
	return nil
}

// abandon gives up the outstanding call (timeout, cancel, failed write)
// and closes the association: an answer arriving later would be unasked.
// It reports false when readLoop delivered the answer first (it is then
// in c.done).
func (c *hostConn) abandon() bool {
	c.mu.Lock()
	if !c.waiting {
		c.mu.Unlock()
		return false
	}
	c.waiting, c.ours = false, true
	if c.err == nil {
		c.err = errByPool
	}
	c.mu.Unlock()
	c.nc.Close()
	return true
}

// appendRequest builds the call's request PDUs: canonical header fields,
// the association's data representation, no object UUID, alloc_hint the
// stub bytes from that fragment on, fragments of at most maxBody stub
// bytes.
func (c *hostConn) appendRequest(dst []byte, id uint32, ctxID, opnum uint16, stub []byte) []byte {
	var bo binary.ByteOrder = binary.LittleEndian
	if c.big {
		bo = binary.BigEndian
	}
	off := 0
	for {
		n := min(len(stub)-off, c.maxBody)
		var flags uint8
		if off == 0 {
			flags |= rpcparse.FlagFirstFrag
		}
		if off+n == len(stub) {
			flags |= rpcparse.FlagLastFrag
		}
		start := len(dst)
		dst = rpcparse.AppendRequest(dst, rpcparse.PDUHead{Flags: flags, DataRep: c.drep, CallID: id}, ctxID, opnum, nil, stub[off:off+n], nil)
		bo.PutUint32(dst[start+16:], uint32(len(stub)-off))
		off += n
		if off == len(stub) {
			return dst
		}
	}
}

// ---- the reader ----

// readLoop reads every PDU the host sends on the association until it
// closes. Answers go to the waiting caller; anything else ends the
// association.
func (c *hostConn) readLoop() {
	defer c.p.wg.Done()
	var p rpcparse.PDU
	for {
		frag, err := c.fr.Next()
		if err != nil {
			var pe *rpcparse.ParseError
			if errors.As(err, &pe) {
				c.fail(fmt.Errorf("%w: %w", errViolation, err), true)
			} else {
				c.fail(err, c.fr.Buffered() > 0)
			}
			return
		}
		if err := c.onPDU(frag, &p); err != nil {
			c.fail(err, true)
			return
		}
	}
}

// onPDU takes one host PDU; an error ends the association.
func (c *hostConn) onPDU(frag []byte, p *rpcparse.PDU) error {
	if err := p.Parse(frag, c.p.cfg.MaxFragment); err != nil {
		return fmt.Errorf("%w: %w", errViolation, err)
	}
	if p.AuthLength != 0 {
		return fmt.Errorf("%w: auth trailer on a %v", errViolation, p.Type)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch p.Type {
	case rpcparse.PTypeShutdown:
		// The host asks us to close: finish the call in progress, if any.
		c.noReuse = true
		if !c.waiting {
			return errShutdown
		}
		return nil
	case rpcparse.PTypeResponse, rpcparse.PTypeFault:
	default:
		return fmt.Errorf("%w: %v on an association with calls only", errViolation, p.Type)
	}
	if !c.waiting {
		return fmt.Errorf("%w: %v for call %d while no call is outstanding", errViolation, p.Type, p.CallID)
	}
	if p.CallID != c.callID {
		return fmt.Errorf("%w: %v for call %d, call %d is outstanding", errViolation, p.Type, p.CallID, c.callID)
	}
	if p.Type == rpcparse.PTypeFault {
		c.deliver(answer{fault: true, status: p.Fault.Status, hostBig: p.BigEndian()})
		return nil
	}
	first := p.Flags&rpcparse.FlagFirstFrag != 0
	switch {
	case first != (c.frags == 0):
		return fmt.Errorf("%w: response fragment %d of call %d has flags %#02x", errViolation, c.frags, c.callID, p.Flags)
	case c.frags > 0 && p.BigEndian() != c.hostBig:
		return fmt.Errorf("%w: byte order changed between response fragments of call %d", errViolation, c.callID)
	case p.Response.ContextID != c.ctxID:
		return fmt.Errorf("%w: response for context %d, call %d went on context %d", errViolation, p.Response.ContextID, c.callID, c.ctxID)
	case len(c.stub)+len(p.Response.Stub) > c.p.cfg.MaxResponseBytes:
		return fmt.Errorf("%w: response stub of call %d over %d bytes", errViolation, c.callID, c.p.cfg.MaxResponseBytes)
	}
	c.hostBig = p.BigEndian()
	c.stub = append(c.stub, p.Response.Stub...)
	c.frags++
	if p.Flags&rpcparse.FlagLastFrag != 0 {
		c.deliver(answer{hostBig: c.hostBig})
	}
	return nil
}

// deliver ends the outstanding call with a (c.mu held).
func (c *hostConn) deliver(a answer) {
	c.waiting = false
	c.lastResp = time.Now()
	c.done <- a
}

// fail ends the association for err. partial says bytes of a PDU were
// read that did not complete, or the PDU broke the protocol: the
// outstanding call, if any, got part of an answer.
func (c *hostConn) fail(err error, partial bool) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	ours, waiting, lastResp := c.ours, c.waiting, c.lastResp
	noBytes := waiting && c.frags == 0 && !partial
	c.mu.Unlock()
	c.nc.Close()
	// Counted before the caller hears of it, so its Stats see it.
	if !ours {
		c.p.hostClosed(c, err, lastResp, waiting && !noBytes)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.waiting { // none, or the caller gave up meanwhile
		return
	}
	c.waiting = false
	if noBytes {
		c.done <- answer{err: fmt.Errorf("%w: %s call %d: %w", errNoAnswer, c.id, c.callID, err)}
	} else {
		c.done <- answer{err: fmt.Errorf("%w: %s call %d: %w", ErrBroken, c.id, c.callID, err)}
	}
}
