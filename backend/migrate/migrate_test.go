package migrate_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spaceport-sync/spaceport/backend/migrate"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestUp_ConcurrentStartsApplyOnce(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	// The second migration would fail if run twice (duplicate row on a PK).
	ms := []migrate.Migration{
		{Version: 1, Name: "create", SQL: "CREATE TABLE t (id int PRIMARY KEY)"},
		{Version: 2, Name: "seed", SQL: "INSERT INTO t VALUES (1)"},
	}
	// Two owners sharing schema_migrations start at once, as a router and
	// backends do on a fresh database.
	other := []migrate.Migration{{Version: 1, Name: "other", SQL: "CREATE TABLE o (id int)"}}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 8 {
		wg.Go(func() { errs <- migrate.Up(ctx, pool, "test", ms) })
		wg.Go(func() { errs <- migrate.Up(ctx, pool, "other", other) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 1 {
		t.Fatalf("rows = %d, %v; want 1", n, err)
	}
	// A binary that knows fewer migrations than the database refuses to run.
	if err := migrate.Up(ctx, pool, "test", ms[:1]); !errors.Is(err, migrate.ErrFutureSchema) {
		t.Fatalf("older binary: err = %v, want ErrFutureSchema", err)
	}
}
