package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const sharedKMS = "../../../shared/testdata/kms"

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
		case "stream", "frame", "line", "time", "src", "dst", "offset":
			continue
		}
		v[k] = x
	}
	return v
}

// TestDecodeSharedCaptures decodes every shared file and checks that each
// pcap and its hex files give the same PDU sequence in each direction.
func TestDecodeSharedCaptures(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(sharedKMS, "*"))
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
		t.Fatalf("no captures under %s", sharedKMS)
	}
}

func TestDecodeKMSBindFields(t *testing.T) {
	objs, err := decodeCLI(t, filepath.Join(sharedKMS, "win10-v6.pcap"), "--port", "21688")
	if err != nil || len(objs) != 6 {
		t.Fatalf("%d objects, %v", len(objs), err)
	}
	js, _ := json.Marshal(objs[0])
	for _, want := range []string{`"ptype":"bind"`, `"frag_length":160`, `"call_id":2`, `"flags":"0x13"`, `"name":"kms"`, `"kind":"ndr64"`, `"features":"0x3"`, `"direction":"c2s"`} {
		if !bytes.Contains(js, []byte(want)) {
			t.Errorf("bind lacks %s: %s", want, js)
		}
	}
	if objs, _ := decodeCLI(t, filepath.Join(sharedKMS, "win10-v6.pcap"), "--port", "1688"); len(objs) != 0 {
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
