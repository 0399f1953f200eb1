package thirdparty

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// steeringEPM is a minimal endpoint mapper for the network namespace test:
// it accepts any bind and answers every ept_map (opnum 3) with the
// client's own tower, its TCP port and IPv4 address floors rewritten to
// 127.0.0.1:port. It makes Samba's rpcclient, which always asks the
// endpoint mapper and ignores the port in its binding string, carry its
// real SAMR, LSARPC and SRVSVC binds to the proxy's KMS port. It is a test
// stand-in written for this purpose, not a product feature.
type steeringEPM struct {
	ln   net.Listener
	port uint16
	maps atomic.Int32 // ept_map calls answered
	wg   sync.WaitGroup
}

func startSteeringEPM(t *testing.T, addr string, port uint16) *steeringEPM {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("endpoint mapper listener: %v", err)
	}
	e := &steeringEPM{ln: ln, port: port}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				e.serve(t, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); e.wg.Wait() })
	return e
}

func (e *steeringEPM) serve(t *testing.T, c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fr := rpcparse.NewFramer(c, rpcparse.MaxFragmentLimit)
	var p rpcparse.PDU
	for {
		frag, err := fr.Next()
		if err != nil {
			return
		}
		if err := p.Parse(frag, 0); err != nil || p.BigEndian() {
			t.Logf("endpoint mapper: unexpected PDU %x: %v", frag, err)
			return
		}
		head := rpcparse.PDUHead{Flags: rpcparse.FlagFirstFrag | rpcparse.FlagLastFrag, DataRep: p.DataRep, CallID: p.CallID}
		var reply []byte
		switch p.Type {
		case rpcparse.PTypeBind:
			head.Type = rpcparse.PTypeBindAck
			spec := rpcparse.BindAckSpec{MaxXmitFrag: 4280, MaxRecvFrag: 4280, AssocGroup: 0x4242, SecAddr: []byte("135\x00")}
			for it := p.Bind.Contexts(); it.Next(); {
				spec.Results = append(spec.Results, rpcparse.Result{Transfer: it.Context().Transfer(0)})
			}
			reply = rpcparse.AppendBindAck(nil, head, spec)
		case rpcparse.PTypeRequest:
			if p.Request.Opnum != 3 {
				reply = rpcparse.AppendFault(nil, p.DataRep, p.CallID, p.Request.ContextID, rpcparse.StatusOpRangeError, true)
				break
			}
			stub, err := e.mapReply(p.Request.Stub)
			if err != nil {
				t.Logf("endpoint mapper: ept_map stub %x: %v", p.Request.Stub, err)
				return
			}
			e.maps.Add(1)
			reply = rpcparse.AppendResponse(nil, head, p.Request.ContextID, uint32(len(stub)), stub)
		default:
			return
		}
		if _, err := c.Write(reply); err != nil {
			return
		}
	}
}

// mapReply decodes an ept_map request stub (NDR, little-endian: unique
// pointer to the object GUID; unique pointer to twr_t map_tower; the
// entry handle; max_towers) and encodes a response holding one tower.
func (e *steeringEPM) mapReply(req []byte) ([]byte, error) {
	le := binary.LittleEndian
	errShort := errors.New("short ept_map request")
	off := 0
	u32 := func() (uint32, error) {
		if off+4 > len(req) {
			return 0, errShort
		}
		v := le.Uint32(req[off:])
		off += 4
		return v, nil
	}
	if ref, err := u32(); err != nil {
		return nil, err
	} else if ref != 0 {
		off += 16 // object GUID
	}
	if ref, err := u32(); err != nil || ref == 0 {
		return nil, errors.New("no map_tower")
	}
	towerLen, err := u32()
	if err != nil {
		return nil, err
	}
	if _, err := u32(); err != nil { // conformant max_count
		return nil, err
	}
	if off+int(towerLen) > len(req) {
		return nil, errShort
	}
	tower := append([]byte(nil), req[off:off+int(towerLen)]...)
	off += int(towerLen)
	off = (off + 3) &^ 3
	off += 20 // entry_handle
	maxTowers, err := u32()
	if err != nil {
		return nil, err
	}
	if err := e.steer(tower); err != nil {
		return nil, err
	}

	var out []byte
	out = append(out, make([]byte, 20)...) // entry_handle: none
	out = le.AppendUint32(out, 1)          // num_towers
	out = le.AppendUint32(out, maxTowers)  // towers: max_count
	out = le.AppendUint32(out, 0)          // offset
	out = le.AppendUint32(out, 1)          // actual_count
	out = le.AppendUint32(out, 0x00020000) // referent of towers[0]
	out = le.AppendUint32(out, uint32(len(tower)))
	out = le.AppendUint32(out, uint32(len(tower)))
	out = append(out, tower...)
	for len(out)%4 != 0 {
		out = append(out, 0)
	}
	out = le.AppendUint32(out, 0) // status: ok
	return out, nil
}

// steer rewrites the tower's TCP port floor (protocol 0x07) and IPv4
// address floor (0x09) in place.
func (e *steeringEPM) steer(tower []byte) error {
	le := binary.LittleEndian
	if len(tower) < 2 {
		return errors.New("empty tower")
	}
	floors := int(le.Uint16(tower))
	off := 2
	var port, ip bool
	for i := 0; i < floors; i++ {
		if off+2 > len(tower) {
			return errors.New("truncated floor")
		}
		lhsLen := int(le.Uint16(tower[off:]))
		off += 2
		if lhsLen < 1 || off+lhsLen+2 > len(tower) {
			return errors.New("bad floor lhs")
		}
		proto := tower[off]
		off += lhsLen
		rhsLen := int(le.Uint16(tower[off:]))
		off += 2
		if off+rhsLen > len(tower) {
			return errors.New("bad floor rhs")
		}
		rhs := tower[off : off+rhsLen]
		switch {
		case proto == 0x07 && rhsLen == 2:
			binary.BigEndian.PutUint16(rhs, e.port)
			port = true
		case proto == 0x09 && rhsLen == 4:
			copy(rhs, []byte{127, 0, 0, 1})
			ip = true
		}
		off += rhsLen
	}
	if !port || !ip {
		return errors.New("tower has no TCP/IP floors")
	}
	return nil
}
