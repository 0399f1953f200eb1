package assoc

// Reasons the association produces; they become event.reason and the
// reason label of kmsproxy_decisions_total, so never rename one (acl and
// rpcparse have their own).
const (
	ReasonFirstPDUNotBind    = "first-pdu-not-bind"
	ReasonSecondBind         = "second-bind"
	ReasonWrongDirection     = "ptype-not-allowed-from-client"
	ReasonHostWrongDirection = "ptype-not-allowed-from-host"
	ReasonContextNotLive     = "context-not-bound"
	ReasonObjectUUID         = "object-uuid"
	ReasonFragmentMismatch   = "fragment-mismatch"
	ReasonCallInterleaved    = "call-interleaved"
	ReasonCallTooLarge       = "call-too-large"
	ReasonFirstFragMissing   = "first-fragment-missing"
	ReasonUnexpectedResponse = "unexpected-response"
	ReasonResultCount        = "result-count-mismatch"
	// ReasonBindPending: a client PDU while a bind or alter_context waits
	// for the host. The live proxy reads no client PDU then; a capture can
	// hold one (a pipelining client).
	ReasonBindPending = "bind-pending"
	// ReasonCallPending: a client PDU while a call waits for its answer
	// (KMS is call and answer; the live proxy reads none then either).
	ReasonCallPending = "call-pending"
	ReasonRateLimited = "activation-rate-limit"
	// ReasonAuthTrailerMismatch: a PDU's auth trailer (or its absence)
	// differs from what the association negotiated at bind — on an
	// unauthenticated association any auth_length but 0.
	ReasonAuthTrailerMismatch = "auth-trailer-mismatch"
	// ReasonAuth3Unauthenticated: auth3 on an association that negotiated
	// no authentication, which is never legitimate.
	ReasonAuth3Unauthenticated = "auth3-without-auth"
	// ReasonDataRepChanged: a PDU's integer or character representation
	// differs from the bind's; the host would read its stub differently.
	ReasonDataRepChanged = "data-representation-changed"
	// ReasonFragmentHeld: an allowed fragment held until its call is whole.
	ReasonFragmentHeld = "fragment-held"
	// ReasonCancelled: co_cancel or orphaned, consumed here.
	ReasonCancelled = "cancel-consumed"
	// ReasonClosed: a PDU after the association ended.
	ReasonClosed = "association-closed"
)

// MaxLiveContexts bounds the presentation contexts one association may
// accumulate over repeated alter_contexts.
const MaxLiveContexts = 64

// MaxHeldCallBytes bounds the whole fragments held for one call: the stub
// limit plus a quarter for fragment headers, so a stream of empty
// fragments cannot grow the buffer.
func MaxHeldCallBytes(maxCallBytes int) int { return maxCallBytes + maxCallBytes/4 + 4096 }
