package rpcparse

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// UUID is a DCE UUID in its canonical (RFC 4122, big-endian string) byte
// order, whatever order the PDU carried it in. Comparable and allocation-free.
type UUID [16]byte

// ErrBadUUID reports text that is not of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx.
var ErrBadUUID = errors.New("rpcparse: malformed UUID text")

// String formats u as 8-4-4-4-12 lower-case hex.
func (u UUID) String() string {
	var b [36]byte
	u.appendTo(b[:0])
	return string(b[:])
}

// AppendText appends the canonical text form of u to dst.
func (u UUID) AppendText(dst []byte) ([]byte, error) { return u.appendTo(dst), nil }

// MarshalText implements encoding.TextMarshaler.
func (u UUID) MarshalText() ([]byte, error) { return u.appendTo(make([]byte, 0, 36)), nil }

func (u UUID) appendTo(dst []byte) []byte {
	const digits = "0123456789abcdef"
	for i, c := range u {
		switch i {
		case 4, 6, 8, 10:
			dst = append(dst, '-')
		}
		dst = append(dst, digits[c>>4], digits[c&0xf])
	}
	return dst
}

// IsZero reports whether u is the nil UUID.
func (u UUID) IsZero() bool { return u == UUID{} }

// ParseUUID parses the canonical text form, case-insensitively, with or
// without surrounding braces.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	if len(s) == 38 && s[0] == '{' && s[37] == '}' {
		s = s[1:37]
	}
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("%w: %q", ErrBadUUID, s)
	}
	// Hex digits sit at fixed positions; a '-' anywhere else is an error
	// (skipping dashes wherever they fall accepted "--c82175-…").
	j := 0
	for i := 0; i < 36; i += 2 {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			i++
		}
		hi, lo := unhex(s[i]), unhex(s[i+1])
		if hi > 0xf || lo > 0xf {
			return UUID{}, fmt.Errorf("%w: %q", ErrBadUUID, s)
		}
		u[j] = hi<<4 | lo
		j++
	}
	return u, nil
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10
	}
	return 0xff
}

// MustUUID is ParseUUID for compile-time constants; it panics on bad text.
func MustUUID(s string) UUID {
	u, err := ParseUUID(s)
	if err != nil {
		panic(err)
	}
	return u
}

// UUIDFromWire reads a UUID whose first three fields (time_low, time_mid,
// time_hi_and_version) are encoded in the given integer order, as C706
// specifies for NDR; the last eight bytes are a byte array in either order.
// b must hold at least 16 bytes.
func UUIDFromWire(b []byte, bigEndian bool) UUID {
	var u UUID
	_ = b[15]
	if bigEndian {
		copy(u[:], b[:16])
		return u
	}
	// Byte swaps of the three integer fields compile to BSWAP/ROL.
	binary.BigEndian.PutUint32(u[0:4], binary.LittleEndian.Uint32(b[0:4]))
	binary.BigEndian.PutUint16(u[4:6], binary.LittleEndian.Uint16(b[4:6]))
	binary.BigEndian.PutUint16(u[6:8], binary.LittleEndian.Uint16(b[6:8]))
	copy(u[8:], b[8:16])
	return u
}

// PutWire writes u into b (16 bytes) in the given integer order; the inverse
// of UUIDFromWire.
func (u UUID) PutWire(b []byte, bigEndian bool) {
	_ = b[15]
	if bigEndian {
		copy(b, u[:])
		return
	}
	b[0], b[1], b[2], b[3] = u[3], u[2], u[1], u[0]
	b[4], b[5] = u[5], u[4]
	b[6], b[7] = u[7], u[6]
	copy(b[8:16], u[8:])
}

// u16 and u32 read an integer in the declared order without going through
// the binary.ByteOrder interface, which the hot path cannot inline.
func u16(b []byte, big bool) uint16 {
	if big {
		return binary.BigEndian.Uint16(b)
	}
	return binary.LittleEndian.Uint16(b)
}

func u32(b []byte, big bool) uint32 {
	if big {
		return binary.BigEndian.Uint32(b)
	}
	return binary.LittleEndian.Uint32(b)
}

// order returns the integer byte order selected by a data representation.
// It is a concrete type, not binary.ByteOrder: calls through that interface
// make every slice passed in escape, which cost an allocation per encoded
// header.
func order(bigEndian bool) byteOrder { return byteOrder(bigEndian) }

// byteOrder is true for big-endian.
type byteOrder bool

func (o byteOrder) Uint16(b []byte) uint16 {
	if o {
		return binary.BigEndian.Uint16(b)
	}
	return binary.LittleEndian.Uint16(b)
}

func (o byteOrder) Uint32(b []byte) uint32 {
	if o {
		return binary.BigEndian.Uint32(b)
	}
	return binary.LittleEndian.Uint32(b)
}

func (o byteOrder) PutUint16(b []byte, v uint16) {
	if o {
		binary.BigEndian.PutUint16(b, v)
		return
	}
	binary.LittleEndian.PutUint16(b, v)
}

func (o byteOrder) PutUint32(b []byte, v uint32) {
	if o {
		binary.BigEndian.PutUint32(b, v)
		return
	}
	binary.LittleEndian.PutUint32(b, v)
}
