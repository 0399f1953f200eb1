package event

import (
	"strconv"

	"go.uber.org/zap"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// AppendKMSRequest adds the kms.* fields of DESIGN Events taken from an
// activation request to f; a request that did not decode (decodeErr)
// gets kms.error and error.message instead.
func AppendKMSRequest(f []zap.Field, req *kms.Request, decodeErr error) []zap.Field {
	if decodeErr != nil {
		return append(f,
			zap.String("kms.error", kms.Reason(decodeErr)),
			zap.String("error.message", decodeErr.Error()),
		)
	}
	r := req
	return append(f,
		zap.Uint16("kms.version", r.MajorVersion),
		zap.String("kms.application", nameOr(kms.ApplicationName(r.ApplicationID), r.ApplicationID)),
		zap.String("kms.application_id", r.ApplicationID.String()),
		zap.String("kms.sku", nameOr(kms.SKUName(r.SKUID), r.SKUID)),
		zap.String("kms.sku_id", r.SKUID.String()),
		zap.String("kms.kms_counted_id", r.KMSCountedID.String()),
		zap.String("kms.kms_counted_name", nameOr(kms.KMSCountedIDName(r.KMSCountedID), r.KMSCountedID)),
		zap.String("kms.client_machine_id", r.CMID.String()),
		zap.String("kms.workstation", r.Workstation()),
		zap.String("kms.license_status", kms.LicenseStatusName(r.LicenseStatus)),
		ClientTime(r),
		zap.Uint32("kms.required_count", r.RequiredCount),
		zap.Bool("kms.virtual_machine", r.VMInfo == 1),
	)
}

// ClientTime is the request's client time as kms.client_time, or, when
// the FILETIME is no date RFC 3339 can write (a year before 1 or after
// 9999, which a client may send and Elasticsearch would refuse the whole
// event for), as kms.client_filetime: the FILETIME's 64 bits in hex.
func ClientTime(r *kms.Request) zap.Field {
	t := r.Time()
	if y := t.Year(); y < 1 || y > 9999 {
		return zap.String("kms.client_filetime", "0x"+strconv.FormatUint(r.ClientTime, 16))
	}
	return zap.Time("kms.client_time", t)
}

// nameOr is a known ID's name, else its GUID text: an event always says
// what was asked for.
func nameOr(name string, id rpcparse.UUID) string {
	if name != "" {
		return name
	}
	return id.String()
}

// AppendKMSResponse adds the kms.* fields taken from a successful reply
// (r, decoded by kms.DecodeResponse; decodeErr what it returned) to f.
func AppendKMSResponse(f []zap.Field, r *kms.Response, decodeErr error) []zap.Field {
	if decodeErr != nil {
		return append(f, zap.String("kms.reply_error", kms.Reason(decodeErr)))
	}
	f = append(f,
		zap.Uint32("kms.current_count", r.CurrentCount),
		zap.String("kms.epid", r.EPID()),
		zap.Uint32("kms.activation_interval", r.ActivationInterval),
		zap.Uint32("kms.renewal_interval", r.RenewalInterval),
		zap.Bool("kms.reply_cmid_match", r.CMIDMatch),
		zap.Bool("kms.reply_time_match", r.TimeMatch),
	)
	switch r.MajorVersion {
	case 4:
		f = append(f, zap.Bool("kms.reply_verified", r.MACVerified))
	case 5:
		f = append(f, zap.Bool("kms.reply_verified", r.DigestVerified && r.IVMatch))
	case 6:
		f = append(f, zap.Bool("kms.reply_verified", r.HMACVerified))
	}
	return f
}

// HRESULTText is kms.status: the HRESULT in hex and its name when known.
func HRESULTText(hr uint32) string {
	if hr == 0 {
		return hresultOK
	}
	return formatHRESULT(hr)
}

var hresultOK = formatHRESULT(0)

func formatHRESULT(hr uint32) string {
	const hexDigits = "0123456789abcdef"
	b := make([]byte, 0, 64)
	b = append(b, '0', 'x')
	for shift := 28; shift >= 0; shift -= 4 {
		b = append(b, hexDigits[hr>>uint(shift)&0xf])
	}
	if n := kms.HRESULTName(hr); n != "" {
		b = append(b, ' ')
		b = append(b, n...)
	}
	return string(b)
}

// ApplicationLabel is the application label of
// kmsproxy_kms_activations_total: a fixed token, never the GUID.
func ApplicationLabel(req *kms.Request, decodeErr error) string {
	if decodeErr != nil {
		return "malformed"
	}
	if n := kms.ApplicationName(req.ApplicationID); n != "" {
		return n
	}
	return "other"
}

// VersionLabel is the version label of kmsproxy_kms_activations_total.
func VersionLabel(req *kms.Request) string {
	switch req.MajorVersion {
	case 4, 5, 6:
		return strconv.Itoa(int(req.MajorVersion))
	}
	return "other"
}
