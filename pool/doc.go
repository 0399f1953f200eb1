// Package pool keeps the proxy's own associations to the KMS hosts, for a
// terminating gateway: a client's association ends at the proxy, and each
// activation call it allows is sent on one of a few long-lived host
// associations the pool dialled and bound itself, one call at a time each.
//
//	p := pool.New(pool.Config{Upstreams: cfg.Upstreams})        // dials nothing yet
//	defer p.Close()
//	neg, err := p.Negotiation(ctx, src, bind.BigEndian())       // at the client's first allowed bind
//	if err != nil { /* bind_nak "temporary congestion" */ }
//	// answer the client's contexts per transfer syntax as neg says the host did
//	res, err := p.Call(ctx, src, pool.Call{NDR64: ndr64, BigEndian: big, Stub: stub})
//	if err != nil { /* fault; errors.Is(err, pool.ErrBusy), ErrTimeout, … */ }
//	// answer the client: a response with its own call id and context id,
//	// res.Stub in res.HostBigEndian's data representation (or res.FaultStatus)
//
// Associations. Each is bound with the bind a Windows client sends: KMS
// 51c82175-844e-4750-b0d8-ec255555bc06 v1.0 on context 0 NDR 2.0, context 1
// NDR64, context 2 bind-time feature negotiation 0x03, flags
// first|last|conc_mpx, max_xmit/max_recv Config.MaxFragment (5840), call id
// 1. When the host does not accept NDR 2.0 there (vlmcsd and Windows 8+
// hosts accept NDR64 instead), an alter_context redefines context 0 with
// NDR 2.0 alone (call id 2), as Windows does (testdata/kms/win10-v6). Both
// answers are checked strictly — answer type, call id, result count, each
// result against what its context offered, no auth trailer, no trailing
// bytes, fragment sizes of at least 1432 — and kept in a Negotiation. Then
// NDR 2.0 calls go on context 0 and NDR64 calls on context 1. Every call is
// a request the pool builds: its own call id, one more than the last PDU
// it sent on the association, flags first|last, alloc_hint the stub
// length, no object UUID, the association's data representation; a stub
// larger than the host's max_recv_frag is fragmented. Responses may come in
// fragments and are reassembled up to Config.MaxResponseBytes.
//
// Byte order. An association's data representation is fixed by its bind,
// so a big-endian client's call goes on an association the pool bound
// big-endian, never on a little-endian one (and the host sees one byte
// order per connection). Both kinds count against MaxAssociations; when
// the upstream is full of idle associations of the other order, the least
// recently used is closed to make room. The host answers in its own byte
// order, which Result.HostBigEndian reports.
//
// Checkout. An idle association is used if it is still alive: every
// association has a reader goroutine, so one the host closed, or sent
// anything unasked on while idle, is dropped (and counted) as soon as
// that happens, never handed a call. Otherwise a new one is dialled, under
// MaxAssociations per upstream; otherwise the caller waits in a queue of
// at most MaxWaiters, of which one source holds at most
// MaxWaitersPerSource; freed associations go to the sources in turn.
// Idle associations are closed after IdleTimeout (default 20 s, below
// vlmcsd's 30 s) and beyond MaxIdle.
//
// Retries. A call whose association died before any byte of the answer
// arrived (a close or reset after the request was sent, or a failed write)
// is sent once more on another association (Result.Retried). That is safe
// because a KMS activation is idempotent for the host's count: the host
// counts distinct client machine IDs, so an activation it received twice
// counts once, and its answer to the second is as good as to the first. A
// timeout (the host may still be working), a partial answer, or an answer
// that breaks the protocol is never retried: the caller gets ErrTimeout or
// ErrBroken, the fault a client gets today.
//
// Hosts that close after every answer (vlmcsd -d, py-kms). When three
// associations in a row are closed by the host within 50 ms of an answer,
// the upstream is served one association per call (dial, bind, call,
// close) for PerCallRecheck (5 min), after which one association is kept
// again to see whether the host still does it. Calls see no errors either
// way; Stats counts the switches.
//
// Failure. Upstreams are tried in order and the first reachable wins. An
// upstream whose dial or bind failed is skipped for DownBackoff (1 s):
// while every upstream is, each caller fails at once with ErrUnavailable,
// and while an upstream has not been seen to work only one dial to it is
// in flight, so a dead host costs about one dial per DownBackoff, not one
// per caller. After DownBackoff the first upstream is tried again.
//
// What the pool does not do:
//
//   - Authentication, ever: it binds without an auth trailer and refuses a
//     host answer that carries one.
//   - Any interface but KMS v1.0, or any operation but RequestActivation
//     (opnum 0): other calls are ErrBadCall and nothing is sent.
//   - Checking stubs: the caller (the session, with acl and rpcparse/kms)
//     decided the call is allowed; the pool sends the stub as given.
//   - Concurrent calls on one association, or cancels: one call at a time,
//     and an abandoned call's association is closed.
//
// Stats returns gauges and counters for metrics; Config.OnWait and
// Config.OnDial report each queue wait and dial for histograms.
package pool
