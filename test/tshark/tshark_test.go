package tshark

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/kmsproxy/kmsproxy/capture"
	"github.com/kmsproxy/kmsproxy/test/corpus"
)

// Interface and security-provider dissectors are switched off: they would
// only dissect our dummy stubs and tokens, and an exception in one of
// them can stop Wireshark from dissecting the next PDU of the same segment.
var disabledProtocols = []string{
	"samr", "lsarpc", "srvsvc", "winreg", "wkssvc", "rpc_netlogon", "drsuapi", "epm", "svcctl", "atsvc",
	"spoolss", "eventlog", "dssetup", "remact", "remunk", "remunk2", "oxid", "isystemactivator", "dcom",
	"ntlmssp", "spnego", "kerberos", "gss-api",
}

func TestDifferential(t *testing.T) {
	bin, err := exec.LookPath("tshark")
	if err != nil {
		t.Fatalf("tshark not found (%v): install the Debian package tshark, as .ci/run does", err)
	}
	dir := t.TempDir()
	corpusPath := filepath.Join(dir, "corpus.pcap")
	f, err := os.Create(corpusPath)
	if err != nil {
		t.Fatal(err)
	}
	st, err := corpus.Write(f, corpus.CaptureDir())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	inputs := []string{corpusPath}
	real, _ := filepath.Glob(filepath.Join(corpus.CaptureDir(), "*.pcap"))
	if len(real) == 0 {
		t.Fatalf("no real captures under %s", corpus.CaptureDir())
	}
	inputs = append(inputs, real...)

	compared, disagreements := 0, 0
	for _, in := range inputs {
		n, bad := compareFile(t, bin, in)
		compared += n
		disagreements += bad
	}
	if compared < st.PDUs {
		t.Errorf("compared %d PDUs, fewer than the corpus's %d", compared, st.PDUs)
	}
	fmt.Printf("tshark differential: %d PDUs compared, %d disagreements\n", compared, disagreements)
	t.Logf("tshark differential: %d PDUs compared, %d disagreements", compared, disagreements)
	if compared < 200 {
		t.Errorf("only %d PDUs compared", compared)
	}
}

// compareFile decodes one capture both ways and compares PDU by PDU, per
// TCP direction in stream order.
func compareFile(t *testing.T, bin, path string) (compared, disagreements int) {
	t.Helper()
	recs, err := capture.ReadFile(path, capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ours := map[string][][]string{}
	ports := map[uint16]bool{}
	for i := range recs {
		r := &recs[i]
		if r.Err != nil {
			t.Errorf("%s: frame %d: %v", filepath.Base(path), r.Frame, r.Err)
			disagreements++
			continue
		}
		if r.Direction == capture.ClientToServer {
			ports[r.Dst.Port()] = true
		}
		k := r.Src.String() + ">" + r.Dst.String()
		ours[k] = append(ours[k], ourView(capture.Decode(r, capture.Options{})))
	}
	theirs := runTshark(t, bin, path, ports)
	keys := map[string]bool{}
	for k := range ours {
		keys[k] = true
	}
	for k := range theirs {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		a, b := ours[k], theirs[k]
		if len(a) != len(b) {
			t.Errorf("%s %s: we found %d PDUs, tshark %d", filepath.Base(path), k, len(a), len(b))
			disagreements++
		}
		for i := 0; i < len(a) && i < len(b); i++ {
			compared++
			if d := diff(a[i], b[i]); d != "" {
				disagreements++
				if disagreements <= 25 {
					t.Errorf("%s %s PDU %d:\n%s", filepath.Base(path), k, i, d)
				}
			}
		}
	}
	return compared, disagreements
}

func diff(a, b []string) string {
	if strings.Join(a, "\n") == strings.Join(b, "\n") {
		return ""
	}
	var out strings.Builder
	for i := 0; i < len(a) || i < len(b); i++ {
		var x, y string
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		mark := "  "
		if x != y {
			mark = "!="
		}
		fmt.Fprintf(&out, "  %s ours %-60s tshark %s\n", mark, x, y)
	}
	return out.String()
}

// ---- our side ----

func ourView(f capture.Fact) []string {
	v := []string{
		"ptype=" + strconv.Itoa(int(f.PTypeNum)),
		"call_id=" + u(f.CallID),
		"frag_len=" + u(f.FragLength),
		"auth_len=" + u(f.AuthLength),
		"flags=" + f.Flags,
		"byte_order=" + f.ByteOrder,
	}
	if f.MaxXmit != nil {
		v = append(v, "max_xmit="+u(*f.MaxXmit), "max_recv="+u(*f.MaxRecv), fmt.Sprintf("assoc_group=0x%08x", *f.AssocGroup))
	}
	for _, c := range f.Contexts {
		maj, min, _ := strings.Cut(c.Abstract.Version, ".")
		v = append(v, fmt.Sprintf("ctx id=%d abstract=%s v%s.%s", c.ID, c.Abstract.UUID, maj, min))
		for _, ts := range c.TransferSyntaxes {
			v = append(v, fmt.Sprintf("  transfer=%s ver=%d", ts.UUID, wireVersion(ts.Version)))
		}
	}
	if f.SecAddr != nil && *f.SecAddr != "" {
		v = append(v, "sec_addr="+*f.SecAddr)
	}
	for _, r := range f.Results {
		v = append(v, resultLine(u(r.Result), u(r.Reason), r.Transfer.UUID, strconv.Itoa(int(wireVersion(r.Transfer.Version)))))
	}
	if f.RejectReason != nil {
		v = append(v, "reject_reason="+u(*f.RejectReason))
		if *f.RejectReason == 4 { // Wireshark lists versions only for this reason
			v = append(v, "versions="+strings.Join(f.Versions, ","))
		}
	}
	if f.ContextID != nil {
		v = append(v, "ctx_id="+u(*f.ContextID), "alloc_hint="+u(*f.AllocHint))
	}
	if f.Opnum != nil {
		v = append(v, "opnum="+u(*f.Opnum))
	}
	if f.Object != "" {
		v = append(v, "object="+f.Object)
	}
	if f.CancelCount != nil {
		v = append(v, "cancel_count="+u(*f.CancelCount))
	}
	if f.Status != "" {
		v = append(v, "status="+f.Status)
	}
	if a := f.Auth; a != nil {
		v = append(v, fmt.Sprintf("auth type=%d level=%d pad=%d ctx=%d", a.TypeNum, a.LevelNum, a.PadLength, a.ContextID))
	}
	return v
}

// resultLine prints a presentation result; the reason is compared for
// rejections, the only results whose reason Wireshark shows as such.
func resultLine(result, reason, uuid, ver string) string {
	if result == "1" || result == "2" {
		return fmt.Sprintf("result=%s reason=%s transfer=%s ver=%s", result, reason, uuid, ver)
	}
	return fmt.Sprintf("result=%s transfer=%s ver=%s", result, uuid, ver)
}

func u[T ~uint8 | ~uint16 | ~uint32](x T) string { return strconv.FormatUint(uint64(x), 10) }

// wireVersion turns "major.minor" back into the u32 on the wire.
func wireVersion(s string) uint32 {
	maj, min, _ := strings.Cut(s, ".")
	a, _ := strconv.ParseUint(maj, 10, 16)
	b, _ := strconv.ParseUint(min, 10, 16)
	return uint32(a) | uint32(b)<<16
}

// ---- tshark's side ----

func runTshark(t *testing.T, bin, path string, ports map[uint16]bool) map[string][][]string {
	t.Helper()
	args := []string{"-n", "-r", path, "-o", "dcerpc.reassemble_dcerpc:FALSE", "-o", "tcp.desegment_tcp_streams:TRUE"}
	for p := range ports {
		args = append(args, "-d", fmt.Sprintf("tcp.port==%d,dcerpc", p))
	}
	for _, p := range disabledProtocols {
		args = append(args, "--disable-protocol", p)
	}
	args = append(args, "-Y", "dcerpc", "-T", "json", "-J", "frame ip ipv6 tcp dcerpc")
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.UseNumber()
	pkts, err := parse(dec, "")
	if err != nil {
		t.Fatalf("tshark JSON: %v", err)
	}
	res := map[string][][]string{}
	for _, pkt := range pkts {
		layers := pkt.find("layers")
		if layers == nil {
			continue
		}
		var src, dst, sport, dport string
		var rpc []*node
		for _, l := range layers.kids {
			switch l.key {
			case "ip":
				src, dst = l.get("ip.src"), l.get("ip.dst")
			case "ipv6":
				src, dst = "["+l.get("ipv6.src")+"]", "["+l.get("ipv6.dst")+"]"
			case "tcp":
				sport, dport = l.get("tcp.srcport"), l.get("tcp.dstport")
			case "dcerpc":
				rpc = append(rpc, l.kids...)
			}
		}
		k := src + ":" + sport + ">" + dst + ":" + dport
		// Several PDUs in one frame share one dcerpc layer; each starts at dcerpc.ver.
		var cur []*node
		flush := func() {
			if len(cur) > 0 {
				res[k] = append(res[k], tsharkView(&node{kids: cur}))
			}
			cur = nil
		}
		for _, n := range rpc {
			if n.key == "dcerpc.ver" {
				flush()
			}
			cur = append(cur, n)
		}
		flush()
	}
	return res
}

func tsharkView(p *node) []string {
	byteOrder := "big"
	if p.find("dcerpc.drep.byteorder").value() == "1" {
		byteOrder = "little"
	}
	v := []string{
		"ptype=" + p.get("dcerpc.pkt_type"),
		"call_id=" + p.get("dcerpc.cn_call_id"),
		"frag_len=" + p.get("dcerpc.cn_frag_len"),
		"auth_len=" + p.get("dcerpc.cn_auth_len"),
		"flags=" + p.get("dcerpc.cn_flags"),
		"byte_order=" + byteOrder,
	}
	if x := p.child("dcerpc.cn_max_xmit"); x != nil {
		v = append(v, "max_xmit="+x.val, "max_recv="+p.get("dcerpc.cn_max_recv"), "assoc_group="+p.get("dcerpc.cn_assoc_group"))
	}
	for _, c := range p.kids {
		if c.key != "dcerpc.cn_ctx_item" {
			continue
		}
		abs := c.child("dcerpc.cn_bind_abstract_syntax")
		v = append(v, fmt.Sprintf("ctx id=%s abstract=%s v%s.%s", c.get("dcerpc.cn_ctx_id"),
			abs.get("dcerpc.cn_bind_to_uuid"), abs.get("dcerpc.cn_bind_if_ver"), abs.get("dcerpc.cn_bind_if_ver_minor")))
		for _, tr := range c.kids {
			if tr.key == "dcerpc.cn_bind_trans" {
				v = append(v, fmt.Sprintf("  transfer=%s ver=%s", tr.get("dcerpc.cn_bind_trans_id"), tr.get("dcerpc.cn_bind_trans_ver")))
			}
		}
	}
	if x := p.child("dcerpc.cn_sec_addr"); x != nil && x.val != "" {
		v = append(v, "sec_addr="+x.val)
	}
	for _, c := range p.kids {
		if c.child("dcerpc.cn_ack_result") == nil {
			continue
		}
		v = append(v, resultLine(c.get("dcerpc.cn_ack_result"), c.get("dcerpc.cn_ack_reason"), c.get("dcerpc.cn_ack_trans_id"), c.get("dcerpc.cn_ack_trans_ver")))
	}
	if x := p.child("dcerpc.cn_reject_reason"); x != nil {
		v = append(v, "reject_reason="+x.val)
		if x.val == "4" {
			var vers []string
			var major string
			for _, c := range p.kids {
				switch c.key {
				case "dcerpc.cn_protocol_ver_major":
					major = c.val
				case "dcerpc.cn_protocol_ver_minor":
					vers = append(vers, major+"."+c.val)
				}
			}
			v = append(v, "versions="+strings.Join(vers, ","))
		}
	}
	ptype := p.get("dcerpc.pkt_type")
	if x := p.child("dcerpc.cn_ctx_id"); x != nil {
		v = append(v, "ctx_id="+x.val, "alloc_hint="+p.get("dcerpc.cn_alloc_hint"))
	}
	if ptype == "0" { // responses and faults repeat the request's opnum; ours is the wire field
		v = append(v, "opnum="+p.get("dcerpc.opnum"))
	}
	if x := p.child("dcerpc.obj_id"); x != nil {
		v = append(v, "object="+x.val)
	}
	if x := p.child("dcerpc.cn_cancel_count"); x != nil {
		v = append(v, "cancel_count="+x.val)
	}
	if x := p.child("dcerpc.cn_status"); x != nil {
		v = append(v, "status="+x.val)
	}
	for _, c := range p.kids {
		if c.key == "dcerpc.auth_info" && c.child("dcerpc.auth_type") != nil {
			v = append(v, fmt.Sprintf("auth type=%s level=%s pad=%s ctx=%s", c.get("dcerpc.auth_type"), c.get("dcerpc.auth_level"), c.get("dcerpc.auth_pad_len"), c.get("dcerpc.auth_ctx_id")))
			break
		}
	}
	return v
}

// node is one member of tshark's JSON, which repeats keys within an
// object: order and duplicates are kept. Array elements take the array's key.
type node struct {
	key, val string
	kids     []*node
}

func parse(dec *json.Decoder, key string) ([]*node, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		var out []*node
		obj := &node{key: key}
		for dec.More() {
			k := key
			if t == '{' {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k = kt.(string)
			}
			ns, err := parse(dec, k)
			if err != nil {
				return nil, err
			}
			if t == '{' {
				obj.kids = append(obj.kids, ns...)
			} else {
				out = append(out, ns...)
			}
		}
		if _, err := dec.Token(); err != nil && err != io.EOF {
			return nil, err
		}
		if t == '{' {
			return []*node{obj}, nil
		}
		return out, nil
	case string:
		return []*node{{key: key, val: t}}, nil
	default:
		return []*node{{key: key, val: fmt.Sprint(t)}}, nil
	}
}

// child returns the first direct member named key.
func (n *node) child(key string) *node {
	if n == nil {
		return nil
	}
	for _, k := range n.kids {
		if k.key == key {
			return k
		}
	}
	return nil
}

// get returns a direct member's value, or "<missing key>".
func (n *node) get(key string) string {
	if c := n.child(key); c != nil {
		return c.val
	}
	return "<missing " + key + ">"
}

// find returns the first member named key at any depth.
func (n *node) find(key string) *node {
	if n == nil {
		return nil
	}
	for _, k := range n.kids {
		if k.key == key {
			return k
		}
		if f := k.find(key); f != nil {
			return f
		}
	}
	return nil
}

func (n *node) value() string {
	if n == nil {
		return ""
	}
	return n.val
}
