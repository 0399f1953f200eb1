package capture

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// captureDir holds the real KMS captures, in the repository (see its README.md).
const captureDir = "../testdata/kms"

var (
	cli = netip.MustParseAddrPort("10.0.0.1:50000")
	srv = netip.MustParseAddrPort("10.0.0.2:1688")
	le  = rpcparse.LittleEndianDataRep
	kms = rpcparse.SyntaxID{UUID: rpcparse.KMSInterfaceUUID, Major: 1}
	ndr = rpcparse.SyntaxID{UUID: rpcparse.NDR20UUID, Major: 2}
)

func bindPDU(call uint32) []byte {
	return rpcparse.AppendBind(nil, rpcparse.PDUHead{Type: rpcparse.PTypeBind, Flags: 3, DataRep: le, CallID: call},
		rpcparse.BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Contexts: []rpcparse.ContextSpec{{ID: 0, Abstract: kms, Transfers: []rpcparse.SyntaxID{ndr}}}}, nil)
}

func ackPDU(call uint32) []byte {
	return rpcparse.AppendBindAck(nil, rpcparse.PDUHead{Type: rpcparse.PTypeBindAck, Flags: 3, DataRep: le, CallID: call},
		rpcparse.BindAckSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, SecAddr: []byte("1688\x00"), Results: []rpcparse.Result{{Transfer: ndr}}})
}

func reqPDU(call uint32, stub int) []byte {
	return rpcparse.AppendRequest(nil, rpcparse.PDUHead{Flags: 3, DataRep: le, CallID: call}, 0, 0, nil, bytes.Repeat([]byte{0xab}, stub), nil)
}

func respPDU(call uint32, stub int) []byte {
	return rpcparse.AppendResponse(nil, rpcparse.PDUHead{Flags: 3, DataRep: le, CallID: call}, 0, uint32(stub), bytes.Repeat([]byte{0xcd}, stub))
}

// handshake adds SYN, SYN/ACK, ACK with ISNs 1000 (client) and 5000 (server).
func handshake(s *synth, c, d netip.AddrPort) {
	s.pkt(c, d, 1000, true, false, nil)
	s.pkt(d, c, 5000, true, true, nil)
	s.pkt(c, d, 1001, false, true, nil)
}

// pdusOf returns the PDUs of one direction, failing on error records.
func pdusOf(t *testing.T, recs []Record, dir Direction) [][]byte {
	t.Helper()
	var out [][]byte
	for _, r := range recs {
		if r.Err != nil {
			t.Fatalf("unexpected error record: %v", r.Err)
		}
		if r.Direction == dir {
			out = append(out, r.Bytes)
		}
	}
	return out
}

func wantPDUs(t *testing.T, got [][]byte, want ...[]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d PDUs, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("PDU %d differs:\n got %x\nwant %x", i, got[i], want[i])
		}
	}
}

// TestCapturesMatchHex: each real pcap decodes to exactly the PDUs of
// its .c2s.hex and .s2c.hex files, per direction, in order.
func TestCapturesMatchHex(t *testing.T) {
	pcaps, _ := filepath.Glob(filepath.Join(captureDir, "*.pcap"))
	if len(pcaps) == 0 {
		t.Fatalf("no captures under %s", captureDir)
	}
	for _, pc := range pcaps {
		name := strings.TrimSuffix(pc, ".pcap")
		t.Run(filepath.Base(name), func(t *testing.T) {
			recs, err := ReadFile(pc, Options{})
			if err != nil {
				t.Fatal(err)
			}
			for _, dir := range []Direction{ClientToServer, ServerToClient} {
				hexRecs, err := ReadFile(name+"."+dir.String()+".hex", Options{})
				if err != nil {
					t.Fatal(err)
				}
				var want [][]byte
				for _, r := range hexRecs {
					if r.Err != nil || r.Direction != dir {
						t.Fatalf("hex record %+v", r)
					}
					want = append(want, r.Bytes)
				}
				wantPDUs(t, pdusOf(t, recs, dir), want...)
			}
			for _, r := range recs {
				if r.Stream != 0 || r.Frame == 0 || r.Timestamp.IsZero() || r.Src.Port() == 0 {
					t.Fatalf("record without location: %+v", r)
				}
				if (r.Direction == ClientToServer) != (r.Dst == recs[0].Dst) { // recs[0] is the bind
					t.Fatalf("direction %v for %v -> %v", r.Direction, r.Src, r.Dst)
				}
			}
			// Port filter: the right port keeps everything, another drops it.
			// (error-unknown-kmsid-v6 was recorded on 21689, not 21688.)
			port := recs[0].Dst.Port()
			if recs2, _ := ReadFile(pc, Options{Port: port}); len(recs2) != len(recs) {
				t.Fatalf("--port %d: %d records, want %d", port, len(recs2), len(recs))
			}
			if recs3, _ := ReadFile(pc, Options{Port: 1688}); len(recs3) != 0 {
				t.Fatalf("--port 1688: %d records, want 0", len(recs3))
			}
		})
	}
}

func TestReassembly(t *testing.T) {
	b1, a1, r2, p2 := bindPDU(1), ackPDU(1), reqPDU(2, 300), respPDU(2, 200)
	c2s := append(append([]byte{}, b1...), r2...)
	cases := []struct {
		name  string
		link  layers.LinkType
		ng    bool
		c, s  netip.AddrPort
		build func(s *synth, c, d netip.AddrPort)
	}{
		{"in order, one PDU per segment", layers.LinkTypeEthernet, false, cli, srv, func(s *synth, c, d netip.AddrPort) {
			handshake(s, c, d)
			s.pkt(c, d, 1001, false, true, b1)
			s.pkt(d, c, 5001, false, true, a1)
			s.pkt(c, d, 1001+uint32(len(b1)), false, true, r2)
			s.pkt(d, c, 5001+uint32(len(a1)), false, true, p2)
		}},
		{"out of order and retransmitted", layers.LinkTypeEthernet, false, cli, srv, func(s *synth, c, d netip.AddrPort) {
			handshake(s, c, d)
			s.pkt(c, d, 1001+50, false, true, c2s[50:200])
			s.pkt(c, d, 1001+200, false, true, c2s[200:])
			s.pkt(c, d, 1001, false, true, c2s[:80]) // overlaps the first
			s.pkt(c, d, 1001, false, true, c2s[:80]) // retransmission
			s.pkt(d, c, 5001+uint32(len(a1)), false, true, p2)
			s.pkt(d, c, 5001, false, true, a1)
			s.pkt(d, c, 5001, false, true, a1[:10]) // stale retransmission
		}},
		{"one-byte segments", layers.LinkTypeNull, false, cli, srv, func(s *synth, c, d netip.AddrPort) {
			handshake(s, c, d)
			for i := range c2s {
				s.pkt(c, d, 1001+uint32(i), false, true, c2s[i:i+1])
			}
			s.pkt(d, c, 5001, false, true, append(append([]byte{}, a1...), p2...))
		}},
		{"no handshake: client by PDU type, server spoke first", layers.LinkTypeLinuxSLL, false, cli, srv, func(s *synth, c, d netip.AddrPort) {
			s.pkt(d, c, 77, false, true, nil)
			s.pkt(d, c, 5001, false, true, a1)
			s.pkt(c, d, 1001, false, true, c2s)
			s.pkt(d, c, 5001+uint32(len(a1)), false, true, p2)
		}},
		{"IPv6 pcapng, any port, sequence wraps", layers.LinkTypeEthernet, true, netip.MustParseAddrPort("[2001:db8::1]:40000"), netip.MustParseAddrPort("[2001:db8::2]:4444"), func(s *synth, c, d netip.AddrPort) {
			s.pkt(c, d, 0xffffff00, true, false, nil)
			s.pkt(d, c, 5000, true, true, nil)
			s.pkt(c, d, 0xffffff01, false, true, c2s[:300])
			s.pkt(c, d, 0xffffff01+300-1<<32, false, true, c2s[300:])
			s.pkt(d, c, 5001, false, true, append(append([]byte{}, a1...), p2...))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSynth(t, tc.link)
			s.ng = tc.ng
			tc.build(s, tc.c, tc.s)
			recs := s.read(Options{})
			wantPDUs(t, pdusOf(t, recs, ClientToServer), b1, r2)
			wantPDUs(t, pdusOf(t, recs, ServerToClient), a1, p2)
			for i := 1; i < len(recs); i++ {
				if recs[i].Frame < recs[i-1].Frame {
					t.Fatalf("records out of capture order: %d after %d", recs[i].Frame, recs[i-1].Frame)
				}
			}
			for _, r := range recs {
				if want := tc.c; (r.Direction == ClientToServer) != (r.Src == want) {
					t.Fatalf("record from %v labelled %v", r.Src, r.Direction)
				}
			}
		})
	}
}

func TestStreamErrors(t *testing.T) {
	b1, r2 := bindPDU(1), reqPDU(2, 100)
	t.Run("hole", func(t *testing.T) {
		s := newSynth(t, layers.LinkTypeEthernet)
		handshake(s, cli, srv)
		s.pkt(cli, srv, 1001, false, true, b1)
		s.pkt(cli, srv, 1001+uint32(len(b1))+10, false, true, r2[10:])
		recs := s.read(Options{})
		if len(recs) != 2 || recs[0].Err != nil || !errors.Is(recs[1].Err, ErrGap) {
			t.Fatalf("got %+v", recs)
		}
	})
	t.Run("tail inside a PDU", func(t *testing.T) {
		s := newSynth(t, layers.LinkTypeEthernet)
		handshake(s, cli, srv)
		s.pkt(cli, srv, 1001, false, true, append(append([]byte{}, b1...), r2[:40]...))
		recs := s.read(Options{})
		if len(recs) != 2 || !errors.Is(recs[1].Err, ErrTruncated) || len(recs[1].Bytes) != 40 {
			t.Fatalf("got %+v", recs)
		}
	})
	t.Run("garbage after a PDU", func(t *testing.T) {
		s := newSynth(t, layers.LinkTypeEthernet)
		handshake(s, cli, srv)
		bad := append([]byte{}, r2...)
		bad[0] = 4 // rpc_vers 4
		s.pkt(cli, srv, 1001, false, true, append(append([]byte{}, b1...), bad...))
		recs := s.read(Options{})
		if len(recs) != 2 || !errors.Is(recs[1].Err, ErrNotRPC) || !errors.Is(recs[1].Err, rpcparse.ErrVersion) {
			t.Fatalf("got %+v", recs)
		}
		f := Decode(&recs[1], Options{})
		if f.Reason != "bad-rpc-version" || f.HeaderFact == nil || f.RPCVersion != "4.0" {
			t.Fatalf("fact %+v", f)
		}
	})
	t.Run("non-RPC stream skipped unless its port is asked for", func(t *testing.T) {
		s := newSynth(t, layers.LinkTypeEthernet)
		handshake(s, cli, srv)
		s.pkt(cli, srv, 1001, false, true, []byte("GET / HTTP/1.1\r\n\r\n"))
		if recs := s.read(Options{}); len(recs) != 0 {
			t.Fatalf("got %+v", recs)
		}
		recs := s.read(Options{Port: srv.Port()})
		if len(recs) != 1 || !errors.Is(recs[0].Err, ErrNotRPC) {
			t.Fatalf("got %+v", recs)
		}
	})
	t.Run("port reuse starts a new stream", func(t *testing.T) {
		s := newSynth(t, layers.LinkTypeEthernet)
		handshake(s, cli, srv)
		s.pkt(cli, srv, 1001, false, true, b1)
		s.pkt(cli, srv, 90000, true, false, nil)
		s.pkt(srv, cli, 7000, true, true, nil)
		s.pkt(cli, srv, 90001, false, true, b1)
		recs := s.read(Options{})
		if len(recs) != 2 || recs[0].Stream != 0 || recs[1].Stream != 1 || recs[1].Err != nil {
			t.Fatalf("got %+v", recs)
		}
	})
}

func TestHex(t *testing.T) {
	b1, a1 := bindPDU(1), ackPDU(1)
	hx := func(b []byte) string { return strings.ToUpper(string(hexOf(b))) }
	cases := []struct {
		name, file, text string
		want             []Direction
		wantErr          error
	}{
		{"prefixes", "x.hex", "# comment\n\nc> " + hx(b1) + "\ns>" + hx(a1) + "\n", []Direction{ClientToServer, ServerToClient}, nil},
		{"file name", "a.s2c.hex", hx(b1) + "\n", []Direction{ServerToClient}, nil},
		{"prefix beats file name", "a.s2c.hex", "c>" + hx(b1) + "\n", []Direction{ClientToServer}, nil},
		{"PDU type when nothing else says", "a.hex", hx(a1) + "\n" + hx(b1), []Direction{ServerToClient, ClientToServer}, nil},
		{"two PDUs on a line", "a.c2s.hex", hx(b1) + hx(b1), []Direction{ClientToServer, ClientToServer}, nil},
		{"not hex", "a.hex", "c> zz\n", nil, ErrHex},
		{"bad prefix", "a.hex", "x>00\n", nil, ErrHex},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := Read(strings.NewReader(tc.text), tc.file, Options{})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != len(tc.want) {
				t.Fatalf("%d records, want %d", len(recs), len(tc.want))
			}
			for i, r := range recs {
				if r.Err != nil || r.Direction != tc.want[i] {
					t.Fatalf("record %d: %v %v", i, r.Direction, r.Err)
				}
			}
		})
	}
	// A line that is hex but not a PDU is an error record, not a failure.
	recs, err := Read(strings.NewReader(hx(b1[:20])+"\n"+hx(b1)), "a.c2s.hex", Options{})
	if err != nil || len(recs) != 2 || !errors.Is(recs[0].Err, ErrTruncated) || recs[0].Line != 1 || recs[1].Err != nil || recs[1].Line != 2 {
		t.Fatalf("got %+v, %v", recs, err)
	}
}

func hexOf(b []byte) []byte {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return out
}

func TestReadFileErrors(t *testing.T) {
	if _, err := ReadFile(filepath.Join(t.TempDir(), "missing.pcap"), Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "x.bin")
	os.WriteFile(bin, []byte{0, 1, 2, 3, 0xff, 0xfe}, 0o600)
	if _, err := ReadFile(bin, Options{}); !errors.Is(err, ErrFormat) {
		t.Fatalf("binary file: %v", err)
	}
	cut := filepath.Join(t.TempDir(), "cut.pcap")
	os.WriteFile(cut, []byte{0xd4, 0xc3, 0xb2, 0xa1, 2, 0}, 0o600)
	if _, err := ReadFile(cut, Options{}); err == nil {
		t.Fatal("truncated pcap header accepted")
	}
}

// TestDescribe checks the JSON facts of each PDU type built in both byte orders.
func TestDescribe(t *testing.T) {
	obj := rpcparse.MustUUID("01234567-89ab-cdef-0123-456789abcdef")
	auth := &rpcparse.AuthSpec{Type: rpcparse.AuthTypeNTLM, Level: rpcparse.AuthLevel(6), ContextID: 7, Credentials: []byte("NTLMSSP\x00\x01\x00\x00\x00")}
	for _, drep := range []rpcparse.DataRep{rpcparse.LittleEndianDataRep, rpcparse.BigEndianDataRep} {
		h := func(t rpcparse.PType, flags uint8) rpcparse.PDUHead {
			return rpcparse.PDUHead{Type: t, Flags: flags, DataRep: drep, CallID: 0x01020304}
		}
		samr, _ := rpcparse.InterfaceByName("samr")
		rows := []struct {
			pdu  []byte
			want string // substrings of the JSON
		}{
			{rpcparse.AppendBind(nil, h(rpcparse.PTypeBind, 3), rpcparse.BindSpec{MaxXmitFrag: 4280, MaxRecvFrag: 4280, AssocGroup: 9, Contexts: []rpcparse.ContextSpec{{ID: 5, Abstract: rpcparse.SyntaxID{UUID: samr.UUID, Major: 1}, Transfers: []rpcparse.SyntaxID{ndr, {UUID: rpcparse.NDR64UUID, Major: 1}}}}}, auth),
				`"ptype":"bind","ptype_num":11,"rpc_version":"5.0","call_id":16909060,"flags":"0x03","flag_names":["first_frag","last_frag"]|"max_xmit":4280,"max_recv":4280,"assoc_group":9,"contexts":[{"id":5,"abstract":{"uuid":"12345778-1234-abcd-ef00-0123456789ac","version":"1.0","name":"samr"},"transfer_syntaxes":[{"uuid":"8a885d04-1ceb-11c9-9fe8-08002b104860","version":"2.0","kind":"ndr20"},{"uuid":"71710533-beba-4937-8319-b5dbef9ccc36","version":"1.0","kind":"ndr64"}]}]|"auth":{"type":"ntlm","type_num":10,"level":"pkt_privacy","level_num":6,"pad_length":0,"context_id":7,"credentials_length":12,"class":"ntlm"}`},
			{rpcparse.AppendBindNak(nil, drep, 1, rpcparse.NakLocalLimitExceeded), `"reject_reason":2,"reject_reason_name":"local_limit_exceeded","versions":["5.0"]`},
			{rpcparse.AppendRequest(nil, h(0, 1), 3, 9, &obj, make([]byte, 10), nil), `"flags":"0x81","flag_names":["first_frag","object_uuid"]|"context_id":3,"opnum":9,"alloc_hint":10,"object":"01234567-89ab-cdef-0123-456789abcdef","stub_length":10`},
			{rpcparse.AppendFault(nil, drep, 4, 1, rpcparse.StatusOpRangeError, true), `"flags":"0x23"|"context_id":1,"alloc_hint":0,"cancel_count":0,"stub_length":0,"status":"0x1c010002","status_name":"nca_s_op_rng_error"`},
			{rpcparse.AppendSimple(nil, h(rpcparse.PTypeShutdown, 3), nil, nil), `"ptype":"shutdown","ptype_num":17`},
		}
		for _, row := range rows {
			rec := Record{Direction: ClientToServer, Bytes: row.pdu}
			js, _ := json.Marshal(Decode(&rec, Options{}))
			order := `"byte_order":"little"`
			if drep.BigEndian() {
				order = `"drep":"00000000","byte_order":"big"`
			}
			for _, w := range append(strings.Split(row.want, "|"), order) {
				if !bytes.Contains(js, []byte(w)) {
					t.Errorf("%s\nlacks %s", js, w)
				}
			}
			if bytes.Contains(js, []byte(`"error"`)) {
				t.Errorf("%s has an error", js)
			}
		}
	}
}

func TestStubDecoderHook(t *testing.T) {
	rec := Record{Direction: ClientToServer, Bytes: reqPDU(2, 8)}
	called := 0
	f := Decode(&rec, Options{StubDecoder: func(r *Record, p *rpcparse.PDU) any {
		called++
		return map[string]int{"stub": len(p.Request.Stub)}
	}})
	js, _ := json.Marshal(f)
	if called != 1 || !bytes.Contains(js, []byte(`"kms":{"stub":8}`)) {
		t.Fatalf("%s", js)
	}
	rec = Record{Bytes: bindPDU(1)}
	if f := Decode(&rec, Options{StubDecoder: func(*Record, *rpcparse.PDU) any { t.Fatal("called for a bind"); return nil }}); f.KMS != nil {
		t.Fatal(f.KMS)
	}
}

// FuzzRead: any input either fails as a whole or yields records each of
// which is one whole PDU (Split agrees) or carries an error.
func FuzzRead(f *testing.F) {
	for _, name := range []string{"win10-v4.pcap", "win10-v6.c2s.hex"} {
		if b, err := os.ReadFile(filepath.Join(captureDir, name)); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := Read(bytes.NewReader(b), "f.c2s.hex", Options{})
		if err != nil {
			return
		}
		for i := range recs {
			r := &recs[i]
			if r.Err == nil {
				if n, err := rpcparse.Split(r.Bytes, 0); err != nil || n != len(r.Bytes) {
					t.Fatalf("record %d is not one PDU: %d %v", i, n, err)
				}
			}
			_ = Decode(r, Options{})
		}
	})
}
