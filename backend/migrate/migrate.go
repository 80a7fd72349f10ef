// Package migrate applies versioned schema migrations at start-up, under a
// Postgres advisory lock so that many processes starting at once apply each
// migration exactly once. Each package that owns tables (the space store, the
// directory) owns its list of migrations under its own name.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Migration is one schema step. Version numbers start at 1 and never change
// once released; a new change is a new Migration appended to the list.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// ErrFutureSchema is returned when the database holds a newer schema version
// than this binary knows, i.e. an older binary runs against a newer database.
var ErrFutureSchema = errors.New("database schema is newer than this binary")

// Up applies, in one transaction per migration, every migration of owner that
// the database has not seen yet.
func Up(ctx context.Context, pool *pgxpool.Pool, owner string, migrations []Migration) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate %s: acquire: %w", owner, err)
	}
	defer conn.Release()

	// A session lock: held across the per-migration transactions, released
	// by the deferred unlock (or by the session ending if we crash). One
	// key for every owner: they share schema_migrations, whose creation
	// would race between owners migrating at once (a fresh database with a
	// router and backends starting together). Migrations run only at start,
	// so serialising them costs nothing.
	key := lockKey
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", key); err != nil {
		return fmt.Errorf("migrate %s: lock: %w", owner, err)
	}
	defer func() { _, _ = conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", key) }()

	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		owner text NOT NULL,
		version int NOT NULL,
		name text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (owner, version))`); err != nil {
		return fmt.Errorf("migrate %s: create schema_migrations: %w", owner, err)
	}
	var current int
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_migrations WHERE owner = $1", owner).Scan(&current); err != nil {
		return fmt.Errorf("migrate %s: read version: %w", owner, err)
	}
	latest := 0
	for i, m := range migrations {
		if m.Version != i+1 {
			return fmt.Errorf("migrate %s: migration %q has version %d, want %d", owner, m.Name, m.Version, i+1)
		}
		latest = m.Version
	}
	if current > latest {
		return fmt.Errorf("migrate %s: database at version %d, binary knows %d: %w", owner, current, latest, ErrFutureSchema)
	}
	for _, m := range migrations[current:] {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (owner, version, name) VALUES ($1, $2, $3)", owner, m.Version, m.Name)
			return err
		})
		if err != nil {
			return fmt.Errorf("migrate %s: apply %d (%s): %w", owner, m.Version, m.Name, err)
		}
	}
	return nil
}

// lockKey is the advisory lock of all migrations.
var lockKey = func() int64 {
	h := fnv.New64a()
	h.Write([]byte("spaceport-migrate"))
	return int64(h.Sum64())
}()
