package assoc

import "github.com/kmsproxy/kmsproxy/rpcparse"

// NegotiatedAuth is the authentication an association's bind carried:
// every later PDU must carry the same (DESIGN rule 4).
type NegotiatedAuth struct {
	Present bool // the bind had an auth trailer
	Type    rpcparse.AuthType
	Level   rpcparse.AuthLevel
}

// NegotiatedBy returns what a bind negotiated.
func NegotiatedBy(bind *rpcparse.PDU) NegotiatedAuth {
	if !bind.HasAuth {
		return NegotiatedAuth{}
	}
	return NegotiatedAuth{Present: true, Type: bind.Auth.Type, Level: bind.Auth.Level}
}

// LaterPDUReason checks a client PDU after the bind against what the bind
// set up, or returns "".
//
// The data representation must stay the bind's, as Windows requires of an
// association: the host reads every stub in it, so the proxy must too.
// Unauthenticated: auth_length 0, so nothing follows the stub (an NTLM
// verifier, a trailer of type none or an auth_pad hiding another PDU
// would otherwise reach the host unread), and auth3 is never legitimate.
// Authenticated: the same type and level; auth3 must carry a trailer, and
// only at level connect may the others omit it.
func LaterPDUReason(bindRep rpcparse.DataRep, n NegotiatedAuth, p *rpcparse.PDU) string {
	if p.DataRep[0] != bindRep[0] || p.DataRep[1] != bindRep[1] {
		return ReasonDataRepChanged
	}
	if !n.Present {
		if p.AuthLength != 0 {
			return ReasonAuthTrailerMismatch
		}
		if p.Type == rpcparse.PTypeAuth3 {
			return ReasonAuth3Unauthenticated
		}
		return ""
	}
	if !p.HasAuth {
		if p.Type == rpcparse.PTypeAuth3 || n.Level > rpcparse.AuthLevelConnect {
			return ReasonAuthTrailerMismatch
		}
		return ""
	}
	if p.Auth.Type != n.Type || p.Auth.Level != n.Level {
		return ReasonAuthTrailerMismatch
	}
	return ""
}
