// Package replay evaluates a policy against recorded traffic without
// sending anything: the dry run behind `kmsproxy replay`, so a policy
// change can be tried on yesterday's capture before it is deployed.
//
//	cfg, _ := config.Load("kmsproxy.yaml")
//	recs, _ := capture.ReadFile("dmz.pcapng", capture.Options{})
//	sum, err := replay.Run(recs, cfg, replay.Options{}, func(d *replay.Decision) error {
//		return enc.Encode(d)
//	})
//
// Each TCP stream of the capture is simulated as one proxy session: the
// client address is checked at "accept" (DESIGN rule 1), the first PDU
// must be a bind, binds and alter_contexts go through DecideBind, the
// host's bind_ack and alter_context_resp decide which contexts are live,
// requests go through DecideRequest and, for KMS opnum 0, the decoded
// activation request through DecideKMS, with the framing and sequencing
// rules (2–7) of the session. Every PDU gets one Decision. Once the proxy
// would have closed the connection, the stream's remaining PDUs are
// "unreached": they never happened on a proxied connection.
//
// It does not simulate connection counts, activation rate limits or
// timeouts (a capture's timing is not the client's), and it evaluates the
// policy of one config file: the shadow policy, when the config names one,
// is compared the way the proxy does and reported beside the live verdict.
package replay

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/assoc"
	"github.com/kmsproxy/kmsproxy/capture"
	"github.com/kmsproxy/kmsproxy/config"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// Verdicts of a Decision.
const (
	VerdictAllow     = "allow"     // a client PDU the proxy would forward (or hold, for a fragment)
	VerdictDeny      = "deny"      // refused by policy: bind_nak / fault / close
	VerdictViolation = "violation" // broke framing or sequencing: closed without an answer
	VerdictInfo      = "info"      // a host PDU the proxy would relay
	VerdictUnreached = "unreached" // after the proxy would have closed the connection
)

// Stages say which check produced a Decision.
const (
	StageConnection = "connection"
	StageFraming    = "framing"
	StageSequence   = "sequence"
	StageBind       = "bind"
	StageRequest    = "request"
	StageKMS        = "kms"
	StageAuth3      = "auth3"
	StageCancel     = "cancel"
	StageHost       = "host"
)

// ReasonConnectionClosed explains an unreached PDU.
const ReasonConnectionClosed = "connection-closed"

// ErrNoSource: a capture without addresses (the hex format) needs Options.Source.
var ErrNoSource = errors.New("replay: capture has no client address; give one with --source")

// Options tune a replay.
type Options struct {
	// Source, when valid, replaces every stream's client address (hex
	// captures carry none).
	Source netip.Addr
}

// Decision is the proxy's verdict on one captured PDU.
type Decision struct {
	Type      string   `json:"type"` // "decision"
	Stream    int      `json:"stream"`
	Direction string   `json:"direction"`
	Frame     int      `json:"frame,omitempty"`
	Line      int      `json:"line,omitempty"`
	Client    string   `json:"client"`
	Server    string   `json:"server,omitempty"`
	Zone      string   `json:"zone"`
	PType     string   `json:"ptype,omitempty"`
	CallID    *uint32  `json:"call_id,omitempty"`
	Verdict   string   `json:"verdict"`
	Stage     string   `json:"stage"`
	Rule      string   `json:"rule,omitempty"`
	Reason    string   `json:"reason,omitempty"`
	Interface string   `json:"interface,omitempty"`  // first context's (bind) or the call's interface
	Contexts  []string `json:"interfaces,omitempty"` // every context's interface (bind, alter_context)
	ContextID *uint16  `json:"context_id,omitempty"`
	Opnum     *uint16  `json:"opnum,omitempty"`
	Accepted  []uint16 `json:"accepted_contexts,omitempty"` // bind_ack, alter_context_resp
	Status    string   `json:"status,omitempty"`            // fault status, bind_nak reason
	KMS       *KMS     `json:"kms,omitempty"`
	Shadow    *Shadow  `json:"shadow,omitempty"` // only where the shadow policy differs
	Error     string   `json:"error,omitempty"`
}

// KMS holds the decoded activation facts of a request or its reply.
type KMS struct {
	Version       uint16 `json:"version,omitempty"`
	Application   string `json:"application,omitempty"`
	ApplicationID string `json:"application_id,omitempty"`
	SKU           string `json:"sku,omitempty"`
	Workstation   string `json:"workstation,omitempty"`
	CMID          string `json:"client_machine_id,omitempty"`
	Status        string `json:"status,omitempty"` // reply HRESULT
	CurrentCount  uint32 `json:"current_count,omitempty"`
	Error         string `json:"error,omitempty"`
}

// Shadow is what the candidate policy would have decided, where it differs.
type Shadow struct {
	Verdict string `json:"verdict"`
	Rule    string `json:"rule,omitempty"`
	Reason  string `json:"reason"`
}

// Summary counts the decisions of a replay.
type Summary struct {
	Type     string                    `json:"type"` // "summary"
	Streams  int                       `json:"streams"`
	PDUs     int                       `json:"pdus"`
	Verdicts map[string]int            `json:"verdicts"`
	Reasons  map[string]map[string]int `json:"reasons"` // verdict → reason → count
	Shadow   int                       `json:"shadow_differences"`
}

func (s *Summary) add(d *Decision) {
	s.PDUs++
	s.Verdicts[d.Verdict]++
	if d.Reason != "" {
		m := s.Reasons[d.Verdict]
		if m == nil {
			m = map[string]int{}
			s.Reasons[d.Verdict] = m
		}
		m[d.Reason]++
	}
	if d.Shadow != nil {
		s.Shadow++
	}
}

// Run replays recs (in capture order) under cfg's policy and limits,
// calling emit once per record. It loads cfg's shadow policy when one is
// configured. An emit error stops the run and is returned.
func Run(recs []capture.Record, cfg *config.Config, opt Options, emit func(*Decision) error) (*Summary, error) {
	rt, err := config.NewRuntime(cfg)
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	e := &engine{live: rt.Policy, shadow: rt.Shadow, lim: cfg.Limits, opt: opt,
		streams: map[int]*stream{}, recs: recs, done: make([]bool, len(recs))}
	sum := &Summary{Type: "summary", Verdicts: map[string]int{}, Reasons: map[string]map[string]int{}}
	for i := range recs {
		if !e.opt.Source.IsValid() && !clientAddr(&recs[i]).Addr().IsValid() {
			return nil, ErrNoSource
		}
	}
	e.emit = func(d *Decision) error {
		sum.add(d)
		return emit(d)
	}
	for i := range recs {
		if e.done[i] {
			continue
		}
		if err := e.step(i); err != nil {
			return nil, err
		}
	}
	sum.Streams = len(e.streams)
	return sum, nil
}

func clientAddr(r *capture.Record) netip.AddrPort {
	if r.Direction == capture.ServerToClient {
		return r.Dst
	}
	return r.Src
}

func serverAddr(r *capture.Record) netip.AddrPort {
	if r.Direction == capture.ServerToClient {
		return r.Src
	}
	return r.Dst
}

// stream is one simulated session: an association driven as the proxy
// drives it.
type stream struct {
	src, dst netip.AddrPort
	zone     string
	started  bool
	closed   bool
	a        *assoc.Assoc
}

type engine struct {
	live, shadow *acl.Policy
	lim          config.Limits
	opt          Options
	streams      map[int]*stream
	recs         []capture.Record
	done         []bool
	emit         func(*Decision) error
}

// env is what the association consults; RateOK stays nil: rate limits
// are out of replay's scope (a capture's timing is not the client's).
func (e *engine) env(st *stream) *assoc.Env {
	return &assoc.Env{Policy: e.live, Shadow: e.shadow, MaxCallBytes: e.lim.MaxCallBytes,
		MaxContexts: e.lim.MaxContexts, Src: st.src.Addr()}
}

func (e *engine) stream(r *capture.Record) *stream {
	st := e.streams[r.Stream]
	if st == nil {
		st = &stream{src: clientAddr(r), dst: serverAddr(r), a: assoc.New(nil)}
		if e.opt.Source.IsValid() {
			st.src = netip.AddrPortFrom(e.opt.Source, st.src.Port())
		}
		st.zone = e.live.Zone(st.src.Addr())
		e.streams[r.Stream] = st
	}
	return st
}

func (e *engine) step(i int) error {
	e.done[i] = true
	r := &e.recs[i]
	st := e.stream(r)
	d := &Decision{Type: "decision", Stream: r.Stream, Direction: r.Direction.String(), Frame: r.Frame, Line: r.Line,
		Client: st.src.String(), Zone: st.zone}
	if st.dst.IsValid() {
		d.Server = st.dst.String()
	}
	var p rpcparse.PDU
	if r.Err == nil && len(r.Bytes) >= rpcparse.HeaderLen {
		// Header facts for the record even when the body will not parse.
		cid := rawCallID(r.Bytes)
		d.PType, d.CallID = rpcparse.PType(r.Bytes[2]).String(), &cid
	}
	switch {
	case st.closed:
		d.Verdict, d.Stage, d.Reason = VerdictUnreached, StageConnection, ReasonConnectionClosed
	case !st.started:
		st.started = true
		if a := e.live.AdmitSource(st.src.Addr()); !a.Allowed() {
			// Rule 1: closed at accept, before any byte is read.
			d.Verdict, d.Stage, d.Rule, d.Reason = VerdictDeny, StageConnection, a.Rule, a.Reason
			st.closed = true
			break
		}
		fallthrough
	default:
		if r.Direction == capture.ServerToClient {
			e.host(st, r, &p, d)
		} else {
			if err := e.client(st, i, r, &p, d); err != nil {
				return err
			}
		}
	}
	if d.Verdict == VerdictDeny || d.Verdict == VerdictViolation {
		st.closed = true
	}
	return e.emit(d)
}

func rawCallID(b []byte) uint32 {
	if b[4]>>4 == 0 { // big-endian data representation
		return uint32(b[12])<<24 | uint32(b[13])<<16 | uint32(b[14])<<8 | uint32(b[15])
	}
	return uint32(b[12]) | uint32(b[13])<<8 | uint32(b[14])<<16 | uint32(b[15])<<24
}

func (d *Decision) violation(stage, reason string, err error) {
	d.Verdict, d.Stage, d.Reason = VerdictViolation, stage, reason
	if err != nil {
		d.Error = err.Error()
	}
}

func verdictOf(d acl.Decision) string {
	if d.Allowed() {
		return VerdictAllow
	}
	return VerdictDeny
}

func (e *engine) client(st *stream, i int, r *capture.Record, p *rpcparse.PDU, d *Decision) error {
	if r.Err != nil {
		e.recordError(r, d, "client")
		return nil
	}
	if err := p.Parse(r.Bytes, e.lim.MaxFragment); err != nil {
		st.a.Violate(assoc.StageFraming, rpcparse.Reason(err))
		d.violation(StageFraming, rpcparse.Reason(err), err)
		return nil
	}
	if st.a.Outstanding() {
		// The proxy reads no client PDU while the host owes an answer:
		// play the host's answer first, if the capture has it.
		if err := e.drainHost(st, i, r.Stream); err != nil {
			return err
		}
		if st.closed {
			d.Verdict, d.Stage, d.Reason = VerdictUnreached, StageConnection, ReasonConnectionClosed
			return nil
		}
	}
	describeClient(d, st, p, st.a.Client(e.env(st), p, r.Bytes))
	return nil
}

// describeClient turns the association's step for a client PDU into the
// decision replay reports.
func describeClient(d *Decision, st *stream, p *rpcparse.PDU, step assoc.Step) {
	switch p.Type {
	case rpcparse.PTypeBind, rpcparse.PTypeAlterContext:
		for it := p.Bind.Contexts(); it.Next(); {
			d.Contexts = append(d.Contexts, ifaceName(it.Context().Abstract))
		}
		if len(d.Contexts) > 0 {
			d.Interface = d.Contexts[0]
		}
	case rpcparse.PTypeRequest:
		ctxID, opnum := p.Request.ContextID, p.Request.Opnum
		d.ContextID, d.Opnum = &ctxID, &opnum
	}
	if step.HasIface {
		d.Interface = ifaceName(step.Iface)
	}
	d.Stage, d.Reason, d.Rule = string(step.Stage), step.Reason, step.Decision.Rule
	switch step.Verdict {
	case assoc.Close:
		d.Verdict = VerdictViolation
	case assoc.Refuse:
		d.Verdict = VerdictDeny
	default:
		d.Verdict = VerdictAllow
	}
	if step.Shadow != nil {
		d.Shadow = &Shadow{Verdict: verdictOf(*step.Shadow), Rule: step.Shadow.Rule, Reason: step.Shadow.Reason}
	}
	if c := step.Call; c != nil && c.KMS != nil {
		d.KMS = requestFacts(c.KMS)
		if c.KMS.DecodeErr != nil {
			d.Error = c.KMS.DecodeErr.Error()
		}
	}
}

func requestFacts(kc *assoc.KMSCall) *KMS {
	req := &kc.Req
	k := &KMS{Version: req.MajorVersion}
	if kc.DecodeErr != nil {
		k.Error = kms.Reason(kc.DecodeErr)
		return k
	}
	k.Application = kms.ApplicationName(req.ApplicationID)
	k.ApplicationID = req.ApplicationID.String()
	k.SKU = kms.SKUName(req.SKUID)
	if k.SKU == "" {
		k.SKU = req.SKUID.String()
	}
	k.Workstation = req.Workstation()
	k.CMID = req.CMID.String()
	return k
}

// drainHost plays the stream's host records after index i until nothing
// is outstanding or the capture has no more of them.
func (e *engine) drainHost(st *stream, i, streamID int) error {
	for j := i + 1; j < len(e.recs) && st.a.Outstanding() && !st.closed; j++ {
		if e.done[j] || e.recs[j].Stream != streamID || e.recs[j].Direction != capture.ServerToClient {
			continue
		}
		if err := e.step(j); err != nil {
			return err
		}
	}
	return nil
}

func (e *engine) recordError(r *capture.Record, d *Decision, dir string) {
	var pe *rpcparse.ParseError
	if errors.As(r.Err, &pe) {
		d.violation(StageFraming, rpcparse.Reason(r.Err), r.Err)
		return
	}
	// A stream that ends inside a PDU or lost bytes: the proxy sees the
	// connection end mid-PDU and closes; nothing is forwarded.
	d.Verdict, d.Stage, d.Reason, d.Error = VerdictUnreached, StageFraming, dir+"-eof-mid-pdu", r.Err.Error()
}

func ifaceName(s rpcparse.SyntaxID) string {
	if n := rpcparse.InterfaceName(s.UUID); n != "" {
		return n
	}
	return s.UUID.String() + "/" + strconv.Itoa(int(s.Major)) + "." + strconv.Itoa(int(s.Minor))
}

// ---- host side (rules 5 and 7) ----

func (e *engine) host(st *stream, r *capture.Record, p *rpcparse.PDU, d *Decision) {
	if r.Err != nil {
		e.recordError(r, d, "host")
		if d.Verdict == VerdictViolation {
			d.Stage = StageHost
		}
		return
	}
	if err := p.Parse(r.Bytes, 0); err != nil {
		st.a.Violate(assoc.StageHost, rpcparse.Reason(err))
		d.violation(StageHost, rpcparse.Reason(err), err)
		return
	}
	call := st.a.Unanswered()
	step := st.a.Host(e.env(st), p)
	if step.Verdict != assoc.Relay {
		d.violation(StageHost, step.Reason, nil)
		return
	}
	d.Verdict, d.Stage = VerdictInfo, StageHost
	switch p.Type {
	case rpcparse.PTypeBindAck, rpcparse.PTypeAlterContextResp:
		d.Accepted = append([]uint16{}, step.Accepted...)
	case rpcparse.PTypeBindNak:
		d.Status = "bind_nak reason " + strconv.Itoa(int(p.BindNak.Reason))
	case rpcparse.PTypeFault:
		d.Status = faultStatus(p)
	}
	if call != nil && (p.Type == rpcparse.PTypeResponse || p.Type == rpcparse.PTypeFault) {
		ctxID, opnum := call.CtxID, call.Opnum
		d.ContextID, d.Opnum = &ctxID, &opnum
		d.Interface = ifaceName(call.Iface)
	}
	if c := step.Call; c != nil && c.KMS != nil && c.KMS.DecodeErr == nil && p.Type == rpcparse.PTypeResponse {
		d.KMS = kmsReply(c)
	}
}

func faultStatus(p *rpcparse.PDU) string {
	return fmt.Sprintf("fault 0x%08x", p.Fault.Status)
}

func kmsReply(c *assoc.Call) *KMS {
	blob, hr, err := kms.ParseResponseStub(c.KMS.RespStub, kms.Encoding{NDR64: c.NDR64, BigEndian: c.KMS.RespBigEndian})
	if err != nil {
		return &KMS{Error: kms.Reason(err)}
	}
	k := &KMS{Version: c.KMS.Req.MajorVersion, Status: fmt.Sprintf("0x%08x", hr)}
	if n := kms.HRESULTName(hr); n != "" {
		k.Status += " " + n
	}
	if hr != 0 {
		return k
	}
	var resp kms.Response
	if err := kms.DecodeResponse(blob, &c.KMS.Req, &resp); err != nil {
		k.Error = kms.Reason(err)
		return k
	}
	k.CurrentCount = resp.CurrentCount
	return k
}
