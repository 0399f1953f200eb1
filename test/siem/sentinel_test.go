package siem

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const (
	sentinelParser = "../../deploy/siem/sentinel/vimNetworkSessionKMSProxy.yaml"
	sentinelARM    = "../../deploy/siem/sentinel/vimNetworkSessionKMSProxy.json"
	sentinelDoc    = "../../docs/siem-sentinel.md"
	kqlChecker     = "kql" // npm ci --prefix test/siem/kql installs Kusto.Language here
)

// commonSecurityLog is the part of Log Analytics' CommonSecurityLog
// schema (Azure Monitor Logs reference) a CEF parser may read: every
// column a CEF key fills, and the table's own.
const commonSecurityLog = `(TimeGenerated:datetime, Type:string, _ResourceId:string, Computer:string,
DeviceVendor:string, DeviceProduct:string, DeviceVersion:string, DeviceEventClassID:string, Activity:string, LogSeverity:string,
ReceiptTime:string, DeviceName:string, DeviceExternalID:string, DeviceAddress:string,
SourceIP:string, SourcePort:int, DestinationIP:string, DestinationPort:int, Protocol:string, ApplicationProtocol:string,
DeviceAction:string, EventOutcome:string, Reason:string, DeviceEventCategory:string, Message:string,
ReceivedBytes:long, SentBytes:long, StartTime:datetime, EndTime:datetime, EventCount:int,
SourceHostName:string, DestinationHostName:string, DestinationServiceName:string, RequestClientApplication:string,
DeviceCustomString1:string, DeviceCustomString1Label:string, DeviceCustomString2:string, DeviceCustomString2Label:string,
DeviceCustomString3:string, DeviceCustomString3Label:string, DeviceCustomString4:string, DeviceCustomString4Label:string,
DeviceCustomString5:string, DeviceCustomString5Label:string, DeviceCustomString6:string, DeviceCustomString6Label:string,
DeviceCustomNumber1:int, DeviceCustomNumber1Label:string, DeviceCustomNumber2:int, DeviceCustomNumber2Label:string,
DeviceCustomNumber3:int, DeviceCustomNumber3Label:string,
FieldDeviceCustomNumber1:long, FieldDeviceCustomNumber2:long, FieldDeviceCustomNumber3:long,
FlexString1:string, FlexString1Label:string, FlexString2:string, FlexString2Label:string,
AdditionalExtensions:string)`

// cefColumn is the CommonSecurityLog column each CEF key of kmsproxy's
// records lands in (Microsoft Sentinel's CEF and CommonSecurityLog field
// mapping); the header's fields are the first six.
var cefColumn = map[string][]string{
	"Device Vendor": {"DeviceVendor"}, "Device Product": {"DeviceProduct"}, "Device Version": {"DeviceVersion"},
	"Signature ID": {"DeviceEventClassID"}, "Name": {"Activity"}, "Severity": {"LogSeverity"},
	"rt": {"ReceiptTime"}, "dvchost": {"DeviceName"}, "src": {"SourceIP"}, "spt": {"SourcePort"},
	"dst": {"DestinationIP"}, "dpt": {"DestinationPort"}, "proto": {"Protocol"}, "app": {"ApplicationProtocol"},
	"act": {"DeviceAction"}, "outcome": {"EventOutcome"}, "reason": {"Reason"}, "cat": {"DeviceEventCategory"},
	"in": {"ReceivedBytes"}, "out": {"SentBytes"}, "start": {"StartTime"}, "end": {"EndTime"},
	"shost": {"SourceHostName"}, "destinationServiceName": {"DestinationServiceName"}, "msg": {"Message"},
	"cs1": {"DeviceCustomString1"}, "cs2": {"DeviceCustomString2"}, "cs3": {"DeviceCustomString3"},
	"cs4": {"DeviceCustomString4"}, "cs5": {"DeviceCustomString5"}, "cs6": {"DeviceCustomString6"},
	"cn1": {"DeviceCustomNumber1", "FieldDeviceCustomNumber1"}, "cn2": {"DeviceCustomNumber2", "FieldDeviceCustomNumber2"},
	"cn3":         {"DeviceCustomNumber3", "FieldDeviceCustomNumber3"},
	"flexString1": {"FlexString1"}, "flexString2": {"FlexString2"},
}

// tableColumns are CommonSecurityLog's own, filled by Log Analytics.
var tableColumns = map[string]bool{"TimeGenerated": true, "Type": true, "_ResourceId": true}

// asimMandatory are the fields every ASIM NetworkSession parser must
// return, with the types the schema gives them.
var asimMandatory = map[string]string{
	"EventCount": "int", "EventStartTime": "datetime", "EventEndTime": "datetime", "EventType": "string",
	"EventResult": "string", "EventProduct": "string", "EventVendor": "string", "EventSchema": "string",
	"EventSchemaVersion": "string", "Dvc": "string",
}

// asimTypes are the other fields whose type the schema fixes.
var asimTypes = map[string]string{
	"SrcPortNumber": "int", "DstPortNumber": "int", "SrcBytes": "long", "DstBytes": "long", "NetworkBytes": "long",
	"NetworkDuration": "int", "ThreatRiskLevel": "int", "AdditionalFields": "dynamic",
}

// asimDvcActions are the schema's DvcAction values.
var asimDvcActions = map[string]bool{"Allow": true, "Deny": true, "Drop": true, "Drop ICMP": true, "Reset": true,
	"Reset Source": true, "Reset Destination": true, "Encrypt": true, "Decrypt": true, "VPNroute": true}

type asimParserFile struct {
	Parser struct {
		Title   string `yaml:"Title"`
		Version string `yaml:"Version"`
	} `yaml:"Parser"`
	ParserName   string `yaml:"ParserName"`
	ParserParams []struct {
		Name    string `yaml:"Name"`
		Type    string `yaml:"Type"`
		Default any    `yaml:"Default"`
	} `yaml:"ParserParams"`
	ParserQuery string `yaml:"ParserQuery"`
}

// functionParameters is the parameter list as Log Analytics' saved
// functions (and the ARM template) write it.
func (p *asimParserFile) functionParameters() string {
	var ps []string
	for _, x := range p.ParserParams {
		ps = append(ps, fmt.Sprintf("%s:%s=%v", x.Name, x.Type, x.Default))
	}
	return strings.Join(ps, ", ")
}

// kqlResult is check.js's answer.
type kqlResult struct {
	Diagnostics []struct {
		Severity, Code, Message string
		Start                   int
	} `json:"diagnostics"`
	Columns [][2]string         `json:"columns"`
	Read    map[string][]string `json:"read"`
}

// analyseKQL runs Kusto.Language on each query over CommonSecurityLog,
// in one Node.js process (loading Kusto.Language takes seconds).
func analyseKQL(t *testing.T, queries []string) []kqlResult {
	t.Helper()
	if _, err := os.Stat(filepath.Join(kqlChecker, "node_modules/@kusto/language-service-next/package.json")); err != nil {
		if os.Getenv("KMSPROXY_SKIP_KQL") != "" {
			t.Skip("Kusto.Language not installed and KMSPROXY_SKIP_KQL set")
		}
		t.Fatal("Kusto.Language is not installed: npm ci --prefix test/siem/kql (or set KMSPROXY_SKIP_KQL=1 to skip)")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found: the KQL is analysed with Kusto.Language on Node.js")
	}
	in, _ := json.Marshal(map[string]any{"queries": queries, "tables": map[string]string{"CommonSecurityLog": strings.ReplaceAll(commonSecurityLog, "\n", " ")}})
	cmd := exec.Command(node, filepath.Join(kqlChecker, "check.js"))
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("check.js: %v\n%s", err, stderr.String())
	}
	var r []kqlResult
	if err := json.Unmarshal(out, &r); err != nil || len(r) != len(queries) {
		t.Fatalf("check.js answered %d results for %d queries: %v", len(r), len(queries), err)
	}
	return r
}

// The ASIM parser: Kusto.Language parses and binds it against
// CommonSecurityLog without a diagnostic; it returns every mandatory
// field, typed as the schema says, and exactly the fields
// docs/siem-sentinel.md lists; it reads only columns kmsproxy's CEF keys
// fill; its act table and its list of session actions match what the
// records carry; and the ARM template is the YAML's query.
func testSentinel(t *testing.T, rec *recording) {
	b, err := os.ReadFile(sentinelParser)
	if err != nil {
		t.Fatal(err)
	}
	var p asimParserFile
	if err := yaml.Unmarshal(b, &p); err != nil {
		t.Fatalf("%s: %v", sentinelParser, err)
	}
	if p.ParserName != "vimNetworkSessionKMSProxy" || p.ParserQuery == "" {
		t.Fatalf("%s: ParserName %q, query %d bytes", sentinelParser, p.ParserName, len(p.ParserQuery))
	}
	var names []string
	for _, x := range p.ParserParams {
		names = append(names, x.Name)
	}
	if got, want := strings.Join(names, " "), "starttime endtime srcipaddr_has_any_prefix dstipaddr_has_any_prefix ipaddr_has_any_prefix dstportnumber hostname_has_any dvcaction eventresult disabled"; got != want {
		t.Errorf("parameters %s, want ASIM's %s", got, want)
	}
	query := "let " + p.ParserName + " = (" + p.functionParameters() + ") {\n" + p.ParserQuery + "};\n" + p.ParserName + "()"
	docQueries := sentinelDocQueries(t, &p)
	results := analyseKQL(t, append([]string{query}, docQueries...))
	r := results[0]
	for _, d := range r.Diagnostics {
		line := strings.Count(query[:min(d.Start, len(query))], "\n") // the YAML's query starts on line 1 of the wrapper
		t.Errorf("KQL line %d of ParserQuery: %s %s: %s", line, d.Severity, d.Code, d.Message)
	}
	out := map[string]string{}
	for _, c := range r.Columns {
		out[c[0]] = c[1]
	}
	for name, typ := range asimMandatory {
		if out[name] != typ {
			t.Errorf("the parser returns %s as %q, ASIM wants %s", name, out[name], typ)
		}
	}
	for name, typ := range asimTypes {
		if out[name] != typ {
			t.Errorf("the parser returns %s as %q, ASIM wants %s", name, out[name], typ)
		}
	}

	// Only columns kmsproxy fills, each from a key some record carries.
	carried := map[string]bool{}
	for _, k := range contentActions {
		c, err := parseCEF(strings.SplitN(rec.cef[k], " - ", 2)[1])
		if err != nil {
			t.Fatal(err)
		}
		for key := range c.Ext {
			for _, col := range cefColumn[key] {
				carried[col] = true
			}
		}
	}
	for _, h := range []string{"Device Vendor", "Device Product", "Device Version", "Signature ID", "Name", "Severity"} {
		carried[cefColumn[h][0]] = true
	}
	for _, col := range r.Read["CommonSecurityLog"] {
		if !carried[col] && !tableColumns[col] {
			t.Errorf("the parser reads %s, which no kmsproxy record fills", col)
		}
	}

	// act: the table maps exactly the verdicts the records carry, each to
	// an ASIM DvcAction.
	acts := map[string]bool{}
	for _, a := range wantAct {
		if a != "" {
			acts[a] = true
		}
	}
	rows := regexp.MustCompile(`(?s)let KMSProxyDvcAction = datatable\(DeviceAction: string, DvcAction: string\) \[(.*?)\];`).FindStringSubmatch(p.ParserQuery)
	if rows == nil {
		t.Fatal("no KMSProxyDvcAction datatable in the query")
	}
	mapped := map[string]bool{}
	for _, m := range regexp.MustCompile(`"([^"]*)", "([^"]*)"`).FindAllStringSubmatch(rows[1], -1) {
		mapped[m[1]] = true
		if !asimDvcActions[m[2]] {
			t.Errorf("act %s maps to %q, not an ASIM DvcAction", m[1], m[2])
		}
	}
	if fmt.Sprint(sortedKeys(mapped)) != fmt.Sprint(sortedKeys(acts)) {
		t.Errorf("the parser maps act %v, the records carry %v", sortedKeys(mapped), sortedKeys(acts))
	}
	// The session actions are the recorded ones with both addresses.
	list := regexp.MustCompile(`(?s)let KMSProxySessionActions = dynamic\(\[(.*?)\]\);`).FindStringSubmatch(p.ParserQuery)
	if list == nil {
		t.Fatal("no KMSProxySessionActions in the query")
	}
	inList := map[string]bool{}
	for _, m := range regexp.MustCompile(`"([^"]*)"`).FindAllStringSubmatch(list[1], -1) {
		inList[m[1]] = true
	}
	sessions := map[string]bool{}
	for _, k := range contentActions {
		if ev := rec.json[k]; ev["source.ip"] != nil && ev["destination.ip"] != nil {
			sessions[strings.TrimSuffix(k, ".drop")] = true
		}
	}
	if fmt.Sprint(sortedKeys(inList)) != fmt.Sprint(sortedKeys(sessions)) {
		t.Errorf("KMSProxySessionActions %v, the recorded sessions are %v", sortedKeys(inList), sortedKeys(sessions))
	}

	checkSentinelDoc(t, out)
	for i, q := range docQueries {
		for _, d := range results[i+1].Diagnostics {
			t.Errorf("%s: %s %s: %s\nin\n%s", sentinelDoc, d.Severity, d.Code, d.Message, q[strings.Index(q, "};\n")+3:])
		}
	}
	checkARM(t, &p)
}

// sentinelDocQueries are docs/siem-sentinel.md's KQL, each as the
// workspace runs it: every kql block, with the parser defined as the
// workspace defines it, and the lines it gives for the custom unifying
// parsers, inside a function with _Im_NetworkSession's parameters.
func sentinelDocQueries(t *testing.T, p *asimParserFile) []string {
	t.Helper()
	b, err := os.ReadFile(sentinelDoc)
	if err != nil {
		t.Fatal(err)
	}
	parser := "let " + p.ParserName + " = (" + p.functionParameters() + ") {\n" + p.ParserQuery + "};\n"
	var queries []string
	for _, m := range regexp.MustCompile("(?s)```(kql|text)\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		switch {
		case m[1] == "kql":
			queries = append(queries, parser+m[2])
		case strings.HasPrefix(m[2], p.ParserName+"("):
			for _, line := range strings.Split(strings.TrimSpace(m[2]), "\n") {
				queries = append(queries, parser+"let unifying = (starttime:datetime=datetime(null), endtime:datetime=datetime(null), "+
					"srcipaddr_has_any_prefix:dynamic=dynamic([]), dstipaddr_has_any_prefix:dynamic=dynamic([]), dstportnumber:int=int(null), "+
					"hostname_has_any:dynamic=dynamic([]), dvcaction:dynamic=dynamic([]), eventresult:string='*') {\nunion isfuzzy=true\n"+line+"\n};\nunifying()")
			}
		}
	}
	if len(queries) < 10 {
		t.Errorf("%s: %d KQL searches and parser lines, want the page's 11", sentinelDoc, len(queries))
	}
	return queries
}

// checkSentinelDoc: the mapping table of docs/siem-sentinel.md lists
// every field the parser returns and no other, and its CEF key table
// every key a record may carry.
func checkSentinelDoc(t *testing.T, out map[string]string) {
	t.Helper()
	b, err := os.ReadFile(sentinelDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	documented := docTableKeys(t, sentinelDoc, doc, "## The parser's mapping")
	returned := map[string]bool{}
	for c := range out {
		returned[c] = true
	}
	if fmt.Sprint(sortedKeys(documented)) != fmt.Sprint(sortedKeys(returned)) {
		t.Errorf("%s's mapping table lists %v;\nthe parser returns %v", sentinelDoc, sortedKeys(documented), sortedKeys(returned))
	}
	keys := docTableKeys(t, sentinelDoc, doc, "## The CEF record")
	want := map[string]bool{}
	for _, k := range cefStandardKeys {
		want[k] = true
	}
	for k := range cefLabels {
		want[k] = true
	}
	for _, h := range []string{"Device Vendor", "Device Product", "Device Version", "Signature ID", "Name", "Severity"} {
		want[h] = true
	}
	if fmt.Sprint(sortedKeys(keys)) != fmt.Sprint(sortedKeys(want)) {
		t.Errorf("%s's CEF table lists %v;\nthe records carry %v", sentinelDoc, sortedKeys(keys), sortedKeys(want))
	}
}

// docTableKeys returns the backquoted words of the first cells of the
// first table after heading in doc (the file path).
func docTableKeys(t *testing.T, path, doc, heading string) map[string]bool {
	t.Helper()
	keys := map[string]bool{}
	for _, row := range docTable(t, path, doc, heading) {
		for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(row[0], -1) {
			keys[m[1]] = true
		}
	}
	return keys
}

// docTable returns the cells of the rows of the first table after
// heading, the header and separator rows left out.
func docTable(t *testing.T, path, doc, heading string) [][]string {
	t.Helper()
	i := strings.Index(doc, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("%s has no %q section", path, heading)
	}
	var rows [][]string
	inTable := false
	for _, line := range strings.Split(doc[i+len(heading)+2:], "\n") {
		if strings.HasPrefix(line, "#") {
			break
		}
		if !strings.HasPrefix(line, "|") {
			if inTable {
				break
			}
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for j := range cells {
			cells[j] = strings.TrimSpace(cells[j])
		}
		if inTable && !strings.HasPrefix(cells[0], "---") {
			rows = append(rows, cells)
		}
		inTable = true
	}
	if len(rows) == 0 {
		t.Fatalf("%s: no table under %q", path, heading)
	}
	return rows
}

// armTemplate is the YAML's parser as a deployable ARM template: a
// saved function of the workspace.
func armTemplate(p *asimParserFile) ([]byte, error) {
	t := map[string]any{
		"$schema":        "https://schema.management.azure.com/schemas/2019-08-01/deploymentTemplate.json#",
		"contentVersion": "1.0.0.0",
		"parameters": map[string]any{
			"workspaceName": map[string]any{"type": "string"},
			"location":      map[string]any{"type": "string"},
		},
		"resources": []any{map[string]any{
			"type":       "Microsoft.OperationalInsights/workspaces",
			"apiVersion": "2017-03-15-preview",
			"name":       "[parameters('workspaceName')]",
			"location":   "[parameters('location')]",
			"resources": []any{map[string]any{
				"type":       "savedSearches",
				"apiVersion": "2020-08-01",
				"name":       p.ParserName,
				"dependsOn":  []string{"[concat('Microsoft.OperationalInsights/workspaces/', parameters('workspaceName'))]"},
				"properties": map[string]any{
					"etag":               "*",
					"displayName":        p.Parser.Title,
					"category":           "ASIM",
					"FunctionAlias":      p.ParserName,
					"query":              p.ParserQuery,
					"version":            1,
					"functionParameters": p.functionParameters(),
				},
			}},
		}},
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // the query's <= and >= as written
	enc.SetIndent("", "  ")
	err := enc.Encode(t)
	return b.Bytes(), err
}

// checkARM: the template holds the YAML's query and parameters.
func checkARM(t *testing.T, p *asimParserFile) {
	t.Helper()
	want, err := armTemplate(p)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(sentinelARM, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(sentinelARM)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("%s is not the parser's YAML (go test ./test/siem -run TestSIEMContent -update rewrites it): %v", sentinelARM, err)
	}
}

func sortedKeys(m map[string]bool) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	sort.Strings(k)
	return k
}
