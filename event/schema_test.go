package event

import (
	"reflect"
	"testing"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// An association's auth as kms-activation reports it: none says only the
// type; an authenticated one type, level and class, as a PDU's would.
func TestAppendAuthOf(t *testing.T) {
	if got := fieldMap(AppendAuthOf(nil, false, 0, 0, rpcparse.AuthClassNone)); !reflect.DeepEqual(got, map[string]any{"dcerpc.auth.type": "none"}) {
		t.Errorf("unauthenticated: %v", got)
	}
	got := fieldMap(AppendAuthOf(nil, true, rpcparse.AuthTypeNTLM, rpcparse.AuthLevelIntegrity, rpcparse.AuthClassNTLM))
	want := map[string]any{
		"dcerpc.auth.type": rpcparse.AuthTypeNTLM.String(), "dcerpc.auth.level": rpcparse.AuthLevelIntegrity.String(),
		"kmsproxy.auth_class": "ntlm",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ntlm: %v, want %v", got, want)
	}
}

func TestTransferSyntaxText(t *testing.T) {
	if a, b := TransferSyntaxText(false), TransferSyntaxText(true); a != "ndr20" || b != "ndr64" {
		t.Errorf("transfer syntaxes %q, %q", a, b)
	}
}
