package kms

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
)

// CipherFor returns the fixed KMS cipher of a protocol major version:
// 4 → Rijndael-160 (the MAC key), 5 → AES-128, 6 → AES-128 with the V6 key
// schedule; nil for any other version.
func CipherFor(major uint16) *Cipher {
	switch major {
	case 4:
		return &cipherV4
	case 5:
		return &cipherV5
	case 6:
		return &cipherV6
	}
	return nil
}

// EncryptCBC encrypts src into dst in CBC mode. len(src) must be a multiple
// of 16 and dst at least as long; dst and src may be the same slice. No
// padding is added: callers lay out KMS plaintexts themselves.
func (c *Cipher) EncryptCBC(dst, src []byte, iv *[16]byte) {
	if len(src)%16 != 0 || len(dst) < len(src) {
		panic("kms: EncryptCBC: bad buffer lengths")
	}
	be := binary.BigEndian
	p0, p1, p2, p3 := be.Uint32(iv[0:]), be.Uint32(iv[4:]), be.Uint32(iv[8:]), be.Uint32(iv[12:])
	for i := 0; i < len(src); i += 16 {
		b := src[i : i+16 : i+16]
		p0, p1, p2, p3 = c.encrypt(p0^be.Uint32(b), p1^be.Uint32(b[4:]), p2^be.Uint32(b[8:]), p3^be.Uint32(b[12:]))
		d := dst[i : i+16 : i+16]
		be.PutUint32(d, p0)
		be.PutUint32(d[4:], p1)
		be.PutUint32(d[8:], p2)
		be.PutUint32(d[12:], p3)
	}
}

// DecryptCBC decrypts src into dst in CBC mode. len(src) must be a multiple
// of 16 and dst at least as long; dst and src may be the same slice.
// Padding is left in place for the caller to check.
func (c *Cipher) DecryptCBC(dst, src []byte, iv *[16]byte) {
	if len(src)%16 != 0 || len(dst) < len(src) {
		panic("kms: DecryptCBC: bad buffer lengths")
	}
	be := binary.BigEndian
	p0, p1, p2, p3 := be.Uint32(iv[0:]), be.Uint32(iv[4:]), be.Uint32(iv[8:]), be.Uint32(iv[12:])
	for i := 0; i < len(src); i += 16 {
		b := src[i : i+16 : i+16]
		c0, c1, c2, c3 := be.Uint32(b), be.Uint32(b[4:]), be.Uint32(b[8:]), be.Uint32(b[12:])
		s0, s1, s2, s3 := c.decrypt(c0, c1, c2, c3)
		d := dst[i : i+16 : i+16]
		be.PutUint32(d, s0^p0)
		be.PutUint32(d[4:], s1^p1)
		be.PutUint32(d[8:], s2^p2)
		be.PutUint32(d[12:], s3^p3)
		p0, p1, p2, p3 = c0, c1, c2, c3
	}
}

// MACV4 is the KMS V4 "hash" (kms-protocol.md §4.2): CBC-MAC with a zero IV
// under the 160-bit V4 key over msg padded with 0x80 and zeros to a multiple
// of 16 (a whole extra block when msg is already aligned). No subkey is mixed
// in, so it is not CMAC.
func MACV4(msg []byte) [16]byte {
	c := &cipherV4
	be := binary.BigEndian
	var s0, s1, s2, s3 uint32
	n := len(msg) &^ 15
	for i := 0; i < n; i += 16 {
		b := msg[i : i+16 : i+16]
		s0, s1, s2, s3 = c.encrypt(s0^be.Uint32(b), s1^be.Uint32(b[4:]), s2^be.Uint32(b[8:]), s3^be.Uint32(b[12:]))
	}
	var last [16]byte
	copy(last[:], msg[n:])
	last[len(msg)-n] = 0x80
	s0, s1, s2, s3 = c.encrypt(s0^be.Uint32(last[:]), s1^be.Uint32(last[4:]), s2^be.Uint32(last[8:]), s3^be.Uint32(last[12:]))
	var mac [16]byte
	be.PutUint32(mac[:], s0)
	be.PutUint32(mac[4:], s1)
	be.PutUint32(mac[8:], s2)
	be.PutUint32(mac[12:], s3)
	return mac
}

// The V6 response HMAC time-slot constants (kms-protocol.md §4.4).
const (
	hmacSlotLen  = 0x00000022816889BD // FILETIME ticks per slot (≈4.11 h)
	hmacSlotMul  = 0x000000208CBAB5ED
	hmacSlotBase = 0x3156CD5AC628477A
)

// v6Slot is the HMAC key-derivation input for a FILETIME; delta moves to a
// neighbouring slot (clients accept -1, 0 and +1).
func v6Slot(filetime uint64, delta int64) uint64 {
	return uint64(int64(filetime/hmacSlotLen)+delta)*hmacSlotMul + hmacSlotBase
}

// V6HMACKey derives the V6 response HMAC key from the response's client
// request time: bytes 16..31 of SHA-256 over the time slot (8 bytes LE).
func V6HMACKey(filetime uint64) [16]byte { return v6HMACKey(filetime, 0) }

func v6HMACKey(filetime uint64, delta int64) [16]byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v6Slot(filetime, delta))
	sum := sha256.Sum256(b[:])
	return [16]byte(sum[16:32])
}

// maxHMACMsg covers the largest V6 response HMAC input: D_K(IV) (16),
// a base with a 128-byte ePID (172) and the V6 trailer fields (72).
const maxHMACMsg = 16 + 44 + maxEPIDBytes + 16 + 32 + 8 + 16

// V6ResponseHMAC returns the 16 bytes a V6 response carries in its HMAC
// field: bytes 16..31 of HMAC-SHA256(key, msg). It does not allocate for
// messages up to the size of a real V6 response.
func V6ResponseHMAC(key [16]byte, msg []byte) [16]byte {
	if len(msg) > maxHMACMsg {
		// A copy, so that msg itself never escapes through hash.Hash.
		return hmacLong(key, append([]byte(nil), msg...))
	}
	// HMAC spelled out over fixed buffers so that sha256.Sum256 keeps
	// everything on the stack.
	var in [64 + maxHMACMsg]byte
	var out [64 + 32]byte
	for i := range 64 {
		var k byte
		if i < len(key) {
			k = key[i]
		}
		in[i] = k ^ 0x36
		out[i] = k ^ 0x5c
	}
	copy(in[64:], msg)
	inner := sha256.Sum256(in[:64+len(msg)])
	copy(out[64:], inner[:])
	sum := sha256.Sum256(out[:])
	return [16]byte(sum[16:32])
}

// hmacLong handles inputs longer than any V6 response; it allocates.
func hmacLong(key [16]byte, msg []byte) [16]byte {
	m := hmac.New(sha256.New, key[:])
	m.Write(msg)
	return [16]byte(m.Sum(nil)[16:32])
}
