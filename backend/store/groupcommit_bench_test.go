package store

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
)

// BenchmarkCommit commits one-entry batches from many spaces at once, as a
// backend of many active spaces does: spaces × 1 goroutine, each committing
// its next batch as soon as the last one returned. Set
// SPACEPORT_BENCH_DATABASE_URL to a durable Postgres (make bench does) for
// figures that include the WAL flush; otherwise the test cluster (fsync off)
// is used.
func BenchmarkCommit(b *testing.B) {
	for _, spaces := range []int{1, 10, 100, 500} {
		for _, group := range []int{1, DefaultMaxGroupSpaces} {
			b.Run(fmt.Sprintf("spaces=%d/group=%d", spaces, group), func(b *testing.B) {
				benchCommit(b, spaces, Config{MaxGroupSpaces: group})
			})
		}
	}
}

func benchCommit(b *testing.B, spaces int, cfg Config) {
	ctx := context.Background()
	url := os.Getenv("SPACEPORT_BENCH_DATABASE_URL")
	if url == "" {
		url = pgtest.NewDatabase(b)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	st, err := OpenConfig(ctx, pool, cfg)
	if err != nil {
		b.Fatal(err)
	}
	prefix := fmt.Sprintf("bench-%s-", b.Name())
	epochs := make([]int64, spaces)
	versions := make([]int64, spaces)
	for i := range spaces {
		snap, err := st.Claim(ctx, fmt.Sprint(prefix, i), "bench")
		if err != nil {
			b.Fatal(err)
		}
		epochs[i], versions[i] = snap.Epoch, snap.Version
	}
	var next sync.Mutex
	n := 0
	b.ResetTimer()
	var wg sync.WaitGroup
	for i := range spaces {
		wg.Go(func() {
			id := fmt.Sprint(prefix, i)
			for {
				next.Lock()
				if n == b.N {
					next.Unlock()
					return
				}
				n++
				next.Unlock()
				versions[i]++
				v := versions[i]
				if err := st.Commit(ctx, id, epochs[i], put(v, "k", fmt.Sprint(v), "c", v)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
}
