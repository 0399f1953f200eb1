package kms

import (
	"strings"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

// Application is a KMS application ID: the product family a request is for.
type Application struct {
	Name  string // config and log alias
	Title string
	ID    rpcparse.UUID
}

// Applications are the three application IDs KMS hosts know (kms-protocol.md §5).
var Applications = []Application{
	{Name: "windows", Title: "Windows", ID: rpcparse.MustUUID("55c92734-d682-4d71-983e-d6ec3f16059f")},
	{Name: "office2010", Title: "Office 2010", ID: rpcparse.MustUUID("59a52881-a989-479d-af46-f275c6370663")},
	{Name: "office2013", Title: "Office 2013 and later", ID: rpcparse.MustUUID("0ff1ce15-a989-479d-af46-f275c6370663")},
}

// applicationAliases are extra config spellings; Office 2016 and later share
// Office 2013's application ID.
var applicationAliases = map[string]string{
	"office":     "office2013",
	"office2016": "office2013",
	"office2019": "office2013",
	"office2021": "office2013",
	"office2024": "office2013",
}

// LookupApplication resolves a config value (an alias or a GUID) to an
// application ID. GUIDs need not be well known.
func LookupApplication(nameOrGUID string) (rpcparse.UUID, bool) {
	s := strings.ToLower(strings.TrimSpace(nameOrGUID))
	if a, ok := applicationAliases[s]; ok {
		s = a
	}
	for _, a := range Applications {
		if a.Name == s {
			return a.ID, true
		}
	}
	if u, err := rpcparse.ParseUUID(s); err == nil {
		return u, true
	}
	return rpcparse.UUID{}, false
}

// ApplicationName returns the alias of a known application ID, or "".
func ApplicationName(id rpcparse.UUID) string {
	for _, a := range Applications {
		if a.ID == id {
			return a.Name
		}
	}
	return ""
}

// Product is a KMS counted ID or SKU ID with its display name.
type Product struct {
	ID   rpcparse.UUID
	Name string
	// MinClients is the N count policy of a KMS counted ID (0 for SKUs and
	// IDs no KMS host counts).
	MinClients uint32
}

// KMSCountedIDs are the product groups a KMS host counts (kms-protocol.md §5).
var KMSCountedIDs = []Product{
	{rpcparse.MustUUID("58e2134f-8e11-4d17-9cb2-91069c151148"), "Windows 10 2015 (Volume)", 25},
	{rpcparse.MustUUID("969fe3c0-a3ec-491a-9f25-423605deb365"), "Windows 10 2016 (Volume)", 25},
	{rpcparse.MustUUID("11b15659-e603-4cf1-9c1f-f0ec01b81888"), "Windows 10 2019 (Volume)", 25},
	{rpcparse.MustUUID("cb8fc780-2c05-495a-9710-85afffc904d7"), "Windows 8.1", 25},
	{rpcparse.MustUUID("3c40b358-5948-45af-923b-53d21fcc7e79"), "Windows 8", 25},
	{rpcparse.MustUUID("7fde5219-fbfa-484a-82c9-34d1ad53e856"), "Windows 7", 25},
	{rpcparse.MustUUID("212a64dc-43b1-4d3d-a30c-2fc69d2095c6"), "Windows Vista", 25},
	{rpcparse.MustUUID("4b83307d-7788-50ff-8d1f-1861915bdb9d"), "Windows Server 2025", 5},
	{rpcparse.MustUUID("b74263e4-0f92-46c6-bcf8-c11d5efe2959"), "Windows Server 2022", 5},
	{rpcparse.MustUUID("8449b1fb-f0ea-497a-99ab-66ca96e9a0f5"), "Windows Server 2019", 5},
	{rpcparse.MustUUID("6e9fc069-257d-4bc4-b4a7-750514d32743"), "Windows Server 2016", 5},
	{rpcparse.MustUUID("8456efd3-0c04-4089-8740-5b7238535a65"), "Windows Server 2012 R2", 5},
	{rpcparse.MustUUID("8665cb71-468c-4aa3-a337-cb9bc9d5eaac"), "Windows Server 2012", 5},
	{rpcparse.MustUUID("e85af946-2e25-47b7-83e1-bebcebeac611"), "Office 2010", 5},
	{rpcparse.MustUUID("e6a6f1bf-9d40-40c3-aa9f-c77ba21578c0"), "Office 2013", 5},
	{rpcparse.MustUUID("85b5f61b-320b-4be3-814a-b76b2bfafc82"), "Office 2016", 5},
	{rpcparse.MustUUID("617d9eb1-ef36-4f82-86e0-a65ae07b96c6"), "Office 2019", 5},
	{rpcparse.MustUUID("86d50b16-4808-41af-b83b-b338274318b2"), "Office 2021", 5},
	{rpcparse.MustUUID("1b4db7eb-4057-5ddf-91e0-36dec72071f5"), "Office 2024", 5},
	{rpcparse.MustUUID("e1c51358-fe3e-4203-a4a2-3b6b20c9734e"), "Windows (Retail)", 0},
}

// SKUs are the activation IDs of common volume editions (kms-protocol.md §5).
var SKUs = []Product{
	{ID: rpcparse.MustUUID("2de67392-b7a7-462a-b1ca-108dd189f588"), Name: "Windows 10 Professional"},
	{ID: rpcparse.MustUUID("73111121-5638-40f6-bc11-f1d7b0d64300"), Name: "Windows 10 Enterprise"},
	{ID: rpcparse.MustUUID("c06b6981-d7fd-4a35-b7b4-054742b7af67"), Name: "Windows 8.1 Professional"},
	{ID: rpcparse.MustUUID("81671aaf-79d1-4eb1-b004-8cbbe173afea"), Name: "Windows 8.1 Enterprise"},
	{ID: rpcparse.MustUUID("b92e9980-b9d5-4821-9c94-140f632f6312"), Name: "Windows 7 Professional"},
	{ID: rpcparse.MustUUID("ae2ee509-1b34-41c0-acb7-6d4650168915"), Name: "Windows 7 Enterprise"},
	{ID: rpcparse.MustUUID("9bd77860-9b31-4b7b-96ad-2564017315bf"), Name: "Windows Server 2022 Standard"},
	{ID: rpcparse.MustUUID("ef6cfc9f-8c5d-44ac-9aad-de6a2ea0ae03"), Name: "Windows Server 2022 Datacenter"},
	{ID: rpcparse.MustUUID("de32eafd-aaee-4662-9444-c1befb41bde2"), Name: "Windows Server 2019 Standard"},
	{ID: rpcparse.MustUUID("34e1ae55-27f8-4950-8877-7a03be5fb181"), Name: "Windows Server 2019 Datacenter"},
	{ID: rpcparse.MustUUID("6f327760-8c5c-417c-9b61-836a98287e0c"), Name: "Office Professional Plus 2010"},
	{ID: rpcparse.MustUUID("b322da9c-a2e2-4058-9e4e-f59a6970bd69"), Name: "Office Professional Plus 2013"},
	{ID: rpcparse.MustUUID("d450596f-894d-49e0-966a-fd39ed4c4c64"), Name: "Office Professional Plus 2016"},
	{ID: rpcparse.MustUUID("dedfa23d-6ed1-45a6-85dc-63cae0546de6"), Name: "Office Standard 2016"},
	{ID: rpcparse.MustUUID("85dd8b5f-eaa4-4af3-a628-cce9e77c9a03"), Name: "Office Professional Plus 2019"},
	{ID: rpcparse.MustUUID("fbdb3e18-a8ef-4fb3-9183-dffd60bd0984"), Name: "Office LTSC Professional Plus 2021"},
}

func productName(list []Product, id rpcparse.UUID) string {
	for i := range list {
		if list[i].ID == id {
			return list[i].Name
		}
	}
	return ""
}

// KMSCountedIDName names a KMS counted ID, or returns "" when unknown
// (callers print the GUID).
func KMSCountedIDName(id rpcparse.UUID) string { return productName(KMSCountedIDs, id) }

// SKUName names a SKU (activation) ID, or returns "" when unknown.
func SKUName(id rpcparse.UUID) string { return productName(SKUs, id) }

var licenseStatusNames = [...]string{
	"Unlicensed", "Licensed", "OOB grace", "OOT grace", "Non-genuine grace", "Notification", "Extended grace",
}

// LicenseStatusName names a request's licence status (0..6), or "" when
// out of range.
func LicenseStatusName(s uint32) string {
	if s < uint32(len(licenseStatusNames)) {
		return licenseStatusNames[s]
	}
	return ""
}

// HRESULTs a KMS host returns in the RequestActivation stub (kms-protocol.md §5).
const (
	HResultOK                  uint32 = 0x00000000
	HResultKMSIDMismatch       uint32 = 0xC004F042
	HResultInvalidTimestamp    uint32 = 0xC004F06C
	HResultInvalidData         uint32 = 0x8007000D
	HResultRemappingInvalidArg uint32 = 0xC004D104
	HResultNotEnoughCount      uint32 = 0xC004F038
	HResultServiceNotEnabled   uint32 = 0xC004F039
	HResultKMSNotActivated     uint32 = 0xC004F041
	HResultVMNotSupported      uint32 = 0xC004F06B
	HResultServiceUnavailable  uint32 = 0xC004F074
)

var hresultNames = map[uint32]string{
	HResultOK:                  "S_OK",
	HResultKMSIDMismatch:       "SL_E_VL_KEY_MANAGEMENT_SERVICE_ID_MISMATCH",
	HResultInvalidTimestamp:    "SL_E_VL_INVALID_TIMESTAMP",
	HResultInvalidData:         "ERROR_INVALID_DATA",
	HResultRemappingInvalidArg: "SL_REMAPPING_SP_STATUS_INVALIDARG",
	HResultNotEnoughCount:      "SL_E_VL_NOT_ENOUGH_COUNT",
	HResultServiceNotEnabled:   "SL_E_VL_BINDING_SERVICE_NOT_ENABLED",
	HResultKMSNotActivated:     "SL_E_VL_KEY_MANAGEMENT_SERVICE_NOT_ACTIVATED",
	HResultVMNotSupported:      "SL_E_VL_KEY_MANAGEMENT_SERVICE_VM_NOT_SUPPORTED",
	HResultServiceUnavailable:  "SL_E_VL_BINDING_SERVICE_UNAVAILABLE",
}

// HRESULTName names a KMS HRESULT, or returns "" when unknown (callers
// print it as 0x%08X).
func HRESULTName(hr uint32) string { return hresultNames[hr] }
