package kms_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
	"github.com/kmsproxy/kmsproxy/test/kmsgen"
)

var rnd = [16]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}

// TestCapturesReencode: kmsgen rebuilds every captured request and V4
// response byte for byte from the decoded fields (V5/V6 requests reuse the
// captured IV), which ties the encoder to real traffic.
func TestCapturesReencode(t *testing.T) {
	for _, c := range loadCaptures(t) {
		for i, cl := range c.calls {
			blob, err := kms.ParseRequestStub(cl.reqStub, kms.Encoding{NDR64: cl.ndr64})
			if err != nil {
				t.Fatal(err)
			}
			var req kms.Request
			if err := kms.DecodeRequest(blob, &req); err != nil {
				t.Fatal(err)
			}
			if got := kmsgen.EncodeRequest(&req, req.IV); !bytes.Equal(got, blob) {
				t.Errorf("%s call %d: re-encoded request differs", c.name, i)
			}
			if got := kmsgen.RequestStub(blob, cl.ndr64); !bytes.Equal(got, cl.reqStub) {
				t.Errorf("%s call %d: re-encoded request stub differs", c.name, i)
			}
			rblob, hr, err := kms.ParseResponseStub(cl.respStub, kms.Encoding{NDR64: cl.ndr64})
			if err != nil {
				t.Fatal(err)
			}
			if got := kmsgen.ResponseStub(rblob, hr, cl.ndr64); !bytes.Equal(got, cl.respStub) {
				t.Errorf("%s call %d: re-encoded response stub differs:\n got %x\nwant %x", c.name, i, got, cl.respStub)
			}
			if rblob == nil {
				continue
			}
			var resp kms.Response
			if err := kms.DecodeResponse(rblob, &req, &resp); err != nil {
				t.Fatal(err)
			}
			if resp.MajorVersion == 4 {
				if got := kmsgen.EncodeResponse(&resp, &req, rnd); !bytes.Equal(got, rblob) {
					t.Errorf("%s call %d: re-encoded V4 response differs", c.name, i)
				}
			}
		}
	}
}

// TestRoundTrip encodes a request and its response for every version and
// both NDR forms, decodes them and compares every field.
func TestRoundTrip(t *testing.T) {
	for _, major := range []uint16{4, 5, 6} {
		for _, ndr64 := range []bool{false, true} {
			want := kmsgen.NewRequest(major)
			want.VMInfo = 1
			want.LicenseStatus = 6
			want.RequiredCount = 5
			want.CMID = rpcparse.MustUUID("0ee7b3c1-1e1e-432a-be7b-b414f6a64177")
			want.PreviousCMID = rpcparse.MustUUID("627188be-2614-4c34-9852-fe9a7dc6fe48")
			want.ClientTime = kms.TimeToFiletime(time.Date(2030, 1, 2, 3, 4, 5, 600, time.UTC))
			want.SetWorkstation("wörkstation-€-𝄞.example")
			if major != 4 {
				want.IV = kmsgen.IV(byte(major))
			}
			stub := kmsgen.RequestStub(kmsgen.EncodeRequest(&want, want.IV), ndr64)
			blob, err := kms.ParseRequestStub(stub, kms.Encoding{NDR64: ndr64})
			if err != nil {
				t.Fatalf("V%d ndr64=%v: %v", major, ndr64, err)
			}
			var got kms.Request
			if err := kms.DecodeRequest(blob, &got); err != nil {
				t.Fatalf("V%d ndr64=%v: %v", major, ndr64, err)
			}
			if got != want {
				t.Errorf("V%d ndr64=%v: request\n got %+v\nwant %+v", major, ndr64, got, want)
			}
			if got.Workstation() != "wörkstation-€-𝄞.example" || !got.Time().Equal(time.Date(2030, 1, 2, 3, 4, 5, 600, time.UTC)) {
				t.Errorf("V%d: workstation %q time %v", major, got.Workstation(), got.Time())
			}

			wresp := kmsgen.NewResponse(&got)
			wresp.CurrentCount = 10
			rstub := kmsgen.ResponseStub(kmsgen.EncodeResponse(&wresp, &got, rnd), 0, ndr64)
			rblob, hr, err := kms.ParseResponseStub(rstub, kms.Encoding{NDR64: ndr64})
			if err != nil || hr != 0 {
				t.Fatalf("V%d ndr64=%v: response stub: %v %#x", major, ndr64, err, hr)
			}
			var gresp kms.Response
			if err := kms.DecodeResponse(rblob, &got, &gresp); err != nil {
				t.Fatalf("V%d ndr64=%v: %v", major, ndr64, err)
			}
			switch major {
			case 4:
				wresp.MACVerified = true
				wresp.IV, wresp.HwID = [16]byte{}, [8]byte{}
			case 5:
				wresp.DigestVerified, wresp.IVMatch = true, true
				wresp.HwID = [8]byte{}
			case 6:
				wresp.HMACVerified, wresp.DigestVerified, wresp.IVMatch = true, true, true
			}
			wresp.CMIDMatch, wresp.TimeMatch = true, true
			if gresp != wresp {
				t.Errorf("V%d ndr64=%v: response\n got %+v\nwant %+v", major, ndr64, gresp, wresp)
			}
			if gresp.EPID() != kmsgen.DefaultEPID {
				t.Errorf("EPID %q", gresp.EPID())
			}
			// Without the request nothing request-dependent is claimed.
			if err := kms.DecodeResponse(rblob, nil, &gresp); err != nil || gresp.DigestVerified || gresp.IVMatch || gresp.CMIDMatch || gresp.TimeMatch {
				t.Errorf("V%d: decode without request: %v %+v", major, err, gresp)
			}
			if major == 6 && !gresp.HMACVerified {
				t.Errorf("V6 HMAC needs no request but was not verified")
			}
		}
	}
}

// TestResponseChecksReported: a response for another request is decoded
// but says so; tampered V4/V6 responses lose their verified flags.
func TestResponseChecksReported(t *testing.T) {
	for _, major := range []uint16{4, 5, 6} {
		req := kmsgen.NewRequest(major)
		req.IV = kmsgen.IV(1)
		other := req
		other.CMID = rpcparse.MustUUID("11111111-2222-3333-4444-555555555555")
		other.ClientTime++
		other.IV = kmsgen.IV(2)
		resp := kmsgen.NewResponse(&req)
		blob := kmsgen.EncodeResponse(&resp, &req, rnd)
		var got kms.Response
		if err := kms.DecodeResponse(blob, &other, &got); err != nil {
			t.Fatal(err)
		}
		if got.CMIDMatch || got.TimeMatch || (major != 4 && (got.DigestVerified || got.IVMatch)) {
			t.Errorf("V%d: mismatching request reported as matching: %+v", major, got)
		}
	}
	req := kmsgen.NewRequest(4)
	resp := kmsgen.NewResponse(&req)
	blob := kmsgen.EncodeResponse(&resp, &req, rnd)
	blob[len(blob)-20] ^= 1 // renewal interval
	var got kms.Response
	if err := kms.DecodeResponse(blob, &req, &got); err != nil || got.MACVerified {
		t.Errorf("tampered V4 response: %v, MACVerified %v", err, got.MACVerified)
	}
	req = kmsgen.NewRequest(6)
	resp = kmsgen.NewResponse(&req)
	resp.ClientTime += 0x00000022816889BD * 3 // HMAC key from a different slot
	blob = kmsgen.EncodeResponse(&resp, &req, rnd)
	resp.ClientTime = req.ClientTime
	good := kmsgen.EncodeResponse(&resp, &req, rnd)
	if err := kms.DecodeResponse(good, &req, &got); err != nil || !got.HMACVerified {
		t.Fatalf("good V6: %v %v", err, got.HMACVerified)
	}
	if err := kms.DecodeResponse(blob, &req, &got); err != nil || !got.HMACVerified || got.TimeMatch {
		t.Errorf("V6 with other time: %v HMAC %v TimeMatch %v", err, got.HMACVerified, got.TimeMatch)
	}
}

func TestRefusalStub(t *testing.T) {
	for _, ndr64 := range []bool{false, true} {
		stub := kmsgen.ResponseStub(nil, kms.HResultKMSIDMismatch, ndr64)
		blob, hr, err := kms.ParseResponseStub(stub, kms.Encoding{NDR64: ndr64})
		if err != nil || blob != nil || hr != kms.HResultKMSIDMismatch {
			t.Errorf("ndr64=%v: %x %#x %v", ndr64, blob, hr, err)
		}
	}
	if n := kms.HRESULTName(0xC004F042); n != "SL_E_VL_KEY_MANAGEMENT_SERVICE_ID_MISMATCH" {
		t.Errorf("HRESULTName = %q", n)
	}
	if kms.HRESULTName(0x12345678) != "" || kms.SKUName(rpcparse.UUID{}) != "" || kms.KMSCountedIDName(rpcparse.UUID{}) != "" || kms.LicenseStatusName(7) != "" {
		t.Error("unknown values must name as empty")
	}
}

// ---- malformed input ----

func le32(b []byte, off int, v uint32) []byte {
	b = bytes.Clone(b)
	binary.LittleEndian.PutUint32(b[off:], v)
	return b
}

func reqWith(major uint16, f func(r *kms.Request)) []byte {
	r := kmsgen.NewRequest(major)
	f(&r)
	return kmsgen.EncodeRequest(&r, kmsgen.IV(3))
}

func plainV6(f func(p []byte)) []byte {
	r := kmsgen.NewRequest(6)
	p := make([]byte, 240)
	kmsgen.PutRequestBase(p, &r)
	copy(p[236:], []byte{4, 4, 4, 4})
	f(p)
	return kmsgen.SealRequest(p, 6<<16, kmsgen.IV(3))
}

func TestDecodeRequestMalformed(t *testing.T) {
	good4 := reqWith(4, func(*kms.Request) {})
	flip := func(b []byte, i int) []byte { b = bytes.Clone(b); b[i] ^= 0x01; return b }
	noNUL := func(r *kms.Request) {
		for i := range r.WorkstationUTF16 {
			r.WorkstationUTF16[i] = 'a'
		}
	}
	tests := []struct {
		name string
		blob []byte
		want error
	}{
		{"empty", nil, kms.ErrSize},
		{"3 bytes", []byte{0, 0, 6}, kms.ErrSize},
		{"V3", le32(good4, 0, 3<<16), kms.ErrVersion},
		{"V7", le32(good4, 0, 7<<16), kms.ErrVersion},
		{"minor 1", le32(good4, 0, 4<<16|1), kms.ErrVersion},
		{"V4 short", good4[:251], kms.ErrSize},
		{"V4 long", append(bytes.Clone(good4), 0), kms.ErrSize},
		{"V4 as V6 size", append(bytes.Clone(good4), 0, 0, 0, 0, 0, 0, 0, 0), kms.ErrSize},
		{"V4 MAC byte flipped", flip(good4, 251), kms.ErrMAC},
		{"V4 CMID byte flipped", flip(good4, 70), kms.ErrMAC},
		{"V4 workstation flipped", flip(good4, 120), kms.ErrMAC},
		{"V6 short", reqWith(6, func(*kms.Request) {})[:259], kms.ErrSize},
		{"V6 long", append(reqWith(6, func(*kms.Request) {}), 0), kms.ErrSize},
		{"V5 truncated to V4 size", reqWith(5, func(*kms.Request) {})[:252], kms.ErrSize},
		{"V6 last block flipped", flip(reqWith(6, func(*kms.Request) {}), 259), kms.ErrPadding},
		{"V6 pad 05050505", plainV6(func(p []byte) { copy(p[236:], []byte{5, 5, 5, 5}) }), kms.ErrPadding},
		{"V6 pad 04040400", plainV6(func(p []byte) { p[239] = 0 }), kms.ErrPadding},
		{"V6 inner version 5", plainV6(func(p []byte) { p[2] = 5 }), kms.ErrVersion},
		{"V6 inner minor 1", plainV6(func(p []byte) { p[0] = 1 }), kms.ErrVersion},
		{"V6 outer 5 inner 6", le32(plainV6(func([]byte) {}), 0, 5<<16), kms.ErrPadding},
		{"V6 blob under V5 key", kmsgen.SealRequest(bytes.Repeat([]byte{4}, 240), 5<<16, kmsgen.IV(3)), kms.ErrVersion},
		{"VM info 2", reqWith(6, func(r *kms.Request) { r.VMInfo = 2 }), kms.ErrField},
		{"license status 7", reqWith(5, func(r *kms.Request) { r.LicenseStatus = 7 }), kms.ErrField},
		{"N policy 1001", reqWith(4, func(r *kms.Request) { r.RequiredCount = 1001 }), kms.ErrField},
		{"unknown application", reqWith(6, func(r *kms.Request) { r.ApplicationID = rpcparse.MustUUID("55c92734-d682-4d71-983e-d6ec3f16059e") }), kms.ErrApplication},
		{"zero application", reqWith(4, func(r *kms.Request) { r.ApplicationID = rpcparse.UUID{} }), kms.ErrApplication},
		{"workstation without NUL V6", reqWith(6, noNUL), kms.ErrWorkstation},
		{"workstation without NUL V4", reqWith(4, noNUL), kms.ErrWorkstation},
		{"workstation with newline", reqWith(6, func(r *kms.Request) { r.SetWorkstation("evil\nhost") }), kms.ErrWorkstation},
		{"workstation with ESC", reqWith(5, func(r *kms.Request) { r.SetWorkstation("a\x1b[31m") }), kms.ErrWorkstation},
	}
	for _, tc := range tests {
		var r kms.Request
		err := kms.DecodeRequest(tc.blob, &r)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
			continue
		}
		var de *kms.DecodeError
		if !errors.As(err, &de) || de.Field == "" {
			t.Errorf("%s: %v is not a *DecodeError with a field", tc.name, err)
		}
		if kms.Reason(err) == "kms-malformed" {
			t.Errorf("%s: no reason token for %v", tc.name, err)
		}
	}
}

func TestDecodeRequestEdgeValuesAccepted(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func(r *kms.Request)
	}{
		{"empty workstation", func(r *kms.Request) { r.SetWorkstation("") }},
		{"63-unit workstation", func(r *kms.Request) { r.SetWorkstation(string(bytes.Repeat([]byte{'w'}, 63))) }},
		{"N policy 1000", func(r *kms.Request) { r.RequiredCount = 1000 }},
		{"Office 2010", func(r *kms.Request) { r.ApplicationID, _ = kms.LookupApplication("office2010") }},
		{"Office 2013+", func(r *kms.Request) { r.ApplicationID, _ = kms.LookupApplication("office2016") }},
		{"unknown SKU and KMS ID", func(r *kms.Request) { r.SKUID, r.KMSCountedID = rpcparse.UUID{1}, rpcparse.UUID{2} }},
	} {
		for _, major := range []uint16{4, 5, 6} {
			var r kms.Request
			if err := kms.DecodeRequest(reqWith(major, tc.f), &r); err != nil {
				t.Errorf("%s V%d: %v", tc.name, major, err)
			}
		}
	}
}

func TestParseRequestStubMalformed(t *testing.T) {
	blob := reqWith(6, func(*kms.Request) {})
	s32, s64 := kmsgen.RequestStub(blob, false), kmsgen.RequestStub(blob, true)
	tests := []struct {
		name  string
		stub  []byte
		ndr64 bool
	}{
		{"empty", nil, false},
		{"7 bytes", s32[:7], false},
		{"truncated data", s32[:len(s32)-1], false},
		{"trailing byte", append(bytes.Clone(s32), 0), false},
		{"requestSize != max_count", le32(s32, 0, 259), false},
		{"max_count != requestSize", le32(s32, 4, 261), false},
		{"both sizes larger than data", le32(le32(s32, 0, 261), 4, 261), false},
		{"both sizes huge", le32(le32(s32, 0, 0xffffffff), 4, 0xffffffff), false},
		{"NDR64 stub read as NDR 2.0", s64, false},
		{"NDR 2.0 stub read as NDR64", s32, true},
		{"NDR64 15 bytes", s64[:15], true},
		{"NDR64 pad non-zero", le32(s64, 4, 1), true},
		{"NDR64 max_count high word", le32(s64, 12, 1), true},
		{"NDR64 truncated", s64[:len(s64)-1], true},
		{"NDR64 trailing", append(bytes.Clone(s64), 0), true},
	}
	for _, tc := range tests {
		_, err := kms.ParseRequestStub(tc.stub, kms.Encoding{NDR64: tc.ndr64})
		if !errors.Is(err, kms.ErrStub) || kms.Reason(err) != "kms-bad-stub" {
			t.Errorf("%s: got %v, want ErrStub", tc.name, err)
		}
	}
	for _, ndr64 := range []bool{false, true} {
		b, err := kms.ParseRequestStub(kmsgen.RequestStub(blob, ndr64), kms.Encoding{NDR64: ndr64})
		if err != nil || !bytes.Equal(b, blob) {
			t.Errorf("ndr64=%v: good stub refused: %v", ndr64, err)
		}
	}
}

func TestParseResponseStub(t *testing.T) {
	req := kmsgen.NewRequest(6)
	resp := kmsgen.NewResponse(&req)
	blob := kmsgen.EncodeResponse(&resp, &req, rnd)
	s32 := kmsgen.ResponseStub(blob, 0, false)
	odd := blob[:257] // a 257-byte blob: the tail needs 3 pad bytes
	hrAfterData := append(append(kmsgen.RequestStub(nil, false)[:0], 1, 1, 0, 0, 0, 0, 2, 0, 1, 1, 0, 0), odd...)
	hrAfterData = append(hrAfterData, 0x42, 0xf0, 0x04, 0xc0, 0, 0, 0) // vlmcsd: HRESULT, then pad
	hrAligned := append(bytes.Clone(hrAfterData[:12+257]), 0, 0, 0, 0x42, 0xf0, 0x04, 0xc0)
	good := []struct {
		name  string
		stub  []byte
		ndr64 bool
		hr    uint32
		n     int
	}{
		{"NDR 2.0", s32, false, 0, len(blob)},
		{"NDR64", kmsgen.ResponseStub(blob, 0, true), true, 0, len(blob)},
		{"refusal", []byte{0, 0, 0, 0, 0, 0, 0, 0, 0x42, 0xf0, 0x04, 0xc0}, false, 0xC004F042, 0},
		{"refusal with pad", []byte{0, 0, 0, 0, 0, 0, 0, 0, 0x0d, 0, 0x07, 0x80, 0, 0, 0}, false, 0x8007000D, 0},
		{"HRESULT after odd data, then pad", hrAfterData, false, 0xC004F042, 257},
		{"pad, then aligned HRESULT", hrAligned, false, 0xC004F042, 257},
	}
	for _, tc := range good {
		b, hr, err := kms.ParseResponseStub(tc.stub, kms.Encoding{NDR64: tc.ndr64})
		if err != nil || hr != tc.hr || len(b) != tc.n {
			t.Errorf("%s: len %d hr %#x err %v", tc.name, len(b), hr, err)
		}
	}
	bad := []struct {
		name  string
		stub  []byte
		ndr64 bool
	}{
		{"empty", nil, false},
		{"11 bytes", s32[:11], false},
		{"no HRESULT", s32[:len(s32)-4], false},
		{"HRESULT cut", s32[:len(s32)-1], false},
		{"8-byte tail", append(bytes.Clone(s32), 0, 0, 0, 0), false},
		{"non-zero byte beside HRESULT", append(kmsgen.ResponseStub(blob, 0x8007000D, false), 1), false},
		{"max_count mismatch", le32(s32, 8, uint32(len(blob)-1)), false},
		{"size beyond stub", le32(le32(s32, 0, 0x10000), 8, 0x10000), false},
		{"NULL referent with size", []byte{4, 0, 0, 0, 0, 0, 0, 0, 0x42, 0xf0, 0x04, 0xc0}, false},
		{"NDR 2.0 stub read as NDR64", s32, true},
	}
	for _, tc := range bad {
		_, _, err := kms.ParseResponseStub(tc.stub, kms.Encoding{NDR64: tc.ndr64})
		if !errors.Is(err, kms.ErrStub) {
			t.Errorf("%s: got %v, want ErrStub", tc.name, err)
		}
	}
}

func TestDecodeResponseMalformed(t *testing.T) {
	req6 := kmsgen.NewRequest(6)
	resp6 := kmsgen.NewResponse(&req6)
	good6 := kmsgen.EncodeResponse(&resp6, &req6, rnd)
	req4 := kmsgen.NewRequest(4)
	resp4 := kmsgen.NewResponse(&req4)
	good4 := kmsgen.EncodeResponse(&resp4, &req4, rnd)
	req5 := kmsgen.NewRequest(5)
	tests := []struct {
		name string
		blob []byte
		req  *kms.Request
		want error
	}{
		{"empty", nil, nil, kms.ErrSize},
		{"V7", le32(good6, 0, 7<<16), nil, kms.ErrVersion},
		{"V6 answer to V5 request", good6, &req5, kms.ErrVersion},
		{"V4 short", good4[:59], nil, kms.ErrSize},
		{"V4 ePID size odd", le32(good4, 4, 99), nil, kms.ErrSize},
		{"V4 ePID size too big", le32(good4, 4, 102), nil, kms.ErrSize},
		{"V4 ePID size zero", le32(good4, 4, 0), nil, kms.ErrSize},
		{"V6 not block-aligned", good6[:len(good6)-1], nil, kms.ErrSize},
		{"V6 one block", good6[:36], nil, kms.ErrSize},
		{"V6 last block flipped", func() []byte { b := bytes.Clone(good6); b[len(b)-1] ^= 0x80; return b }(), nil, kms.ErrPadding},
		{"V6 block dropped", good6[:len(good6)-16], nil, kms.ErrPadding},
		{"V6 huge", append(bytes.Clone(good6), make([]byte, 512)...), nil, kms.ErrSize},
		{"V6 relabelled V5", le32(good6, 0, 5<<16), nil, kms.ErrPadding},
	}
	for _, tc := range tests {
		var r kms.Response
		err := kms.DecodeResponse(tc.blob, tc.req, &r)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestReasonTokens(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{kms.ErrStub, "kms-bad-stub"}, {kms.ErrSize, "kms-bad-size"}, {kms.ErrVersion, "kms-bad-version"},
		{kms.ErrMAC, "kms-bad-mac"}, {kms.ErrPadding, "kms-bad-padding"}, {kms.ErrField, "kms-bad-field"},
		{kms.ErrApplication, "kms-unknown-application"}, {kms.ErrWorkstation, "kms-bad-workstation"},
		{&kms.DecodeError{Field: "mac", Offset: 236, Err: kms.ErrMAC}, "kms-bad-mac"},
		{errors.New("other"), "kms-malformed"}, {nil, "kms-malformed"},
	} {
		if got := kms.Reason(tc.err); got != tc.want {
			t.Errorf("Reason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
	e := &kms.DecodeError{Field: "padding", Offset: 256, Err: kms.ErrPadding}
	if e.Error() != "kms: padding at offset 256: bad KMS padding after decryption" {
		t.Errorf("Error() = %q", e.Error())
	}
}

// TestDecodeV6RequestAllocs pins zero allocations for the request hot path:
// stub parse, decryption and field extraction into a caller-owned Request.
func TestDecodeV6RequestAllocs(t *testing.T) {
	for _, major := range []uint16{4, 5, 6} {
		stub := kmsgen.RequestStub(reqWith(major, func(*kms.Request) {}), major == 6)
		var r kms.Request
		n := testing.AllocsPerRun(200, func() {
			blob, err := kms.ParseRequestStub(stub, kms.Encoding{NDR64: major == 6})
			if err != nil {
				panic(err)
			}
			if err := kms.DecodeRequest(blob, &r); err != nil {
				panic(err)
			}
		})
		if n != 0 {
			t.Errorf("V%d request decode allocates %v times", major, n)
		}
	}
}

func TestDecodeResponseAllocs(t *testing.T) {
	req := kmsgen.NewRequest(6)
	resp := kmsgen.NewResponse(&req)
	stub := kmsgen.ResponseStub(kmsgen.EncodeResponse(&resp, &req, rnd), 0, true)
	var r kms.Response
	n := testing.AllocsPerRun(200, func() {
		blob, _, err := kms.ParseResponseStub(stub, kms.Encoding{NDR64: true})
		if err != nil {
			panic(err)
		}
		if err := kms.DecodeResponse(blob, &req, &r); err != nil {
			panic(err)
		}
	})
	if n != 0 {
		t.Errorf("V6 response decode allocates %v times", n)
	}
}
