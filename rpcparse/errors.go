package rpcparse

import (
	"errors"
	"strconv"
)

// Failure classes. Every parse error wraps exactly one of these, so callers
// match with errors.Is and map each to a stable reason token with Reason.
var (
	ErrTruncated      = errors.New("truncated PDU")
	ErrVersion        = errors.New("unsupported RPC version")
	ErrDataRep        = errors.New("unsupported data representation")
	ErrFragLength     = errors.New("bad frag_length")
	ErrFragTooLarge   = errors.New("frag_length above limit")
	ErrAuthLength     = errors.New("bad auth_length")
	ErrPType          = errors.New("PDU type not valid on a connection-oriented association")
	ErrContextCount   = errors.New("bad presentation context count")
	ErrTransferCount  = errors.New("bad transfer syntax count")
	ErrResultCount    = errors.New("bad result count")
	ErrSecondaryAddr  = errors.New("bad secondary address")
	ErrAuthPadding    = errors.New("bad auth padding")
	ErrTrailingData   = errors.New("unexpected bytes after PDU body")
	ErrNDR            = errors.New("malformed NDR data")
	ErrUnknownVersion = errors.New("unknown protocol version")
)

// reasons maps failure classes to the stable tokens used as event.reason and
// as the reason label of metrics. They never change once released.
var reasons = map[error]string{
	ErrTruncated:      "truncated",
	ErrVersion:        "bad-rpc-version",
	ErrDataRep:        "bad-data-representation",
	ErrFragLength:     "bad-frag-length",
	ErrFragTooLarge:   "fragment-too-large",
	ErrAuthLength:     "bad-auth-length",
	ErrPType:          "bad-ptype",
	ErrContextCount:   "bad-context-count",
	ErrTransferCount:  "bad-transfer-syntax-count",
	ErrResultCount:    "bad-result-count",
	ErrSecondaryAddr:  "bad-secondary-address",
	ErrAuthPadding:    "bad-auth-padding",
	ErrTrailingData:   "trailing-data",
	ErrNDR:            "malformed-ndr",
	ErrUnknownVersion: "unknown-version",
}

// Reason returns the stable reason token for err's failure class, or
// "malformed" when err wraps none of this package's sentinels.
// It follows every wrapping, including multi-%w errors.
func Reason(err error) string {
	if err == nil {
		return "malformed"
	}
	var pe *ParseError
	if errors.As(err, &pe) {
		if r, ok := reasons[pe.Err]; ok {
			return r
		}
	}
	for class, r := range reasons {
		if errors.Is(err, class) {
			return r
		}
	}
	return "malformed"
}

// ParseError says where a PDU failed to parse. It wraps one failure class.
type ParseError struct {
	PType  PType  // type from the common header (0 if the header itself failed)
	Offset int    // byte offset of the offending field from the PDU start
	Field  string // field name as in C706, e.g. "frag_length"
	Err    error  // failure class
}

func (e *ParseError) Error() string {
	return "rpcparse: " + e.PType.String() + ": " + e.Field + " at offset " + strconv.Itoa(e.Offset) + ": " + e.Err.Error()
}

func (e *ParseError) Unwrap() error { return e.Err }

func perr(t PType, off int, field string, class error) error {
	return &ParseError{PType: t, Offset: off, Field: field, Err: class}
}
