package config

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// WatchDebounce is how long Watch waits for a burst of file events (an
// editor's write-rename-chmod, a ConfigMap's symlink swap) to settle.
const WatchDebounce = 200 * time.Millisecond

// Watch calls onChange, at most once per settled burst, whenever the file at
// path may have changed, until ctx ends. It watches the file's directory, not
// the file, so rename-replace saves and Kubernetes ConfigMap symlink swaps
// (..data flips) are seen. It does not load anything: the caller reloads,
// validates and keeps the old config on failure.
func Watch(ctx context.Context, path string, onChange func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("config: watch: %w", err)
	}
	defer w.Close()
	dir := filepath.Dir(path)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("config: watch %s: %w", dir, err)
	}
	target := filepath.Clean(path)
	real, _ := filepath.EvalSymlinks(target)

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if relevant(ev, target, real) {
				timer.Reset(WatchDebounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// An overflowed event queue may have hidden a change: reload anyway.
			_ = err
			timer.Reset(WatchDebounce)
		case <-timer.C:
			if r, err := filepath.EvalSymlinks(target); err == nil {
				real = r
			}
			onChange()
		}
	}
}

// relevant reports whether ev may have changed what path reads: the file
// itself, the file a symlink pointed at, or a ConfigMap's ..data link.
func relevant(ev fsnotify.Event, target, real string) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	name := filepath.Clean(ev.Name)
	switch {
	case name == target, real != "" && name == real:
		return true
	case filepath.Base(name) == "..data":
		return true
	}
	return false
}
