package event

import (
	"regexp"
	"strconv"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
	"github.com/kmsproxy/kmsproxy/test/kmsgen"
)

var guidText = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func fieldMap(fs []zap.Field) map[string]any {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fs {
		f.AddTo(enc)
	}
	return enc.Fields
}

// An application, SKU or KMS counted ID the name tables do not know is
// shown as its GUID text, so an event still says what was asked for; a known
// one is shown by name. The metric label stays a fixed token.
func TestKMSUnknownIDsRenderedAsGUID(t *testing.T) {
	unknownApp := rpcparse.MustUUID("a1b2c3d4-e5f6-4a0b-8c1d-2e3f4a5b6c7d")
	unknownSKU := rpcparse.MustUUID("11223344-5566-4778-899a-abbccddeeff0")
	unknownCounted := rpcparse.MustUUID("deadbeef-0bad-4f00-8d00-c0ffee000001")
	if kms.ApplicationName(unknownApp) != "" || kms.SKUName(unknownSKU) != "" || kms.KMSCountedIDName(unknownCounted) != "" {
		t.Fatal("the test's unknown IDs are in the name tables")
	}

	known := kmsgen.NewRequest(6)
	unknown := known
	unknown.ApplicationID, unknown.SKUID, unknown.KMSCountedID = unknownApp, unknownSKU, unknownCounted

	kf := fieldMap(AppendKMSRequest(nil, &known, nil))
	for k, want := range map[string]string{
		"kms.application":      "windows",
		"kms.application_id":   kmsgen.DefaultApplication.String(),
		"kms.sku":              "Windows 10 Professional",
		"kms.sku_id":           kmsgen.DefaultSKU.String(),
		"kms.kms_counted_id":   kmsgen.DefaultKMSCountedID.String(),
		"kms.kms_counted_name": kms.KMSCountedIDName(kmsgen.DefaultKMSCountedID),
	} {
		if kf[k] != want {
			t.Errorf("known IDs: %s = %v, want %q", k, kf[k], want)
		}
	}
	if kf["kms.kms_counted_name"] == "" {
		t.Error("known KMS counted ID has no name")
	}

	uf := fieldMap(AppendKMSRequest(nil, &unknown, nil))
	for k, id := range map[string]rpcparse.UUID{
		"kms.application":    unknownApp,
		"kms.application_id": unknownApp,
		"kms.sku":            unknownSKU,
		"kms.sku_id":         unknownSKU,
		"kms.kms_counted_id": unknownCounted,
	} {
		s, _ := uf[k].(string)
		if !guidText.MatchString(s) || s != id.String() {
			t.Errorf("unknown IDs: %s = %v, want the GUID text %s", k, uf[k], id)
		}
	}
	// No name may be invented for an unknown counted ID; today the name
	// field is empty and the GUID is in kms.kms_counted_id.
	if n := uf["kms.kms_counted_name"]; n != unknownCounted.String() {
		t.Errorf("unknown KMS counted ID: kms.kms_counted_name = %v", n)
	}
	// Everything else is unchanged by the unknown IDs.
	for _, k := range []string{"kms.version", "kms.client_machine_id", "kms.workstation", "kms.license_status", "kms.required_count"} {
		if uf[k] != kf[k] {
			t.Errorf("%s = %v with unknown IDs, %v with known ones", k, uf[k], kf[k])
		}
	}

	// The metric label is a bounded token, never the GUID.
	if l := ApplicationLabel(&unknown, nil); l != "other" {
		t.Errorf("application label for an unknown application = %q, want other", l)
	}
	if l := ApplicationLabel(&known, nil); l != "windows" {
		t.Errorf("application label for Windows = %q", l)
	}
}

// A client time RFC 3339 can write is kms.client_time; one it cannot (a
// FILETIME far past year 9999, or one that wraps before year 1) is the
// raw FILETIME, so the event is still indexable.
func TestClientTimeOutOfRange(t *testing.T) {
	r := kmsgen.NewRequest(6)
	if got := fieldMap([]zap.Field{ClientTime(&r)}); len(got) != 1 || got["kms.client_time"] == nil {
		t.Errorf("a real client time: %v", got)
	}
	for _, ft := range []uint64{0x8000_0000_0000_0000, 0x7fff_ffff_ffff_ffff, 0xc000_0000_0000_0000} {
		r.ClientTime = ft
		got := fieldMap([]zap.Field{ClientTime(&r)})
		if want := "0x" + strconv.FormatUint(ft, 16); got["kms.client_filetime"] != want || len(got) != 1 {
			t.Errorf("FILETIME %#x: %v, want kms.client_filetime %s", ft, got, want)
		}
	}
}
