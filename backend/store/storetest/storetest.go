// Package storetest opens stores on real Postgres databases for tests.
package storetest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/store"
)

// Open opens a store on the database at url (pgtest.NewDatabase) with a pool
// of its own, closed when the test ends, and returns both: the pool is for
// the checks that read Postgres directly.
func Open(t testing.TB, url string) (*store.Store, *pgxpool.Pool) {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	st, err := store.Open(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	return st, pool
}
