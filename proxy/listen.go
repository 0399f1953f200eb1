package proxy

import (
	"context"
	"net"
)

// Listen opens the client-facing TCP listener. Accepted sockets get no TCP
// keepalive: idle_timeout and handshake_timeout already bound a silent peer,
// and keepalive costs four setsockopt calls per connection.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(ctx, "tcp", addr)
}

// upstreamDialer dials KMS hosts without TCP keepalive, for the same reason
// as Listen: the idle timeout covers a host that stops answering.
func upstreamDialer() Dialer {
	d := net.Dialer{KeepAlive: -1}
	return d.DialContext
}
