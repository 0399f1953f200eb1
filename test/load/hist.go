package load

import (
	"math/bits"
	"time"
)

// histBuckets covers 0 .. 2^63 ns: 64 exact buckets, then 64 per power of
// two (about 1.6% relative error).
const histBuckets = 64 + 57*64 + 64

// Hist is a fixed-size log-linear latency histogram: recording never
// allocates, and per-worker histograms merge exactly.
type Hist struct {
	counts [histBuckets]uint64
	n      uint64
	max    int64
	sum    int64
}

func histIndex(v int64) int {
	if v < 64 {
		if v < 0 {
			return 0
		}
		return int(v)
	}
	e := bits.Len64(uint64(v)) - 7
	m := uint64(v) >> uint(e) // 64..127
	return 64 + e*64 + int(m-64)
}

func histValue(i int) int64 {
	if i < 64 {
		return int64(i)
	}
	e := (i - 64) / 64
	m := int64(64 + (i-64)%64)
	lo := m << uint(e)
	return lo + (int64(1)<<uint(e))/2 // middle of the bucket
}

// Record adds one observation.
func (h *Hist) Record(d time.Duration) {
	v := int64(d)
	h.counts[histIndex(v)]++
	h.n++
	h.sum += v
	if v > h.max {
		h.max = v
	}
}

// Merge adds o's observations to h.
func (h *Hist) Merge(o *Hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// Count is the number of observations.
func (h *Hist) Count() uint64 { return h.n }

// Max is the largest observation, exact.
func (h *Hist) Max() time.Duration { return time.Duration(h.max) }

// Mean is the average observation.
func (h *Hist) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / int64(h.n))
}

// Quantile returns the q-quantile (0 < q <= 1), within a bucket's width.
func (h *Hist) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(histValue(i), h.max))
		}
	}
	return time.Duration(h.max)
}
