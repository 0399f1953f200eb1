package kms

import (
	"bytes"
	"crypto/aes"
	"encoding/hex"
	"math/rand/v2"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func seq16() []byte {
	b := make([]byte, 16)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// TestKnownAnswers pins every value of kms-protocol.md §4.5.
func TestKnownAnswers(t *testing.T) {
	zero := make([]byte, 16)
	enc := func(c *Cipher, in []byte) string {
		var out [16]byte
		c.EncryptBlock(out[:], in)
		return hex.EncodeToString(out[:])
	}
	var stock6 Cipher
	expandKey(&stock6, keyV6[:], false)
	mac := func(b []byte) string { m := MACV4(b); return hex.EncodeToString(m[:]) }
	key := V6HMACKey(0x01DD7A4FCB222300)
	for _, tc := range []struct{ name, got, want string }{
		{"Rijndael-160 K4 E(0)", enc(&cipherV4, zero), "933030f10e2e7782b80915d5778a4957"},
		{"V4 MAC(empty)", mac(nil), "d144963029e2bd12f9970c9f52b27f09"},
		{"V4 MAC(236 zeros)", mac(make([]byte, 236)), "4c1b4de4008508d66d9ed22963ae52b2"},
		{"AES-128 K5 E(0)", enc(&cipherV5, zero), "ec7c7e75b1923978eac4b2d2260235d5"},
		{"K6 modified E(0)", enc(&cipherV6, zero), "8ca59de0c483c04aa7026a22d6dd208e"},
		{"K6 modified E(00..0f)", enc(&cipherV6, seq16()), "ca89ca11b2c4e77a94e806af17136b38"},
		{"K6 stock E(0)", enc(&stock6, zero), "b4c3c015f6fb320c9b64aecd52fa58c8"},
		{"V6 HMAC slot", hex.EncodeToString([]byte{byte(v6Slot(0x01DD7A4FCB222300, 0) >> 56)}), "33"},
		{"V6 HMAC key", hex.EncodeToString(key[:]), "9208470a5535c2ed7ef7e95ffeec6726"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %s, want %s", tc.name, tc.got, tc.want)
		}
	}
	if got := v6Slot(0x01DD7A4FCB222300, 0); got != 0x3319375a689a8acb {
		t.Errorf("V6 slot = %#x, want 0x3319375a689a8acb", got)
	}
	if cipherV4.Rounds() != 11 || cipherV5.Rounds() != 10 || cipherV6.Rounds() != 10 {
		t.Errorf("rounds %d/%d/%d, want 11/10/10", cipherV4.Rounds(), cipherV5.Rounds(), cipherV6.Rounds())
	}
}

// TestV6RoundKeys pins the three round keys the V6 schedule changes.
func TestV6RoundKeys(t *testing.T) {
	var stock Cipher
	expandKey(&stock, keyV6[:], false)
	for _, tc := range []struct {
		word          int
		stock, modded uint32
	}{{16, 0x7630e12e, 0x0530e12e}, {24, 0x6adec945, 0x63dec945}, {32, 0x0bc82943, 0xefc82943}} {
		if stock.enc[tc.word] != tc.stock || cipherV6.enc[tc.word] != tc.modded {
			t.Errorf("word %d: stock %08x modified %08x, want %08x %08x", tc.word, stock.enc[tc.word], cipherV6.enc[tc.word], tc.stock, tc.modded)
		}
	}
	for i := range stock.enc {
		if i != 16 && i != 24 && i != 32 && stock.enc[i] != cipherV6.enc[i] {
			t.Errorf("word %d differs between stock and V6 schedules", i)
		}
	}
}

// TestAgainstStdlibAES checks the generic Nk = 4 path against crypto/aes for
// random keys and blocks, both directions.
func TestAgainstStdlibAES(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		var key, in [16]byte
		for i := range key {
			key[i], in[i] = byte(rng.Uint32()), byte(rng.Uint32())
		}
		var c Cipher
		expandKey(&c, key[:], false)
		ref, _ := aes.NewCipher(key[:])
		var got, want, back [16]byte
		c.EncryptBlock(got[:], in[:])
		ref.Encrypt(want[:], in[:])
		if got != want {
			t.Fatalf("key %x in %x: got %x want %x", key, in, got, want)
		}
		c.DecryptBlock(back[:], got[:])
		if back != in {
			t.Fatalf("key %x: decrypt gave %x, want %x", key, back, in)
		}
	}
}

// TestFIPS197 is the AES-128 example of FIPS-197 appendix C.1.
func TestFIPS197(t *testing.T) {
	var c Cipher
	expandKey(&c, seq16(), false)
	in := unhex(t, "00112233445566778899aabbccddeeff")
	var out [16]byte
	c.EncryptBlock(out[:], in)
	if got := hex.EncodeToString(out[:]); got != "69c4e0d86a7b0430d8cdb78070b4c55a" {
		t.Fatalf("FIPS-197 C.1 = %s", got)
	}
}

func TestCBCInverse(t *testing.T) {
	iv := [16]byte{1, 2, 3}
	for _, c := range []*Cipher{CipherFor(4), CipherFor(5), CipherFor(6)} {
		plain := bytes.Repeat(seq16(), 5)
		ct := make([]byte, len(plain))
		c.EncryptCBC(ct, plain, &iv)
		back := append([]byte(nil), ct...)
		c.DecryptCBC(back, back, &iv) // in place
		if !bytes.Equal(back, plain) {
			t.Fatalf("rounds %d: CBC round trip failed", c.Rounds())
		}
		// CBC: ciphertext block 1 = E(P1 ^ C0).
		var x, want [16]byte
		for i := range x {
			x[i] = plain[16+i] ^ ct[i]
		}
		c.EncryptBlock(want[:], x[:])
		if !bytes.Equal(want[:], ct[16:32]) {
			t.Fatalf("rounds %d: not CBC chaining", c.Rounds())
		}
	}
	if CipherFor(3) != nil || CipherFor(7) != nil {
		t.Fatal("CipherFor accepted an unknown version")
	}
}

func TestV6ResponseHMACMatchesStdlib(t *testing.T) {
	key := V6HMACKey(0x01DD7A4FCB222300)
	for _, n := range []int{0, 1, 63, 64, 232, maxHMACMsg, maxHMACMsg + 1, 1000} {
		msg := bytes.Repeat([]byte{0xa5}, n)
		got := V6ResponseHMAC(key, msg)
		want := stdHMAC(key[:], msg)
		if !bytes.Equal(got[:], want[16:32]) {
			t.Errorf("len %d: got %x want %x", n, got, want[16:32])
		}
	}
}

func TestCryptoAllocs(t *testing.T) {
	buf := make([]byte, 256)
	iv := [16]byte{9}
	n := testing.AllocsPerRun(100, func() {
		cipherV6.DecryptCBC(buf, buf, &iv)
		cipherV5.EncryptCBC(buf, buf, &iv)
		_ = MACV4(buf[:236])
		_ = V6ResponseHMAC(V6HMACKey(0x01DD7A4FCB222300), buf[:232])
	})
	if n != 0 {
		t.Fatalf("crypto allocates %v times per run", n)
	}
}
