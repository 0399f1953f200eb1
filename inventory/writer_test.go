package inventory

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func cmidN(i int) string { return fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i) }

func TestWriterDropsWhenFull(t *testing.T) {
	s, _ := openTest(t, Options{})
	entered := make(chan struct{}, 10)
	release := make(chan struct{})
	s.beforeRecord = func() {
		entered <- struct{}{}
		<-release
	}
	var drops atomic.Int64
	w := NewWriter(s, 1, func() { drops.Add(1) })
	defer w.Close()

	if !w.Submit(act(cmidN(1), t0)) {
		t.Fatal("first Submit dropped")
	}
	<-entered // the drainer took it and is blocked in Record
	if !w.Submit(act(cmidN(2), t0)) {
		t.Fatal("second Submit dropped: the queue of 1 was empty")
	}
	for i := 3; i <= 5; i++ {
		if w.Submit(act(cmidN(i), t0)) {
			t.Fatalf("Submit %d queued into a full queue", i)
		}
	}
	if got := w.Stats(); got.Dropped != 3 || got.Written != 0 {
		t.Fatalf("stats with the drainer blocked: %+v", got)
	}
	if drops.Load() != 3 {
		t.Fatalf("onDrop called %d times, want 3", drops.Load())
	}
	close(release)
	w.Close()
	if got := w.Stats(); got.Written != 2 || got.Dropped != 3 || got.Failed != 0 {
		t.Fatalf("stats after Close: %+v", got)
	}
	if n, _ := s.Count(context.Background()); n != 2 {
		t.Fatalf("%d rows, want 2", n)
	}
}

func TestWriterCloseFlushes(t *testing.T) {
	s, _ := openTest(t, Options{})
	before := runtime.NumGoroutine() // with database/sql's own
	const n = 3000
	release := make(chan struct{})
	var once sync.Once
	s.beforeRecord = func() { once.Do(func() { <-release }) }
	w := NewWriter(s, n, nil)
	for i := range n {
		if !w.Submit(act(cmidN(i), t0.Add(time.Duration(i)*time.Millisecond))) {
			t.Fatalf("Submit %d dropped", i)
		}
	}
	close(release)
	w.Close()
	w.Close() // idempotent
	if got := w.Stats(); got.Written != n || got.Dropped != 0 || got.Failed != 0 {
		t.Fatalf("stats after Close: %+v", got)
	}
	if c, _ := s.Count(context.Background()); c != n {
		t.Fatalf("%d rows after Close, want %d", c, n)
	}
	if w.Submit(act(cmidN(n), t0)) {
		t.Fatal("Submit after Close queued")
	}
	if got := w.Stats(); got.Dropped != 1 {
		t.Fatalf("Submit after Close not counted as dropped: %+v", got)
	}
	// The drainer and its ticker are gone.
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > before {
		t.Errorf("%d goroutines after Close, %d before", g, before)
	}
}

func TestWriterConcurrentSubmitAndClose(t *testing.T) {
	s, _ := openTest(t, Options{})
	w := NewWriter(s, 64, nil)
	var queued atomic.Uint64
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				if w.Submit(act(cmidN(g*1000+i), t0)) {
					queued.Add(1)
				}
			}
		}()
	}
	time.Sleep(time.Millisecond)
	w.Close()
	wg.Wait()
	st := w.Stats()
	if st.Written != queued.Load() || st.Written+st.Dropped != 2000 || st.Failed != 0 {
		t.Fatalf("stats %+v, queued %d: every activation is written or dropped, none lost", st, queued.Load())
	}
	if c, _ := s.Count(context.Background()); uint64(c) != st.Written {
		t.Fatalf("%d rows, %d written", c, st.Written)
	}
}

func TestWriterReportsErrors(t *testing.T) {
	s, _ := openTest(t, Options{})
	w := NewWriter(s, 16, nil)
	errs := make(chan error, 16)
	w.SetOnError(func(err error) { errs <- err })
	s.Close() // every write fails from now on
	w.Submit(act(cmidN(1), t0))
	w.Submit(act(cmidN(2), t0))
	w.Close()
	st := w.Stats()
	if st.Failed != 2 || st.Written != 0 {
		t.Fatalf("stats %+v, want 2 failed", st)
	}
	select {
	case err := <-errs:
		t.Logf("reported: %v", err)
	default:
		t.Fatal("OnError not called")
	}
}

func TestWriterPrunesAtStart(t *testing.T) {
	now := t0.Add(400 * 24 * time.Hour)
	s, _ := openTest(t, Options{Retention: 24 * time.Hour, Now: func() time.Time { return now }})
	record(t, s, act(cmidN(1), t0), act(cmidN(2), now))
	w := NewWriter(s, 4, nil)
	w.Close()
	if st := w.Stats(); st.Pruned != 1 {
		t.Fatalf("stats %+v, want 1 pruned at start", st)
	}
	if c, _ := s.Count(context.Background()); c != 1 {
		t.Fatalf("%d rows, want 1", c)
	}
}

func TestWriterPrunesHourly(t *testing.T) {
	defer func(d time.Duration) { pruneEvery = d }(pruneEvery)
	pruneEvery = 5 * time.Millisecond
	var now atomic.Int64
	now.Store(t0.UnixNano())
	s, _ := openTest(t, Options{Retention: time.Hour, Now: func() time.Time { return time.Unix(0, now.Load()) }})
	record(t, s, act(cmidN(1), t0))
	w := NewWriter(s, 4, nil)
	defer w.Close()
	if c, _ := s.Count(context.Background()); c != 1 {
		t.Fatalf("%d rows before the clock moved", c)
	}
	now.Store(t0.Add(2 * time.Hour).UnixNano())
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := s.Count(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if c == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the row past its retention was not pruned by the periodic prune")
		}
		time.Sleep(5 * time.Millisecond)
	}
	w.Close()
	if st := w.Stats(); st.Pruned != 1 {
		t.Errorf("stats %+v, want 1 pruned", st)
	}
}
