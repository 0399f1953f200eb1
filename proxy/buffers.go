package proxy

import "sync"

// Fragment buffers are pooled: a connection holds one per direction only
// while it is being served, so short activations do not each allocate and
// free 12 KiB.
var fragPool sync.Pool

func getBuffer(size int) *[]byte {
	if b, ok := fragPool.Get().(*[]byte); ok && cap(*b) >= size {
		*b = (*b)[:size]
		return b
	}
	b := make([]byte, size)
	return &b
}

func putBuffer(b *[]byte) { fragPool.Put(b) }

// Call buffers hold the fragments of a multi-fragment request while it is
// assembled. They come from a pool and go back the moment the call is
// forwarded or dropped, so a quiet connection keeps none (a connection that
// once assembled a 64 KiB call would otherwise keep 128 KiB).
var callPool sync.Pool

func getCallBuffer() *[]byte {
	if b, ok := callPool.Get().(*[]byte); ok {
		*b = (*b)[:0]
		return b
	}
	b := make([]byte, 0, 4096)
	return &b
}

func putCallBuffer(b *[]byte) {
	if b != nil {
		callPool.Put(b)
	}
}
