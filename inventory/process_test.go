package inventory

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The tests below re-run the test binary as a child process: TestMain
// runs the child's part when childEnv names one.
const (
	childEnv  = "KMSPROXY_INVENTORY_CHILD"
	childPath = "KMSPROXY_INVENTORY_PATH"
)

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		code := m.Run()
		cleanupBench()
		os.Exit(code)
	case "crash-writer":
		crashWriter(os.Getenv(childPath))
	case "reader":
		reader(os.Getenv(childPath))
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", childEnv, os.Getenv(childEnv))
		os.Exit(2)
	}
}

// crashWriter records batches of new rows until it is killed, printing
// the number of rows committed after each commit.
func crashWriter(path string) {
	s, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	const batch = 200
	base := time.Now()
	for i := 0; ; i++ {
		acts := make([]Activation, batch)
		for j := range acts {
			n := i*batch + j
			acts[j] = act(cmidN(n), base.Add(time.Duration(n)*time.Millisecond))
			acts[j].Workstation = fmt.Sprintf("CRASH-%07d", n)
		}
		if err := s.Record(context.Background(), acts); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("committed %d\n", (i+1)*batch)
	}
}

// reader opens the file read-only while the parent writes, and prints the
// row count it sees a few times.
func reader(path string) {
	s, err := OpenReadOnly(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer s.Close()
	for range 20 {
		n, err := s.Count(context.Background())
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if _, err := s.Query(context.Background(), Filter{Search: "WS-", Limit: 5}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("count %d\n", n)
		time.Sleep(5 * time.Millisecond)
	}
	os.Exit(0)
}

func child(t *testing.T, mode, path string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, childPath+"="+path)
	return cmd
}

// TestCrashKill9: a writer SIGKILLed in the middle of a burst of commits
// leaves a sound file holding at least every row it had reported
// committed.
func TestCrashKill9(t *testing.T) {
	for round := range 3 {
		t.Run(strconv.Itoa(round), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "inventory.db")
			cmd := child(t, "crash-writer", path)
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Kill at a different depth into the burst each round.
			killAfter := 10 + round*17
			sc := bufio.NewScanner(stdout)
			committed, lines := 0, 0
			for sc.Scan() {
				n, ok := parseCommitted(sc.Text())
				if !ok {
					t.Fatalf("child said %q", sc.Text())
				}
				committed = max(committed, n)
				if lines++; lines == killAfter {
					if err := cmd.Process.Kill(); err != nil { // SIGKILL
						t.Fatal(err)
					}
				}
			}
			// Lines the child wrote before it died count too: they were
			// printed after their commit returned.
			err = cmd.Wait()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Exited() {
				t.Fatalf("child was not killed: %v\n%s", err, stderr.String())
			}
			if lines < killAfter {
				t.Fatalf("child stopped after %d commits by itself\n%s", lines, stderr.String())
			}

			s, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if ic, err := s.IntegrityCheck(context.Background()); err != nil || ic != "ok" {
				t.Fatalf("integrity_check = %q, %v", ic, err)
			}
			n, err := s.Count(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if n < committed {
				t.Fatalf("%d rows after the kill, the child had committed %d", n, committed)
			}
			if n%200 != 0 {
				t.Fatalf("%d rows: a torn transaction", n)
			}
			t.Logf("killed after %d reported commits: %d rows reported, %d in the file", lines, committed, n)
		})
	}
}

func parseCommitted(line string) (int, bool) {
	s, ok := strings.CutPrefix(line, "committed ")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// TestReadOnlyChildProcess: another process reads the file while this
// one holds it open and writes.
func TestReadOnlyChildProcess(t *testing.T) {
	s, path := openTest(t, Options{})
	record(t, s, act(cmidN(0), t0))
	w := NewWriter(s, 4096, nil)
	defer w.Close()

	cmd := child(t, "reader", path)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	written := make(chan struct{})
	go func() {
		defer close(written)
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			w.Submit(act(cmidN(i), t0.Add(time.Duration(i)*time.Second)))
			if i%32 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	out, _ := io.ReadAll(stdout)
	err = cmd.Wait()
	close(stop)
	<-written
	if err != nil {
		t.Fatalf("reader process: %v\n%s", err, stderr.String())
	}
	var counts []int
	for _, l := range strings.Fields(strings.ReplaceAll(string(out), "count ", "")) {
		n, err := strconv.Atoi(l)
		if err != nil {
			t.Fatalf("reader said %q", out)
		}
		counts = append(counts, n)
	}
	if len(counts) != 20 {
		t.Fatalf("reader printed %d counts: %q", len(counts), out)
	}
	for i := 1; i < len(counts); i++ {
		if counts[i] < counts[i-1] {
			t.Fatalf("counts went back: %v", counts)
		}
	}
	if counts[len(counts)-1] <= counts[0] {
		t.Errorf("the reader saw no commit of the writer's: %v", counts)
	}
	w.Close()
	if st := w.Stats(); st.Failed != 0 {
		t.Errorf("writes failed beside the reader process: %+v", st)
	}
	t.Logf("reader process saw %v", counts)
}
