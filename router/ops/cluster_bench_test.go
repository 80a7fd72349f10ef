package ops_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/store"
	"github.com/spaceport-sync/spaceport/router/ops"
)

// BenchmarkMoveSpaceToCluster moves a space of N entries (100-byte values, 100 clients) back and forth between
// two Postgres clusters of its own: what a move costs, and how long the space is not served (reported as
// unserved-ms). The clusters are pglocal's throwaway ones (fsync off), so this measures the copy, not the disk.
//
//	go test -run '^$' -bench MoveSpaceToCluster -benchtime 5x ./router/ops
func BenchmarkMoveSpaceToCluster(b *testing.B) {
	for _, n := range []int{100, 10_000, 100_000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			ctx := context.Background()
			stores := map[string]*store.Store{}
			var dir *directory.Directory
			for _, name := range []string{"main", "b"} {
				pool, err := pgxpool.New(ctx, pgtest.NewCluster(b).URL("spaceport"))
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(pool.Close)
				if stores[name], err = store.Open(ctx, pool); err != nil {
					b.Fatal(err)
				}
				if name == "main" {
					if dir, err = directory.Open(ctx, pool, directory.Config{}); err != nil {
						b.Fatal(err)
					}
				}
			}
			o, err := ops.New(ops.Config{Directory: dir, OpenCluster: func(_ context.Context, name string) (*store.Store, error) {
				return stores[name], nil
			}})
			if err != nil {
				b.Fatal(err)
			}
			if err := dir.RegisterMachine(ctx, directory.Machine{ID: "m1", App: app}); err != nil {
				b.Fatal(err)
			}
			if _, err := dir.CreateSpace(ctx, "s", app); err != nil {
				b.Fatal(err)
			}
			snap, err := stores["main"].Claim(ctx, "s", "m1")
			if err != nil {
				b.Fatal(err)
			}
			value := []byte(`"` + strings.Repeat("x", 98) + `"`)
			for from := 0; from < n; from += 1000 {
				batch := &store.Batch{Version: int64(from/1000 + 1)}
				for i := from; i < min(from+1000, n); i++ {
					batch.Entries = append(batch.Entries, store.Entry{Key: fmt.Sprintf("todo/%08d", i), Value: value})
				}
				for c := range 100 {
					batch.Groups = append(batch.Groups, store.Group{ID: fmt.Sprintf("g%d", c), UserID: "u"})
					batch.Clients = append(batch.Clients, store.Client{ID: fmt.Sprintf("c%d", c), GroupID: fmt.Sprintf("g%d", c), LastMutationID: batch.Version})
				}
				if err := stores["main"].Commit(ctx, "s", snap.Epoch, batch); err != nil {
					b.Fatal(err)
				}
			}
			var unserved float64
			to := []string{"b", "main"}
			b.ResetTimer()
			for i := range b.N {
				mv, err := o.MoveSpaceToCluster(ctx, "s", to[i%2])
				if err != nil {
					b.Fatal(err)
				}
				unserved += float64(mv.Unserved.Microseconds()) / 1000
			}
			b.ReportMetric(unserved/float64(b.N), "unserved-ms")
		})
	}
}
