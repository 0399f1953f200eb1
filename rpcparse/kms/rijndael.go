package kms

import "encoding/binary"

// Our own table-driven Rijndael with 128-bit blocks. KMS needs two things a
// stock AES cannot give: a 160-bit key (Nk = 5, 11 rounds) for the V4 MAC and
// a tampered AES-128 key schedule for V6 (kms-protocol.md §4.2, §4.3).

// maxRounds bounds the schedule arrays: Nk = 5 gives 11 rounds, 48 words.
const maxRounds = 11

// Cipher is an expanded Rijndael key with 128-bit blocks. The three KMS
// keys are expanded once at init; get them with CipherFor. A Cipher is
// read-only and safe for concurrent use.
type Cipher struct {
	rounds int
	enc    [4 * (maxRounds + 1)]uint32
	dec    [4 * (maxRounds + 1)]uint32
}

var (
	sbox, invSbox                [256]byte
	te0, te1, te2, te3           [256]uint32
	td0, td1, td2, td3           [256]uint32
	rcon                         [10]uint32
	cipherV4, cipherV5, cipherV6 Cipher
)

// The public KMS keys (kms-protocol.md §4.1).
var (
	keyV4 = [20]byte{0x05, 0x3D, 0x83, 0x07, 0xF9, 0xE5, 0xF0, 0x88, 0xEB, 0x5E, 0xA6, 0x68, 0x6C, 0xF0, 0x37, 0xC7, 0xE4, 0xEF, 0xD2, 0xD6}
	keyV5 = [16]byte{0xCD, 0x7E, 0x79, 0x6F, 0x2A, 0xB2, 0x5D, 0xCB, 0x55, 0xFF, 0xC8, 0xEF, 0x83, 0x64, 0xC4, 0x70}
	keyV6 = [16]byte{0xA9, 0x4A, 0x41, 0x95, 0xE2, 0x01, 0x43, 0x2D, 0x9B, 0xCB, 0x46, 0x04, 0x05, 0xD8, 0x4A, 0x21}
)

func init() {
	initTables()
	expandKey(&cipherV4, keyV4[:], false)
	expandKey(&cipherV5, keyV5[:], false)
	expandKey(&cipherV6, keyV6[:], true)
}

// xtime multiplies by x in GF(2^8) modulo x^8+x^4+x^3+x+1.
func xtime(a byte) byte {
	if a&0x80 != 0 {
		return a<<1 ^ 0x1b
	}
	return a << 1
}

func gmul(a, b byte) byte {
	var p byte
	for b != 0 {
		if b&1 != 0 {
			p ^= a
		}
		a = xtime(a)
		b >>= 1
	}
	return p
}

// initTables derives the S-box from its definition (multiplicative inverse
// followed by the affine map) and builds the round tables from it, so no
// opaque constant tables live in the source.
func initTables() {
	// Walk the field with generator 3: p = 3^i, q = 3^-i.
	var p, q byte = 1, 1
	for {
		p = p ^ xtime(p) // p *= 3
		q ^= q << 1      // q /= 3
		q ^= q << 2
		q ^= q << 4
		if q&0x80 != 0 {
			q ^= 0x09
		}
		x := q ^ (q<<1 | q>>7) ^ (q<<2 | q>>6) ^ (q<<3 | q>>5) ^ (q<<4 | q>>4)
		sbox[p] = x ^ 0x63
		if p == 1 {
			break
		}
	}
	sbox[0] = 0x63
	for i := range 256 {
		invSbox[sbox[i]] = byte(i)
	}
	for i := range 256 {
		s := sbox[i]
		w := uint32(xtime(s))<<24 | uint32(s)<<16 | uint32(s)<<8 | uint32(xtime(s)^s)
		te0[i], te1[i], te2[i], te3[i] = w, w>>8|w<<24, w>>16|w<<16, w>>24|w<<8
		v := invSbox[i]
		w = uint32(gmul(v, 14))<<24 | uint32(gmul(v, 9))<<16 | uint32(gmul(v, 13))<<8 | uint32(gmul(v, 11))
		td0[i], td1[i], td2[i], td3[i] = w, w>>8|w<<24, w>>16|w<<16, w>>24|w<<8
	}
	r := byte(1)
	for i := range rcon {
		rcon[i] = uint32(r) << 24
		r = xtime(r)
	}
}

func subWord(w uint32) uint32 {
	return uint32(sbox[w>>24])<<24 | uint32(sbox[w>>16&0xff])<<16 | uint32(sbox[w>>8&0xff])<<8 | uint32(sbox[w&0xff])
}

// expandKey runs the standard Rijndael key expansion for a 16- or 20-byte
// key. kmsV6 applies the KMS V6 change: the first byte of round keys 4, 6
// and 8 is XORed with 0x73, 0x09 and 0xE4 (kms-protocol.md §4.3).
func expandKey(c *Cipher, key []byte, kmsV6 bool) {
	nk := len(key) / 4
	c.rounds = nk + 6
	n := 4 * (c.rounds + 1)
	for i := range nk {
		c.enc[i] = binary.BigEndian.Uint32(key[4*i:])
	}
	for i := nk; i < n; i++ {
		t := c.enc[i-1]
		if i%nk == 0 {
			t = subWord(t<<8|t>>24) ^ rcon[i/nk-1]
		}
		c.enc[i] = c.enc[i-nk] ^ t
	}
	if kmsV6 {
		c.enc[16] ^= 0x73 << 24
		c.enc[24] ^= 0x09 << 24
		c.enc[32] ^= 0xE4 << 24
	}
	// Equivalent inverse cipher: reversed round keys, InvMixColumns applied
	// to all but the first and last.
	for r := 0; r <= c.rounds; r++ {
		for j := range 4 {
			w := c.enc[4*(c.rounds-r)+j]
			if r > 0 && r < c.rounds {
				w = td0[sbox[w>>24]] ^ td1[sbox[w>>16&0xff]] ^ td2[sbox[w>>8&0xff]] ^ td3[sbox[w&0xff]]
			}
			c.dec[4*r+j] = w
		}
	}
}

// Rounds reports the number of rounds: 10 for a 128-bit key, 11 for 160.
func (c *Cipher) Rounds() int { return c.rounds }

// EncryptBlock encrypts one 16-byte block from src into dst (may overlap).
func (c *Cipher) EncryptBlock(dst, src []byte) {
	_, _ = src[15], dst[15]
	s0, s1, s2, s3 := c.encrypt(binary.BigEndian.Uint32(src), binary.BigEndian.Uint32(src[4:]),
		binary.BigEndian.Uint32(src[8:]), binary.BigEndian.Uint32(src[12:]))
	binary.BigEndian.PutUint32(dst, s0)
	binary.BigEndian.PutUint32(dst[4:], s1)
	binary.BigEndian.PutUint32(dst[8:], s2)
	binary.BigEndian.PutUint32(dst[12:], s3)
}

// DecryptBlock decrypts one 16-byte block from src into dst (may overlap).
func (c *Cipher) DecryptBlock(dst, src []byte) {
	_, _ = src[15], dst[15]
	s0, s1, s2, s3 := c.decrypt(binary.BigEndian.Uint32(src), binary.BigEndian.Uint32(src[4:]),
		binary.BigEndian.Uint32(src[8:]), binary.BigEndian.Uint32(src[12:]))
	binary.BigEndian.PutUint32(dst, s0)
	binary.BigEndian.PutUint32(dst[4:], s1)
	binary.BigEndian.PutUint32(dst[8:], s2)
	binary.BigEndian.PutUint32(dst[12:], s3)
}

func (c *Cipher) encrypt(s0, s1, s2, s3 uint32) (uint32, uint32, uint32, uint32) {
	k := c.enc[:4*(c.rounds+1)]
	s0 ^= k[0]
	s1 ^= k[1]
	s2 ^= k[2]
	s3 ^= k[3]
	i := 4
	for r := 1; r < c.rounds; r++ {
		t0 := te0[s0>>24] ^ te1[s1>>16&0xff] ^ te2[s2>>8&0xff] ^ te3[s3&0xff] ^ k[i]
		t1 := te0[s1>>24] ^ te1[s2>>16&0xff] ^ te2[s3>>8&0xff] ^ te3[s0&0xff] ^ k[i+1]
		t2 := te0[s2>>24] ^ te1[s3>>16&0xff] ^ te2[s0>>8&0xff] ^ te3[s1&0xff] ^ k[i+2]
		t3 := te0[s3>>24] ^ te1[s0>>16&0xff] ^ te2[s1>>8&0xff] ^ te3[s2&0xff] ^ k[i+3]
		s0, s1, s2, s3 = t0, t1, t2, t3
		i += 4
	}
	t0 := uint32(sbox[s0>>24])<<24 | uint32(sbox[s1>>16&0xff])<<16 | uint32(sbox[s2>>8&0xff])<<8 | uint32(sbox[s3&0xff])
	t1 := uint32(sbox[s1>>24])<<24 | uint32(sbox[s2>>16&0xff])<<16 | uint32(sbox[s3>>8&0xff])<<8 | uint32(sbox[s0&0xff])
	t2 := uint32(sbox[s2>>24])<<24 | uint32(sbox[s3>>16&0xff])<<16 | uint32(sbox[s0>>8&0xff])<<8 | uint32(sbox[s1&0xff])
	t3 := uint32(sbox[s3>>24])<<24 | uint32(sbox[s0>>16&0xff])<<16 | uint32(sbox[s1>>8&0xff])<<8 | uint32(sbox[s2&0xff])
	return t0 ^ k[i], t1 ^ k[i+1], t2 ^ k[i+2], t3 ^ k[i+3]
}

func (c *Cipher) decrypt(s0, s1, s2, s3 uint32) (uint32, uint32, uint32, uint32) {
	k := c.dec[:4*(c.rounds+1)]
	s0 ^= k[0]
	s1 ^= k[1]
	s2 ^= k[2]
	s3 ^= k[3]
	i := 4
	for r := 1; r < c.rounds; r++ {
		t0 := td0[s0>>24] ^ td1[s3>>16&0xff] ^ td2[s2>>8&0xff] ^ td3[s1&0xff] ^ k[i]
		t1 := td0[s1>>24] ^ td1[s0>>16&0xff] ^ td2[s3>>8&0xff] ^ td3[s2&0xff] ^ k[i+1]
		t2 := td0[s2>>24] ^ td1[s1>>16&0xff] ^ td2[s0>>8&0xff] ^ td3[s3&0xff] ^ k[i+2]
		t3 := td0[s3>>24] ^ td1[s2>>16&0xff] ^ td2[s1>>8&0xff] ^ td3[s0&0xff] ^ k[i+3]
		s0, s1, s2, s3 = t0, t1, t2, t3
		i += 4
	}
	t0 := uint32(invSbox[s0>>24])<<24 | uint32(invSbox[s3>>16&0xff])<<16 | uint32(invSbox[s2>>8&0xff])<<8 | uint32(invSbox[s1&0xff])
	t1 := uint32(invSbox[s1>>24])<<24 | uint32(invSbox[s0>>16&0xff])<<16 | uint32(invSbox[s3>>8&0xff])<<8 | uint32(invSbox[s2&0xff])
	t2 := uint32(invSbox[s2>>24])<<24 | uint32(invSbox[s1>>16&0xff])<<16 | uint32(invSbox[s0>>8&0xff])<<8 | uint32(invSbox[s3&0xff])
	t3 := uint32(invSbox[s3>>24])<<24 | uint32(invSbox[s2>>16&0xff])<<16 | uint32(invSbox[s1>>8&0xff])<<8 | uint32(invSbox[s0&0xff])
	return t0 ^ k[i], t1 ^ k[i+1], t2 ^ k[i+2], t3 ^ k[i+3]
}
