package corpus

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsproxy/kmsproxy/rpcparse"
)

var update = flag.Bool("update", false, "rewrite "+FileName)

// TestCorpus checks that the generator covers what the differential needs
// and that the committed copy is what it produces.
func TestCorpus(t *testing.T) {
	var buf bytes.Buffer
	st, err := Write(&buf, CaptureDir())
	if err != nil {
		t.Fatal(err)
	}
	if st.PDUs < 200 {
		t.Fatalf("only %d PDUs", st.PDUs)
	}
	for _, pt := range []rpcparse.PType{
		rpcparse.PTypeRequest, rpcparse.PTypeResponse, rpcparse.PTypeFault, rpcparse.PTypeBind, rpcparse.PTypeBindAck,
		rpcparse.PTypeBindNak, rpcparse.PTypeAlterContext, rpcparse.PTypeAlterContextResp, rpcparse.PTypeAuth3,
		rpcparse.PTypeShutdown, rpcparse.PTypeCoCancel, rpcparse.PTypeOrphaned,
	} {
		if st.ByType[pt] == 0 {
			t.Errorf("no %v in the corpus", pt)
		}
	}
	var again bytes.Buffer
	if _, err := Write(&again, CaptureDir()); err != nil || !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Fatalf("generator is not deterministic (%v)", err)
	}
	path := filepath.Join(Dir(), FileName)
	if *update {
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	committed, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./test/corpus -update)", err)
	}
	if !bytes.Equal(committed, buf.Bytes()) {
		t.Fatalf("%s is stale: run go test ./test/corpus -update", FileName)
	}
	t.Logf("%d PDUs in %d connections", st.PDUs, st.Conns)
}
