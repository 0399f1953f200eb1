package rpcparse

import "strings"

// Interface names a well-known RPC interface so that config can say "samr"
// and logs can say "samr" instead of a UUID.
type Interface struct {
	Name    string   // canonical alias used in config and logs
	Aliases []string // other accepted spellings (lower case)
	Title   string   // human description
	UUID    UUID
	Major   uint16
	Minor   uint16
}

// KMSInterfaceUUID is the KMS activation interface, version 1.0.
var KMSInterfaceUUID = MustUUID("51c82175-844e-4750-b0d8-ec255555bc06")

// WellKnownInterfaces is the table behind LookupInterface and
// InterfaceByName. Versions are the ones Windows binds with.
var WellKnownInterfaces = []Interface{
	{Name: "kms", Aliases: []string{"kmsserver", "activation"}, Title: "KMS activation (RequestActivation)", UUID: KMSInterfaceUUID, Major: 1},
	{Name: "epm", Aliases: []string{"epmapper", "endpoint-mapper"}, Title: "endpoint mapper", UUID: MustUUID("e1af8308-5d1f-11c9-91a4-08002b14a0fa"), Major: 3},
	{Name: "mgmt", Aliases: []string{"rpc-mgmt"}, Title: "RPC remote management", UUID: MustUUID("afa8bd80-7d8a-11c9-bef4-08002b102989"), Major: 1},
	{Name: "samr", Title: "Security Account Manager", UUID: MustUUID("12345778-1234-abcd-ef00-0123456789ac"), Major: 1},
	{Name: "lsarpc", Aliases: []string{"lsa", "lsad"}, Title: "Local Security Authority", UUID: MustUUID("12345778-1234-abcd-ef00-0123456789ab")},
	{Name: "lsads", Aliases: []string{"dssetup"}, Title: "directory services setup", UUID: MustUUID("3919286a-b10c-11d0-9ba8-00c04fd92ef5")},
	{Name: "srvsvc", Aliases: []string{"server"}, Title: "Server service (shares, sessions)", UUID: MustUUID("4b324fc8-1670-01d3-1278-5a47bf6ee188"), Major: 3},
	{Name: "wkssvc", Aliases: []string{"workstation"}, Title: "Workstation service", UUID: MustUUID("6bffd098-a112-3610-9833-46c3f87e345a"), Major: 1},
	{Name: "netlogon", Title: "Netlogon", UUID: MustUUID("12345678-1234-abcd-ef00-01234567cffb"), Major: 1},
	{Name: "drsuapi", Aliases: []string{"drs"}, Title: "directory replication (DRSUAPI)", UUID: MustUUID("e3514235-4b06-11d1-ab04-00c04fc2dcd2"), Major: 4},
	{Name: "winreg", Aliases: []string{"registry"}, Title: "remote registry", UUID: MustUUID("338cd001-2244-31f1-aaaa-900038001003"), Major: 1},
	{Name: "svcctl", Aliases: []string{"scm"}, Title: "service control manager", UUID: MustUUID("367abb81-9844-35f1-ad32-98f038001003"), Major: 2},
	{Name: "atsvc", Aliases: []string{"at"}, Title: "task scheduler (AT)", UUID: MustUUID("1ff70682-0a51-30e8-076d-740be8cee98b"), Major: 1},
	{Name: "spoolss", Aliases: []string{"printer"}, Title: "print spooler", UUID: MustUUID("12345678-1234-abcd-ef00-0123456789ab"), Major: 1},
	{Name: "eventlog", Title: "event log", UUID: MustUUID("82273fdc-e32a-18c3-3f78-827929dc23ea")},
	{Name: "isystemactivator", Aliases: []string{"remote-activation-dcom"}, Title: "DCOM ISystemActivator", UUID: MustUUID("000001a0-0000-0000-c000-000000000046")},
	{Name: "iremunknown", Title: "DCOM IRemUnknown", UUID: MustUUID("00000131-0000-0000-c000-000000000046")},
	{Name: "iremunknown2", Title: "DCOM IRemUnknown2", UUID: MustUUID("00000143-0000-0000-c000-000000000046")},
	{Name: "iobjectexporter", Aliases: []string{"oxid"}, Title: "DCOM IObjectExporter", UUID: MustUUID("99fcfec4-5260-101b-bbcb-00aa0021347a")},
}

var (
	interfaceByUUID = map[UUID]int{}
	interfaceByName = map[string]int{}
)

func init() {
	for i, it := range WellKnownInterfaces {
		interfaceByUUID[it.UUID] = i
		interfaceByName[it.Name] = i
		for _, a := range it.Aliases {
			interfaceByName[a] = i
		}
	}
}

// LookupInterface returns the well-known interface with UUID u.
func LookupInterface(u UUID) (Interface, bool) {
	i, ok := interfaceByUUID[u]
	if !ok {
		return Interface{}, false
	}
	return WellKnownInterfaces[i], true
}

// InterfaceName returns the alias for u, or "" when u is not well known.
// It does not allocate.
func InterfaceName(u UUID) string {
	if i, ok := interfaceByUUID[u]; ok {
		return WellKnownInterfaces[i].Name
	}
	return ""
}

// InterfaceByName looks an interface up by alias, case-insensitively.
func InterfaceByName(name string) (Interface, bool) {
	i, ok := interfaceByName[strings.ToLower(strings.TrimSpace(name))]
	if !ok {
		return Interface{}, false
	}
	return WellKnownInterfaces[i], true
}

// Transfer syntaxes (C706 appendix I, MS-RPCE 2.2.4.12, 2.2.2.14).
var (
	NDR20UUID = MustUUID("8a885d04-1ceb-11c9-9fe8-08002b104860")
	NDR64UUID = MustUUID("71710533-beba-4937-8319-b5dbef9ccc36")
	// btfnPrefix is the fixed half of the bind-time feature negotiation UUID;
	// its last eight bytes carry the feature bitmask.
	btfnPrefix = [8]byte{0x6c, 0xb7, 0x1c, 0x2c, 0x98, 0x12, 0x45, 0x40}
)

// TransferKind classifies a transfer syntax.
type TransferKind uint8

const (
	TransferUnknown TransferKind = iota
	TransferNDR20
	TransferNDR64
	TransferBTFN // bind-time feature negotiation (MS-RPCE 3.3.1.5.3)
)

var transferKindNames = [...]string{"unknown", "ndr20", "ndr64", "bind-time-feature-negotiation"}

func (k TransferKind) String() string {
	if int(k) < len(transferKindNames) {
		return transferKindNames[k]
	}
	return "unknown"
}

// ClassifyTransfer names a transfer syntax. NDR 2.0 must be version 2 and
// NDR64 and BTFN version 1; any other version is TransferUnknown.
func ClassifyTransfer(s SyntaxID) TransferKind {
	switch {
	case s.UUID == NDR20UUID && s.Major == 2 && s.Minor == 0:
		return TransferNDR20
	case s.UUID == NDR64UUID && s.Major == 1 && s.Minor == 0:
		return TransferNDR64
	case [8]byte(s.UUID[:8]) == btfnPrefix && s.Major == 1 && s.Minor == 0:
		return TransferBTFN
	}
	return TransferUnknown
}

// BTFNBitmask returns the feature bitmask carried by a bind-time feature
// negotiation UUID: bit 0x01 security context multiplexing, 0x02 keep
// connection on orphan (MS-RPCE 2.2.2.14). ok is false for other UUIDs.
func BTFNBitmask(u UUID) (mask uint64, ok bool) {
	if [8]byte(u[:8]) != btfnPrefix {
		return 0, false
	}
	// The bitmask is the UUID's last eight bytes as the client wrote them,
	// first byte least significant.
	for i := 15; i >= 8; i-- {
		mask = mask<<8 | uint64(u[i])
	}
	return mask, true
}

// Wire images of the transfer syntaxes in each byte order, so a bind's
// transfer syntaxes are classified by comparing bytes, without decoding.
var (
	ndr20Wire, ndr64Wire [2][syntaxIDLen]byte // [0] little-endian, [1] big-endian
	btfnWire             [2][8]byte
	btfnVersionWire      [2][4]byte
)

func init() {
	for i, big := range []bool{false, true} {
		var b [syntaxIDLen]byte
		appendSyntax(b[:0], SyntaxID{UUID: NDR20UUID, Major: 2}, big)
		ndr20Wire[i] = b
		appendSyntax(b[:0], SyntaxID{UUID: NDR64UUID, Major: 1}, big)
		ndr64Wire[i] = b
		var u UUID
		copy(u[:8], btfnPrefix[:])
		appendSyntax(b[:0], SyntaxID{UUID: u, Major: 1}, big)
		btfnWire[i] = [8]byte(b[:8])
		btfnVersionWire[i] = [4]byte(b[16:20])
	}
}

// TransferKind classifies transfer syntax i (0 <= i < NumTransfer) from its
// wire bytes; it equals ClassifyTransfer(c.Transfer(i)) and is cheaper.
// Out of range it is TransferUnknown.
func (c *ContextElem) TransferKind(i int) TransferKind {
	if i < 0 || (i+1)*syntaxIDLen > len(c.transfers) {
		return TransferUnknown
	}
	b := c.transfers[i*syntaxIDLen : (i+1)*syntaxIDLen]
	o := 0
	if c.bigEndian {
		o = 1
	}
	switch w := [syntaxIDLen]byte(b); {
	case w == ndr20Wire[o]:
		return TransferNDR20
	case w == ndr64Wire[o]:
		return TransferNDR64
	case [8]byte(b[:8]) == btfnWire[o] && [4]byte(b[16:20]) == btfnVersionWire[o]:
		return TransferBTFN
	}
	return TransferUnknown
}
