// Package storetest opens stores on real Postgres databases for tests.
package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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

// Age makes everything of a space that garbage collection looks at (its
// entries' updated_at, its client groups' last_seen) older by d, so a test
// can collect garbage with TTLs far longer than it runs instead of waiting.
func Age(t testing.TB, pool *pgxpool.Pool, spaceID string, d time.Duration) {
	t.Helper()
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `UPDATE replica_entries SET updated_at = updated_at - $2::interval WHERE space_id = $1`, spaceID, d); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE replica_client_groups SET last_seen = last_seen - $2::interval WHERE space_id = $1`, spaceID, d); err != nil {
		t.Fatal(err)
	}
}

// Value reads key of spaceID as Postgres holds it ("" if absent or deleted).
func Value(t testing.TB, pool *pgxpool.Pool, spaceID, key string) string {
	t.Helper()
	var v *string
	err := pool.QueryRow(context.Background(), `SELECT value::text FROM replica_entries WHERE space_id = $1 AND key = $2`, spaceID, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && v == nil) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return *v
}

// LMID reads a client's last_mutation_id as Postgres holds it (0 if it has
// none).
func LMID(t testing.TB, pool *pgxpool.Pool, spaceID, clientID string) int64 {
	t.Helper()
	var n int64
	err := pool.QueryRow(context.Background(), `SELECT last_mutation_id FROM replica_clients WHERE space_id = $1 AND id = $2`, spaceID, clientID).Scan(&n)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		t.Fatal(err)
	}
	return n
}
