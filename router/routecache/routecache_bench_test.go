package routecache

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkLookupHit measures a replay decision's cache hit, from all
// GOMAXPROCS goroutines at once as the router serves it.
func BenchmarkLookupHit(b *testing.B) {
	f := &fakeDirectory{spaces: map[string]string{}}
	const keys = 1024
	ids := make([]string, keys)
	for i := range ids {
		ids[i] = fmt.Sprintf("space-%d", i)
		f.set(ids[i], "m1")
	}
	c := New(f.lookup, Config{})
	ctx := context.Background()
	for _, id := range ids {
		if _, err := c.Lookup(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := c.Lookup(ctx, ids[i%keys]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	if s := c.Stats(); s.Misses != keys {
		b.Fatalf("misses = %d, want only the %d warm-up misses", s.Misses, keys)
	}
}
