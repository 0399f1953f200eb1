package kms_test

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kmsproxy/kmsproxy/test/captures"

	"github.com/kmsproxy/kmsproxy/rpcparse"
	"github.com/kmsproxy/kmsproxy/rpcparse/kms"
)

// captureDir holds the loopback captures, in the repository (see its README.md).
const captureDir = "../../testdata/kms"

// call is one RequestActivation exchange taken from a capture.
type call struct {
	reqStub, respStub []byte
	ndr64             bool
}

// capture is one capture's calls and the vlmcs print-out of them.
type capture struct {
	name   string
	calls  []call
	blocks []block
}

// block is one "Request Parameters" or "Response from KMS server" section of
// an expected.txt, or an "Error 0x..." line (kind "error", field "hresult").
type block struct {
	kind   string // "request", "response", "error"
	fields map[string]string
}

func readHexLines(t testing.TB, path string) [][]byte {
	t.Helper()
	out, err := captures.ReadHex(path)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// loadCaptures reads every *.c2s.hex with its .s2c.hex and .expected.txt.
func loadCaptures(t testing.TB) []capture {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(captureDir, "*.c2s.hex"))
	if err != nil || len(names) == 0 {
		t.Fatalf("no captures in %s: %v", captureDir, err)
	}
	var caps []capture
	for _, c2s := range names {
		base := strings.TrimSuffix(c2s, ".c2s.hex")
		c := capture{name: filepath.Base(base)}
		// Transfer syntax per context id, from the client's bind and alter_context.
		kinds := map[uint16]rpcparse.TransferKind{}
		var p rpcparse.PDU
		for _, frag := range readHexLines(t, c2s) {
			if err := p.Parse(frag, 0); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			switch p.Type {
			case rpcparse.PTypeBind, rpcparse.PTypeAlterContext:
				for it := p.Bind.Contexts(); it.Next(); {
					ce := it.Context()
					kinds[ce.ID] = rpcparse.ClassifyTransfer(ce.Transfer(0))
				}
			case rpcparse.PTypeRequest:
				k := kinds[p.Request.ContextID]
				if k != rpcparse.TransferNDR20 && k != rpcparse.TransferNDR64 {
					t.Fatalf("%s: request on context %d of kind %v", c.name, p.Request.ContextID, k)
				}
				c.calls = append(c.calls, call{reqStub: p.Request.Stub, ndr64: k == rpcparse.TransferNDR64})
			}
		}
		i := 0
		for _, frag := range readHexLines(t, base+".s2c.hex") {
			if err := p.Parse(frag, 0); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			if p.Type == rpcparse.PTypeResponse {
				c.calls[i].respStub = p.Response.Stub
				i++
			}
		}
		if i != len(c.calls) {
			t.Fatalf("%s: %d requests, %d responses", c.name, len(c.calls), i)
		}
		c.blocks = readExpected(t, base+".expected.txt")
		caps = append(caps, c)
	}
	return caps
}

func readExpected(t testing.TB, path string) []block {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []block
	var cur *block
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, "\r ")
		switch {
		case line == "Request Parameters":
			blocks = append(blocks, block{kind: "request", fields: map[string]string{}})
			cur = &blocks[len(blocks)-1]
		case line == "Response from KMS server":
			blocks = append(blocks, block{kind: "response", fields: map[string]string{}})
			cur = &blocks[len(blocks)-1]
		case strings.HasPrefix(line, "Error 0x"):
			hr := strings.Fields(line)[1]
			blocks = append(blocks, block{kind: "error", fields: map[string]string{"hresult": hr}})
			cur = nil
		case cur != nil && strings.Contains(line, ": "):
			k, v, _ := strings.Cut(line, ": ")
			cur.fields[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return blocks
}

// guidAndName splits "GUID (Name)" into its parts.
func guidAndName(t *testing.T, v string) (rpcparse.UUID, string) {
	t.Helper()
	g, name, _ := strings.Cut(v, " ")
	u, err := rpcparse.ParseUUID(g)
	if err != nil {
		t.Fatalf("bad GUID in %q: %v", v, err)
	}
	name = strings.TrimSuffix(strings.TrimPrefix(name, "("), ")")
	return u, name
}

// normalize folds an application label for comparison: "Office2013+" and
// our alias "office2013" agree.
func normalize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		}
	}
	return b.String()
}

func versionString(major, minor uint16) string { return fmt.Sprintf("%d.%d", major, minor) }

const timeLayout = "2006-01-02 15:04:05"

func checkRequest(t *testing.T, want map[string]string, r *kms.Request) {
	t.Helper()
	check := func(key, got string) {
		t.Helper()
		w, ok := want[key]
		if !ok {
			t.Errorf("expected.txt has no %q", key)
			return
		}
		if got != w {
			t.Errorf("%s: got %q, want %q", key, got, w)
		}
	}
	check("Protocol version", versionString(r.MajorVersion, r.MinorVersion))
	check("Client is a virtual machine", map[uint32]string{0: "No", 1: "Yes"}[r.VMInfo])
	check("Licensing status", fmt.Sprintf("%d (%s)", r.LicenseStatus, kms.LicenseStatusName(r.LicenseStatus)))
	check("Remaining time (0 = forever)", fmt.Sprintf("%d minutes", r.BindingExpiration))

	app, appName := guidAndName(t, want["Application ID"])
	if r.ApplicationID != app || normalize(kms.ApplicationName(r.ApplicationID)) != normalize(appName) {
		t.Errorf("application: got %v (%s), want %v (%s)", r.ApplicationID, kms.ApplicationName(r.ApplicationID), app, appName)
	}
	sku, skuName := guidAndName(t, want["SKU ID (aka Activation ID)"])
	if r.SKUID != sku || kms.SKUName(r.SKUID) != skuName {
		t.Errorf("SKU: got %v (%q), want %v (%q)", r.SKUID, kms.SKUName(r.SKUID), sku, skuName)
	}
	kid, kidName := guidAndName(t, want["KMS ID (aka KMS counted ID)"])
	gotKID := kms.KMSCountedIDName(r.KMSCountedID)
	if gotKID == "" {
		gotKID = "Unknown"
	}
	if r.KMSCountedID != kid || gotKID != kidName {
		t.Errorf("KMS ID: got %v (%q), want %v (%q)", r.KMSCountedID, gotKID, kid, kidName)
	}
	check("Client machine ID", r.CMID.String())
	check("Previous client machine ID", r.PreviousCMID.String())
	check("Client request timestamp (UTC)", r.Time().Format(timeLayout))
	check("Workstation name", r.Workstation())
	check("N count policy (minimum clients)", strconv.FormatUint(uint64(r.RequiredCount), 10))
}

func checkResponse(t *testing.T, want map[string]string, blob []byte, r *kms.Response) {
	t.Helper()
	check := func(key, got string) {
		t.Helper()
		w, ok := want[key]
		if !ok {
			t.Errorf("expected.txt has no %q", key)
			return
		}
		if got != w {
			t.Errorf("%s: got %q, want %q", key, got, w)
		}
	}
	check("Size of KMS Response", fmt.Sprintf("%d (%#x)", len(blob), len(blob)))
	check("Protocol version", versionString(r.MajorVersion, r.MinorVersion))
	check("KMS host extended PID", r.EPID())
	if _, ok := want["KMS host Hardware ID"]; ok || r.MajorVersion == 6 {
		check("KMS host Hardware ID", hwidString(r.HwID))
	}
	check("Client machine ID", r.CMID.String())
	check("Client request timestamp (UTC)", r.Time().Format(timeLayout))
	check("KMS host current active clients", strconv.FormatUint(uint64(r.CurrentCount), 10))
	check("Renewal interval policy", strconv.FormatUint(uint64(r.RenewalInterval), 10))
	check("Activation interval policy", strconv.FormatUint(uint64(r.ActivationInterval), 10))
}

// hwidString prints the HwID the way vlmcs does: the 8 bytes in wire
// order as upper-case hex.
func hwidString(h [8]byte) string { return strings.ToUpper(hex.EncodeToString(h[:])) }

// TestCaptures decodes every captured exchange and compares each value with
// the client's own print-out in the matching expected.txt.
func TestCaptures(t *testing.T) {
	for _, c := range loadCaptures(t) {
		t.Run(c.name, func(t *testing.T) {
			bi := 0
			next := func(kind string) map[string]string {
				t.Helper()
				if bi >= len(c.blocks) || c.blocks[bi].kind != kind {
					t.Fatalf("expected.txt block %d: want a %s block", bi, kind)
				}
				bi++
				return c.blocks[bi-1].fields
			}
			for i, cl := range c.calls {
				blob, err := kms.ParseRequestStub(cl.reqStub, kms.Encoding{NDR64: cl.ndr64})
				if err != nil {
					t.Fatalf("call %d: ParseRequestStub: %v", i, err)
				}
				var req kms.Request
				if err := kms.DecodeRequest(blob, &req); err != nil {
					t.Fatalf("call %d: DecodeRequest: %v", i, err)
				}
				checkRequest(t, next("request"), &req)

				rblob, hr, err := kms.ParseResponseStub(cl.respStub, kms.Encoding{NDR64: cl.ndr64})
				if err != nil {
					t.Fatalf("call %d: ParseResponseStub: %v", i, err)
				}
				if hr != 0 {
					want := next("error")["hresult"]
					if got := fmt.Sprintf("0x%08X", hr); got != want {
						t.Errorf("call %d: HRESULT %s, want %s", i, got, want)
					}
					if rblob != nil || kms.HRESULTName(hr) == "" {
						t.Errorf("call %d: refusal blob %x, name %q", i, rblob, kms.HRESULTName(hr))
					}
					continue
				}
				var resp kms.Response
				if err := kms.DecodeResponse(rblob, &req, &resp); err != nil {
					t.Fatalf("call %d: DecodeResponse: %v", i, err)
				}
				checkResponse(t, next("response"), rblob, &resp)
				if !resp.CMIDMatch || !resp.TimeMatch {
					t.Errorf("call %d: CMID match %v, time match %v", i, resp.CMIDMatch, resp.TimeMatch)
				}
				switch resp.MajorVersion {
				case 4:
					if !resp.MACVerified {
						t.Errorf("call %d: V4 response MAC not verified", i)
					}
				case 5:
					if !resp.DigestVerified || !resp.IVMatch {
						t.Errorf("call %d: V5 digest %v, IV %v", i, resp.DigestVerified, resp.IVMatch)
					}
				case 6:
					if !resp.HMACVerified || !resp.DigestVerified || !resp.IVMatch {
						t.Errorf("call %d: V6 HMAC %v, digest %v, IV %v", i, resp.HMACVerified, resp.DigestVerified, resp.IVMatch)
					}
				}
			}
			if bi != len(c.blocks) {
				t.Errorf("%d expected.txt blocks not matched by any call", len(c.blocks)-bi)
			}
		})
	}
}
