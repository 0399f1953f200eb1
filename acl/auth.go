package acl

import (
	"net/netip"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// DecideAuth answers whether an association bound to iface may continue
// with auth class auth: the check an auth3 (or an alter_context carrying a
// new verifier) needs, since NTLM reveals a NULL session only in its last
// leg, after the bind was allowed. It is DecideBind's per-context rule
// match, without the PDU.
func (p *Policy) DecideAuth(src netip.Addr, iface rpcparse.SyntaxID, auth rpcparse.AuthClass) Decision {
	if p == nil {
		return noMatch
	}
	return p.match(p.zonesOf(src), iface, auth, 0, true)
}
