package capture

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// Fact is the JSON-ready description of one record, as `kmsproxy decode`
// prints it. Field names are snake_case; fields that do not apply to a
// PDU type are left out.
type Fact struct {
	Stream    int       `json:"stream"`
	Direction Direction `json:"direction"`
	Frame     int       `json:"frame,omitempty"`
	Line      int       `json:"line,omitempty"`
	Time      string    `json:"time,omitempty"`
	Src       string    `json:"src,omitempty"`
	Dst       string    `json:"dst,omitempty"`
	Offset    int64     `json:"offset"`
	Length    int       `json:"length"` // bytes in the record

	// Error is set when the bytes did not frame or parse; Reason is then
	// the stable rpcparse reason token when one applies.
	Error  string `json:"error,omitempty"`
	Reason string `json:"reason,omitempty"`

	*HeaderFact // present whenever the record holds at least a common header

	// bind, alter_context, bind_ack, alter_context_resp
	MaxXmit    *uint16       `json:"max_xmit,omitempty"`
	MaxRecv    *uint16       `json:"max_recv,omitempty"`
	AssocGroup *uint32       `json:"assoc_group,omitempty"`
	Contexts   []ContextFact `json:"contexts,omitempty"`
	SecAddr    *string       `json:"sec_addr,omitempty"`
	Results    []ResultFact  `json:"results,omitempty"`

	// bind_nak
	RejectReason     *uint16  `json:"reject_reason,omitempty"`
	RejectReasonName string   `json:"reject_reason_name,omitempty"`
	Versions         []string `json:"versions,omitempty"`

	// request, response, fault
	ContextID   *uint16 `json:"context_id,omitempty"`
	Opnum       *uint16 `json:"opnum,omitempty"`
	AllocHint   *uint32 `json:"alloc_hint,omitempty"`
	CancelCount *uint8  `json:"cancel_count,omitempty"`
	Object      string  `json:"object,omitempty"`
	StubLength  *int    `json:"stub_length,omitempty"`
	Status      string  `json:"status,omitempty"`
	StatusName  string  `json:"status_name,omitempty"`

	Auth *AuthFact `json:"auth,omitempty"`

	// KMS is filled by Options.StubDecoder (the KMS payload codec).
	KMS any `json:"kms,omitempty"`
}

// HeaderFact is the common header.
type HeaderFact struct {
	PType      string   `json:"ptype"`
	PTypeNum   uint8    `json:"ptype_num"`
	RPCVersion string   `json:"rpc_version"`
	CallID     uint32   `json:"call_id"`
	Flags      string   `json:"flags"`
	FlagNames  []string `json:"flag_names"`
	DRep       string   `json:"drep"`
	ByteOrder  string   `json:"byte_order"`
	FragLength uint16   `json:"frag_length"`
	AuthLength uint16   `json:"auth_length"`
}

// SyntaxFact is an abstract or transfer syntax.
type SyntaxFact struct {
	UUID     string `json:"uuid"`
	Version  string `json:"version"`
	Name     string `json:"name,omitempty"`     // abstract: well-known interface alias
	Kind     string `json:"kind,omitempty"`     // transfer: ndr20, ndr64, bind-time-feature-negotiation, unknown
	Features string `json:"features,omitempty"` // bind-time feature negotiation bitmask
}

// ContextFact is one presentation context item of a bind.
type ContextFact struct {
	ID               uint16       `json:"id"`
	Abstract         SyntaxFact   `json:"abstract"`
	TransferSyntaxes []SyntaxFact `json:"transfer_syntaxes"`
}

// ResultFact is one presentation result of a bind_ack.
type ResultFact struct {
	Result     uint16     `json:"result"`
	ResultName string     `json:"result_name"`
	Reason     uint16     `json:"reason"`
	ReasonName string     `json:"reason_name,omitempty"`
	Features   string     `json:"features,omitempty"` // negotiate_ack: the accepted feature bits
	Transfer   SyntaxFact `json:"transfer"`
}

// AuthFact is the sec_trailer.
type AuthFact struct {
	Type              string `json:"type"`
	TypeNum           uint8  `json:"type_num"`
	Level             string `json:"level"`
	LevelNum          uint8  `json:"level_num"`
	PadLength         uint8  `json:"pad_length"`
	ContextID         uint32 `json:"context_id"`
	CredentialsLength int    `json:"credentials_length"`
	Class             string `json:"class"`
}

// Decode parses rec and describes it, running opt.StubDecoder on requests
// and responses that parsed.
func Decode(rec *Record, opt Options) Fact {
	if rec.Err != nil || len(rec.Bytes) < rpcparse.HeaderLen {
		return Describe(rec, nil)
	}
	var p rpcparse.PDU
	if err := p.Parse(rec.Bytes, opt.maxFrag()); err != nil {
		f := Describe(rec, &p)
		f.Error, f.Reason = err.Error(), reasonOf(err)
		return f
	}
	f := Describe(rec, &p)
	if opt.StubDecoder != nil && (p.Type == rpcparse.PTypeRequest || p.Type == rpcparse.PTypeResponse) {
		f.KMS = opt.StubDecoder(rec, &p)
	}
	return f
}

// Describe turns a record and its parsed PDU into a Fact. p may be nil
// (the record did not parse); only its header is trusted when rec.Err is set.
func Describe(rec *Record, p *rpcparse.PDU) Fact {
	f := Fact{Stream: rec.Stream, Direction: rec.Direction, Frame: rec.Frame, Line: rec.Line, Offset: rec.Offset, Length: len(rec.Bytes)}
	if !rec.Timestamp.IsZero() {
		f.Time = rec.Timestamp.UTC().Format(time.RFC3339Nano)
	}
	if rec.Src.IsValid() {
		f.Src, f.Dst = rec.Src.String(), rec.Dst.String()
	}
	if rec.Err != nil {
		f.Error = rec.Err.Error()
		f.Reason = reasonOf(rec.Err)
	}
	if p == nil {
		if len(rec.Bytes) >= rpcparse.HeaderLen {
			var q rpcparse.PDU
			q.Header = rawHeader(rec.Bytes)
			f.HeaderFact = headerFact(&q.Header)
		}
		return f
	}
	f.HeaderFact = headerFact(&p.Header)
	if rec.Err != nil {
		return f
	}
	switch p.Type {
	case rpcparse.PTypeBind, rpcparse.PTypeAlterContext:
		b := &p.Bind
		f.MaxXmit, f.MaxRecv, f.AssocGroup = ptr(b.MaxXmitFrag), ptr(b.MaxRecvFrag), ptr(b.AssocGroup)
		f.Contexts = []ContextFact{}
		for it := b.Contexts(); it.Next(); {
			c := it.Context()
			cf := ContextFact{ID: c.ID, Abstract: syntaxFact(c.Abstract), TransferSyntaxes: make([]SyntaxFact, 0, c.NumTransfer)}
			cf.Abstract.Name = rpcparse.InterfaceName(c.Abstract.UUID)
			for i := 0; i < int(c.NumTransfer); i++ {
				cf.TransferSyntaxes = append(cf.TransferSyntaxes, transferFact(c.Transfer(i)))
			}
			f.Contexts = append(f.Contexts, cf)
		}
	case rpcparse.PTypeBindAck, rpcparse.PTypeAlterContextResp:
		a := &p.BindAck
		f.MaxXmit, f.MaxRecv, f.AssocGroup = ptr(a.MaxXmitFrag), ptr(a.MaxRecvFrag), ptr(a.AssocGroup)
		f.SecAddr = ptr(string(bytes.TrimRight(a.SecAddr, "\x00")))
		f.Results = make([]ResultFact, 0, a.NumResults)
		for i := 0; i < int(a.NumResults); i++ {
			r := a.Result(i)
			rf := ResultFact{Result: r.Result, ResultName: resultName(r.Result), Reason: r.Reason, Transfer: transferFact(r.Transfer)}
			switch r.Result {
			case rpcparse.ResultNegotiateAck:
				rf.Features = "0x" + strconv.FormatUint(uint64(r.Reason), 16)
			case rpcparse.ResultUserRejection, rpcparse.ResultProviderRejection:
				rf.ReasonName = providerReasonName(r.Reason)
			}
			f.Results = append(f.Results, rf)
		}
	case rpcparse.PTypeBindNak:
		n := &p.BindNak
		f.RejectReason, f.RejectReasonName = ptr(n.Reason), nakReasonName(n.Reason)
		for i := 0; i < n.NumVersions(); i++ {
			maj, min := n.Version(i)
			f.Versions = append(f.Versions, fmt.Sprintf("%d.%d", maj, min))
		}
	case rpcparse.PTypeRequest:
		r := &p.Request
		f.ContextID, f.Opnum, f.AllocHint, f.StubLength = ptr(r.ContextID), ptr(r.Opnum), ptr(r.AllocHint), ptr(len(r.Stub))
		if r.HasObject {
			f.Object = r.Object.String()
		}
	case rpcparse.PTypeResponse:
		r := &p.Response
		f.ContextID, f.AllocHint, f.CancelCount, f.StubLength = ptr(r.ContextID), ptr(r.AllocHint), ptr(r.CancelCount), ptr(len(r.Stub))
	case rpcparse.PTypeFault:
		r := &p.Fault
		f.ContextID, f.AllocHint, f.CancelCount, f.StubLength = ptr(r.ContextID), ptr(r.AllocHint), ptr(r.CancelCount), ptr(len(r.Stub))
		f.Status, f.StatusName = fmt.Sprintf("0x%08x", r.Status), faultStatusNames[r.Status]
	}
	if p.HasAuth {
		a := &p.Auth
		f.Auth = &AuthFact{
			Type: a.Type.String(), TypeNum: uint8(a.Type), Level: a.Level.String(), LevelNum: uint8(a.Level),
			PadLength: a.PadLength, ContextID: a.ContextID, CredentialsLength: len(a.Credentials),
			Class: rpcparse.ClassifyAuth(p).String(),
		}
	}
	return f
}

// reasonOf returns the rpcparse reason token of err, or "". rpcparse.Reason
// follows only single-%w chains, so the ParseError is looked up first.
func reasonOf(err error) string {
	var pe *rpcparse.ParseError
	if errors.As(err, &pe) {
		return rpcparse.Reason(pe)
	}
	return ""
}

func ptr[T any](v T) *T { return &v }

// rawHeader reads the header fields of b without validating them, for
// describing bytes that failed to frame.
func rawHeader(b []byte) rpcparse.Header {
	h := rpcparse.Header{Version: b[0], MinorVersion: b[1], Type: rpcparse.PType(b[2]), Flags: b[3]}
	copy(h.DataRep[:], b[4:8])
	u16 := func(x []byte) uint16 {
		if h.BigEndian() {
			return uint16(x[0])<<8 | uint16(x[1])
		}
		return uint16(x[1])<<8 | uint16(x[0])
	}
	h.FragLength, h.AuthLength = u16(b[8:10]), u16(b[10:12])
	if h.BigEndian() {
		h.CallID = uint32(b[12])<<24 | uint32(b[13])<<16 | uint32(b[14])<<8 | uint32(b[15])
	} else {
		h.CallID = uint32(b[15])<<24 | uint32(b[14])<<16 | uint32(b[13])<<8 | uint32(b[12])
	}
	return h
}

var flagNames = [8]string{"first_frag", "last_frag", "pending_cancel", "reserved_1", "conc_mpx", "did_not_execute", "maybe", "object_uuid"}

func headerFact(h *rpcparse.Header) *HeaderFact {
	hf := &HeaderFact{
		PType: h.Type.String(), PTypeNum: uint8(h.Type),
		RPCVersion: strconv.Itoa(int(h.Version)) + "." + strconv.Itoa(int(h.MinorVersion)),
		CallID:     h.CallID, Flags: fmt.Sprintf("0x%02x", h.Flags), FlagNames: []string{},
		DRep:      fmt.Sprintf("%02x%02x%02x%02x", h.DataRep[0], h.DataRep[1], h.DataRep[2], h.DataRep[3]),
		ByteOrder: "little", FragLength: h.FragLength, AuthLength: h.AuthLength,
	}
	if h.BigEndian() {
		hf.ByteOrder = "big"
	}
	for i, n := range flagNames {
		if h.Flags&(1<<i) == 0 {
			continue
		}
		// In bind and bind_ack, 0x04 is PFC_SUPPORT_HEADER_SIGN (MS-RPCE 2.2.2.3).
		if i == 2 && (h.Type == rpcparse.PTypeBind || h.Type == rpcparse.PTypeBindAck || h.Type == rpcparse.PTypeAlterContext || h.Type == rpcparse.PTypeAlterContextResp) {
			n = "support_header_sign"
		}
		hf.FlagNames = append(hf.FlagNames, n)
	}
	return hf
}

func syntaxFact(s rpcparse.SyntaxID) SyntaxFact {
	return SyntaxFact{UUID: s.UUID.String(), Version: strconv.Itoa(int(s.Major)) + "." + strconv.Itoa(int(s.Minor))}
}

func transferFact(s rpcparse.SyntaxID) SyntaxFact {
	sf := syntaxFact(s)
	sf.Kind = rpcparse.ClassifyTransfer(s).String()
	if sf.Kind == rpcparse.TransferBTFN.String() {
		if m, ok := rpcparse.BTFNBitmask(s.UUID); ok {
			sf.Features = "0x" + strconv.FormatUint(m, 16)
		}
	}
	return sf
}

var resultNames = [...]string{"acceptance", "user_rejection", "provider_rejection", "negotiate_ack"}

func resultName(r uint16) string {
	if int(r) < len(resultNames) {
		return resultNames[r]
	}
	return "result_" + strconv.Itoa(int(r))
}

// C706 p_provider_reason_t, with MS-RPCE's additions.
var providerReasons = [...]string{
	"reason_not_specified", "abstract_syntax_not_supported", "proposed_transfer_syntaxes_not_supported",
	"local_limit_exceeded",
}

func providerReasonName(r uint16) string {
	if int(r) < len(providerReasons) {
		return providerReasons[r]
	}
	return "reason_" + strconv.Itoa(int(r))
}

// C706 p_reject_reason_t.
var nakReasons = [...]string{
	"reason_not_specified", "temporary_congestion", "local_limit_exceeded", "called_paddr_unknown",
	"protocol_version_not_supported", "default_context_not_supported", "user_data_not_readable",
	"no_psap_available", "authentication_type_not_recognized", "invalid_checksum",
}

func nakReasonName(r uint16) string {
	if int(r) < len(nakReasons) {
		return nakReasons[r]
	}
	return "reason_" + strconv.Itoa(int(r))
}

// faultStatusNames names the statuses the proxy sends and the usual ones.
var faultStatusNames = map[uint32]string{
	rpcparse.StatusOpRangeError:  "nca_s_op_rng_error",
	rpcparse.StatusUnknownIf:     "nca_s_unk_if",
	rpcparse.StatusProtoError:    "nca_proto_error",
	rpcparse.StatusAccessDenied:  "access_denied",
	rpcparse.StatusServerTooBusy: "rpc_s_server_too_busy",
	0x000006f7:                   "rpc_x_bad_stub_data",
	0x000006d1:                   "rpc_s_procnum_out_of_range",
}
