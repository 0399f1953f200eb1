package proxy

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/kmsproxy/kmsproxy/inventory"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// countingSink keeps what it was given.
type countingSink struct{ got []inventory.Activation }

func (c *countingSink) Submit(a inventory.Activation) bool { c.got = append(c.got, a); return true }

func testCall(t testing.TB) (*session, *kmsCall, *kmsReply) {
	req := &kms.Request{MajorVersion: 6, LicenseStatus: 1, RequiredCount: 25,
		ApplicationID: rpcparse.MustUUID("55c92734-d682-4d71-983e-d6ec3f16059f"),
		SKUID:         rpcparse.MustUUID("73111121-5638-40f6-bc11-f1d7b0d64300"),
		KMSCountedID:  rpcparse.MustUUID("58e2134f-8e11-4d17-9cb2-91069c151148"),
		CMID:          rpcparse.MustUUID("fe20bb6d-bc46-453e-81fd-8c3294ffd4ae")}
	req.SetWorkstation("dmz-ws01.corp.example")
	s := &session{src: netip.MustParseAddrPort("192.0.2.10:50000"), zone: "dmz"}
	r := &kmsReply{stubOK: true}
	r.resp.CurrentCount = 50
	return s, &kmsCall{req: req, rule: "dmz-activation"}, r
}

// What the inventory gets from an answered call is what the request and
// the reply said, with the connection's source, zone and rule.
func TestRecordActivation(t *testing.T) {
	srv := &Server{}
	sink := &countingSink{}
	srv.SetActivationSink(sink)
	s, kc, r := testCall(t)
	srv.recordActivation(s, kc, "success", r)
	if len(sink.got) != 1 {
		t.Fatalf("%d activations submitted", len(sink.got))
	}
	a := sink.got[0]
	if a.CMID != "fe20bb6d-bc46-453e-81fd-8c3294ffd4ae" || a.Workstation != "dmz-ws01.corp.example" || a.Zone != "dmz" ||
		a.Rule != "dmz-activation" || a.Source != s.src.Addr() || a.Result != "success" || !a.HostReplied || a.HRESULT != 0 ||
		a.CurrentCount != 50 || a.Application == "" || a.KMSCountedName == "" || a.LicenseStatus != "Licensed" || a.Version != 6 {
		t.Errorf("activation %+v", a)
	}
	// A host error: its HRESULT, no count.
	r.hr = kms.HResultNotEnoughCount
	srv.recordActivation(s, kc, "refused-by-host", r)
	if a := sink.got[1]; a.HRESULT != kms.HResultNotEnoughCount || a.HRESULTName != "SL_E_VL_NOT_ENOUGH_COUNT" || a.CurrentCount != 0 {
		t.Errorf("host error recorded as %+v", a)
	}
	// No sink: nothing to do.
	(&Server{}).recordActivation(s, kc, "success", r)
}

// BenchmarkRecordActivation is what the inventory adds to one activation
// on the data path: building the record and queueing it for a real writer.
func BenchmarkRecordActivation(b *testing.B) {
	st, err := inventory.Open(filepath.Join(b.TempDir(), "inv.db"), inventory.Options{StoreWorkstation: true})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	w := inventory.NewWriter(st, 1<<20, nil)
	defer w.Close()
	srv := &Server{}
	srv.SetActivationSink(w)
	s, kc, r := testCall(b)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		srv.recordActivation(s, kc, "success", r)
	}
}

type discardSink struct{}

func (discardSink) Submit(inventory.Activation) bool { return true }

// BenchmarkBuildActivation is the record alone, without the database.
func BenchmarkBuildActivation(b *testing.B) {
	srv := &Server{}
	srv.SetActivationSink(discardSink{})
	s, kc, r := testCall(b)
	b.ReportAllocs()
	for range b.N {
		srv.recordActivation(s, kc, "success", r)
	}
}
