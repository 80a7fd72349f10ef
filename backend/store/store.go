// Package store keeps spaces in Postgres: their entries (with tombstones),
// their Replicache clients and client groups, their version, and the epoch
// that fences owners. It owns the replica_* tables and their migrations.
//
// Fencing: Claim bumps a space's epoch and returns it; every Commit is
// conditional on that epoch and locks the space row before it writes, so a
// machine that lost the space (moved, or a second machine claimed it) fails
// its next commit with ErrFenced. Two machines can never both commit to one
// space.
//
// Group commit across spaces: Commit calls of many spaces that arrive while
// another commit is in flight are written together in one Postgres statement
// (one transaction, one WAL flush), each space still fenced on its own epoch
// (groupcommit.go). A process's commit rate is then bounded by the bytes it
// writes, not by how many fsyncs Postgres can do per second.
//
// A Store is one Postgres cluster. A deployment may keep its spaces on
// several (the directory names each space's cluster); moving a space from
// one to another is Export, Import, Checksum and Delete (move.go).
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spaceport-sync/spaceport/backend/migrate"
)

// Errors.
var (
	// ErrFenced means another owner claimed the space since our Claim.
	ErrFenced = errors.New("space claimed by another owner")
	// ErrCommitUnknown means the outcome of a commit is unknown (the
	// connection failed while COMMIT was in flight): the caller must assume
	// neither outcome and reload the space.
	ErrCommitUnknown = errors.New("commit outcome unknown")
)

var migrations = []migrate.Migration{
	{Version: 1, Name: "replica tables", SQL: `
CREATE TABLE replica_spaces (
	id text PRIMARY KEY,
	version bigint NOT NULL DEFAULT 0,
	epoch bigint NOT NULL DEFAULT 0,
	owner text NOT NULL DEFAULT '',
	gc_horizon bigint NOT NULL DEFAULT 0,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE replica_entries (
	space_id text NOT NULL,
	key text COLLATE "C" NOT NULL,
	value json,
	version bigint NOT NULL,
	deleted boolean NOT NULL DEFAULT false,
	updated_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (space_id, key)
);
CREATE INDEX replica_entries_tombstones ON replica_entries (space_id, updated_at) WHERE deleted;
CREATE TABLE replica_client_groups (
	space_id text NOT NULL,
	id text NOT NULL,
	user_id text NOT NULL DEFAULT '',
	forgotten boolean NOT NULL DEFAULT false,
	last_seen timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (space_id, id)
);
CREATE TABLE replica_clients (
	space_id text NOT NULL,
	id text NOT NULL,
	client_group_id text NOT NULL,
	last_mutation_id bigint NOT NULL,
	version bigint NOT NULL,
	PRIMARY KEY (space_id, id)
);
CREATE INDEX replica_clients_group ON replica_clients (space_id, client_group_id);
`},
}

// Entry is one key of a space. A tombstone has Deleted set and no Value.
type Entry struct {
	Key     string
	Value   []byte
	Version int64
	Deleted bool
}

// Client is a Replicache client's last processed mutation.
type Client struct {
	ID             string
	GroupID        string
	LastMutationID int64
	Version        int64 // the space version that last changed LastMutationID
}

// Group is a Replicache client group.
type Group struct {
	ID        string
	UserID    string
	Forgotten bool // its clients were garbage-collected: ClientStateNotFound
}

// Snapshot is a space as Claim loaded it.
type Snapshot struct {
	Epoch   int64
	Version int64
	Horizon int64 // tombstones at or below this version may be gone
	Entries []Entry
	Clients []Client
	Groups  []Group
}

// Batch is what one group commit writes: everything at Version.
type Batch struct {
	Version int64
	Entries []Entry // each key at most once
	Clients []Client
	Groups  []Group // groups seen in this batch: created, or last_seen refreshed
}

// Store is the Postgres persistence of spaces.
type Store struct {
	pool  *pgxpool.Pool
	cfg   Config
	group committer
}

// Open runs the store's migrations and returns the store with the default
// Config.
func Open(ctx context.Context, pool *pgxpool.Pool) (*Store, error) {
	return OpenConfig(ctx, pool, Config{})
}

// OpenConfig runs the store's migrations and returns the store.
func OpenConfig(ctx context.Context, pool *pgxpool.Pool, cfg Config) (*Store, error) {
	if err := migrate.Up(ctx, pool, "replica", migrations); err != nil {
		return nil, err
	}
	s := &Store{pool: pool, cfg: cfg.withDefaults()}
	s.group.st = s
	return s, nil
}

// claimSQL bumps a space's epoch (creating its row if new) and returns the
// new epoch, version and horizon: the fence of Claim and of Export. Callers
// may append more RETURNING columns.
const claimSQL = `
INSERT INTO replica_spaces (id, epoch, owner) VALUES ($1, 1, $2)
ON CONFLICT (id) DO UPDATE SET epoch = replica_spaces.epoch + 1, owner = excluded.owner, updated_at = now()
RETURNING epoch, version, gc_horizon`

// Claim makes owner the space's owner (creating the space if new) by bumping
// its epoch, and loads it. The epoch bump and the reads happen in one
// transaction: a commit of the previous owner either finished before our
// bump (and is in the snapshot) or fails with ErrFenced.
func (s *Store) Claim(ctx context.Context, spaceID, owner string) (*Snapshot, error) {
	snap := &Snapshot{}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, claimSQL, spaceID, owner).Scan(&snap.Epoch, &snap.Version, &snap.Horizon)
		if err != nil {
			return fmt.Errorf("bump epoch: %w", err)
		}
		rows, err := tx.Query(ctx, `SELECT key, value, version, deleted FROM replica_entries WHERE space_id = $1`, spaceID)
		if err != nil {
			return fmt.Errorf("read entries: %w", err)
		}
		for rows.Next() {
			var e Entry
			if err := rows.Scan(&e.Key, &e.Value, &e.Version, &e.Deleted); err != nil {
				rows.Close()
				return fmt.Errorf("read entries: %w", err)
			}
			snap.Entries = append(snap.Entries, e)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read entries: %w", err)
		}
		rows, err = tx.Query(ctx, `SELECT id, client_group_id, last_mutation_id, version FROM replica_clients WHERE space_id = $1`, spaceID)
		if err != nil {
			return fmt.Errorf("read clients: %w", err)
		}
		snap.Clients, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Client, error) {
			var c Client
			err := r.Scan(&c.ID, &c.GroupID, &c.LastMutationID, &c.Version)
			return c, err
		})
		if err != nil {
			return fmt.Errorf("read clients: %w", err)
		}
		rows, err = tx.Query(ctx, `SELECT id, user_id, forgotten FROM replica_client_groups WHERE space_id = $1`, spaceID)
		if err != nil {
			return fmt.Errorf("read client groups: %w", err)
		}
		snap.Groups, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Group, error) {
			var g Group
			err := r.Scan(&g.ID, &g.UserID, &g.Forgotten)
			return g, err
		})
		if err != nil {
			return fmt.Errorf("read client groups: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("claim space %s: %w", spaceID, err)
	}
	return snap, nil
}

// Garbage is what CollectGarbage removed.
type Garbage struct {
	Horizon         int64    // the space's new tombstone horizon
	Tombstones      []string // keys whose tombstones are gone
	ForgottenGroups []string // client groups whose clients are gone
}

// CollectGarbage removes tombstones older than tombstoneTTL and forgets
// client groups not seen for groupTTL (zero disables either), if epoch still
// owns the space. The horizon rises to the newest removed tombstone, so a
// client whose cookie is below it gets a full resync instead of a diff that
// would miss a delete.
func (s *Store) CollectGarbage(ctx context.Context, spaceID string, epoch int64, tombstoneTTL, groupTTL time.Duration) (*Garbage, error) {
	g := &Garbage{}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT gc_horizon FROM replica_spaces WHERE id = $1 AND epoch = $2 FOR UPDATE`, spaceID, epoch).Scan(&g.Horizon)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrFenced
		}
		if err != nil {
			return err
		}
		if tombstoneTTL > 0 {
			rows, err := tx.Query(ctx, `
DELETE FROM replica_entries WHERE space_id = $1 AND deleted AND updated_at < now() - $2::interval
RETURNING key, version`, spaceID, tombstoneTTL)
			if err != nil {
				return err
			}
			var key string
			var version int64
			_, err = pgx.ForEachRow(rows, []any{&key, &version}, func() error {
				g.Tombstones = append(g.Tombstones, key)
				g.Horizon = max(g.Horizon, version)
				return nil
			})
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE replica_spaces SET gc_horizon = $2 WHERE id = $1`, spaceID, g.Horizon); err != nil {
				return err
			}
		}
		if groupTTL > 0 {
			rows, err := tx.Query(ctx, `
UPDATE replica_client_groups SET forgotten = true
WHERE space_id = $1 AND NOT forgotten AND last_seen < now() - $2::interval RETURNING id`, spaceID, groupTTL)
			if err != nil {
				return err
			}
			g.ForgottenGroups, err = pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			if len(g.ForgottenGroups) > 0 {
				if _, err := tx.Exec(ctx, `DELETE FROM replica_clients WHERE space_id = $1 AND client_group_id = ANY($2)`, spaceID, g.ForgottenGroups); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("collect garbage in space %s: %w", spaceID, err)
	}
	return g, nil
}

// Ping checks that Postgres answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }
