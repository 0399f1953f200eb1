package inventory

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// maxBatch is the most activations one transaction of the Writer commits.
const maxBatch = 256

// batchLinger is how long the Writer waits for more activations after the
// first of a batch before committing it: what a crash can lose beyond the
// queue, and how late a row shows in `kmsproxy inventory`.
const batchLinger = 50 * time.Millisecond

// pruneEvery is how often the Writer applies the retention (a variable
// for tests).
var pruneEvery = time.Hour

// WriterStats count the activations a Writer handled.
type WriterStats struct {
	Written uint64 // committed to the database
	Dropped uint64 // refused by Submit: queue full, or the Writer closed
	Failed  uint64 // lost to a failed write (or skipped as invalid)
	Pruned  uint64 // rows deleted by the retention
}

// Writer puts activations into a Store off the caller's path: Submit
// queues without blocking, one goroutine commits the queue in batches.
type Writer struct {
	s      *Store
	queue  chan Activation
	onDrop func()

	onError    atomic.Pointer[func(error)]
	afterWrite atomic.Pointer[func([]Activation)]

	// mu orders Submit against Close: Submit sends under the read lock,
	// Close sets closed under the write lock, so nothing is queued after
	// the drainer's final drain has started.
	mu     sync.RWMutex
	closed bool

	quit      chan struct{}
	done      chan struct{}
	closeOnce sync.Once

	written, dropped, failed, pruned atomic.Uint64
}

// NewWriter starts a Writer on s with a queue of queue activations (at
// least 1). onDrop, if not nil, is called (on the submitting goroutine)
// for each activation Submit drops. It prunes by the store's Retention at
// start and every hour.
func NewWriter(s *Store, queue int, onDrop func()) *Writer {
	if queue < 1 {
		queue = 1
	}
	w := &Writer{
		s:      s,
		queue:  make(chan Activation, queue),
		onDrop: onDrop,
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	go w.run()
	return w
}

// SetOnError sets a function called (on the Writer's goroutine) with each
// failed write or prune; nil stops the reports. Safe at any time.
func (w *Writer) SetOnError(f func(error)) {
	if f == nil {
		w.onError.Store(nil)
		return
	}
	w.onError.Store(&f)
}

// SetAfterWrite sets a function called (on the Writer's goroutine) with
// each batch once the Writer is done with it, committed or not: the
// shared inventory rows (package state) take activations from here, so
// this file has an activation before the shared rows can bring it back.
// f must not keep the slice. nil stops the calls.
func (w *Writer) SetAfterWrite(f func([]Activation)) {
	if f == nil {
		w.afterWrite.Store(nil)
		return
	}
	w.afterWrite.Store(&f)
}

// Submit queues a for writing and reports whether it was queued. It never
// blocks: with the queue full (or the Writer closed) a is dropped, counted
// and onDrop called.
func (w *Writer) Submit(a Activation) bool {
	w.mu.RLock()
	ok := false
	if !w.closed {
		select {
		case w.queue <- a:
			ok = true
		default:
		}
	}
	w.mu.RUnlock()
	if !ok {
		w.dropped.Add(1)
		if w.onDrop != nil {
			w.onDrop()
		}
	}
	return ok
}

// Stats are the counts so far.
func (w *Writer) Stats() WriterStats {
	return WriterStats{
		Written: w.written.Load(),
		Dropped: w.dropped.Load(),
		Failed:  w.failed.Load(),
		Pruned:  w.pruned.Load(),
	}
}

// Close writes what is queued, then stops the Writer. It does not close
// the Store. Calling it again waits for the first call and returns.
func (w *Writer) Close() {
	w.closeOnce.Do(func() {
		w.mu.Lock()
		w.closed = true
		w.mu.Unlock()
		close(w.quit)
	})
	<-w.done
}

func (w *Writer) run() {
	defer close(w.done)
	tick := time.NewTicker(pruneEvery)
	defer tick.Stop()
	w.prune()
	batch := make([]Activation, 0, maxBatch)
	for {
		select {
		case a := <-w.queue:
			batch = w.gather(append(batch[:0], a))
			w.write(batch)
		case <-tick.C:
			w.prune()
		case <-w.quit:
			// Closed: nothing more can be queued; write what is.
			for {
				batch = w.fill(batch[:0])
				if len(batch) == 0 {
					return
				}
				w.write(batch)
			}
		}
	}
}

// gather adds activations to batch as they come, for at most batchLinger
// or until it holds maxBatch or the Writer closes. Under load a commit then
// carries many activations instead of one each: a transaction costs tens of
// microseconds of CPU whatever its size, taken from the same cores that
// serve clients.
func (w *Writer) gather(batch []Activation) []Activation {
	t := time.NewTimer(batchLinger)
	defer t.Stop()
	for len(batch) < maxBatch {
		select {
		case a := <-w.queue:
			batch = append(batch, a)
		case <-t.C:
			return w.fill(batch)
		case <-w.quit:
			return w.fill(batch)
		}
	}
	return batch
}

// fill adds queued activations to batch without waiting, up to maxBatch.
func (w *Writer) fill(batch []Activation) []Activation {
	for len(batch) < maxBatch {
		select {
		case a := <-w.queue:
			batch = append(batch, a)
		default:
			return batch
		}
	}
	return batch
}

func (w *Writer) write(batch []Activation) {
	n, err := w.s.record(context.Background(), batch)
	w.written.Add(uint64(n))
	if lost := len(batch) - n; lost > 0 {
		w.failed.Add(uint64(lost))
	}
	if err != nil {
		w.report(err)
	}
	if f := w.afterWrite.Load(); f != nil {
		(*f)(batch)
	}
	// Let the activations' strings go before the next batch reuses the
	// array.
	clear(batch)
}

func (w *Writer) prune() {
	n, err := w.s.Prune(context.Background(), w.s.opts.Now())
	w.pruned.Add(uint64(n))
	if err != nil {
		w.report(err)
	}
}

func (w *Writer) report(err error) {
	if f := w.onError.Load(); f != nil {
		(*f)(err)
	}
}
