package kms

import (
	"errors"
	"strconv"
)

// Failure classes. Every decode error wraps exactly one of these inside a
// *DecodeError; match with errors.Is and log with Reason.
var (
	ErrStub        = errors.New("malformed RequestActivation NDR stub")
	ErrSize        = errors.New("KMS message has the wrong size")
	ErrVersion     = errors.New("unsupported KMS protocol version")
	ErrMAC         = errors.New("KMS V4 MAC mismatch")
	ErrPadding     = errors.New("bad KMS padding after decryption")
	ErrField       = errors.New("KMS field out of range")
	ErrApplication = errors.New("unknown KMS application ID")
	ErrWorkstation = errors.New("bad KMS workstation name")
)

// reasons are the stable tokens used as event.reason and as the reason label
// of metrics. They never change once released.
var reasons = [...]struct {
	err    error
	reason string
}{
	{ErrStub, "kms-bad-stub"},
	{ErrSize, "kms-bad-size"},
	{ErrVersion, "kms-bad-version"},
	{ErrMAC, "kms-bad-mac"},
	{ErrPadding, "kms-bad-padding"},
	{ErrField, "kms-bad-field"},
	{ErrApplication, "kms-unknown-application"},
	{ErrWorkstation, "kms-bad-workstation"},
}

// Reason returns the stable reason token of err's failure class, or
// "kms-malformed" when err wraps none of this package's sentinels.
func Reason(err error) string {
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return "kms-malformed"
}

// DecodeError says where a KMS stub or message failed to decode. Offset is
// relative to the slice handed to the failing function (stub or blob).
type DecodeError struct {
	Field  string
	Offset int
	Err    error
}

func (e *DecodeError) Error() string {
	return "kms: " + e.Field + " at offset " + strconv.Itoa(e.Offset) + ": " + e.Err.Error()
}

func (e *DecodeError) Unwrap() error { return e.Err }

func derr(field string, off int, err error) error {
	return &DecodeError{Field: field, Offset: off, Err: err}
}
