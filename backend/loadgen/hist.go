package loadgen

import (
	"math"
	"math/bits"
	"time"
)

// histSubBits sets the histogram's precision: each power of two is split in
// 2^histSubBits buckets, so a reported percentile is within 1/64 (1.6%) of
// the true value. Values below 2^(histSubBits+1) are exact.
const histSubBits = 6

// Histogram counts non-negative integer samples (nanoseconds, bytes) in
// log-linear buckets: constant memory however many samples, so every
// receiver of every poke can be counted. Not safe for concurrent use; each
// goroutine keeps its own and Merge joins them.
type Histogram struct {
	counts   []uint64
	n        uint64
	sum      float64
	min, max int64
}

func bucketOf(v int64) int {
	if v < 0 {
		v = 0
	}
	u := uint64(v)
	if u < 2<<histSubBits {
		return int(u)
	}
	shift := bits.Len64(u) - histSubBits - 1
	return (2 << histSubBits) + (shift-1)<<histSubBits + int(u>>shift) - (1 << histSubBits)
}

// bucketMid is the middle of bucket i's range, the value a percentile in it
// reports.
func bucketMid(i int) float64 {
	if i < 2<<histSubBits {
		return float64(i)
	}
	j := i - (2 << histSubBits)
	shift := j>>histSubBits + 1
	lo := uint64(j&(1<<histSubBits-1)+(1<<histSubBits)) << shift
	return float64(lo) + float64(uint64(1)<<shift)/2
}

// Record adds one sample.
func (h *Histogram) Record(v int64) {
	i := bucketOf(v)
	if i >= len(h.counts) {
		h.counts = append(h.counts, make([]uint64, i+1-len(h.counts))...)
	}
	h.counts[i]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if h.n == 0 || v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

// RecordDuration adds one duration sample, in nanoseconds.
func (h *Histogram) RecordDuration(d time.Duration) { h.Record(int64(d)) }

// Merge adds o's samples to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	if len(o.counts) > len(h.counts) {
		h.counts = append(h.counts, make([]uint64, len(o.counts)-len(h.counts))...)
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if h.n == 0 || o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// Count is the number of samples.
func (h *Histogram) Count() uint64 { return h.n }

// Quantile returns the value below which a fraction q of the samples fall
// (within the bucket precision; the top quantile is the exact maximum).
func (h *Histogram) Quantile(q float64) float64 {
	if h.n == 0 {
		return 0
	}
	if q >= 1 {
		return float64(h.max)
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank == 0 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return math.Min(math.Max(bucketMid(i), float64(h.min)), float64(h.max))
		}
	}
	return float64(h.max)
}

// Stats summarises a histogram in the unit it was recorded in, divided by
// div (1e6 turns nanoseconds into milliseconds).
type Stats struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean"`
	Min   float64 `json:"min"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
}

// Stats returns the histogram's summary, every value divided by div.
func (h *Histogram) Stats(div float64) Stats {
	if h.n == 0 {
		return Stats{}
	}
	r := func(v float64) float64 { return round3(v / div) }
	return Stats{
		Count: h.n,
		Mean:  r(h.sum / float64(h.n)),
		Min:   r(float64(h.min)),
		P50:   r(h.Quantile(0.50)),
		P90:   r(h.Quantile(0.90)),
		P99:   r(h.Quantile(0.99)),
		P999:  r(h.Quantile(0.999)),
		Max:   r(float64(h.max)),
	}
}

// round3 keeps three significant decimals, enough for every figure we
// report and short in JSON.
func round3(v float64) float64 {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return v
	}
	mag := math.Pow(10, 3-math.Ceil(math.Log10(math.Abs(v))))
	if mag < 1 {
		return math.Round(v)
	}
	return math.Round(v*mag) / mag
}
