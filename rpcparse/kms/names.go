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
