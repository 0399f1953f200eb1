package kms_test

import (
	"testing"

	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
	"github.com/kmsproxy/kmsproxy/test/kmsgen"
)

func benchRequest(b *testing.B, major uint16) {
	r := kmsgen.NewRequest(major)
	stub := kmsgen.RequestStub(kmsgen.EncodeRequest(&r, kmsgen.IV(1)), false)
	var got kms.Request
	b.ReportAllocs()
	b.SetBytes(int64(len(stub)))
	for b.Loop() {
		blob, err := kms.ParseRequestStub(stub, kms.Encoding{})
		if err == nil {
			err = kms.DecodeRequest(blob, &got)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeRequestV4(b *testing.B) { benchRequest(b, 4) }
func BenchmarkDecodeRequestV5(b *testing.B) { benchRequest(b, 5) }
func BenchmarkDecodeRequestV6(b *testing.B) { benchRequest(b, 6) }

func BenchmarkDecodeResponseV6(b *testing.B) {
	req := kmsgen.NewRequest(6)
	req.IV = kmsgen.IV(1)
	resp := kmsgen.NewResponse(&req)
	stub := kmsgen.ResponseStub(kmsgen.EncodeResponse(&resp, &req, [16]byte{1}), 0, false)
	var got kms.Response
	b.ReportAllocs()
	b.SetBytes(int64(len(stub)))
	for b.Loop() {
		blob, _, err := kms.ParseResponseStub(stub, kms.Encoding{})
		if err == nil {
			err = kms.DecodeResponse(blob, &req, &got)
		}
		if err != nil || !got.HMACVerified {
			b.Fatal(err)
		}
	}
}
