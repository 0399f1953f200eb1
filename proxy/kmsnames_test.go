package proxy

import (
	"testing"

	"github.com/kmsproxy/kmsproxy/acl"
	"github.com/kmsproxy/kmsproxy/assoc"
	"github.com/kmsproxy/kmsproxy/event"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/test/kmsgen"
)

// The kms-activation event a session logs carries the same GUID text.
func TestKMSActivationEventUnknownApplication(t *testing.T) {
	r := newSessionRig(t, "{ duplicate_window: 1h, max_clock_skew: 4h, max_tracked: 100 }")
	req := kmsgen.NewRequest(5)
	req.ApplicationID = rpcparse.MustUUID("a1b2c3d4-e5f6-4a0b-8c1d-2e3f4a5b6c7d")
	req.SKUID = rpcparse.MustUUID("11223344-5566-4778-899a-abbccddeeff0")
	s := r.session(watchSrcA)
	c := &assoc.Call{ID: 2, Rule: acl.Decision{Rule: "kms-activation"}, KMS: &assoc.KMSCall{Req: req}}
	s.finishKMSCall(c, false) // the connection ended before the reply
	evs := r.events(event.ActionKMSActivation)
	if len(evs) != 1 {
		t.Fatalf("%d kms-activation events", len(evs))
	}
	ev := evs[0].ContextMap()
	for k, want := range map[string]any{
		"kms.application":     req.ApplicationID.String(),
		"kms.sku":             req.SKUID.String(),
		"kmsproxy.kms_result": "no-reply",
		"source.ip":           watchSrcA,
	} {
		if ev[k] != want {
			t.Errorf("%s = %v, want %v", k, ev[k], want)
		}
	}
}
