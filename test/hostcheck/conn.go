package hostcheck

import (
	"encoding/binary"
	"strconv"
)

// Conn checks the PDUs of one connection in the order they arrived. Beyond
// what Check asks of each PDU: the first PDU is a bind and no other bind
// follows; the integer byte order never changes; a request names a
// context id offered by an earlier valid bind or alter_context of the
// connection; the fragments of a call are contiguous and keep its call
// id, context id and opnum; when the last fragment arrives the reassembled
// stub must be a RequestActivation in the byte order of the connection,
// laid out in one of the transfer syntaxes offered for that context.
// A Conn is not safe for concurrent use.
type Conn struct {
	opts Options
	n    int // PDUs seen
	big  bool
	ctxs map[uint16]context
	call *call
}

type call struct {
	callID uint32
	ctxID  uint16
	opnum  uint16
	stub   []byte
	frags  int
}

// NewConn returns a checker for one connection; o may be nil.
func NewConn(o *Options) *Conn {
	c := &Conn{ctxs: map[uint16]context{}}
	if o != nil {
		c.opts = *o
		c.opts.ExtraInterfaces = append([]Syntax(nil), o.ExtraInterfaces...)
	}
	return c
}

// Check checks the next PDU of the connection. State advances only on PDUs
// that pass, except that the first PDU fixes the connection's byte order
// and ends the connection's chance of starting with a bind.
func (c *Conn) Check(pdu []byte) error {
	first := c.n == 0
	c.n++
	h, err := readHeader(pdu, &c.opts)
	if err != nil {
		if first && len(pdu) >= 5 && (pdu[4] == 0x10 || pdu[4] == 0) {
			c.big = pdu[4] == 0
		}
		return err
	}
	if first {
		c.big = h.big
		if h.ptype != ptypeBind {
			return violation(h.shapeName, 2, ErrSequence, "the first PDU of a connection is a %s, not a bind", h.shapeName)
		}
	} else if h.big != c.big {
		return violation(h.shapeName, 4, ErrSequence, "drep byte order changed on the connection (now big-endian %v)", h.big)
	}
	switch h.ptype {
	case ptypeBind, ptypeAlterContext:
		if h.ptype == ptypeBind && !first {
			return violation(h.shapeName, 2, ErrSequence, "a second bind on the connection")
		}
		if c.call != nil {
			return violation(h.shapeName, 2, ErrSequence, "%s between fragments of call %d", h.shapeName, c.call.callID)
		}
		// The contexts of a refused PDU are kept too (marked refused) so
		// a request on one is named for what it is.
		ctxs, err := readBind(pdu, h, &c.opts)
		for _, x := range ctxs {
			if old, ok := c.ctxs[x.id]; ok && old.allowed && x.allowed && old.abstract == x.abstract {
				x.ndr20, x.ndr64 = x.ndr20 || old.ndr20, x.ndr64 || old.ndr64
			}
			c.ctxs[x.id] = x
		}
		if err != nil {
			return err
		}
	case ptypeAuth3:
		// Options.AllowAuth only; the trailer was checked with the header.
	case ptypeRequest:
		return c.request(pdu, h)
	}
	return nil
}

func (c *Conn) request(pdu []byte, h header) error {
	q, err := readRequest(pdu, h)
	if err != nil {
		c.call = nil
		return err
	}
	x, ok := c.ctxs[q.ctxID]
	if !ok {
		c.call = nil
		return violation(h.shapeName, 20, ErrSequence, "context id %d was never offered on the connection", q.ctxID)
	}
	if !x.allowed {
		c.call = nil
		return violation(h.shapeName, 20, ErrAbstract, "context id %d was offered (for %v) only in a refused bind or alter_context", q.ctxID, x.abstract)
	}
	if x.kms && q.opnum != 0 {
		c.call = nil
		return violation(h.shapeName, 22, ErrOpnum, "opnum %d on KMS context %d", q.opnum, q.ctxID)
	}
	firstFrag, lastFrag := h.flags&flagFirst != 0, h.flags&flagLast != 0
	switch {
	case c.call == nil && !firstFrag:
		return violation(h.shapeName, 3, ErrSequence, "flags %#02x: a fragment of call %d without its first fragment", h.flags, h.callID)
	case c.call != nil && firstFrag:
		prev := c.call.callID
		c.call = nil
		return violation(h.shapeName, 3, ErrSequence, "call %d starts before call %d's last fragment", h.callID, prev)
	case c.call != nil && (h.callID != c.call.callID || q.ctxID != c.call.ctxID || q.opnum != c.call.opnum):
		e := violation(h.shapeName, 12, ErrSequence, "fragment %d of call %d (context %d, opnum %d) says call %d, context %d, opnum %d",
			c.call.frags, c.call.callID, c.call.ctxID, c.call.opnum, h.callID, q.ctxID, q.opnum)
		c.call = nil
		return e
	}
	if c.call == nil {
		c.call = &call{callID: h.callID, ctxID: q.ctxID, opnum: q.opnum}
	}
	c.call.frags++
	if !x.kms {
		// An interface of Options.ExtraInterfaces: any stub.
		if lastFrag {
			c.call = nil
		}
		return nil
	}
	if len(c.call.stub)+len(q.stub) > maxStub {
		n := len(c.call.stub) + len(q.stub)
		c.call = nil
		return violation(h.shapeName, headerLen+reqFixed, ErrStub, "call %d's stub reaches %d bytes, longer than any RequestActivation", h.callID, n)
	}
	c.call.stub = append(c.call.stub, q.stub...)
	if !lastFrag {
		return nil
	}
	stub, frags := c.call.stub, c.call.frags
	c.call = nil
	var bo binary.ByteOrder = binary.LittleEndian
	if c.big {
		bo = binary.BigEndian
	}
	off := headerLen + reqFixed
	if frags > 1 {
		off = -1 // the stub spans fragments
	}
	if err := checkStub(stub, bo, x.ndr20, x.ndr64, off); err != nil {
		if frags > 1 {
			err.Detail = "reassembled from " + strconv.Itoa(frags) + " fragments: " + err.Detail
		}
		return err
	}
	return nil
}

// End reports a call whose last fragment never came when the connection
// ended cleanly: the host was handed the start of a call the proxy cannot
// have checked.
func (c *Conn) End() error {
	if c.call != nil {
		return violation("request", -1, ErrSequence, "connection ended after %d fragment(s) of call %d without its last", c.call.frags, c.call.callID)
	}
	return nil
}
