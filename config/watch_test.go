package config

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// startWatch runs Watch on path and returns a counter of onChange calls.
func startWatch(t *testing.T, path string) *atomic.Int32 {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var n atomic.Int32
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, path, func() { n.Add(1) }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch: %v", err)
			}
		case <-time.After(2 * time.Second):
			t.Error("Watch did not return after cancel")
		}
	})
	time.Sleep(50 * time.Millisecond) // let the watcher register
	return &n
}

func waitCalls(t *testing.T, n *atomic.Int32, want int32) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for n.Load() < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(3 * WatchDebounce) // and no extra call after settling
	if got := n.Load(); got != want {
		t.Fatalf("onChange called %d times, want %d", got, want)
	}
}

func TestWatchWriteInPlaceDebounced(t *testing.T) {
	path := write(t, minimal)
	n := startWatch(t, path)
	for i := range 5 { // a burst of writes is one change
		if err := os.WriteFile(path, []byte(minimal+"# edit "+string(rune('a'+i))+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitCalls(t, n, 1)
}

func TestWatchRenameReplace(t *testing.T) {
	path := write(t, minimal)
	n := startWatch(t, path)
	tmp := path + ".swp"
	if err := os.WriteFile(tmp, []byte(minimal+"# new\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	waitCalls(t, n, 1)
	// Unrelated files in the directory do not count.
	if err := os.WriteFile(filepath.Join(filepath.Dir(path), "other.txt"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitCalls(t, n, 1)
}

// TestWatchConfigMapSwap mimics Kubernetes: kmsproxy.yaml -> ..data/kmsproxy.yaml,
// ..data -> ..v1, and an update atomically repoints ..data at ..v2.
func TestWatchConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	for _, v := range []string{"..v1", "..v2"} {
		if err := os.Mkdir(filepath.Join(dir, v), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, v, "kmsproxy.yaml"), []byte(minimal+"# "+v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Skipf("symlinks: %v", err)
	}
	path := filepath.Join(dir, "kmsproxy.yaml")
	if err := os.Symlink(filepath.Join("..data", "kmsproxy.yaml"), path); err != nil {
		t.Fatal(err)
	}
	mustLoad(t, path)
	n := startWatch(t, path)
	if err := os.Symlink("..v2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	waitCalls(t, n, 1)
	if cfg := mustLoad(t, path); cfg == nil {
		t.Fatal("swapped config does not load")
	}
}

func TestWatchMissingDirectory(t *testing.T) {
	err := Watch(context.Background(), filepath.Join(t.TempDir(), "no", "such.yaml"), func() {})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("watching a missing directory: %v, want fs.ErrNotExist", err)
	}
}
