package kms

import "encoding/binary"

// NDR framing of RequestActivation (opnum 0), kms-protocol.md §2:
//
//	int RequestActivation([in] int requestSize, [in, size_is(requestSize)] unsigned char *request,
//	                      [out] int *responseSize, [out, size_is(, *responseSize)] unsigned char **response)

// MaxBlob bounds the KMS blob a stub may declare. Real requests are 252 or
// 260 bytes and responses at most 272; the bound keeps a hostile size field
// from meaning anything before it is compared with the bytes present.
const MaxBlob = 1024

// ResponseReferent is the non-NULL referent id KMS hosts (Windows, vlmcsd,
// py-kms) write in front of the response bytes.
const ResponseReferent = 0x00020000

// Encoding is how a stub is marshalled: the transfer syntax of its
// presentation context and the integer byte order the call's first
// fragment declared in its data representation. A host unmarshals the
// stub in that byte order, so the proxy must read it the same way: a
// big-endian PDU carrying a little-endian stub means something else at
// the host than it seems to here. The zero value is NDR 2.0 little-endian,
// what every Windows client sends.
type Encoding struct {
	NDR64     bool
	BigEndian bool
}

// Order is the stub's integer byte order.
func (e Encoding) Order() binary.ByteOrder {
	if e.BigEndian {
		return binary.BigEndian
	}
	return binary.LittleEndian
}

// ParseRequestStub checks the NDR framing of a RequestActivation request
// stub and returns the KMS request blob inside it (a sub-slice of stub).
// It is strict: requestSize must equal max_count and the bytes remaining,
// and the NDR64 pad after the 32-bit requestSize must be zero.
func ParseRequestStub(stub []byte, enc Encoding) ([]byte, error) {
	bo := enc.Order()
	hdr := 8
	if enc.NDR64 {
		hdr = 16
	}
	if len(stub) < hdr {
		return nil, derr("stub", len(stub), ErrStub)
	}
	size := uint64(bo.Uint32(stub))
	var count uint64
	if enc.NDR64 {
		if bo.Uint32(stub[4:]) != 0 {
			return nil, derr("requestSize pad", 4, ErrStub)
		}
		count = bo.Uint64(stub[8:])
	} else {
		count = uint64(bo.Uint32(stub[4:]))
	}
	if size != count {
		return nil, derr("max_count", hdr/2, ErrStub)
	}
	if size > MaxBlob || size != uint64(len(stub)-hdr) {
		return nil, derr("requestSize", 0, ErrStub)
	}
	return stub[hdr:], nil
}

// ParseResponseStub checks the NDR framing of a RequestActivation response
// stub and returns the KMS response blob (a sub-slice of stub, nil for a
// refusal) and the operation's HRESULT. A refusal is responseSize 0 with a
// NULL referent. It is as lenient as real clients about the tail: the
// HRESULT may sit anywhere in the last 4–7 bytes as long as the other tail
// bytes are zero (vlmcsd and py-kms pad after it, NDR aligns before it).
func ParseResponseStub(stub []byte, enc Encoding) (blob []byte, hresult uint32, err error) {
	bo := enc.Order()
	w := 4
	if enc.NDR64 {
		w = 8
	}
	word := func(off int) uint64 {
		if enc.NDR64 {
			return bo.Uint64(stub[off:])
		}
		return uint64(bo.Uint32(stub[off:]))
	}
	if len(stub) < 2*w+4 {
		return nil, 0, derr("stub", len(stub), ErrStub)
	}
	size, ref := word(0), word(w)
	off := 2 * w
	if ref == 0 {
		if size != 0 {
			return nil, 0, derr("responseSize", 0, ErrStub)
		}
	} else {
		if len(stub) < 3*w+4 {
			return nil, 0, derr("max_count", len(stub), ErrStub)
		}
		if word(off) != size {
			return nil, 0, derr("max_count", off, ErrStub)
		}
		off += w
		if size > MaxBlob || size+4 > uint64(len(stub)-off) {
			return nil, 0, derr("responseSize", 0, ErrStub)
		}
		blob = stub[off : off+int(size)]
		off += int(size)
	}
	hr, ok := stubTail(stub, off, bo)
	if !ok {
		return nil, 0, derr("hresult", off, ErrStub)
	}
	return blob, hr, nil
}

// stubTail finds the HRESULT in the 4–7 bytes after off. The NDR-aligned
// position is preferred; any other position is accepted when every byte
// around it is zero.
func stubTail(stub []byte, off int, bo binary.ByteOrder) (uint32, bool) {
	tail := stub[off:]
	if len(tail) < 4 || len(tail) > 7 {
		return 0, false
	}
	aligned := (4 - off%4) % 4
	try := func(at int) (uint32, bool) {
		if at+4 > len(tail) {
			return 0, false
		}
		for i, b := range tail {
			if (i < at || i >= at+4) && b != 0 {
				return 0, false
			}
		}
		return bo.Uint32(tail[at:]), true
	}
	if hr, ok := try(aligned); ok {
		return hr, true
	}
	for at := 0; at+4 <= len(tail); at++ {
		if hr, ok := try(at); ok {
			return hr, true
		}
	}
	return 0, false
}
