package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// captureDir holds the real KMS captures, in the repository (see its README.md).
const captureDir = "../../testdata/kms"

// decodeCLI runs `kmsproxy decode args...` and returns each output line as a map.
func decodeCLI(t *testing.T, args ...string) ([]map[string]any, error) {
	t.Helper()
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"decode"}, args...))
	err := root.Execute()
	var objs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if line == "" || err != nil {
			continue
		}
		var m map[string]any
		if jerr := json.Unmarshal([]byte(line), &m); jerr != nil {
			t.Fatalf("not one JSON object per line: %q: %v", line, jerr)
		}
		objs = append(objs, m)
	}
	return objs, err
}

// pduView drops where a PDU was found, keeping what it is.
func pduView(m map[string]any) map[string]any {
	v := map[string]any{}
	for k, x := range m {
		switch k {
		case "stream", "frame", "line", "time", "src", "dst", "offset", "kms": // kms: a lone .s2c file has no requests to pair replies with
			continue
		}
		v[k] = x
	}
	return v
}

// TestDecodeCaptures decodes every capture file and checks that each
// pcap and its hex files give the same PDU sequence in each direction.
func TestDecodeCaptures(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(captureDir, "*"))
	decoded := 0
	for _, f := range files {
		if !strings.HasSuffix(f, ".pcap") {
			continue
		}
		name := strings.TrimSuffix(f, ".pcap")
		pcapObjs, err := decodeCLI(t, f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, dir := range []string{"c2s", "s2c"} {
			hexObjs, err := decodeCLI(t, name+"."+dir+".hex")
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			var fromPcap []map[string]any
			for _, o := range pcapObjs {
				if o["direction"] == dir {
					fromPcap = append(fromPcap, pduView(o))
				}
			}
			var fromHex []map[string]any
			for _, o := range hexObjs {
				if o["direction"] != dir {
					t.Fatalf("%s.%s.hex: record labelled %v", name, dir, o["direction"])
				}
				fromHex = append(fromHex, pduView(o))
			}
			if len(fromHex) < 3 || !reflect.DeepEqual(fromPcap, fromHex) {
				t.Fatalf("%s %s: pcap and hex disagree\npcap %v\nhex  %v", filepath.Base(name), dir, fromPcap, fromHex)
			}
			decoded += len(fromHex)
		}
		for _, o := range pcapObjs {
			if _, bad := o["error"]; bad {
				t.Fatalf("%s: error record %v", f, o)
			}
			for _, k := range []string{"ptype", "ptype_num", "call_id", "flags", "drep", "byte_order", "frag_length", "auth_length", "src", "dst", "stream"} {
				if _, ok := o[k]; !ok {
					t.Fatalf("%s: no %s in %v", f, k, o)
				}
			}
		}
	}
	if decoded == 0 {
		t.Fatalf("no captures under %s", captureDir)
	}
}

func TestDecodeKMSBindFields(t *testing.T) {
	objs, err := decodeCLI(t, filepath.Join(captureDir, "win10-v6.pcap"), "--port", "21688")
	if err != nil || len(objs) != 6 {
		t.Fatalf("%d objects, %v", len(objs), err)
	}
	js, _ := json.Marshal(objs[0])
	for _, want := range []string{`"ptype":"bind"`, `"frag_length":160`, `"call_id":2`, `"flags":"0x13"`, `"name":"kms"`, `"kind":"ndr64"`, `"features":"0x3"`, `"direction":"c2s"`} {
		if !bytes.Contains(js, []byte(want)) {
			t.Errorf("bind lacks %s: %s", want, js)
		}
	}
	if objs, _ := decodeCLI(t, filepath.Join(captureDir, "win10-v6.pcap"), "--port", "1688"); len(objs) != 0 {
		t.Fatalf("--port 1688 kept %d PDUs", len(objs))
	}
}

func TestDecodeUnreadable(t *testing.T) {
	garbage := filepath.Join(t.TempDir(), "garbage.bin")
	if err := os.WriteFile(garbage, []byte{0xde, 0xad, 0xbe, 0xef, 0, 1}, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{filepath.Join(t.TempDir(), "nope.pcap"), garbage} {
		_, err := decodeCLI(t, path)
		if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), path) {
			t.Fatalf("%s: err %v (code %d)", path, err, exitCode(err))
		}
	}
	if _, err := decodeCLI(t); err == nil {
		t.Fatal("decode without a file accepted")
	}
}

// expectedValues returns every value printed for label in an expected.txt.
func expectedValues(t *testing.T, path, label string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == label {
			out = append(out, strings.Fields(strings.TrimSpace(v))[0])
		}
	}
	return out
}

// TestDecodeKMSFields: decode shows, for every activation call in every
// capture, the request and reply fields the client itself printed.
func TestDecodeKMSFields(t *testing.T) {
	pcaps, _ := filepath.Glob(filepath.Join(captureDir, "*.pcap"))
	if len(pcaps) == 0 {
		t.Fatal("no captures")
	}
	for _, f := range pcaps {
		name := strings.TrimSuffix(f, ".pcap")
		expected := name + ".expected.txt"
		objs, err := decodeCLI(t, f)
		if err != nil {
			t.Fatal(err)
		}
		var reqs, resps []map[string]any
		for _, o := range objs {
			k, ok := o["kms"].(map[string]any)
			if !ok {
				continue
			}
			if o["ptype"] == "request" {
				reqs = append(reqs, k)
			} else {
				resps = append(resps, k)
			}
		}
		cmids := expectedValues(t, expected, "Client machine ID")
		if len(reqs) == 0 || len(reqs) != len(resps) {
			t.Fatalf("%s: %d KMS requests, %d replies", filepath.Base(f), len(reqs), len(resps))
		}
		for i, r := range reqs {
			if !slicesContains(cmids, r["client_machine_id"]) {
				t.Errorf("%s: request %d CMID %v not in %v", filepath.Base(f), i, r["client_machine_id"], cmids)
			}
			if ws := expectedValues(t, expected, "Workstation name"); len(ws) == 0 || r["workstation"] != ws[0] {
				t.Errorf("%s: workstation %v, want %v", filepath.Base(f), r["workstation"], ws)
			}
		}
		epids := expectedValues(t, expected, "KMS host extended PID")
		counts := expectedValues(t, expected, "KMS host current active clients")
		for i, r := range resps {
			if len(epids) == 0 { // the refusal capture: no reply body, only the HRESULT
				if s, _ := r["status"].(string); !strings.HasPrefix(s, "0xc004f042") {
					t.Errorf("%s: status %v, want 0xc004f042", filepath.Base(f), r["status"])
				}
				continue
			}
			if r["epid"] != epids[i] || r["current_count"] != mustFloat(counts[i]) || r["reply_verified"] != true {
				t.Errorf("%s: reply %d = %v, want epid %s count %s verified", filepath.Base(f), i, r, epids[i], counts[i])
			}
		}
	}
}

func slicesContains(ss []string, v any) bool {
	for _, s := range ss {
		if s == v {
			return true
		}
	}
	return false
}

func mustFloat(s string) float64 {
	var f float64
	_, err := fmt.Sscan(s, &f)
	if err != nil {
		panic(err)
	}
	return f
}
