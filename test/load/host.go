package load

import (
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// Host is a lean KMS host stand-in: it answers each bind, alter_context and
// request whose bytes (call id aside) were captured with the recorded reply,
// its call id patched, and anything else with a bind_nak or a fault. One
// goroutine and one buffer per connection, one write per batch of replies,
// no deadlines: it is the fixed point every measurement goes through, so
// it does as little as it can.
type Host struct {
	ln      net.Listener
	replies map[string][]byte // request with call id zeroed → reply with call id zeroed

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup

	Accepted atomic.Int64 // connections accepted
	Answered atomic.Int64 // PDUs answered
	Open     atomic.Int64 // connections open now

	// Since the last ResetWindow: the most connections open at once, and
	// how many distinct connections answered at least one PDU (a pooling
	// proxy should need few; a blind relay one per client connection).
	peak  atomic.Int64
	used  atomic.Int64
	epoch atomic.Uint64
	reset sync.Mutex
}

// ResetWindow starts a new measuring window for OpenPeak and Used.
func (h *Host) ResetWindow() {
	h.reset.Lock()
	defer h.reset.Unlock()
	h.epoch.Add(1)
	h.used.Store(0)
	h.peak.Store(h.Open.Load())
}

// OpenPeak is the most connections open at once since ResetWindow.
func (h *Host) OpenPeak() int64 { return h.peak.Load() }

// Used is the number of distinct connections that answered a PDU since
// ResetWindow.
func (h *Host) Used() int64 { return h.used.Load() }

func (h *Host) opened() {
	n := h.Open.Add(1)
	for {
		p := h.peak.Load()
		if n <= p || h.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

// NewHost builds the reply table from caps; where several captures share a
// request (they all share the bind) the capture named prefer answers.
func NewHost(ln net.Listener, caps []Capture, prefer string) *Host {
	h := &Host{ln: ln, replies: map[string][]byte{}, conns: map[net.Conn]struct{}{}}
	h.epoch.Store(1) // a connection's first answer always counts (its seen starts at 0)
	add := func(c Capture) {
		for i, req := range c.C2S {
			if i >= len(c.S2C) {
				break
			}
			k := string(WithCallID(req, 0))
			if _, ok := h.replies[k]; !ok {
				h.replies[k] = WithCallID(c.S2C[i], 0)
			}
		}
	}
	for _, c := range caps {
		if c.Name == prefer {
			add(c)
		}
	}
	for _, c := range caps {
		add(c)
	}
	return h
}

// StartHost listens on addr (a loopback address) and serves in the
// background until Close.
func StartHost(addr string, caps []Capture, prefer string) (*Host, error) {
	if err := CheckLoopback(addr); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	h := NewHost(ln, caps, prefer)
	h.wg.Add(1)
	go func() { defer h.wg.Done(); h.Serve() }()
	return h, nil
}

// Addr is the listening address.
func (h *Host) Addr() string { return h.ln.Addr().String() }

// Serve accepts until the listener is closed.
func (h *Host) Serve() error {
	for {
		c, err := h.ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return err
		}
		h.Accepted.Add(1)
		h.opened()
		h.mu.Lock()
		h.conns[c] = struct{}{}
		h.wg.Add(1)
		h.mu.Unlock()
		go h.serveConn(c)
	}
}

// Close stops accepting, closes every open connection and waits for them.
func (h *Host) Close() {
	h.ln.Close()
	h.mu.Lock()
	for c := range h.conns {
		c.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
}

func (h *Host) serveConn(c net.Conn) {
	defer h.wg.Done()
	defer func() {
		c.Close()
		h.Open.Add(-1)
		h.mu.Lock()
		delete(h.conns, c)
		h.mu.Unlock()
	}()
	buf := make([]byte, 2*maxFrag)
	out := make([]byte, 0, 1024)
	key := make([]byte, maxFrag)
	start, end := 0, 0
	var seen uint64 // the window this connection was last counted in
	for {
		n, err := c.Read(buf[end:])
		if n == 0 && err != nil {
			return
		}
		end += n
		out = out[:0]
		for end-start >= headerLen {
			p := buf[start:end]
			fl := int(binary.LittleEndian.Uint16(p[8:10]))
			if fl < headerLen || fl > maxFrag || p[0] != 5 {
				return // not DCE/RPC: hang up
			}
			if len(p) < fl {
				break
			}
			out = h.answer(out, key, p[:fl])
			start += fl
		}
		if len(out) > 0 {
			if e := h.epoch.Load(); e != seen {
				seen = e
				h.used.Add(1)
			}
			if _, err := c.Write(out); err != nil {
				return
			}
		}
		if start == end {
			start, end = 0, 0
		} else if start > 0 && end > maxFrag {
			end = copy(buf, buf[start:end])
			start = 0
		}
	}
}

// answer appends the reply to one PDU; key is scratch space.
func (h *Host) answer(out, key, pdu []byte) []byte {
	id := binary.LittleEndian.Uint32(pdu[12:16])
	k := key[:len(pdu)]
	copy(k, pdu)
	binary.LittleEndian.PutUint32(k[12:16], 0)
	if r, ok := h.replies[string(k)]; ok {
		h.Answered.Add(1)
		at := len(out)
		out = append(out, r...)
		binary.LittleEndian.PutUint32(out[at+12:at+16], id)
		return out
	}
	h.Answered.Add(1)
	switch pdu[2] {
	case ptypeBind:
		return rpcparse.AppendBindNak(out, rpcparse.LittleEndianDataRep, id, rpcparse.NakReasonNotSpecified)
	case ptypeRequest, ptypeAlterContext:
		return rpcparse.AppendFault(out, rpcparse.LittleEndianDataRep, id, 0, rpcparse.StatusOpRangeError, true)
	}
	return out
}
