package capture

import (
	"fmt"
	"time"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	kmscodec "github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// KMSFact is what `kmsproxy decode` shows of a KMS activation call: the
// kms.* fields of the proxy's events, from the request or from the reply.
type KMSFact struct {
	NDR                string `json:"ndr"`
	Version            uint16 `json:"version,omitempty"`
	Application        string `json:"application,omitempty"`
	ApplicationID      string `json:"application_id,omitempty"`
	SKU                string `json:"sku,omitempty"`
	SKUID              string `json:"sku_id,omitempty"`
	KMSCountedID       string `json:"kms_counted_id,omitempty"`
	KMSCountedName     string `json:"kms_counted_name,omitempty"`
	ClientMachineID    string `json:"client_machine_id,omitempty"`
	Workstation        string `json:"workstation,omitempty"`
	LicenseStatus      string `json:"license_status,omitempty"`
	ClientTime         string `json:"client_time,omitempty"`
	RequiredCount      uint32 `json:"required_count,omitempty"`
	VirtualMachine     bool   `json:"virtual_machine,omitempty"`
	Status             string `json:"status,omitempty"`
	CurrentCount       uint32 `json:"current_count,omitempty"`
	EPID               string `json:"epid,omitempty"`
	ActivationInterval uint32 `json:"activation_interval,omitempty"`
	RenewalInterval    uint32 `json:"renewal_interval,omitempty"`
	ReplyVerified      *bool  `json:"reply_verified,omitempty"`
	Error              string `json:"error,omitempty"`
	Reason             string `json:"reason,omitempty"`
}

type kmsCallKey struct {
	stream int
	callID uint32
}

type kmsCall struct {
	ndr64 bool
	ok    bool
	req   kmscodec.Request
}

// NewKMSDecoder returns a StubDecoder for RequestActivation (opnum 0)
// calls. A capture does not say which context is NDR64 without replaying
// the bind, so the request stub's strict shape decides, and the reply is
// read in its request's form. Single-fragment calls only, as KMS sends them.
func NewKMSDecoder() StubDecoder {
	calls := map[kmsCallKey]*kmsCall{}
	return func(rec *Record, p *rpcparse.PDU) any {
		key := kmsCallKey{rec.Stream, p.CallID}
		switch p.Type {
		case rpcparse.PTypeRequest:
			if p.Request.Opnum != 0 || p.Flags&(rpcparse.FlagFirstFrag|rpcparse.FlagLastFrag) != rpcparse.FlagFirstFrag|rpcparse.FlagLastFrag {
				return nil
			}
			c := &kmsCall{}
			big := p.DataRep.BigEndian()
			blob, err := kmscodec.ParseRequestStub(p.Request.Stub, kmscodec.Encoding{BigEndian: big})
			if err != nil {
				if b64, err64 := kmscodec.ParseRequestStub(p.Request.Stub, kmscodec.Encoding{NDR64: true, BigEndian: big}); err64 == nil {
					blob, err, c.ndr64 = b64, nil, true
				}
			}
			if err != nil {
				return nil // not a KMS request stub at all
			}
			calls[key] = c
			f := &KMSFact{NDR: ndrName(c.ndr64)}
			if err := kmscodec.DecodeRequest(blob, &c.req); err != nil {
				f.Error, f.Reason = err.Error(), kmscodec.Reason(err)
				return f
			}
			c.ok = true
			fillRequest(f, &c.req)
			return f
		case rpcparse.PTypeResponse:
			c := calls[key]
			if c == nil {
				return nil
			}
			delete(calls, key)
			f := &KMSFact{NDR: ndrName(c.ndr64)}
			blob, hr, err := kmscodec.ParseResponseStub(p.Response.Stub, kmscodec.Encoding{NDR64: c.ndr64, BigEndian: p.DataRep.BigEndian()})
			if err != nil {
				f.Error, f.Reason = err.Error(), kmscodec.Reason(err)
				return f
			}
			f.Status = fmt.Sprintf("0x%08x", hr)
			if n := kmscodec.HRESULTName(hr); n != "" {
				f.Status += " " + n
			}
			if blob == nil {
				return f
			}
			var req *kmscodec.Request
			if c.ok {
				req = &c.req
			}
			var r kmscodec.Response
			if err := kmscodec.DecodeResponse(blob, req, &r); err != nil {
				f.Error, f.Reason = err.Error(), kmscodec.Reason(err)
				return f
			}
			f.Version = r.MajorVersion
			f.ClientMachineID = r.CMID.String()
			f.ClientTime = kmscodec.FiletimeToTime(r.ClientTime).Format(time.RFC3339Nano)
			f.CurrentCount, f.EPID = r.CurrentCount, r.EPID()
			f.ActivationInterval, f.RenewalInterval = r.ActivationInterval, r.RenewalInterval
			v := r.MACVerified || r.HMACVerified || (r.MajorVersion == 5 && r.DigestVerified && r.IVMatch)
			f.ReplyVerified = &v
			return f
		}
		return nil
	}
}

func ndrName(ndr64 bool) string {
	if ndr64 {
		return "ndr64"
	}
	return "ndr20"
}

func fillRequest(f *KMSFact, r *kmscodec.Request) {
	f.Version = r.MajorVersion
	f.Application = nameOr(kmscodec.ApplicationName(r.ApplicationID), r.ApplicationID)
	f.ApplicationID = r.ApplicationID.String()
	f.SKU = nameOr(kmscodec.SKUName(r.SKUID), r.SKUID)
	f.SKUID = r.SKUID.String()
	f.KMSCountedID = r.KMSCountedID.String()
	f.KMSCountedName = kmscodec.KMSCountedIDName(r.KMSCountedID)
	f.ClientMachineID = r.CMID.String()
	f.Workstation = r.Workstation()
	f.LicenseStatus = kmscodec.LicenseStatusName(r.LicenseStatus)
	f.ClientTime = r.Time().Format(time.RFC3339Nano)
	f.RequiredCount = r.RequiredCount
	f.VirtualMachine = r.VMInfo == 1
}

func nameOr(name string, id rpcparse.UUID) string {
	if name != "" {
		return name
	}
	return id.String()
}
