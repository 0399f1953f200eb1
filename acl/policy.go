package acl

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// DefaultMaxContexts is used when Spec.MaxContexts is 0. A Windows KMS
// client offers 3 contexts; more only widens what a bind can probe at once.
const DefaultMaxContexts = 8

// maxContextsLimit is n_context_elem's wire maximum.
const maxContextsLimit = 255

// Spec is a policy in typed form: what config produces and Compile checks.
type Spec struct {
	Zones       []Zone
	Rules       []RuleSpec
	MaxContexts int // 0 means DefaultMaxContexts
}

// Zone is a named set of source networks.
type Zone struct {
	Name     string
	Prefixes []netip.Prefix
}

// RuleSpec is one rule. Rules are tried in order; the first match wins.
type RuleSpec struct {
	Name string
	From []string // zone names
	// Interface is the abstract syntax the rule is about; nil means any
	// interface and is only valid on deny rules.
	Interface *rpcparse.SyntaxID
	// AnyVersion makes Interface match every version of its UUID (config
	// gave no /major.minor).
	AnyVersion bool
	// Opnums the rule covers; empty means any and is only valid on deny rules.
	Opnums []uint16
	// Auth classes the rule covers; empty means [none].
	Auth []rpcparse.AuthClass
	// KMS restricts KMS activation requests; only on allow rules for the KMS
	// interface.
	KMS    *KMSSpec
	Action Verdict
}

// KMSSpec is a rule's kms: block.
type KMSSpec struct {
	Versions        []uint16        // request major versions; empty means any
	Applications    []rpcparse.UUID // application IDs; empty means any
	RejectMalformed bool
}

// KMSFacts is what the proxy decoded from a KMS activation request.
type KMSFacts struct {
	Version     uint16 // major version
	Application rpcparse.UUID
	Malformed   bool
}

// Policy is a compiled, immutable Spec.
type Policy struct {
	spec        Spec // deep copy, for printing
	zoneNames   []string
	v4, v6      addrTable
	rules       []rule
	allowZones  zoneSet // zones named by at least one allow rule
	maxContexts int
}

type rule struct {
	name       string
	zones      zoneSet
	anyIface   bool
	iface      rpcparse.SyntaxID
	anyVersion bool
	opnums     []uint16 // sorted, unique; nil means any
	auth       uint8    // bit per AuthClass
	action     Verdict
	kms        *KMSSpec
}

// Compile checks spec and builds a Policy. Every problem is reported, each as
// a *SpecError wrapping ErrInvalidSpec, joined with errors.Join.
func Compile(spec Spec) (*Policy, error) {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, &SpecError{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	p := &Policy{spec: cloneSpec(spec), maxContexts: spec.MaxContexts}
	if p.maxContexts == 0 {
		p.maxContexts = DefaultMaxContexts
	}
	if p.maxContexts < 1 || p.maxContexts > maxContextsLimit {
		bad("max_contexts", "must be 1..%d, got %d", maxContextsLimit, spec.MaxContexts)
	}

	if len(spec.Zones) > MaxZones {
		bad("zones", "at most %d zones, got %d", MaxZones, len(spec.Zones))
	}
	zoneIndex := map[string]int{}
	var v4, v6 []zonePrefix
	for i, z := range spec.Zones {
		path := fmt.Sprintf("zones[%d]", i)
		switch _, dup := zoneIndex[z.Name]; {
		case z.Name == "":
			bad(path, "zone has no name")
		case dup:
			bad(path, "duplicate zone %q", z.Name)
		default:
			zoneIndex[z.Name] = i
		}
		p.zoneNames = append(p.zoneNames, z.Name)
		if len(z.Prefixes) == 0 {
			bad(path, "zone %q names no network", z.Name)
		}
		for j, pr := range z.Prefixes {
			if !pr.IsValid() {
				bad(fmt.Sprintf("%s.prefixes[%d]", path, j), "invalid prefix")
				continue
			}
			if i >= MaxZones {
				continue
			}
			pr = normalizePrefix(pr)
			if pr.Addr().Is4() {
				v4 = append(v4, zonePrefix{pr, i})
			} else {
				v6 = append(v6, zonePrefix{pr, i})
			}
		}
	}
	p.v4 = buildTable(netip.IPv4Unspecified(), v4)
	p.v6 = buildTable(netip.IPv6Unspecified(), v6)

	if len(spec.Rules) == 0 {
		bad("rules", "no rules: everything would be denied")
	}
	names := map[string]bool{}
	for i, rs := range spec.Rules {
		path := fmt.Sprintf("rules[%d]", i)
		r := rule{name: rs.Name, action: rs.Action, anyVersion: rs.AnyVersion, kms: rs.KMS}
		switch {
		case rs.Name == "":
			bad(path+".name", "rule has no name")
		case names[rs.Name]:
			bad(path+".name", "duplicate rule name %q", rs.Name)
		}
		names[rs.Name] = true
		if rs.Action != Allow && rs.Action != Deny {
			bad(path+".action", "unknown action %d", rs.Action)
		}
		if len(rs.From) == 0 {
			bad(path+".from", "rule names no zone")
		}
		for j, zn := range rs.From {
			zi, ok := zoneIndex[zn]
			if !ok {
				bad(fmt.Sprintf("%s.from[%d]", path, j), "unknown zone %q", zn)
				continue
			}
			if zi < MaxZones {
				r.zones.add(zi)
			}
		}
		if rs.Interface == nil {
			r.anyIface = true
			if rs.Action == Allow {
				bad(path+".interface", "an allow rule must name its interface")
			}
		} else {
			r.iface = *rs.Interface
		}
		if len(rs.Opnums) == 0 {
			if rs.Action == Allow {
				bad(path+".opnums", "an allow rule must list its opnums")
			}
		} else {
			r.opnums = slices.Compact(slices.Sorted(slices.Values(rs.Opnums)))
		}
		if len(rs.Auth) == 0 {
			r.auth = 1 << rpcparse.AuthClassNone
		}
		for j, a := range rs.Auth {
			if a > rpcparse.AuthClassOther {
				bad(fmt.Sprintf("%s.auth[%d]", path, j), "unknown auth class %d", a)
				continue
			}
			r.auth |= 1 << a
		}
		if rs.KMS != nil {
			switch {
			case rs.Action != Allow:
				bad(path+".kms", "a kms block belongs on an allow rule")
			case rs.Interface == nil || rs.Interface.UUID != rpcparse.KMSInterfaceUUID:
				bad(path+".kms", "a kms block needs interface kms")
			}
			k := *rs.KMS
			k.Versions = slices.Clone(k.Versions)
			k.Applications = slices.Clone(k.Applications)
			r.kms = &k
		}
		if rs.Action == Allow {
			for w := range r.zones {
				p.allowZones[w] |= r.zones[w]
			}
		}
		p.rules = append(p.rules, r)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

func cloneSpec(s Spec) Spec {
	out := Spec{MaxContexts: s.MaxContexts}
	for _, z := range s.Zones {
		out.Zones = append(out.Zones, Zone{Name: z.Name, Prefixes: slices.Clone(z.Prefixes)})
	}
	out.Rules = cloneRules(s.Rules)
	return out
}

func cloneRules(rs []RuleSpec) []RuleSpec {
	out := make([]RuleSpec, 0, len(rs))
	for _, r := range rs {
		c := r
		c.From = slices.Clone(r.From)
		c.Opnums = slices.Clone(r.Opnums)
		c.Auth = slices.Clone(r.Auth)
		if r.Interface != nil {
			i := *r.Interface
			c.Interface = &i
		}
		if r.KMS != nil {
			k := *r.KMS
			k.Versions = slices.Clone(k.Versions)
			k.Applications = slices.Clone(k.Applications)
			c.KMS = &k
		}
		out = append(out, c)
	}
	return out
}

// Rules returns a copy of the rules as compiled, in order.
func (p *Policy) Rules() []RuleSpec {
	if p == nil {
		return nil
	}
	return cloneRules(p.spec.Rules)
}

// Zones returns a copy of the zones as compiled, in order.
func (p *Policy) Zones() []Zone {
	if p == nil {
		return nil
	}
	return cloneSpec(Spec{Zones: p.spec.Zones}).Zones
}

// MaxContexts is the bind context limit in force.
func (p *Policy) MaxContexts() int {
	if p == nil {
		return 0
	}
	return p.maxContexts
}

func (p *Policy) zonesOf(src netip.Addr) zoneSet {
	src = normalizeAddr(src)
	switch {
	case src.Is4():
		return p.v4.lookup(src)
	case src.Is6():
		return p.v6.lookup(src)
	}
	return zoneSet{}
}

// Zone returns the first zone, in spec order, containing src, or "".
func (p *Policy) Zone(src netip.Addr) string {
	if p == nil {
		return ""
	}
	if i := p.zonesOf(src).first(); i >= 0 {
		return p.zoneNames[i]
	}
	return ""
}

// AdmitSource is DESIGN rule 1: a source is admitted only when it lies in a
// zone named by at least one allow rule. The decision names the first such rule.
func (p *Policy) AdmitSource(src netip.Addr) Decision {
	if p == nil {
		return noMatch
	}
	z := p.zonesOf(src)
	if !z.intersects(p.allowZones) {
		return refuse(ReasonSourceNotInZone)
	}
	for i := range p.rules {
		r := &p.rules[i]
		if r.action == Allow && r.zones.intersects(z) {
			return Decision{Verdict: Allow, Rule: r.name, RuleIndex: i, Reason: ReasonAllowed}
		}
	}
	return refuse(ReasonSourceNotInZone) // unreachable: allowZones is built from these rules
}

func (r *rule) matchIface(s rpcparse.SyntaxID) bool {
	if r.anyIface {
		return true
	}
	if r.iface.UUID != s.UUID {
		return false
	}
	return r.anyVersion || (r.iface.Major == s.Major && r.iface.Minor == s.Minor)
}

func (r *rule) matchAuth(a rpcparse.AuthClass) bool {
	return a <= rpcparse.AuthClassOther && r.auth&(1<<a) != 0
}

func (r *rule) matchOpnum(op uint16) bool {
	if r.opnums == nil {
		return true
	}
	_, ok := slices.BinarySearch(r.opnums, op)
	return ok
}

// How far an allow rule got before it failed to match; the deepest miss
// explains a deny that no rule decided.
const (
	missZone = iota
	missIface
	missAuth
	missOpnum
)

var missReason = [...]string{
	missZone:  ReasonSourceNotInZone,
	missIface: ReasonInterfaceNotAllowed,
	missAuth:  ReasonAuthNotAllowed,
	missOpnum: ReasonOpnumNotAllowed,
}

// match runs the rules for one interface use. At bind time (opnum unknown)
// allow rules ignore opnums and deny rules that list opnums are skipped:
// they refuse those calls, not the whole interface.
func (p *Policy) match(z zoneSet, iface rpcparse.SyntaxID, auth rpcparse.AuthClass, op uint16, atBind bool) Decision {
	miss := missZone
	for i := range p.rules {
		r := &p.rules[i]
		if atBind && r.action == Deny && r.opnums != nil {
			continue
		}
		level := missZone
		switch {
		case !r.zones.intersects(z):
		case !r.matchIface(iface):
			level = missIface
		case !r.matchAuth(auth):
			level = missAuth
		case !atBind && !r.matchOpnum(op):
			level = missOpnum
		default:
			if r.action == Allow {
				return Decision{Verdict: Allow, Rule: r.name, RuleIndex: i, Reason: ReasonAllowed}
			}
			return Decision{Verdict: Deny, Rule: r.name, RuleIndex: i, Reason: ReasonDeniedByRule}
		}
		if r.action == Allow && level > miss {
			miss = level
		}
	}
	return refuse(missReason[miss])
}

// DecideRequest is the policy part of DESIGN rule 6: the first rule matching
// the source's zone, the context's interface, the association's auth class
// and the opnum decides.
func (p *Policy) DecideRequest(src netip.Addr, iface rpcparse.SyntaxID, auth rpcparse.AuthClass, opnum uint16) Decision {
	if p == nil {
		return noMatch
	}
	return p.match(p.zonesOf(src), iface, auth, opnum, false)
}

// DecideBind is DESIGN rule 4 for bind and alter_context. The PDU's shape is
// checked first (context count, unique ids, transfer syntaxes, BTFN
// placement), then every abstract syntax against the rules; one bad context
// refuses the whole PDU. An allow names the rule that allowed the first context.
func (p *Policy) DecideBind(src netip.Addr, pdu *rpcparse.PDU) Decision {
	if p == nil {
		return noMatch
	}
	if pdu == nil || (pdu.Type != rpcparse.PTypeBind && pdu.Type != rpcparse.PTypeAlterContext) {
		return refuse(ReasonNotBind)
	}
	n := int(pdu.Bind.NumContexts)
	switch {
	case n == 0:
		return refuse(ReasonNoContexts)
	case n > p.maxContexts:
		return refuse(ReasonTooManyContexts)
	case len(pdu.Bind.Extra) > 0:
		// Bytes after the counted items belong to no context: nothing
		// checked them, so they do not go to the host.
		return refuse(ReasonMalformedBind)
	}
	// One walk over the items. Shape problems win over policy ones, so the
	// first policy refusal is kept until the walk has checked every item.
	z := p.zonesOf(src)
	auth := rpcparse.ClassifyAuth(pdu)
	var (
		ids      [maxContextsLimit]uint16
		prev     rpcparse.SyntaxID
		seenBTFN bool
		count    int
		verdict  Decision // the first context's allow, or the first refusal
		refused  bool
	)
	it := pdu.Bind.Contexts()
	for it.Next() {
		if count == n {
			return refuse(ReasonMalformedBind) // more items than n_context_elem
		}
		c := it.Context()
		if slices.Contains(ids[:count], c.ID) {
			return refuse(ReasonDuplicateContextID)
		}
		ids[count] = c.ID
		reason, btfn := transferProblem(c, count, prev, seenBTFN)
		if reason != "" {
			return refuse(reason)
		}
		seenBTFN = seenBTFN || btfn
		// Items repeating the previous abstract syntax (Windows offers one
		// interface three times, once per transfer syntax) share its verdict.
		if !refused && (count == 0 || c.Abstract != prev) {
			if d := p.match(z, c.Abstract, auth, 0, true); !d.Allowed() {
				verdict, refused = d, true
			} else if count == 0 {
				verdict = d
			}
		}
		prev = c.Abstract
		count++
	}
	if count != n {
		return refuse(ReasonMalformedBind)
	}
	return verdict
}

// transferProblem checks one item's transfer syntaxes: NDR 2.0, NDR64 or
// BTFN only, and MS-RPCE 3.3.1.5.3's BTFN placement (at most one BTFN item,
// alone in its item, repeating the previous item's abstract syntax).
func transferProblem(c *rpcparse.ContextElem, index int, prev rpcparse.SyntaxID, seenBTFN bool) (reason string, btfn bool) {
	if c.NumTransfer == 0 {
		return ReasonBadTransferSyntax, false
	}
	for i := 0; i < int(c.NumTransfer); i++ {
		switch c.TransferKind(i) {
		case rpcparse.TransferNDR20, rpcparse.TransferNDR64:
		case rpcparse.TransferBTFN:
			btfn = true
		default:
			return ReasonBadTransferSyntax, false
		}
	}
	if btfn && (seenBTFN || c.NumTransfer != 1 || index == 0 || c.Abstract != prev) {
		return ReasonBTFNMisplaced, true
	}
	return "", btfn
}

// HasKMSPolicy reports whether the rule at ruleIndex has a kms: block, so the
// proxy knows whether to decode the activation request.
func (p *Policy) HasKMSPolicy(ruleIndex int) bool {
	return p != nil && ruleIndex >= 0 && ruleIndex < len(p.rules) && p.rules[ruleIndex].kms != nil
}

// DecideKMS checks a decoded activation request against the kms: block of the
// allow rule (ruleIndex, from DecideRequest) that let the request through.
// A rule without a block has the block's defaults: any version and
// application, malformed requests refused (fail closed: leaving the block
// out never lets a forged or broken request reach the host). A malformed
// request passes only when a block says reject_malformed: false.
func (p *Policy) DecideKMS(ruleIndex int, f KMSFacts) Decision {
	if p == nil || ruleIndex < 0 || ruleIndex >= len(p.rules) || p.rules[ruleIndex].action != Allow {
		return noMatch
	}
	r := &p.rules[ruleIndex]
	d := Decision{Verdict: Deny, Rule: r.name, RuleIndex: ruleIndex}
	k := r.kms
	switch {
	case k == nil:
		if f.Malformed {
			d.Reason = ReasonKMSMalformed
			return d
		}
	case f.Malformed:
		if k.RejectMalformed {
			d.Reason = ReasonKMSMalformed
			return d
		}
	case len(k.Versions) > 0 && !slices.Contains(k.Versions, f.Version):
		d.Reason = ReasonKMSVersionNotAllowed
		return d
	case len(k.Applications) > 0 && !slices.Contains(k.Applications, f.Application):
		d.Reason = ReasonKMSApplicationNotAllowed
		return d
	}
	d.Verdict, d.Reason = Allow, ReasonAllowed
	return d
}
