package inventory

import (
	"net/netip"
	"time"
)

// Activation is one observed KMS activation call: the decoded request,
// where it came from and what the host answered. The proxy builds one per
// answered (or refused-by-host) call and hands it to a Writer.
type Activation struct {
	Time time.Time

	CMID           string // client machine ID, GUID text
	ApplicationID  string // GUID text
	Application    string // name, or the GUID when unknown
	Workstation    string // as the client sent it (attacker-controlled)
	SKUID          string
	SKU            string
	KMSCountedID   string
	KMSCountedName string
	LicenseStatus  string
	VirtualMachine bool
	Version        uint16 // KMS protocol major version (4, 5, 6)

	Source netip.Addr
	Zone   string
	Rule   string

	Result       string // kmsproxy.kms_result (success, refused-by-host, fault, …)
	HostReplied  bool   // the host answered with a stub that carried an HRESULT
	HRESULT      uint32
	HRESULTName  string
	CurrentCount uint32 // from a successful reply; 0 otherwise
	EPID         string // host ePID from a successful reply; "" otherwise
}

// Row is the inventory's one row per (client machine ID, application).
type Row struct {
	CMID            string    `json:"client_machine_id"`
	ApplicationID   string    `json:"application_id"`
	Application     string    `json:"application"`
	Workstation     string    `json:"workstation"` // or "sha256:…" with store_workstation: false
	SKUID           string    `json:"sku_id"`
	SKU             string    `json:"sku"`
	KMSCountedID    string    `json:"kms_counted_id"`
	KMSCountedName  string    `json:"kms_counted_name"`
	LicenseStatus   string    `json:"license_status"`
	VirtualMachine  bool      `json:"virtual_machine"`
	Version         uint16    `json:"kms_version"`
	FirstSeen       time.Time `json:"first_seen"`
	LastSeen        time.Time `json:"last_seen"`
	Requests        int64     `json:"requests"`
	LastSource      string    `json:"last_source"`
	LastZone        string    `json:"last_zone"`
	LastRule        string    `json:"last_rule"`
	LastResult      string    `json:"last_result"`
	LastHRESULT     string    `json:"last_hresult"` // "0x00000000"; "" when the host gave none
	LastHRESULTName string    `json:"last_hresult_name"`
	CurrentCount    uint32    `json:"host_current_count"`
	EPID            string    `json:"host_epid"`
}

// Filter selects rows. Zero fields select everything.
type Filter struct {
	Since       time.Time // LastSeen at or after
	Zone        string    // LastZone, exact (case-insensitive)
	Application string    // Application name or ID, case-insensitive substring of the name or exact ID
	Status      string    // LicenseStatus, case-insensitive exact
	Search      string    // substring of workstation, CMID, SKU, application or last source (status page)
	Limit       int       // at most this many rows, newest LastSeen first; 0 = no limit
}
