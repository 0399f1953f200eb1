package capture

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// packetSource is what both pcapgo readers offer.
type packetSource interface {
	ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
}

func readPcap(r io.Reader, ng bool, opt Options) ([]Record, error) {
	var (
		src      packetSource
		linkType func(ci gopacket.CaptureInfo) layers.LinkType
	)
	if ng {
		ngr, err := pcapgo.NewNgReader(r, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			return nil, fmt.Errorf("capture: pcapng: %w", err)
		}
		src = ngr
		linkType = func(ci gopacket.CaptureInfo) layers.LinkType {
			if in, err := ngr.Interface(ci.InterfaceIndex); err == nil {
				return in.LinkType
			}
			return ngr.LinkType()
		}
	} else {
		pr, err := pcapgo.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("capture: pcap: %w", err)
		}
		src = pr
		lt := pr.LinkType()
		linkType = func(gopacket.CaptureInfo) layers.LinkType { return lt }
	}

	t := newTracker()
	for frame := 1; ; frame++ {
		data, ci, err := src.ReadPacketData()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				break // a capture cut off mid-packet: keep what was read
			}
			return nil, fmt.Errorf("capture: packet %d: %w", frame, err)
		}
		t.packet(frame, ci.Timestamp, data, linkType(ci))
	}
	return t.records(opt), nil
}

// segment is one TCP payload as captured.
type segment struct {
	seq   uint32
	data  []byte
	frame int
	ts    time.Time
}

// half is one direction of a connection.
type half struct {
	src, dst   netip.AddrPort
	syn        bool
	isn        uint32
	segs       []segment
	firstFrame int // first packet with payload; 0 before any
	lastFrame  int
	lastTS     time.Time
}

type conn struct {
	id     int
	halves [2]half // [0] sent the first packet seen
	client int     // index of the client half, -1 while unknown
}

type flowKey struct{ src, dst netip.AddrPort }

type tracker struct {
	conns []*conn
	flows map[flowKey]struct {
		c    *conn
		side int
	}
}

func newTracker() *tracker {
	return &tracker{flows: map[flowKey]struct {
		c    *conn
		side int
	}{}}
}

// packet files one captured frame; anything but TCP over IP is skipped.
func (t *tracker) packet(frame int, ts time.Time, data []byte, lt layers.LinkType) {
	pkt := gopacket.NewPacket(data, lt, gopacket.DecodeOptions{Lazy: true, NoCopy: true})
	var srcIP, dstIP net.IP
	switch nl := pkt.NetworkLayer().(type) {
	case *layers.IPv4:
		if nl.Flags&layers.IPv4MoreFragments != 0 || nl.FragOffset != 0 {
			return // IP fragments are not reassembled
		}
		srcIP, dstIP = nl.SrcIP, nl.DstIP
	case *layers.IPv6:
		srcIP, dstIP = nl.SrcIP, nl.DstIP
	default:
		return
	}
	tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ok {
		return
	}
	sa, ok1 := netip.AddrFromSlice(srcIP)
	da, ok2 := netip.AddrFromSlice(dstIP)
	if !ok1 || !ok2 {
		return
	}
	key := flowKey{netip.AddrPortFrom(sa.Unmap(), uint16(tcp.SrcPort)), netip.AddrPortFrom(da.Unmap(), uint16(tcp.DstPort))}

	ent, known := t.flows[key]
	// A fresh SYN with another ISN on a known 4-tuple is a new connection.
	if known && tcp.SYN && !tcp.ACK {
		if h := &ent.c.halves[ent.side]; h.syn && h.isn != tcp.Seq {
			known = false
		}
	}
	if !known {
		c := &conn{id: len(t.conns), client: -1}
		c.halves[0].src, c.halves[0].dst = key.src, key.dst
		c.halves[1].src, c.halves[1].dst = key.dst, key.src
		t.conns = append(t.conns, c)
		ent.c, ent.side = c, 0
		t.flows[key] = ent
		t.flows[flowKey{key.dst, key.src}] = struct {
			c    *conn
			side int
		}{c, 1}
	}
	c, h := ent.c, &ent.c.halves[ent.side]
	seq := tcp.Seq
	if tcp.SYN {
		if !h.syn {
			h.syn, h.isn = true, tcp.Seq
		}
		if c.client < 0 {
			if tcp.ACK {
				c.client = 1 - ent.side
			} else {
				c.client = ent.side
			}
		}
		seq++ // data on a SYN follows the SYN's sequence number
	}
	h.lastFrame, h.lastTS = frame, ts
	if len(tcp.Payload) == 0 {
		return
	}
	if h.firstFrame == 0 {
		h.firstFrame = frame
	}
	h.segs = append(h.segs, segment{seq: seq, data: tcp.Payload, frame: frame, ts: ts})
}

// mark says which packet made the stream contiguous up to end.
type mark struct {
	end   int
	frame int
	ts    time.Time
}

// assemble returns a direction's bytes in sequence order, the packet that
// completed each stretch, and how many bytes lie beyond a hole.
func (h *half) assemble() (stream []byte, marks []mark, missing int) {
	if len(h.segs) == 0 {
		return nil, nil, 0
	}
	var base uint32
	if h.syn {
		base = h.isn + 1
	} else {
		// No SYN: the lowest sequence number seen, wrap-aware around the first.
		base = h.segs[0].seq
		for _, s := range h.segs[1:] {
			if d := int32(s.seq - base); d < 0 {
				base = s.seq
			}
		}
	}
	type piece struct {
		off  int
		data []byte
	}
	var pending []piece // sorted by off
	for _, s := range h.segs {
		d := int32(s.seq - base)
		off, data := int(d), s.data
		if off < 0 { // starts before the stream: keep only the part after base
			if -off >= len(data) {
				continue
			}
			data, off = data[-off:], 0
		}
		i := sort.Search(len(pending), func(i int) bool { return pending[i].off > off })
		pending = append(pending, piece{})
		copy(pending[i+1:], pending[i:])
		pending[i] = piece{off, data}
		grew := false
		for len(pending) > 0 && pending[0].off <= len(stream) {
			p := pending[0]
			pending = pending[1:]
			if end := p.off + len(p.data); end > len(stream) {
				stream = append(stream, p.data[len(stream)-p.off:]...)
				grew = true
			}
		}
		if grew {
			marks = append(marks, mark{end: len(stream), frame: s.frame, ts: s.ts})
		}
	}
	for _, p := range pending {
		if end := p.off + len(p.data); end > len(stream)+missing {
			missing = end - len(stream)
		}
	}
	return stream, marks, missing
}

// looksLikeRPC reports whether b starts with a DCE/RPC v5 connection-oriented header.
func looksLikeRPC(b []byte) bool {
	return len(b) >= 3 && b[0] == 5 && b[1] <= 1 && rpcparse.PType(b[2]).ConnectionOriented()
}

func (t *tracker) records(opt Options) []Record {
	maxFrag := opt.maxFrag()
	var out []Record
	for _, c := range t.conns {
		if opt.Port != 0 && c.halves[0].src.Port() != opt.Port && c.halves[0].dst.Port() != opt.Port {
			continue
		}
		var streams [2][]byte
		var marks [2][]mark
		var missing [2]int
		for i := range c.halves {
			streams[i], marks[i], missing[i] = c.halves[i].assemble()
		}
		if opt.Port == 0 && !looksLikeRPC(streams[0]) && !looksLikeRPC(streams[1]) {
			continue
		}
		client := c.client
		if client < 0 {
			client = guessClient(c, streams, opt.Port)
		}
		for i := range c.halves {
			h := &c.halves[i]
			dir := ServerToClient
			if i == client {
				dir = ClientToServer
			}
			ms := marks[i]
			frameStream(streams[i], maxFrag, func(off, end int, err error) {
				r := Record{Stream: c.id, Direction: dir, Src: h.src, Dst: h.dst, Offset: int64(off), Bytes: streams[i][off:end:end], Err: err}
				if err != nil {
					r.Frame, r.Timestamp = h.lastFrame, h.lastTS
				} else {
					m := ms[sort.Search(len(ms), func(k int) bool { return ms[k].end >= end })]
					r.Frame, r.Timestamp = m.frame, m.ts
				}
				out = append(out, r)
			})
			if missing[i] > 0 {
				out = append(out, Record{Stream: c.id, Direction: dir, Src: h.src, Dst: h.dst, Offset: int64(len(streams[i])),
					Frame: h.lastFrame, Timestamp: h.lastTS,
					Err: fmt.Errorf("%w: %d bytes captured after a hole at stream offset %d", ErrGap, missing[i], len(streams[i]))})
			}
		}
	}
	sortRecords(out)
	return out
}

// guessClient picks the client of a connection whose handshake was not
// captured: the side whose first PDU only a client sends, else the side
// talking to Port, else the side that sent the first payload.
func guessClient(c *conn, streams [2][]byte, port uint16) int {
	for i := range streams {
		if looksLikeRPC(streams[i]) {
			switch rpcparse.PType(streams[i][2]) {
			case rpcparse.PTypeBind, rpcparse.PTypeAlterContext, rpcparse.PTypeRequest:
				return i
			}
		}
	}
	for i := range streams {
		if looksLikeRPC(streams[i]) && rpcparse.PType(streams[i][2]).FromServer() {
			return 1 - i
		}
	}
	if port != 0 {
		if c.halves[0].dst.Port() == port {
			return 0
		}
		if c.halves[1].dst.Port() == port {
			return 1
		}
	}
	a, b := c.halves[0].firstFrame, c.halves[1].firstFrame
	if b != 0 && (a == 0 || b < a) {
		return 1
	}
	return 0
}
