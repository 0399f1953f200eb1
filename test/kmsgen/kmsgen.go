// Package kmsgen builds KMS activation messages for tests: V4 requests with a
// valid MAC, V5/V6 requests with a valid encryption, the matching responses,
// their RequestActivation NDR stubs and the request/response PDUs around
// them. It is the inverse of rpcparse/kms and exists so end-to-end tests can
// make a request with a chosen CMID, workstation, clock or application.
//
//	req := kmsgen.NewRequest(6)
//	req.SetWorkstation("dmz-ws09.corp.example")
//	blob := kmsgen.EncodeRequest(&req, kmsgen.IV(1))
//	pdu := kmsgen.RequestPDU(2, 0, kmsgen.RequestStub(blob, false))
//
// Encoders write fields as given and never validate them, so tests can also
// build what a decoder must refuse.
package kmsgen

import (
	"crypto/sha256"
	"encoding/binary"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// Defaults of NewRequest/NewResponse: a Windows 10 Professional client and
// the vlmcsd host seen in the captures of testdata/kms.
var (
	DefaultApplication  = rpcparse.MustUUID("55c92734-d682-4d71-983e-d6ec3f16059f")
	DefaultSKU          = rpcparse.MustUUID("2de67392-b7a7-462a-b1ca-108dd189f588")
	DefaultKMSCountedID = rpcparse.MustUUID("58e2134f-8e11-4d17-9cb2-91069c151148")
	DefaultCMID         = rpcparse.MustUUID("fe20bb6d-bc46-453e-81fd-8c3294ffd4ae")
	DefaultTime         = time.Date(2026, 11, 22, 7, 5, 2, 0, time.UTC)
	DefaultWorkstation  = "dmz-ws01.corp.example"
	DefaultEPID         = "03612-00206-562-186253-03-2057-14393.0000-2032024"
	DefaultHwID         = [8]byte{0x3A, 0x1C, 0x04, 0x96, 0x00, 0xB6, 0x00, 0x76}
)

// NewRequest returns a valid request of the given major version (4, 5, 6)
// with the defaults above: OOB grace, 43200 minutes left, N policy 25.
func NewRequest(major uint16) kms.Request {
	r := kms.Request{
		MajorVersion:      major,
		LicenseStatus:     2,
		BindingExpiration: 43200,
		ApplicationID:     DefaultApplication,
		SKUID:             DefaultSKU,
		KMSCountedID:      DefaultKMSCountedID,
		CMID:              DefaultCMID,
		RequiredCount:     25,
		ClientTime:        kms.TimeToFiletime(DefaultTime),
	}
	r.SetWorkstation(DefaultWorkstation)
	return r
}

// IV returns a deterministic 16-byte IV derived from seed.
func IV(seed byte) [16]byte {
	var iv [16]byte
	for i := range iv {
		iv[i] = seed*31 + byte(i)*7 + 1
	}
	return iv
}

// PutRequestBase writes r's 236 base bytes into b in wire order. The
// workstation field is written as stored, terminator or not.
func PutRequestBase(b []byte, r *kms.Request) {
	le := binary.LittleEndian
	_ = b[kms.RequestBaseLen-1]
	le.PutUint16(b[0:], r.MinorVersion)
	le.PutUint16(b[2:], r.MajorVersion)
	le.PutUint32(b[4:], r.VMInfo)
	le.PutUint32(b[8:], r.LicenseStatus)
	le.PutUint32(b[12:], r.BindingExpiration)
	r.ApplicationID.PutWire(b[16:], false)
	r.SKUID.PutWire(b[32:], false)
	r.KMSCountedID.PutWire(b[48:], false)
	r.CMID.PutWire(b[64:], false)
	le.PutUint32(b[80:], r.RequiredCount)
	le.PutUint64(b[84:], r.ClientTime)
	r.PreviousCMID.PutWire(b[92:], false)
	for i, u := range r.WorkstationUTF16 {
		le.PutUint16(b[108+2*i:], u)
	}
}

// EncodeRequest builds the KMS request blob for r.MajorVersion: V4 is the
// base and its MAC (iv unused); V5/V6 are the clear version, iv and the
// base encrypted with the version's key after the 04040404 pad.
func EncodeRequest(r *kms.Request, iv [16]byte) []byte {
	var base [kms.RequestBaseLen]byte
	PutRequestBase(base[:], r)
	if r.MajorVersion == 4 {
		mac := kms.MACV4(base[:])
		return append(base[:], mac[:]...)
	}
	plain := make([]byte, kms.RequestBaseLen+4)
	copy(plain, base[:])
	copy(plain[kms.RequestBaseLen:], []byte{4, 4, 4, 4})
	return SealRequest(plain, uint32(r.MajorVersion)<<16|uint32(r.MinorVersion), iv)
}

// SealRequest builds a V5/V6-style blob from an arbitrary plaintext: the
// clear version u32, iv, and plain CBC-encrypted under the key of the
// version's major number. len(plain) must be a multiple of 16. Tests use it
// to make blobs with bad padding or a wrong inner version.
func SealRequest(plain []byte, version uint32, iv [16]byte) []byte {
	c := kms.CipherFor(uint16(version >> 16))
	if c == nil {
		c = kms.CipherFor(6)
	}
	out := make([]byte, 20+len(plain))
	binary.LittleEndian.PutUint32(out, version)
	copy(out[4:], iv[:])
	c.EncryptCBC(out[20:], plain, &iv)
	return out
}

// RequestStub wraps a KMS request blob in the RequestActivation [in] NDR
// stub: requestSize, max_count, bytes; NDR64 widens max_count to 8 bytes.
func RequestStub(blob []byte, ndr64 bool) []byte {
	return RequestStubIn(blob, kms.Encoding{NDR64: ndr64})
}

// RequestStubIn is RequestStub in the byte order enc names, for
// big-endian clients (the PDU's data representation must say the same).
func RequestStubIn(blob []byte, enc kms.Encoding) []byte {
	var bo binary.AppendByteOrder = binary.LittleEndian
	if enc.BigEndian {
		bo = binary.BigEndian
	}
	var out []byte
	if enc.NDR64 {
		// requestSize is a 32-bit int in NDR64 too; the 64-bit max_count
		// is aligned to 8 after it.
		out = bo.AppendUint32(out, uint32(len(blob)))
		out = bo.AppendUint32(out, 0)
		out = bo.AppendUint64(out, uint64(len(blob)))
	} else {
		out = bo.AppendUint32(out, uint32(len(blob)))
		out = bo.AppendUint32(out, uint32(len(blob)))
	}
	return append(out, blob...)
}

// ResponseStub builds the RequestActivation [out] NDR stub: responseSize,
// referent 0x00020000, max_count, the blob, the HRESULT and zero padding to
// a multiple of 4. A nil blob gives the refusal form (size 0, NULL referent).
func ResponseStub(blob []byte, hresult uint32, ndr64 bool) []byte {
	var out []byte
	word := func(v uint64) {
		if ndr64 {
			out = binary.LittleEndian.AppendUint64(out, v)
		} else {
			out = binary.LittleEndian.AppendUint32(out, uint32(v))
		}
	}
	if blob == nil {
		word(0)
		word(0)
	} else {
		word(uint64(len(blob)))
		word(kms.ResponseReferent)
		word(uint64(len(blob)))
		out = append(out, blob...)
	}
	out = binary.LittleEndian.AppendUint32(out, hresult)
	for len(out)%4 != 0 {
		out = append(out, 0)
	}
	return out
}

// NewResponse returns the response a vlmcsd host with default settings gives
// to req: its CMID and time, count 2×N, intervals 120/10080, the default
// ePID and HwID, and (for V6) a fresh IV derived from the request's.
func NewResponse(req *kms.Request) kms.Response {
	r := kms.Response{
		MajorVersion:       req.MajorVersion,
		MinorVersion:       req.MinorVersion,
		CMID:               req.CMID,
		ClientTime:         req.ClientTime,
		CurrentCount:       2 * req.RequiredCount,
		ActivationInterval: 120,
		RenewalInterval:    10080,
		HwID:               DefaultHwID,
		IV:                 req.IV,
	}
	if req.MajorVersion == 6 {
		for i := range r.IV {
			r.IV[i] ^= 0x5a
		}
	}
	r.SetEPID(DefaultEPID)
	return r
}

// PutResponseBase appends r's base (44 + ePID bytes) to dst. The ePID is
// written as EPIDLen units plus a NUL, or without one when it fills all 64
// units (the decoder accepts both).
func PutResponseBase(dst []byte, r *kms.Response) []byte {
	le := binary.LittleEndian
	n := min(max(r.EPIDLen, 0), kms.EPIDMaxUnits)
	units := min(n+1, kms.EPIDMaxUnits)
	dst = le.AppendUint16(dst, r.MinorVersion)
	dst = le.AppendUint16(dst, r.MajorVersion)
	dst = le.AppendUint32(dst, uint32(2*units))
	for _, u := range r.EPIDUTF16[:n] {
		dst = le.AppendUint16(dst, u)
	}
	if units > n {
		dst = append(dst, 0, 0)
	}
	var g [16]byte
	r.CMID.PutWire(g[:], false)
	dst = append(dst, g[:]...)
	dst = le.AppendUint64(dst, r.ClientTime)
	dst = le.AppendUint32(dst, r.CurrentCount)
	dst = le.AppendUint32(dst, r.ActivationInterval)
	return le.AppendUint32(dst, r.RenewalInterval)
}

// EncodeResponse builds the response blob for r.MajorVersion answering req.
// random is the host's 16-byte random value R of V5/V6. V5 uses req.IV as
// its IV (clients check that); V6 uses r.IV and r.HwID and computes the
// HMAC keyed by r.ClientTime.
func EncodeResponse(r *kms.Response, req *kms.Request, random [16]byte) []byte {
	base := PutResponseBase(nil, r)
	if r.MajorVersion == 4 {
		mac := kms.MACV4(base)
		return append(base, mac[:]...)
	}
	c := kms.CipherFor(r.MajorVersion)
	var dk [16]byte
	c.DecryptBlock(dk[:], req.IV[:])
	iv := req.IV
	if r.MajorVersion == 6 {
		iv = r.IV
	}
	// plain starts with D_K(iv): the V6 HMAC covers it, and CBC-encrypting
	// the whole with a zero IV makes its ciphertext block equal iv itself,
	// which is exactly the clear IV field.
	plain := make([]byte, 16, 16+len(base)+96)
	c.DecryptBlock(plain, iv[:])
	plain = append(plain, base...)
	for i := range random {
		plain = append(plain, random[i]^dk[i])
	}
	sum := sha256.Sum256(random[:])
	plain = append(plain, sum[:]...)
	if r.MajorVersion == 6 {
		plain = append(plain, r.HwID[:]...)
		plain = append(plain, dk[:]...)
		mac := kms.V6ResponseHMAC(kms.V6HMACKey(r.ClientTime), plain)
		plain = append(plain, mac[:]...)
	}
	pad := 16 - (len(plain)-16)%16
	for range pad {
		plain = append(plain, byte(pad))
	}
	out := make([]byte, 4+len(plain))
	binary.LittleEndian.PutUint16(out, r.MinorVersion)
	binary.LittleEndian.PutUint16(out[2:], r.MajorVersion)
	var zero [16]byte
	c.EncryptCBC(out[4:], plain, &zero)
	return out
}

// RequestPDU wraps a stub in a single-fragment little-endian request PDU
// for opnum 0.
func RequestPDU(callID uint32, ctxID uint16, stub []byte) []byte {
	h := rpcparse.PDUHead{Flags: rpcparse.FlagFirstFrag | rpcparse.FlagLastFrag, DataRep: rpcparse.LittleEndianDataRep, CallID: callID}
	return rpcparse.AppendRequest(nil, h, ctxID, 0, nil, stub, nil)
}

// ResponsePDU wraps a stub in a single-fragment little-endian response PDU.
func ResponsePDU(callID uint32, ctxID uint16, stub []byte) []byte {
	h := rpcparse.PDUHead{Flags: rpcparse.FlagFirstFrag | rpcparse.FlagLastFrag, DataRep: rpcparse.LittleEndianDataRep, CallID: callID}
	return rpcparse.AppendResponse(nil, h, ctxID, uint32(len(stub)), stub)
}
