package pool

import (
	"fmt"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// The pool's bind is the one a Windows KMS client sends (kms-protocol.md
// §1): three contexts on KMS v1.0, each with one transfer syntax. When the
// host does not accept NDR 2.0 there, an alter_context redefines context 0
// with NDR 2.0 alone, as Windows does; so NDR 2.0 calls always go on
// context 0 and NDR64 calls on context 1.
const (
	ctxNDR20 = 0
	ctxNDR64 = 1
	ctxBTFN  = 2
	// btfnOffered is the feature bitmask the pool offers (and Windows):
	// security context multiplexing and keep connection on orphan.
	btfnOffered = 0x03
)

var (
	kmsSyntax   = rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: 1}
	ndr20Syntax = rpcparse.SyntaxID{UUID: rpcparse.NDR20UUID, Major: 2}
	ndr64Syntax = rpcparse.SyntaxID{UUID: rpcparse.NDR64UUID, Major: 1}
	btfnSyntax  = rpcparse.SyntaxID{UUID: btfnUUID(btfnOffered), Major: 1}
)

// btfnUUID is the bind-time feature negotiation UUID carrying mask
// (MS-RPCE 2.2.2.14): the fixed prefix, then the bitmask's bytes, least
// significant first.
func btfnUUID(mask uint64) rpcparse.UUID {
	u := rpcparse.MustUUID("6cb71c2c-9812-4540-0000-000000000000")
	for i := 8; i < 16; i++ {
		u[i] = byte(mask)
		mask >>= 8
	}
	return u
}

// Negotiation is what a KMS host answered the pool's own bind, so a
// terminating gateway can answer a client's bind and alter_context per
// transfer syntax exactly as the host did.
type Negotiation struct {
	Upstream      string // the upstream that answered
	BigEndian     bool   // the association's byte order (the bind's data representation)
	HostBigEndian bool   // the byte order of the host's bind_ack
	// MaxXmitFrag and MaxRecvFrag are the host's, from its bind_ack;
	// AssocGroup and SecAddr (its port_spec, without the NUL) likewise.
	MaxXmitFrag, MaxRecvFrag uint16
	AssocGroup               uint32
	SecAddr                  string
	// Bind is the host's result list for the Windows-shaped bind, in its
	// order: context 0 NDR 2.0, context 1 NDR64, context 2 bind-time
	// feature negotiation offering 0x03 (negotiate_ack's Reason holds the
	// features the host accepted).
	Bind [3]rpcparse.Result
	// AlterSent says the bind did not accept NDR 2.0, so the pool sent the
	// alter_context offering NDR 2.0 alone on context 0; Alter is the one
	// result of its alter_context_resp, or AlterFault the status of the
	// fault the host answered it with instead.
	AlterSent  bool
	Alter      rpcparse.Result
	AlterFault uint32
}

// BindResult is the host's answer in the Windows-shaped bind for a
// context offering k (NDR 2.0, NDR64 or bind-time feature negotiation).
func (n *Negotiation) BindResult(k rpcparse.TransferKind) (rpcparse.Result, bool) {
	switch k {
	case rpcparse.TransferNDR20:
		return n.Bind[ctxNDR20], true
	case rpcparse.TransferNDR64:
		return n.Bind[ctxNDR64], true
	case rpcparse.TransferBTFN:
		return n.Bind[ctxBTFN], true
	}
	return rpcparse.Result{}, false
}

// Accepts reports whether calls in transfer syntax k can go to the host:
// NDR 2.0 accepted in the bind or the alter_context, NDR64 in the bind.
func (n *Negotiation) Accepts(k rpcparse.TransferKind) bool {
	switch k {
	case rpcparse.TransferNDR20:
		return n.Bind[ctxNDR20].Result == rpcparse.ResultAcceptance ||
			(n.AlterSent && n.AlterFault == 0 && n.Alter.Result == rpcparse.ResultAcceptance)
	case rpcparse.TransferNDR64:
		return n.Bind[ctxNDR64].Result == rpcparse.ResultAcceptance
	}
	return false
}

// Features returns the bind-time features the host acknowledged (0 when it
// rejected the negotiation context).
func (n *Negotiation) Features() uint16 {
	if r := n.Bind[ctxBTFN]; r.Result == rpcparse.ResultNegotiateAck {
		return r.Reason
	}
	return 0
}

// checkResult validates the host's result for a context that offered
// transfer syntax want: an acceptance names exactly it, a rejection is a
// user or provider rejection; bind-time feature negotiation is answered
// with negotiate_ack (features within those offered) or a rejection.
func checkResult(r rpcparse.Result, want rpcparse.SyntaxID) error {
	btfn := rpcparse.ClassifyTransfer(want) == rpcparse.TransferBTFN
	switch r.Result {
	case rpcparse.ResultAcceptance:
		if btfn || r.Transfer != want {
			return fmt.Errorf("accepted %v for a context offering %v", r.Transfer, want)
		}
	case rpcparse.ResultUserRejection, rpcparse.ResultProviderRejection:
	case rpcparse.ResultNegotiateAck:
		if !btfn || r.Reason&^btfnOffered != 0 {
			return fmt.Errorf("negotiate_ack %#x for a context offering %v", r.Reason, want)
		}
	default:
		return fmt.Errorf("result %d", r.Result)
	}
	return nil
}
