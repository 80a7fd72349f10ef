package loadgen

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestHistogramQuantiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h, a, b Histogram
	var vals []int64
	for i := range 100_000 {
		// Latencies from 1µs to about 1s, log-uniform.
		v := int64(math.Exp(rng.Float64()*math.Log(1e9/1e3)) * 1e3)
		vals = append(vals, v)
		h.Record(v)
		if i%2 == 0 {
			a.Record(v)
		} else {
			b.Record(v)
		}
	}
	a.Merge(&b)
	slices.Sort(vals)
	for _, q := range []float64{0.01, 0.5, 0.9, 0.99, 0.999} {
		exact := float64(vals[int(math.Ceil(q*float64(len(vals))))-1])
		for name, hh := range map[string]*Histogram{"single": &h, "merged": &a} {
			got := hh.Quantile(q)
			if rel := math.Abs(got-exact) / exact; rel > 1.0/64 {
				t.Errorf("%s q%.3f = %.0f, exact %.0f (off by %.2f%%)", name, q, got, exact, rel*100)
			}
		}
	}
	if h.Quantile(1) != float64(vals[len(vals)-1]) || h.Count() != uint64(len(vals)) {
		t.Errorf("max %v count %d", h.Quantile(1), h.Count())
	}
	// Small values are exact.
	var s Histogram
	for v := range int64(100) {
		s.Record(v)
	}
	if got := s.Quantile(0.5); got != 49 {
		t.Errorf("median of 0..99 = %v", got)
	}
	st := s.Stats(1)
	if st.Min != 0 || st.Max != 99 || st.Mean != 49.5 || st.Count != 100 {
		t.Errorf("stats %+v", st)
	}
}
