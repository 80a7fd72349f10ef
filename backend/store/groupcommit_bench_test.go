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
	for _, spaces := range []int{1, 10, 100, 500, 2000} {
		for _, group := range []int{1, DefaultMaxGroupSpaces} {
			b.Run(fmt.Sprintf("spaces=%d/group=%d", spaces, group), func(b *testing.B) {
				benchCommit(b, spaces, Config{MaxGroupSpaces: group})
			})
		}
	}
}

// BenchmarkCommitClusters is BenchmarkCommit's 500 spaces spread over one or
// two Postgres clusters (space i on cluster i mod n): what a second cluster
// adds to the fleet's ceiling, with every space committing alone (the
// fsync-bound case) and with group commit. It needs
// SPACEPORT_BENCH_DATABASE_URL and SPACEPORT_BENCH_DATABASE_URL2 (two
// clusters; make bench starts them) and is skipped otherwise.
func BenchmarkCommitClusters(b *testing.B) {
	url1, url2 := os.Getenv("SPACEPORT_BENCH_DATABASE_URL"), os.Getenv("SPACEPORT_BENCH_DATABASE_URL2")
	if url1 == "" || url2 == "" {
		b.Skip("SPACEPORT_BENCH_DATABASE_URL and SPACEPORT_BENCH_DATABASE_URL2 name two clusters")
	}
	for _, urls := range [][]string{{url1}, {url1, url2}} {
		for _, group := range []int{1, DefaultMaxGroupSpaces} {
			b.Run(fmt.Sprintf("clusters=%d/group=%d", len(urls), group), func(b *testing.B) {
				benchCommitOn(b, urls, 500, Config{MaxGroupSpaces: group})
			})
		}
	}
}

func benchCommit(b *testing.B, spaces int, cfg Config) {
	url := os.Getenv("SPACEPORT_BENCH_DATABASE_URL")
	if url == "" {
		url = pgtest.NewDatabase(b)
	}
	benchCommitOn(b, []string{url}, spaces, cfg)
}

// benchCommitOn commits from spaces goroutines, space i on urls[i mod n].
func benchCommitOn(b *testing.B, urls []string, spaces int, cfg Config) {
	ctx := context.Background()
	stores := make([]*Store, len(urls))
	for i, url := range urls {
		pool, err := pgxpool.New(ctx, url)
		if err != nil {
			b.Fatal(err)
		}
		defer pool.Close()
		if stores[i], err = OpenConfig(ctx, pool, cfg); err != nil {
			b.Fatal(err)
		}
	}
	prefix := fmt.Sprintf("bench-%s-", b.Name())
	epochs := make([]int64, spaces)
	versions := make([]int64, spaces)
	for i := range spaces {
		snap, err := stores[i%len(stores)].Claim(ctx, fmt.Sprint(prefix, i), "bench")
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
			id, st := fmt.Sprint(prefix, i), stores[i%len(stores)]
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
