package proxy

import (
	"testing"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// What parking drops: the parsed PDU, the logger and the association's
// scratch; a parked connection keeps only its state.
func TestDetachDropsScratch(t *testing.T) {
	r := newSessionRig(t, "{}")
	s := r.session("192.0.2.7")
	s.clientFr = rpcparse.NewFramer(nil, 5840)
	s.clientPDU = new(rpcparse.PDU)
	if !s.detachBuffers() {
		t.Fatal("an idle session could not detach its buffers")
	}
	if s.clientPDU != nil || s.log != nil || s.env.Policy != nil {
		t.Fatal("a detached session keeps its parsed PDU, logger or policy")
	}
}
