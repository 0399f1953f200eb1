package corpus

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// Writer writes synthetic TCP conversations as a classic Ethernet pcap
// with real IP and TCP headers (lengths and checksums computed), so that
// Wireshark and our reader see the same bytes. Timestamps start at a fixed
// instant and advance 1 ms per packet, making the output reproducible.
type Writer struct {
	pw  *pcapgo.Writer
	ts  time.Time
	err error
}

// Epoch is the timestamp of the first packet.
var Epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// NewWriter writes the pcap file header to w.
func NewWriter(w io.Writer) (*Writer, error) {
	pw := pcapgo.NewWriter(w)
	if err := pw.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		return nil, fmt.Errorf("corpus: pcap header: %w", err)
	}
	return &Writer{pw: pw, ts: Epoch}, nil
}

// Err returns the first write error, if any.
func (w *Writer) Err() error { return w.err }

// Conn is one TCP connection being written.
type Conn struct {
	w                *Writer
	client, server   netip.AddrPort
	cliSeq, srvSeq   uint32
	cliNext, srvNext uint32 // next sequence number each side sends
}

// Open writes a three-way handshake from client to server.
func (w *Writer) Open(client, server netip.AddrPort, cliISN, srvISN uint32) *Conn {
	c := &Conn{w: w, client: client, server: server, cliNext: cliISN, srvNext: srvISN}
	c.segment(true, cliISN, 0, true, false, false, nil)
	c.segment(false, srvISN, cliISN+1, true, true, false, nil)
	c.cliNext, c.srvNext = cliISN+1, srvISN+1
	c.segment(true, c.cliNext, c.srvNext, false, true, false, nil)
	return c
}

// Send writes data from one side as consecutive segments cut at the given
// offsets (none: one segment).
func (c *Conn) Send(fromClient bool, data []byte, cuts ...int) {
	prev := 0
	for _, cut := range append(cuts, len(data)) {
		c.SendAt(fromClient, prev, data[prev:cut])
		prev = cut
	}
	c.advance(fromClient, len(data))
}

// SendAt writes one segment holding data at byte offset off from the
// side's current position, without advancing it: tests use it to reorder
// and repeat segments; call Advance when the bytes are all out.
func (c *Conn) SendAt(fromClient bool, off int, data []byte) {
	seq, ack := c.cliNext, c.srvNext
	if !fromClient {
		seq, ack = c.srvNext, c.cliNext
	}
	c.segment(fromClient, seq+uint32(off), ack, false, true, false, data)
}

// Advance moves a side's position after SendAt.
func (c *Conn) Advance(fromClient bool, n int) { c.advance(fromClient, n) }

func (c *Conn) advance(fromClient bool, n int) {
	if fromClient {
		c.cliNext += uint32(n)
	} else {
		c.srvNext += uint32(n)
	}
}

// Close writes FIN from both sides and the last ACK.
func (c *Conn) Close() {
	c.segment(true, c.cliNext, c.srvNext, false, true, true, nil)
	c.cliNext++
	c.segment(false, c.srvNext, c.cliNext, false, true, true, nil)
	c.srvNext++
	c.segment(true, c.cliNext, c.srvNext, false, true, false, nil)
}

func (c *Conn) segment(fromClient bool, seq, ack uint32, syn, ackFlag, fin bool, payload []byte) {
	w := c.w
	if w.err != nil {
		return
	}
	src, dst := c.client, c.server
	if !fromClient {
		src, dst = dst, src
	}
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()),
		Seq: seq, Ack: ack, SYN: syn, ACK: ackFlag, FIN: fin, PSH: len(payload) > 0, Window: 65535,
	}
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{0, 0, 0, 0, 0, 0}, DstMAC: net.HardwareAddr{0, 0, 0, 0, 0, 0}}
	var ip gopacket.SerializableLayer
	if src.Addr().Is4() {
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Flags: layers.IPv4DontFragment, Protocol: layers.IPProtocolTCP,
			SrcIP: net.IP(src.Addr().AsSlice()), DstIP: net.IP(dst.Addr().AsSlice())}
		eth.EthernetType = layers.EthernetTypeIPv4
		w.err = tcp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	} else {
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: net.IP(src.Addr().AsSlice()), DstIP: net.IP(dst.Addr().AsSlice())}
		eth.EthernetType = layers.EthernetTypeIPv6
		w.err = tcp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	}
	if w.err != nil {
		return
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, eth, ip, tcp, gopacket.Payload(payload)); err != nil {
		w.err = fmt.Errorf("corpus: serialize: %w", err)
		return
	}
	b := buf.Bytes()
	ci := gopacket.CaptureInfo{Timestamp: w.ts, CaptureLength: len(b), Length: len(b)}
	w.ts = w.ts.Add(time.Millisecond)
	if err := w.pw.WritePacket(ci, b); err != nil {
		w.err = fmt.Errorf("corpus: write: %w", err)
	}
}
