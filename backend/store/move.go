package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Moving a space between clusters (spacectl move-cluster, router/ops) is
// four steps on two stores: Export on the old cluster fences every owner and
// reads the space's rows; Import writes them on the new one; Checksum on
// both sides proves they are the same; Delete removes the old copy once the
// directory names the new cluster. The SQL lives here because this package
// owns the replica_* tables.

// ErrChanged is returned (wrapped) by Delete when the space was committed to
// since the version it was asked to delete: those commits are not in the
// copy, so the rows are kept.
var ErrChanged = errors.New("space changed since it was copied")

// CopiedEntry is an entry with the time it last changed, which tombstone
// expiry reads.
type CopiedEntry struct {
	Entry
	UpdatedAt time.Time
}

// CopiedGroup is a client group with the time it was last seen, which
// client-group expiry reads.
type CopiedGroup struct {
	Group
	LastSeen time.Time
}

// Copy is every row of one space, read by Export for Import into another
// cluster.
type Copy struct {
	SpaceID string
	// Epoch is the epoch Export fenced the space at: every owner before it
	// can no longer commit where it was read.
	Epoch     int64
	Owner     string
	Version   int64
	Horizon   int64
	CreatedAt time.Time
	Entries   []CopiedEntry
	Groups    []CopiedGroup
	Clients   []Client
	// Sum is the space's Checksum as read, in the same transaction.
	Sum Checksum
}

// Checksum sums up a space's rows, computed by Postgres with the same query
// on any cluster: row counts, the space's version and horizon, and for each
// table an order-independent sum of a SHA-256 prefix of every row (keys,
// values, versions, tombstones; client and group IDs, lastMutationIDs,
// users, forgotten flags). Two copies are the same when their Checksums are
// equal. Timestamps are copied but not summed: their text depends on the
// session's time zone.
type Checksum struct {
	Version, Horizon         int64
	Entries, Clients, Groups int64
	EntriesSum, ClientsSum   string
	GroupsSum                string
}

// checksumSQL computes a Checksum. Each row's hash is the first 60 bits of
// the SHA-256 of its JSON array; the sums are numeric, so they never
// overflow, and a streaming aggregate, so a large space needs no large
// string in the server's memory. A row that differs changes its table's sum
// but for a 2^-60 chance; a reordering changes nothing, on purpose (the two
// clusters need not share a collation).
const checksumSQL = `
SELECT
	coalesce((SELECT version FROM replica_spaces WHERE id = $1), -1),
	coalesce((SELECT gc_horizon FROM replica_spaces WHERE id = $1), -1),
	e.n, e.sum, c.n, c.sum, g.n, g.sum
FROM
	(SELECT count(*) AS n, coalesce(sum(('x' || left(encode(sha256(convert_to(
		json_build_array(key, value, version, deleted)::text, 'UTF8')), 'hex'), 15))::bit(60)::bigint), 0)::text AS sum
	 FROM replica_entries WHERE space_id = $1) e,
	(SELECT count(*) AS n, coalesce(sum(('x' || left(encode(sha256(convert_to(
		json_build_array(id, client_group_id, last_mutation_id, version)::text, 'UTF8')), 'hex'), 15))::bit(60)::bigint), 0)::text AS sum
	 FROM replica_clients WHERE space_id = $1) c,
	(SELECT count(*) AS n, coalesce(sum(('x' || left(encode(sha256(convert_to(
		json_build_array(id, user_id, forgotten)::text, 'UTF8')), 'hex'), 15))::bit(60)::bigint), 0)::text AS sum
	 FROM replica_client_groups WHERE space_id = $1) g`

// Checksum returns the checksum of space spaceID as this cluster holds it
// (Version and Horizon -1 if it has no row here).
func (s *Store) Checksum(ctx context.Context, spaceID string) (Checksum, error) {
	sum, err := checksum(ctx, s.pool, spaceID)
	if err != nil {
		return Checksum{}, fmt.Errorf("checksum of space %s: %w", spaceID, err)
	}
	return sum, nil
}

func checksum(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, spaceID string) (Checksum, error) {
	var c Checksum
	err := q.QueryRow(ctx, checksumSQL, spaceID).Scan(&c.Version, &c.Horizon,
		&c.Entries, &c.EntriesSum, &c.Clients, &c.ClientsSum, &c.Groups, &c.GroupsSum)
	return c, err
}

// Export fences every owner of the space (the epoch bump of Claim, made as
// owner) and reads all its rows and their Checksum, in one transaction: an
// owner's commit either finished before (and is in the copy) or fails with
// ErrFenced. The space's row is created if it has none, as Claim would.
func (s *Store) Export(ctx context.Context, spaceID, owner string) (*Copy, error) {
	c := &Copy{SpaceID: spaceID, Owner: owner}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, claimSQL+`, created_at`, spaceID, owner).Scan(&c.Epoch, &c.Version, &c.Horizon, &c.CreatedAt); err != nil {
			return fmt.Errorf("fence: %w", err)
		}
		rows, err := tx.Query(ctx, `SELECT key, value, version, deleted, updated_at FROM replica_entries WHERE space_id = $1`, spaceID)
		if err != nil {
			return fmt.Errorf("read entries: %w", err)
		}
		c.Entries, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (CopiedEntry, error) {
			var e CopiedEntry
			err := r.Scan(&e.Key, &e.Value, &e.Version, &e.Deleted, &e.UpdatedAt)
			return e, err
		})
		if err != nil {
			return fmt.Errorf("read entries: %w", err)
		}
		rows, err = tx.Query(ctx, `SELECT id, user_id, forgotten, last_seen FROM replica_client_groups WHERE space_id = $1`, spaceID)
		if err != nil {
			return fmt.Errorf("read client groups: %w", err)
		}
		c.Groups, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (CopiedGroup, error) {
			var g CopiedGroup
			err := r.Scan(&g.ID, &g.UserID, &g.Forgotten, &g.LastSeen)
			return g, err
		})
		if err != nil {
			return fmt.Errorf("read client groups: %w", err)
		}
		rows, err = tx.Query(ctx, `SELECT id, client_group_id, last_mutation_id, version FROM replica_clients WHERE space_id = $1`, spaceID)
		if err != nil {
			return fmt.Errorf("read clients: %w", err)
		}
		c.Clients, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Client, error) {
			var cl Client
			err := r.Scan(&cl.ID, &cl.GroupID, &cl.LastMutationID, &cl.Version)
			return cl, err
		})
		if err != nil {
			return fmt.Errorf("read clients: %w", err)
		}
		if c.Sum, err = checksum(ctx, tx, spaceID); err != nil {
			return fmt.Errorf("checksum: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("export space %s: %w", spaceID, err)
	}
	return c, nil
}

// Import writes c as space c.SpaceID in one transaction, replacing whatever
// rows of the space this cluster held (a copy left by an earlier move or a
// failed one), and returns the space's epoch here. The epoch is above both
// c.Epoch and the one it replaces, so it only ever grows on this cluster: an
// owner that claimed the rows replaced cannot commit into the copy, and the
// next Claim fences Import's own epoch in turn.
func (s *Store) Import(ctx context.Context, c *Copy) (epoch int64, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var prev int64
		err := tx.QueryRow(ctx, `SELECT epoch FROM replica_spaces WHERE id = $1 FOR UPDATE`, c.SpaceID).Scan(&prev)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("lock: %w", err)
		}
		epoch = max(c.Epoch, prev) + 1
		for _, table := range []string{"replica_entries", "replica_clients", "replica_client_groups"} {
			if _, err := tx.Exec(ctx, `DELETE FROM `+table+` WHERE space_id = $1`, c.SpaceID); err != nil {
				return fmt.Errorf("clear %s: %w", table, err)
			}
		}
		if _, err := tx.Exec(ctx, `
INSERT INTO replica_spaces (id, version, epoch, owner, gc_horizon, created_at) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE SET version = excluded.version, epoch = excluded.epoch, owner = excluded.owner,
	gc_horizon = excluded.gc_horizon, created_at = excluded.created_at, updated_at = now()`,
			c.SpaceID, c.Version, epoch, c.Owner, c.Horizon, c.CreatedAt); err != nil {
			return fmt.Errorf("write space: %w", err)
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"replica_entries"},
			[]string{"space_id", "key", "value", "version", "deleted", "updated_at"},
			pgx.CopyFromSlice(len(c.Entries), func(i int) ([]any, error) {
				e := &c.Entries[i]
				var v *string
				if e.Value != nil {
					s := string(e.Value)
					v = &s
				}
				return []any{c.SpaceID, e.Key, v, e.Version, e.Deleted, e.UpdatedAt}, nil
			})); err != nil {
			return fmt.Errorf("write entries: %w", err)
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"replica_client_groups"},
			[]string{"space_id", "id", "user_id", "forgotten", "last_seen"},
			pgx.CopyFromSlice(len(c.Groups), func(i int) ([]any, error) {
				g := &c.Groups[i]
				return []any{c.SpaceID, g.ID, g.UserID, g.Forgotten, g.LastSeen}, nil
			})); err != nil {
			return fmt.Errorf("write client groups: %w", err)
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"replica_clients"},
			[]string{"space_id", "id", "client_group_id", "last_mutation_id", "version"},
			pgx.CopyFromSlice(len(c.Clients), func(i int) ([]any, error) {
				cl := &c.Clients[i]
				return []any{c.SpaceID, cl.ID, cl.GroupID, cl.LastMutationID, cl.Version}, nil
			})); err != nil {
			return fmt.Errorf("write clients: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("import space %s: %w", c.SpaceID, err)
	}
	return epoch, nil
}

// Delete removes every row of space spaceID from this cluster, in one
// transaction, if its version is still version: nothing was committed here
// since the copy that version belongs to. Otherwise it keeps them and
// returns ErrChanged. A space with no rows here is not an error.
func (s *Store) Delete(ctx context.Context, spaceID string, version int64) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var now int64
		err := tx.QueryRow(ctx, `SELECT version FROM replica_spaces WHERE id = $1 FOR UPDATE`, spaceID).Scan(&now)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		if now != version {
			return fmt.Errorf("at version %d, copied at %d: %w", now, version, ErrChanged)
		}
		for _, table := range []string{"replica_entries", "replica_clients", "replica_client_groups"} {
			if _, err := tx.Exec(ctx, `DELETE FROM `+table+` WHERE space_id = $1`, spaceID); err != nil {
				return fmt.Errorf("delete from %s: %w", table, err)
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM replica_spaces WHERE id = $1`, spaceID); err != nil {
			return fmt.Errorf("delete space row: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete space %s: %w", spaceID, err)
	}
	return nil
}
