package config

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// interfaceRules is a one-rule policy whose interface is IFACE and action ACTION.
const interfaceRules = `
upstreams: ["10.20.0.15:1688"]
zones:
  dmz: ["192.0.2.0/24"]
rules:
  - { name: r, from: [dmz], interface: "IFACE", opnums: [0], auth: [none], action: ACTION }
`

func interfaceConfig(iface, action string) string {
	return strings.NewReplacer("IFACE", iface, "ACTION", action).Replace(interfaceRules)
}

// bindFor is a bind for uuid at major.minor with NDR 2.0.
func bindFor(t *testing.T, typ rpcparse.PType, uuid rpcparse.UUID, major, minor uint16) *rpcparse.PDU {
	t.Helper()
	b := rpcparse.AppendBind(nil, rpcparse.PDUHead{Type: typ, Flags: 3, DataRep: rpcparse.LittleEndianDataRep, CallID: 2},
		rpcparse.BindSpec{MaxXmitFrag: 5840, MaxRecvFrag: 5840, Contexts: []rpcparse.ContextSpec{{
			ID: 0, Abstract: rpcparse.SyntaxID{UUID: uuid, Major: major, Minor: minor},
			Transfers: []rpcparse.SyntaxID{{UUID: rpcparse.NDR20UUID, Major: 2}},
		}}}, nil)
	p := new(rpcparse.PDU)
	if err := p.Parse(b, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

// A named interface means its registered version (KMS 1.0); other
// versions only where a rule names them, every version only with "/*".
func TestInterfaceVersions(t *testing.T) {
	kms := rpcparse.KMSInterfaceUUID
	odd := rpcparse.MustUUID("00112233-4455-6677-8899-aabbccddeeff")
	src := netip.MustParseAddr("192.0.2.7")
	type bind struct {
		uuid         rpcparse.UUID
		major, minor uint16
		allowed      bool
	}
	for _, tc := range []struct {
		iface, action string
		binds         []bind
	}{
		{"kms", "allow", []bind{{kms, 1, 0, true}, {kms, 2, 0, false}, {kms, 1, 1, false}, {kms, 0, 0, false}}},
		{"KMS", "allow", []bind{{kms, 1, 0, true}, {kms, 2, 0, false}}},
		{"51c82175-844e-4750-b0d8-ec255555bc06", "allow", []bind{{kms, 1, 0, true}, {kms, 2, 0, false}}},
		{"kms/1.0", "allow", []bind{{kms, 1, 0, true}, {kms, 1, 1, false}}},
		{"kms/2.0", "allow", []bind{{kms, 2, 0, true}, {kms, 1, 0, false}}},
		{"kms/*", "allow", []bind{{kms, 1, 0, true}, {kms, 2, 0, true}, {kms, 7, 3, true}}},
		{"00112233-4455-6677-8899-aabbccddeeff/3.1", "allow", []bind{{odd, 3, 1, true}, {odd, 3, 0, false}}},
		{"00112233-4455-6677-8899-aabbccddeeff/*", "allow", []bind{{odd, 3, 1, true}, {odd, 0, 0, true}, {kms, 1, 0, false}}},
	} {
		cfg := mustLoad(t, write(t, interfaceConfig(tc.iface, tc.action)))
		for _, b := range tc.binds {
			for _, typ := range []rpcparse.PType{rpcparse.PTypeBind, rpcparse.PTypeAlterContext} {
				d := cfg.Policy.DecideBind(src, bindFor(t, typ, b.uuid, b.major, b.minor))
				if d.Allowed() != b.allowed {
					t.Errorf("interface %q: %v for %v v%d.%d: %+v, want allowed=%v", tc.iface, typ, b.uuid, b.major, b.minor, d, b.allowed)
				}
				if !b.allowed && d.Reason != acl.ReasonInterfaceNotAllowed && d.Reason != acl.ReasonNoMatchingRule {
					t.Errorf("interface %q v%d.%d refused with %q", tc.iface, b.major, b.minor, d.Reason)
				}
			}
		}
	}
}

// "(any version)" in check is the explicit case only.
func TestInterfaceVersionInEffective(t *testing.T) {
	for iface, want := range map[string]string{
		"kms":     "kms 51c82175-844e-4750-b0d8-ec255555bc06 v1.0",
		"kms/2.0": "kms 51c82175-844e-4750-b0d8-ec255555bc06 v2.0",
		"kms/*":   "kms 51c82175-844e-4750-b0d8-ec255555bc06 (any version)",
	} {
		cfg := mustLoad(t, write(t, interfaceConfig(iface, "allow")))
		var out strings.Builder
		if err := cfg.WriteEffective(&out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), want) {
			t.Errorf("interface %q: effective config lacks %q:\n%s", iface, want, out.String())
		}
	}
}

// A deny rule naming an interface without a version denies every version
// of it: refusing more is the safe reading.
func TestDenyRuleCoversEveryVersion(t *testing.T) {
	text := strings.Replace(interfaceConfig("kms/*", "allow"), "rules:\n", "rules:\n  - { name: no-kms, from: [dmz], interface: kms, action: deny }\n", 1)
	cfg := mustLoad(t, write(t, text))
	for _, v := range [][2]uint16{{1, 0}, {2, 0}, {1, 1}} {
		if d := cfg.Policy.DecideBind(netip.MustParseAddr("192.0.2.7"), bindFor(t, rpcparse.PTypeBind, rpcparse.KMSInterfaceUUID, v[0], v[1])); d.Allowed() {
			t.Errorf("KMS v%d.%d allowed past a versionless deny rule: %+v", v[0], v[1], d)
		}
	}
}

// An interface with no registered version must say which it means.
func TestUnknownInterfaceNeedsVersion(t *testing.T) {
	for _, iface := range []string{"00112233-4455-6677-8899-aabbccddeeff", "kms/2", "kms/x.y", "kms/"} {
		_, err := Load(write(t, interfaceConfig(iface, "allow")))
		if err == nil || !strings.Contains(err.Error(), "rules[0].interface") {
			t.Errorf("interface %q: got %v, want a problem at rules[0].interface", iface, err)
		}
	}
}
