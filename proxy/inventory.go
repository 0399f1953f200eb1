package proxy

import (
	"time"

	"github.com/kmsproxy/kmsproxy/inventory"
	"github.com/kmsproxy/kmsproxy/kmswatch"
	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// ActivationSink takes every activation whose request decoded, answered
// or not: the inventory's writer. Submit must not block (the data path
// calls it); it reports false when it dropped the activation.
type ActivationSink interface {
	Submit(inventory.Activation) bool
}

// SetActivationSink sets where activations go; call it before Serve.
func (s *Server) SetActivationSink(k ActivationSink) { s.sink = k }

// Hosts is the KMS host view the replies built (status page).
func (s *Server) Hosts() *kmswatch.Hosts { return s.hosts }

// recordActivation hands the call's facts to the sink.
func (s *Server) recordActivation(ss *session, kc *kmsCall, result string, r *kmsReply) {
	if s.sink == nil {
		return
	}
	req := kc.req
	a := inventory.Activation{
		Time:           time.Now(),
		CMID:           req.CMID.String(),
		ApplicationID:  req.ApplicationID.String(),
		Application:    nameOr(kms.ApplicationName(req.ApplicationID), req.ApplicationID),
		Workstation:    req.Workstation(),
		SKUID:          req.SKUID.String(),
		SKU:            nameOr(kms.SKUName(req.SKUID), req.SKUID),
		KMSCountedID:   req.KMSCountedID.String(),
		KMSCountedName: nameOr(kms.KMSCountedIDName(req.KMSCountedID), req.KMSCountedID),
		LicenseStatus:  kms.LicenseStatusName(req.LicenseStatus),
		VirtualMachine: req.VMInfo == 1,
		Version:        req.MajorVersion,
		Source:         ss.src.Addr(),
		Zone:           ss.zone,
		Rule:           kc.rule,
		Result:         result,
	}
	if r.stubOK {
		a.HostReplied, a.HRESULT, a.HRESULTName = true, r.hr, kms.HRESULTName(r.hr)
		if r.hr == 0 && r.decodeErr == nil {
			a.CurrentCount, a.EPID = r.resp.CurrentCount, r.resp.EPID()
		}
	}
	s.sink.Submit(a) // a drop is counted by the sink (kmsproxy_inventory_dropped_total)
}

// nameOr is a known ID's name, else its GUID text.
func nameOr(name string, id rpcparse.UUID) string {
	if name != "" {
		return name
	}
	return id.String()
}
