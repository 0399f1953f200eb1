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
