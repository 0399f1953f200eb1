package kms

import (
	"crypto/subtle"
	"encoding/binary"
	"time"
	"unicode/utf16"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// Sizes of the KMS request (kms-protocol.md §3.1, §3.2).
const (
	RequestBaseLen    = 236                         // the fields every version shares
	RequestV4Len      = RequestBaseLen + 16         // base ‖ MAC
	RequestV6Len      = 4 + 16 + RequestBaseLen + 4 // version ‖ IV ‖ E(base ‖ 04040404); also V5
	WorkstationUnits  = 64                          // UTF-16 code units in the workstation field
	MaxRequiredCount  = 1000                        // N policy above this is refused by real hosts
	MaxLicenseStatus  = 6
	requestCipherText = RequestBaseLen + 4
)

// Request is a decoded KMS activation request: every field of the shared
// base, in wire order, plus the IV of V5/V6. It holds no pointers, so a
// caller can keep one per connection and decode into it without allocating.
type Request struct {
	MinorVersion      uint16
	MajorVersion      uint16 // 4, 5 or 6
	VMInfo            uint32 // 0 physical, 1 virtual machine
	LicenseStatus     uint32 // see LicenseStatusName
	BindingExpiration uint32 // minutes left in the current licence state
	ApplicationID     rpcparse.UUID
	SKUID             rpcparse.UUID // activation ID: the exact edition
	KMSCountedID      rpcparse.UUID // product group the host counts and grants
	CMID              rpcparse.UUID // client machine ID
	RequiredCount     uint32        // N count policy
	ClientTime        uint64        // FILETIME: 100 ns ticks since 1601-01-01 UTC
	PreviousCMID      rpcparse.UUID
	// WorkstationUTF16 is the raw UTF-16 field; WorkstationLen counts the
	// units before the terminating NUL.
	WorkstationUTF16 [WorkstationUnits]uint16
	WorkstationLen   int
	// IV is the clear-text IV ("salt") of a V5/V6 request; zero for V4.
	IV [16]byte
}

// filetimeEpochDelta is 1601-01-01 → 1970-01-01 in 100 ns ticks.
const filetimeEpochDelta = 116444736000000000

// Time returns the client request time in UTC.
func (r *Request) Time() time.Time { return FiletimeToTime(r.ClientTime) }

// FiletimeToTime converts a Windows FILETIME to a UTC time.
func FiletimeToTime(ft uint64) time.Time {
	d := int64(ft - filetimeEpochDelta) // wraps for pre-1970 values; fine for int64 ticks
	return time.Unix(d/1e7, d%1e7*100).UTC()
}

// TimeToFiletime converts t to a Windows FILETIME.
func TimeToFiletime(t time.Time) uint64 {
	return uint64(t.Unix()*1e7+int64(t.Nanosecond()/100)) + filetimeEpochDelta
}

// Workstation returns the workstation name as a string (it allocates).
func (r *Request) Workstation() string {
	n := min(max(r.WorkstationLen, 0), WorkstationUnits)
	return string(utf16.Decode(r.WorkstationUTF16[:n]))
}

// SetWorkstation stores name as UTF-16, NUL-terminated and zero-filled. It
// reports false, leaving r unchanged, when the name needs more than 63 units.
func (r *Request) SetWorkstation(name string) bool {
	u := utf16.Encode([]rune(name))
	if len(u) >= WorkstationUnits {
		return false
	}
	r.WorkstationUTF16 = [WorkstationUnits]uint16{}
	copy(r.WorkstationUTF16[:], u)
	r.WorkstationLen = len(u)
	return true
}

// DecodeRequest decodes a KMS request blob (from ParseRequestStub) into r.
// V4 must carry a valid MAC; V5/V6 must decrypt to the fixed PKCS#7 pad and
// an inner version equal to the clear one. Every version's fields must be in
// range: VM info ≤ 1, licence status ≤ 6, a known application ID, N policy
// ≤ 1000, and a printable workstation name NUL-terminated within 64 units.
// It does not allocate. On error r holds whatever was decoded so far.
func DecodeRequest(blob []byte, r *Request) error {
	if len(blob) < 4 {
		return derr("version", 0, ErrSize)
	}
	minor, major := binary.LittleEndian.Uint16(blob), binary.LittleEndian.Uint16(blob[2:])
	if minor != 0 || major < 4 || major > 6 {
		return derr("version", 0, ErrVersion)
	}
	var plain [requestCipherText]byte
	switch major {
	case 4:
		if len(blob) != RequestV4Len {
			return derr("request", len(blob), ErrSize)
		}
		mac := MACV4(blob[:RequestBaseLen])
		if subtle.ConstantTimeCompare(mac[:], blob[RequestBaseLen:RequestV4Len]) != 1 {
			return derr("mac", RequestBaseLen, ErrMAC)
		}
		copy(plain[:], blob[:RequestBaseLen])
		r.IV = [16]byte{}
	default:
		if len(blob) != RequestV6Len {
			return derr("request", len(blob), ErrSize)
		}
		r.IV = [16]byte(blob[4:20])
		CipherFor(major).DecryptCBC(plain[:], blob[20:RequestV6Len], &r.IV)
		if binary.LittleEndian.Uint32(plain[RequestBaseLen:]) != 0x04040404 {
			return derr("padding", 20+RequestBaseLen, ErrPadding)
		}
		if binary.LittleEndian.Uint32(plain[:]) != binary.LittleEndian.Uint32(blob) {
			return derr("inner version", 20, ErrVersion)
		}
	}
	// Field offsets below are relative to the plaintext base; a V5/V6 error
	// reports them shifted by the 20 clear bytes.
	shift := 0
	if major != 4 {
		shift = 20
	}
	return decodeBase(plain[:RequestBaseLen], r, shift)
}

func decodeBase(b []byte, r *Request, shift int) error {
	le := binary.LittleEndian
	_ = b[RequestBaseLen-1]
	r.MinorVersion = le.Uint16(b[0:])
	r.MajorVersion = le.Uint16(b[2:])
	r.VMInfo = le.Uint32(b[4:])
	r.LicenseStatus = le.Uint32(b[8:])
	r.BindingExpiration = le.Uint32(b[12:])
	r.ApplicationID = rpcparse.UUIDFromWire(b[16:], false)
	r.SKUID = rpcparse.UUIDFromWire(b[32:], false)
	r.KMSCountedID = rpcparse.UUIDFromWire(b[48:], false)
	r.CMID = rpcparse.UUIDFromWire(b[64:], false)
	r.RequiredCount = le.Uint32(b[80:])
	r.ClientTime = le.Uint64(b[84:])
	r.PreviousCMID = rpcparse.UUIDFromWire(b[92:], false)
	r.WorkstationLen = -1
	for i := range WorkstationUnits {
		u := le.Uint16(b[108+2*i:])
		r.WorkstationUTF16[i] = u
		if u == 0 && r.WorkstationLen < 0 {
			r.WorkstationLen = i
		}
	}
	switch {
	case r.VMInfo > 1:
		return derr("vm_info", shift+4, ErrField)
	case r.LicenseStatus > MaxLicenseStatus:
		return derr("license_status", shift+8, ErrField)
	case !knownApplication(r.ApplicationID):
		return derr("application_id", shift+16, ErrApplication)
	case r.RequiredCount > MaxRequiredCount:
		return derr("required_count", shift+80, ErrField)
	case r.WorkstationLen < 0:
		r.WorkstationLen = 0
		return derr("workstation", shift+108+2*WorkstationUnits, ErrWorkstation)
	}
	for i, u := range r.WorkstationUTF16[:r.WorkstationLen] {
		if u < 0x20 || u == 0x7f {
			return derr("workstation", shift+108+2*i, ErrWorkstation)
		}
	}
	return nil
}

func knownApplication(id rpcparse.UUID) bool {
	for i := range Applications {
		if Applications[i].ID == id {
			return true
		}
	}
	return false
}
