package replay

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kmsproxy/kmsproxy/capture"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/rpcparse"
)

const testConfig = `
upstreams: ["127.0.0.1:1688"]
zones: { dmz: ["192.0.2.0/24"] }
rules:
  # The engine tables send 8-byte placeholder stubs, not KMS requests: they
  # test sequencing, so this rule lets undecodable requests through.
  - { name: dmz-kms, from: [dmz], interface: kms, opnums: [0], auth: [none], kms: { reject_malformed: false }, action: allow }
management: { listen: "127.0.0.1:0" }
`

var (
	le       = rpcparse.LittleEndianDataRep
	kmsIface = rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: 1}
	ndr20    = rpcparse.SyntaxID{UUID: rpcparse.NDR20UUID, Major: 2}
	client   = netip.MustParseAddrPort("192.0.2.7:50000")
	server   = netip.MustParseAddrPort("198.51.100.1:1688")
)

func bind(n int) []byte {
	var ctxs []rpcparse.ContextSpec
	for i := range n {
		ctxs = append(ctxs, rpcparse.ContextSpec{ID: uint16(i), Abstract: kmsIface, Transfers: []rpcparse.SyntaxID{ndr20}})
	}
	return rpcparse.AppendBind(nil, rpcparse.PDUHead{Type: rpcparse.PTypeBind, Flags: 3, DataRep: le, CallID: 1},
		rpcparse.BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Contexts: ctxs}, nil)
}

func bindAck(n int) []byte {
	spec := rpcparse.BindAckSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, SecAddr: []byte("1688\x00")}
	for range n {
		spec.Results = append(spec.Results, rpcparse.Result{Result: rpcparse.ResultAcceptance, Transfer: ndr20})
	}
	return rpcparse.AppendBindAck(nil, rpcparse.PDUHead{Type: rpcparse.PTypeBindAck, Flags: 3, DataRep: le, CallID: 1}, spec)
}

func request(opnum uint16) []byte {
	return rpcparse.AppendRequest(nil, rpcparse.PDUHead{Flags: 3, DataRep: le, CallID: 2}, 0, opnum, nil, make([]byte, 8), nil)
}

func response() []byte {
	return rpcparse.AppendResponse(nil, rpcparse.PDUHead{Flags: 3, DataRep: le, CallID: 2}, 0, 4, make([]byte, 4))
}

// recs builds one stream from (direction, bytes) pairs, in capture order.
func recs(pdus ...any) []capture.Record {
	var out []capture.Record
	for i := 0; i < len(pdus); i += 2 {
		r := capture.Record{Frame: i/2 + 1, Direction: pdus[i].(capture.Direction), Bytes: pdus[i+1].([]byte)}
		r.Src, r.Dst = client, server
		if r.Direction == capture.ServerToClient {
			r.Src, r.Dst = server, client
		}
		out = append(out, r)
	}
	return out
}

const (
	c2s = capture.ClientToServer
	s2c = capture.ServerToClient
)

func TestEngine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kmsproxy.yaml")
	if err := os.WriteFile(path, []byte(testConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		in   []capture.Record
		want []string // "ptype verdict reason"
	}{
		{"plain call", recs(c2s, bind(1), s2c, bindAck(1), c2s, request(0), s2c, response()),
			[]string{"bind allow allowed", "bind_ack info ", "request allow allowed", "response info "}},
		// The proxy holds a pipelined request until the bind is answered.
		{"pipelined request", recs(c2s, bind(1), c2s, request(0), s2c, bindAck(1), s2c, response()),
			[]string{"bind allow allowed", "bind_ack info ", "request allow allowed", "response info "}},
		{"first PDU not a bind", recs(c2s, request(0), s2c, response()),
			[]string{"request violation first-pdu-not-bind", "response unreached connection-closed"}},
		{"forbidden opnum", recs(c2s, bind(1), s2c, bindAck(1), c2s, request(1), s2c, response()),
			[]string{"bind allow allowed", "bind_ack info ", "request deny opnum-not-allowed", "response unreached connection-closed"}},
		{"host result count", recs(c2s, bind(2), s2c, bindAck(1), c2s, request(0)),
			[]string{"bind allow allowed", "bind_ack violation result-count-mismatch", "request unreached connection-closed"}},
		{"no bind answer in the capture", recs(c2s, bind(1), c2s, request(0)),
			[]string{"bind allow allowed", "request violation bind-pending"}},
		{"response to nothing", recs(c2s, bind(1), s2c, bindAck(1), s2c, response()),
			[]string{"bind allow allowed", "bind_ack info ", "response violation unexpected-response"}},
		{"host sends a bind", recs(c2s, bind(1), s2c, bind(1)),
			[]string{"bind allow allowed", "bind violation ptype-not-allowed-from-host"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			sum, err := Run(tc.in, cfg, Options{}, func(d *Decision) error {
				got = append(got, d.PType+" "+d.Verdict+" "+d.Reason)
				if d.Client != client.String() || d.Zone != "dmz" {
					t.Errorf("client %s zone %q", d.Client, d.Zone)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("\n got %q\nwant %q", got, tc.want)
			}
			if sum.PDUs != len(tc.want) || sum.Streams != 1 {
				t.Fatalf("summary %+v", sum)
			}
		})
	}
}
