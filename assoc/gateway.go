package assoc

import "github.com/kmsproxy/kmsproxy/rpcparse"

// The terminating gateway: for a client association that asks only for
// the KMS interface without authentication, the proxy is the client's
// server. It answers bind and alter_context itself, per transfer syntax
// exactly as the KMS host answered the proxy's own association, and the
// answers go through Host like any host PDU, so the association's rules
// are the same whoever answered.

// HostSyntaxes is what the KMS host answered the proxy's own association,
// per transfer syntax.
type HostSyntaxes struct {
	NDR20, NDR64 bool // accepted when offered
	// NDR20BesideNDR64 is whether the host accepts NDR 2.0 in a bind that
	// also offers NDR64 (vlmcsd refuses it there and accepts it alone).
	NDR20BesideNDR64 bool
	// BTFN is whether the host acknowledged bind-time feature
	// negotiation, with BTFNFlags the features it granted.
	BTFN      bool
	BTFNFlags uint16
}

// Terminable reports whether a client bind can end at the proxy: every
// context asks for the KMS interface and no authentication is offered
// (authentication binds an association to one client: it is never
// pooled).
func Terminable(bind *rpcparse.PDU) bool {
	if bind.HasAuth || bind.AuthLength != 0 {
		return false
	}
	n := 0
	for it := bind.Bind.Contexts(); it.Next(); n++ {
		c := it.Context()
		if c.Abstract.UUID != rpcparse.KMSInterfaceUUID {
			return false
		}
	}
	return n > 0
}

// GatewayAnswer is what the proxy says of itself in a bind_ack.
type GatewayAnswer struct {
	MaxXmitFrag, MaxRecvFrag uint16
	AssocGroup               uint32
	SecAddr                  []byte // the proxy's listening port, NUL-terminated; bind only
}

// AnswerBind builds the proxy's own bind_ack (or alter_context_resp) to an
// allowed, terminable client bind, appended to dst in the client's data
// representation: per context, the first offered transfer syntax the host
// accepts, negotiate_ack for bind-time feature negotiation where the host
// acknowledged it, provider rejection otherwise.
func AnswerBind(dst []byte, bind *rpcparse.PDU, host HostSyntaxes, g GatewayAnswer) []byte {
	offersNDR64 := false
	for it := bind.Bind.Contexts(); it.Next(); {
		c := it.Context()
		for i := 0; i < int(c.NumTransfer); i++ {
			if c.TransferKind(i) == rpcparse.TransferNDR64 {
				offersNDR64 = true
			}
		}
	}
	results := make([]rpcparse.Result, 0, bind.Bind.NumContexts)
	for it := bind.Bind.Contexts(); it.Next(); {
		c := it.Context()
		r := rpcparse.Result{Result: rpcparse.ResultProviderRejection, Reason: rpcparse.ProviderReasonTransferSyntaxes}
		for i := 0; i < int(c.NumTransfer); i++ {
			ok := false
			switch c.TransferKind(i) {
			case rpcparse.TransferNDR20:
				ok = host.NDR20 && (!offersNDR64 || host.NDR20BesideNDR64)
			case rpcparse.TransferNDR64:
				ok = host.NDR64
			case rpcparse.TransferBTFN:
				if host.BTFN {
					r = rpcparse.Result{Result: rpcparse.ResultNegotiateAck, Reason: host.BTFNFlags}
				}
			}
			if ok {
				r = rpcparse.Result{Result: rpcparse.ResultAcceptance, Transfer: c.Transfer(i)}
				break
			}
		}
		results = append(results, r)
	}
	typ := rpcparse.PTypeBindAck
	spec := rpcparse.BindAckSpec{MaxXmitFrag: g.MaxXmitFrag, MaxRecvFrag: g.MaxRecvFrag, AssocGroup: g.AssocGroup, Results: results}
	if bind.Type == rpcparse.PTypeAlterContext {
		typ = rpcparse.PTypeAlterContextResp
	} else {
		spec.SecAddr = g.SecAddr
	}
	return rpcparse.AppendBindAck(dst, rpcparse.PDUHead{Type: typ, Flags: rpcparse.FlagFirstFrag | rpcparse.FlagLastFrag, DataRep: bind.DataRep, CallID: bind.CallID}, spec)
}

// AnswerCall builds the response fragments (or the fault) the client gets
// for its call from the host's answer to the proxy's own request: the
// client's call id and context, the stub as the host marshalled it (so in
// the host's byte order), split at the client's max_recv_frag.
func AnswerCall(dst []byte, c *Call, hostRep rpcparse.DataRep, stub []byte, maxFrag int, fault bool, status uint32) []byte {
	if fault {
		return rpcparse.AppendFault(dst, hostRep, c.ID, c.CtxID, status, false)
	}
	room := maxFrag - rpcparse.HeaderLen - 8 // response header: alloc_hint, p_cont_id, cancel count, reserved
	if room < 8 {
		room = 8
	}
	first := true
	for {
		n := min(len(stub), room)
		flags := uint8(0)
		if first {
			flags |= rpcparse.FlagFirstFrag
		}
		if n == len(stub) {
			flags |= rpcparse.FlagLastFrag
		}
		dst = rpcparse.AppendResponse(dst, rpcparse.PDUHead{Flags: flags, DataRep: hostRep, CallID: c.ID}, c.CtxID, uint32(len(stub)), stub[:n])
		stub, first = stub[n:], false
		if len(stub) == 0 {
			return dst
		}
	}
}
