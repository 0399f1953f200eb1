package capture

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// synth builds small captures for the reassembly tests: each pkt call is
// one TCP segment with explicit flags and sequence number, so tests can
// reorder, repeat and drop segments at will.
type synth struct {
	t    testing.TB
	link layers.LinkType
	ng   bool
	pkts []synthPkt
}

type synthPkt struct {
	src, dst netip.AddrPort
	seq, ack uint32
	syn, ak  bool
	payload  []byte
}

func newSynth(t testing.TB, link layers.LinkType) *synth { return &synth{t: t, link: link} }

func (s *synth) pkt(src, dst netip.AddrPort, seq uint32, syn, ack bool, payload []byte) {
	s.pkts = append(s.pkts, synthPkt{src: src, dst: dst, seq: seq, syn: syn, ak: ack, payload: payload})
}

func (s *synth) frame(p synthPkt) []byte {
	tcp := &layers.TCP{SrcPort: layers.TCPPort(p.src.Port()), DstPort: layers.TCPPort(p.dst.Port()), Seq: p.seq, Ack: p.ack, SYN: p.syn, ACK: p.ak, PSH: len(p.payload) > 0, Window: 65535}
	var net_ gopacket.SerializableLayer
	var ethType layers.EthernetType
	if p.src.Addr().Is4() {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IP(p.src.Addr().AsSlice()), DstIP: net.IP(p.dst.Addr().AsSlice())}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		net_, ethType = ip, layers.EthernetTypeIPv4
	} else {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: net.IP(p.src.Addr().AsSlice()), DstIP: net.IP(p.dst.Addr().AsSlice())}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		net_, ethType = ip, layers.EthernetTypeIPv6
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	var ls []gopacket.SerializableLayer
	switch s.link {
	case layers.LinkTypeEthernet:
		ls = append(ls, &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: ethType})
	case layers.LinkTypeNull:
		fam := layers.ProtocolFamilyIPv4
		if ethType == layers.EthernetTypeIPv6 {
			fam = layers.ProtocolFamilyIPv6Linux
		}
		ls = append(ls, &layers.Loopback{Family: fam})
	}
	ls = append(ls, net_, tcp, gopacket.Payload(p.payload))
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		s.t.Fatal(err)
	}
	b := buf.Bytes()
	if s.link == layers.LinkTypeLinuxSLL {
		var h [16]byte
		binary.BigEndian.PutUint16(h[0:2], 0) // to us
		binary.BigEndian.PutUint16(h[2:4], 1) // ARPHRD_ETHER
		binary.BigEndian.PutUint16(h[4:6], 6)
		binary.BigEndian.PutUint16(h[14:16], uint16(ethType))
		b = append(h[:], b...)
	}
	return b
}

func (s *synth) bytes() []byte {
	var out bytes.Buffer
	w := pcapgo.NewWriter(&out)
	if err := w.WriteFileHeader(65535, s.link); err != nil {
		s.t.Fatal(err)
	}
	ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i, p := range s.pkts {
		b := s.frame(p)
		ci := gopacket.CaptureInfo{Timestamp: ts.Add(time.Duration(i) * time.Millisecond), CaptureLength: len(b), Length: len(b)}
		if err := w.WritePacket(ci, b); err != nil {
			s.t.Fatal(err)
		}
	}
	return out.Bytes()
}

// read writes the capture and reads it back.
func (s *synth) read(opt Options) []Record {
	s.t.Helper()
	var out bytes.Buffer
	if s.ng {
		w, err := pcapgo.NewNgWriter(&out, s.link)
		if err != nil {
			s.t.Fatal(err)
		}
		ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		for i, p := range s.pkts {
			b := s.frame(p)
			ci := gopacket.CaptureInfo{Timestamp: ts.Add(time.Duration(i) * time.Millisecond), CaptureLength: len(b), Length: len(b)}
			if err := w.WritePacket(ci, b); err != nil {
				s.t.Fatal(err)
			}
		}
		if err := w.Flush(); err != nil {
			s.t.Fatal(err)
		}
	} else {
		out.Write(s.bytes())
	}
	recs, err := Read(&out, "synth", opt)
	if err != nil {
		s.t.Fatal(err)
	}
	return recs
}
