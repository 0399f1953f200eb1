// Package acl decides, from a compiled policy, whether a DCE/RPC client may do
// what it asks. It is pure: no I/O, no clock, no logging, and every decision
// method is allocation-free and safe for concurrent use.
//
// Typical use:
//
//	pol, err := acl.Compile(spec)              // once per config (re)load
//	if d := pol.AdmitSource(src); !d.Allowed() { close(d.Reason) }
//	d := pol.DecideBind(src, &pdu)             // bind and alter_context
//	d = pol.DecideRequest(src, iface, auth, opnum)
//	if pol.HasKMSPolicy(d.RuleIndex) { d = pol.DecideKMS(d.RuleIndex, facts) }
//
// What it does not do: framing, call reassembly, context-id bookkeeping or
// bind_ack tracking (those are rpcparse's and assoc's), and it never allows
// by default. The zero Verdict is Deny, the zero Decision denies, a nil
// *Policy denies everything, and a request no rule matches is denied with a
// reason saying how close the nearest allow rule came.
package acl

import "errors"

// Verdict is the outcome of a decision. Its zero value denies, so a decision
// that was never filled in refuses.
type Verdict uint8

const (
	Deny  Verdict = 0
	Allow Verdict = 1
)

func (v Verdict) String() string {
	if v == Allow {
		return "allow"
	}
	return "deny"
}

// Decision is a verdict with the rule that produced it and a stable reason
// token (event.reason and the reason metric label). Rule is "" and RuleIndex
// -1 when no rule matched.
type Decision struct {
	Verdict   Verdict
	Rule      string
	RuleIndex int
	Reason    string
}

// Allowed reports whether d lets the thing through.
func (d Decision) Allowed() bool { return d.Verdict == Allow }

// Reason tokens. They are part of the log and metric contract: never rename.
const (
	ReasonAllowed             = "allowed"
	ReasonNoMatchingRule      = "no-matching-rule"
	ReasonDeniedByRule        = "denied-by-rule"
	ReasonSourceNotInZone     = "source-not-in-zone"
	ReasonInterfaceNotAllowed = "interface-not-allowed"
	ReasonOpnumNotAllowed     = "opnum-not-allowed"
	ReasonAuthNotAllowed      = "auth-not-allowed"

	ReasonNotBind            = "not-a-bind" // DecideBind given another PDU type
	ReasonMalformedBind      = "malformed-bind"
	ReasonBadTransferSyntax  = "bad-transfer-syntax"
	ReasonTooManyContexts    = "too-many-contexts"
	ReasonNoContexts         = "no-contexts"
	ReasonDuplicateContextID = "duplicate-context-id"
	ReasonBTFNMisplaced      = "btfn-misplaced"

	ReasonKMSVersionNotAllowed     = "kms-version-not-allowed"
	ReasonKMSApplicationNotAllowed = "kms-application-not-allowed"
	ReasonKMSMalformed             = "kms-malformed"
)

// Reasons lists every token a Policy can return, for pre-registering metric
// label values.
func Reasons() []string {
	return []string{
		ReasonAllowed, ReasonNoMatchingRule, ReasonDeniedByRule, ReasonSourceNotInZone,
		ReasonInterfaceNotAllowed, ReasonOpnumNotAllowed, ReasonAuthNotAllowed,
		ReasonNotBind, ReasonMalformedBind, ReasonBadTransferSyntax, ReasonTooManyContexts,
		ReasonNoContexts, ReasonDuplicateContextID, ReasonBTFNMisplaced,
		ReasonKMSVersionNotAllowed, ReasonKMSApplicationNotAllowed, ReasonKMSMalformed,
	}
}

// noMatch is the decision when nothing (not even a near miss) explains a deny.
var noMatch = Decision{Verdict: Deny, RuleIndex: -1, Reason: ReasonNoMatchingRule}

func refuse(reason string) Decision {
	return Decision{Verdict: Deny, RuleIndex: -1, Reason: reason}
}

// ErrInvalidSpec is the class of every Compile error.
var ErrInvalidSpec = errors.New("acl: invalid policy spec")

// SpecError names one problem in a Spec by its path (rules[2].from[0]).
// Compile joins one per problem; each unwraps to ErrInvalidSpec.
type SpecError struct {
	Path string
	Msg  string
}

func (e *SpecError) Error() string { return "acl: " + e.Path + ": " + e.Msg }
func (e *SpecError) Unwrap() error { return ErrInvalidSpec }
