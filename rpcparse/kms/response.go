package kms

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"time"
	"unicode/utf16"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// Sizes of the KMS response (kms-protocol.md §3.3, §3.4).
const (
	ResponseFixedLen = 44  // base length without the ePID
	maxEPIDBytes     = 128 // vlmcsd's cap; real ePIDs are 100 bytes
	EPIDMaxUnits     = maxEPIDBytes / 2
	// Trailers after the base inside the V5/V6 plaintext, before the pad.
	responseV5Extra = 16 + 32               // random-xor ‖ SHA-256(random)
	responseV6Extra = 16 + 32 + 8 + 16 + 16 // ... ‖ HwID ‖ xored IVs ‖ HMAC
	// maxResponseCipher is the largest V5/V6 ciphertext we decrypt: a V6
	// plaintext with a 128-byte ePID (260 bytes) padded to 272.
	maxResponseCipher = 272
)

// Response is a decoded KMS activation response. Like Request it holds no
// pointers. The booleans report what could be checked: MACVerified for V4,
// HMACVerified for V6, and, when the request is known, DigestVerified and
// IVMatch for V5/V6 and CMIDMatch/TimeMatch for every version.
type Response struct {
	MinorVersion uint16
	MajorVersion uint16
	// EPIDUTF16 is the host's extended PID; EPIDLen counts the units before
	// the NUL (or all of them when the host sent none).
	EPIDUTF16          [EPIDMaxUnits]uint16
	EPIDLen            int
	CMID               rpcparse.UUID
	ClientTime         uint64 // FILETIME echoed from the request
	CurrentCount       uint32
	ActivationInterval uint32   // minutes between retries while not activated
	RenewalInterval    uint32   // minutes between renewals
	IV                 [16]byte // V5/V6 clear IV
	HwID               [8]byte  // V6 host hardware ID

	MACVerified    bool // V4: the MAC over the base is correct
	HMACVerified   bool // V6: the HMAC keyed by the client time is correct
	DigestVerified bool // V5/V6: SHA-256 of the random value matches (needs the request)
	IVMatch        bool // V5: IV equals the request's; V6: xored IVs equal D_K(request IV)
	CMIDMatch      bool // CMID equals the request's
	TimeMatch      bool // client time equals the request's
}

// EPID returns the host ePID as a string (it allocates).
func (r *Response) EPID() string {
	n := min(max(r.EPIDLen, 0), EPIDMaxUnits)
	return string(utf16.Decode(r.EPIDUTF16[:n]))
}

// SetEPID stores s as the ePID. It reports false, leaving r unchanged, when
// s needs more than 63 UTF-16 units.
func (r *Response) SetEPID(s string) bool {
	u := utf16.Encode([]rune(s))
	if len(u) >= EPIDMaxUnits {
		return false
	}
	r.EPIDUTF16 = [EPIDMaxUnits]uint16{}
	copy(r.EPIDUTF16[:], u)
	r.EPIDLen = len(u)
	return true
}

// Time returns the echoed client request time in UTC.
func (r *Response) Time() time.Time { return FiletimeToTime(r.ClientTime) }

// DecodeResponse decodes a KMS response blob (from ParseResponseStub) into
// r. req is the request it answers, or nil when unknown; with it the
// response is cross-checked (see the Response booleans) and its version
// must match. Failed MAC/HMAC/digest checks are reported in r, not as
// errors: the proxy logs replies, it does not judge the host. It does not
// allocate. On error r holds whatever was decoded so far.
func DecodeResponse(blob []byte, req *Request, r *Response) error {
	*r = Response{}
	if len(blob) < 4 {
		return derr("version", 0, ErrSize)
	}
	minor, major := binary.LittleEndian.Uint16(blob), binary.LittleEndian.Uint16(blob[2:])
	r.MinorVersion, r.MajorVersion = minor, major
	if minor != 0 || major < 4 || major > 6 || (req != nil && req.MajorVersion != major) {
		return derr("version", 0, ErrVersion)
	}
	if major == 4 {
		if len(blob) < ResponseFixedLen+16 {
			return derr("response", len(blob), ErrSize)
		}
		base := blob[:len(blob)-16]
		if err := decodeResponseBase(base, r, 0); err != nil {
			return err
		}
		mac := MACV4(base)
		r.MACVerified = subtle.ConstantTimeCompare(mac[:], blob[len(base):]) == 1
		r.crossCheck(req)
		return nil
	}

	// V5/V6: decrypt IV ‖ ciphertext with a zero IV, so that block 0 is
	// D_K(IV), which the V6 HMAC covers, and the rest is the plaintext.
	ct := len(blob) - 4
	extra := responseV5Extra
	if major == 6 {
		extra = responseV6Extra
	}
	// IV block, then at least a base with a one-unit ePID, the trailer and a pad.
	minCipher := 16 + (ResponseFixedLen+2+extra+16)&^15
	if ct < minCipher || ct%16 != 0 || ct-16 > maxResponseCipher {
		return derr("response", len(blob), ErrSize)
	}
	r.IV = [16]byte(blob[4:20])
	var buf [16 + maxResponseCipher]byte
	var zero [16]byte
	c := CipherFor(major)
	c.DecryptCBC(buf[:ct], blob[4:], &zero)
	plain := buf[16:ct]
	n := int(plain[len(plain)-1])
	if n < 1 || n > 16 {
		return derr("padding", len(blob)-1, ErrPadding)
	}
	for _, b := range plain[len(plain)-n:] {
		if int(b) != n {
			return derr("padding", len(blob)-n, ErrPadding)
		}
	}
	plain = plain[:len(plain)-n]
	if len(plain) < ResponseFixedLen+extra {
		return derr("response", len(blob), ErrSize)
	}
	base := plain[:len(plain)-extra]
	if err := decodeResponseBase(base, r, 20); err != nil {
		return err
	}
	if binary.LittleEndian.Uint32(base) != binary.LittleEndian.Uint32(blob) {
		return derr("inner version", 20, ErrVersion)
	}
	tr := plain[len(base):]
	randXor, digest := tr[0:16], tr[16:48]
	if major == 6 {
		r.HwID = [8]byte(tr[48:56])
		key := V6HMACKey(r.ClientTime)
		// The HMAC covers D_K(wire IV) ‖ everything before the HMAC field.
		mac := V6ResponseHMAC(key, buf[:16+len(base)+72])
		r.HMACVerified = subtle.ConstantTimeCompare(mac[:], tr[72:88]) == 1
	}
	r.crossCheck(req)
	if req != nil {
		var dk, rnd [16]byte
		c.DecryptBlock(dk[:], req.IV[:])
		for i := range rnd {
			rnd[i] = randXor[i] ^ dk[i]
		}
		sum := sha256.Sum256(rnd[:])
		r.DigestVerified = subtle.ConstantTimeCompare(sum[:], digest) == 1
		if major == 5 {
			r.IVMatch = r.IV == req.IV
		} else {
			r.IVMatch = subtle.ConstantTimeCompare(dk[:], tr[56:72]) == 1
		}
	}
	return nil
}

func (r *Response) crossCheck(req *Request) {
	if req != nil {
		r.CMIDMatch = r.CMID == req.CMID
		r.TimeMatch = r.ClientTime == req.ClientTime
	}
}

// decodeResponseBase reads the version-independent fields; b must be exactly
// the base (44 + ePID size bytes). shift is b's offset in the blob.
func decodeResponseBase(b []byte, r *Response, shift int) error {
	le := binary.LittleEndian
	p := le.Uint32(b[4:])
	if p < 2 || p%2 != 0 || p > maxEPIDBytes || int(p) != len(b)-ResponseFixedLen {
		return derr("epid_size", shift+4, ErrSize)
	}
	r.EPIDLen = int(p / 2)
	for i := range int(p / 2) {
		u := le.Uint16(b[8+2*i:])
		if u == 0 && r.EPIDLen == int(p/2) {
			r.EPIDLen = i
		}
		if r.EPIDLen == int(p/2) {
			r.EPIDUTF16[i] = u
		}
	}
	o := 8 + int(p)
	r.CMID = rpcparse.UUIDFromWire(b[o:], false)
	r.ClientTime = le.Uint64(b[o+16:])
	r.CurrentCount = le.Uint32(b[o+24:])
	r.ActivationInterval = le.Uint32(b[o+28:])
	r.RenewalInterval = le.Uint32(b[o+32:])
	return nil
}
