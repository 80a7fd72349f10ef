package directory

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spaceport-sync/spaceport/backend/protocol"
)

// Space is one space's placement: the backend app and machine that own it,
// and the Postgres cluster that holds its data.
type Space struct {
	ID        string
	App       string
	Machine   string
	CreatedAt time.Time
	// Cluster names the data cluster of the space (DefaultCluster unless it
	// was placed or moved elsewhere).
	Cluster string
	// MovingTo is set while the space's data is being copied to that
	// cluster (BeginClusterMove): nobody serves the space meanwhile.
	MovingTo string
}

// spaceColumns are the columns scanSpace reads, in its order.
const spaceColumns = `id, app, machine, created_at, cluster, coalesce(moving_to, '')`

// scanSpace scans one row of spaceColumns.
func scanSpace(row pgx.Row, sp *Space) error {
	return row.Scan(&sp.ID, &sp.App, &sp.Machine, &sp.CreatedAt, &sp.Cluster, &sp.MovingTo)
}

// NewSpaceID returns a random space ID: 26 characters of [a-z2-7] (130
// random bits), URL-safe and valid under protocol.ValidSpaceID.
func NewSpaceID() string { return strings.ToLower(rand.Text()) }

// CreateSpace creates space id for app and places it on the live machine of
// app that has the fewest spaces, among those not dedicated to a space, and
// its data on the cluster of Config.Clusters that has the fewest spaces
// (pickCluster). An empty id gets NewSpaceID.
//
// Placement is exact under concurrency: creates for one app take a
// transaction-scoped advisory lock, so each one counts after the previous one
// committed. Two routers creating at once therefore never both pick the same
// emptiest machine by a stale count. Creates are rare next to lookups, and the
// lock is held for three short statements.
//
// Errors: ErrInvalidSpaceID, ErrInvalidMachine (bad app), ErrSpaceExists,
// ErrNoLiveMachine.
func (d *Directory) CreateSpace(ctx context.Context, id, app string) (Space, error) {
	if id == "" {
		id = NewSpaceID()
	}
	if !protocol.ValidSpaceID(id) {
		return Space{}, fmt.Errorf("create space %.64q: %w", id, ErrInvalidSpaceID)
	}
	if !validName(app) {
		return Space{}, fmt.Errorf("create space %s in app %.64q: %w", id, app, ErrInvalidMachine)
	}
	sp := Space{ID: id, App: app}
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, placementLockKey(app)); err != nil {
			return err
		}
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM directory.spaces WHERE id = $1)`, id).Scan(&exists); err != nil {
			return err
		}
		if exists {
			return ErrSpaceExists
		}
		err := tx.QueryRow(ctx, `
			SELECT id FROM directory.machines
			WHERE app = $1 AND state = 'started' AND NOT dedicated
			  AND last_heartbeat > now() - $2::bigint * interval '1 microsecond'
			ORDER BY space_count, id
			LIMIT 1`, app, d.liveWindowMicros()).Scan(&sp.Machine)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNoLiveMachine
		}
		if err != nil {
			return err
		}
		if sp.Cluster, err = d.pickCluster(ctx, tx); err != nil {
			return err
		}
		// The existence check above runs under the per-app lock, but a
		// create of the same id for another app does not take that lock;
		// ON CONFLICT keeps that race to one row.
		err = tx.QueryRow(ctx, `
			INSERT INTO directory.spaces (id, app, machine, cluster) VALUES ($1, $2, $3, $4)
			ON CONFLICT (id) DO NOTHING
			RETURNING created_at`, id, app, sp.Machine, sp.Cluster).Scan(&sp.CreatedAt)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrSpaceExists
		}
		return err
	})
	if err != nil {
		return Space{}, fmt.Errorf("create space %s in app %s: %w", id, app, err)
	}
	return sp, nil
}

// placementLockKey is the advisory lock that serializes placement per app.
func placementLockKey(app string) int64 {
	h := fnv.New64a()
	h.Write([]byte("spaceport-directory-place:" + app))
	return int64(h.Sum64())
}

// LockReconcile takes the app's reconcile lock, a session advisory lock on a
// connection of its own (not one of the pool's, which a long pass would
// hold), so that one process at a time repairs the app's placements: two
// reconcilers that both saw a space's machine gone would each give it a new
// one. It does not wait: if another process holds the lock the error wraps
// ErrLockHeld. unlock ends the connection, and with it the lock; so does the
// connection's loss, which is why the repairs themselves must also be safe
// against a concurrent pass (MoveSpaceToDedicated is).
func (d *Directory) LockReconcile(ctx context.Context, app string) (unlock func(), err error) {
	conn, closeConn, err := d.ownConn(ctx, reconcileApplicationName)
	if err != nil {
		return nil, fmt.Errorf("reconcile lock of app %s: %w", app, err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, reconcileLockKey(app)).Scan(&ok); err != nil {
		closeConn()
		return nil, fmt.Errorf("reconcile lock of app %s: %w", app, err)
	}
	if !ok {
		closeConn()
		return nil, fmt.Errorf("reconcile lock of app %s: %w", app, ErrLockHeld)
	}
	return closeConn, nil
}

// reconcileApplicationName is the application_name of LockReconcile's
// connection, to find it in pg_stat_activity.
const reconcileApplicationName = "spaceport-reconcile"

// reconcileLockKey is the advisory lock of LockReconcile.
func reconcileLockKey(app string) int64 {
	h := fnv.New64a()
	h.Write([]byte("spaceport-directory-reconcile:" + app))
	return int64(h.Sum64())
}

// NotOn returns those of ids that machine may not serve: moved to another
// machine, deleted, or being moved between clusters (a space in a cluster
// move is served nowhere). One query, however many IDs.
func (d *Directory) NotOn(ctx context.Context, machine string, ids []string) ([]string, error) {
	return d.NotOnCluster(ctx, machine, ids, nil)
}

// NotOnCluster is NotOn for spaces loaded from known data clusters:
// clusters[i] is the cluster ids[i] was loaded from ("" if unknown, and
// clusters may be nil), and a space the directory now places on another
// cluster is returned too, since what was loaded is an old copy. One query,
// however many IDs.
func (d *Directory) NotOnCluster(ctx context.Context, machine string, ids, clusters []string) ([]string, error) {
	if clusters == nil {
		clusters = make([]string, len(ids))
	}
	if len(clusters) != len(ids) {
		return nil, fmt.Errorf("find which of %d spaces are not on machine %.64q: %d clusters given", len(ids), machine, len(clusters))
	}
	rows, err := d.pool.Query(ctx, `
		SELECT x FROM unnest($2::text[], $3::text[]) AS t(x, c)
		WHERE NOT EXISTS (SELECT 1 FROM directory.spaces s
			WHERE s.id = x AND s.machine = $1 AND s.moving_to IS NULL AND (c = '' OR s.cluster = c))`, machine, ids, clusters)
	if err != nil {
		return nil, fmt.Errorf("find which of %d spaces are not on machine %.64q: %w", len(ids), machine, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("find which of %d spaces are not on machine %.64q: %w", len(ids), machine, err)
	}
	return out, nil
}

// Lookup returns the placement of space id: one primary-key read, the
// router's replay decision (behind its cache) and the backend's check that a
// space is assigned to it before serving it. Errors: ErrInvalidSpaceID,
// ErrSpaceNotFound.
func (d *Directory) Lookup(ctx context.Context, id string) (Space, error) {
	if !protocol.ValidSpaceID(id) {
		return Space{}, fmt.Errorf("look up space %.64q: %w", id, ErrInvalidSpaceID)
	}
	var sp Space
	err := scanSpace(d.pool.QueryRow(ctx, `SELECT `+spaceColumns+` FROM directory.spaces WHERE id = $1`, id), &sp)
	if errors.Is(err, pgx.ErrNoRows) {
		return Space{}, fmt.Errorf("look up space %s: %w", id, ErrSpaceNotFound)
	}
	if err != nil {
		return Space{}, fmt.Errorf("look up space %s: %w", id, err)
	}
	return sp, nil
}

// GetSpace returns space id, read fresh from the database. It is Lookup under
// the name the admin API uses.
func (d *Directory) GetSpace(ctx context.Context, id string) (Space, error) {
	return d.Lookup(ctx, id)
}

// ListSpaces returns up to limit spaces with IDs after the given one, in ID
// order (keyset pagination: pass the last ID of a page to get the next). A
// limit of 0 or less means DefaultListLimit; more than MaxListLimit means
// MaxListLimit.
func (d *Directory) ListSpaces(ctx context.Context, after string, limit int) ([]Space, error) {
	if limit <= 0 {
		limit = DefaultListLimit
	}
	limit = min(limit, MaxListLimit)
	rows, err := d.pool.Query(ctx, `
		SELECT `+spaceColumns+` FROM directory.spaces
		WHERE id > $1 ORDER BY id LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("list spaces: %w", err)
	}
	spaces, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Space, error) {
		var sp Space
		err := scanSpace(row, &sp)
		return sp, err
	})
	if err != nil {
		return nil, fmt.Errorf("list spaces: %w", err)
	}
	return spaces, nil
}

// AppSpaces returns every space of app, in ID order, read a page of
// MaxListLimit at a time so that no single query is unbounded: what
// operations over a whole app (drain, rebalance, reconcile) start from.
func (d *Directory) AppSpaces(ctx context.Context, app string) ([]Space, error) {
	var out []Space
	after := ""
	for {
		page, err := d.ListSpaces(ctx, after, MaxListLimit)
		if err != nil {
			return nil, err
		}
		for _, sp := range page {
			if sp.App == app {
				out = append(out, sp)
			}
		}
		if len(page) < MaxListLimit {
			return out, nil
		}
		after = page[len(page)-1].ID
	}
}

// MoveSpace assigns space id to machine (and to that machine's app). The
// update and its NOTIFY on NotifyChannel commit together, so every listener
// drops the old placement as soon as it is no longer true. The target need
// not be live: a stopped Fly machine is started by the replay that reaches
// it. Errors: ErrInvalidSpaceID, ErrSpaceNotFound, ErrMachineNotFound.
func (d *Directory) MoveSpace(ctx context.Context, id, machine string) (Space, error) {
	if !protocol.ValidSpaceID(id) {
		return Space{}, fmt.Errorf("move space %.64q: %w", id, ErrInvalidSpaceID)
	}
	if !validName(machine) {
		return Space{}, fmt.Errorf("move space %s to machine %.64q: %w", id, machine, ErrMachineNotFound)
	}
	var sp Space
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		var from string
		err := tx.QueryRow(ctx, `SELECT machine FROM directory.spaces WHERE id = $1 FOR UPDATE`, id).Scan(&from)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrSpaceNotFound
		}
		if err != nil {
			return err
		}
		// Lock both machine rows in ID order before the trigger adjusts
		// their counts: two opposite moves (A->B and B->A) would otherwise
		// lock them in opposite orders and deadlock.
		rows, err := tx.Query(ctx, `
			SELECT id, app FROM directory.machines WHERE id = ANY($1) ORDER BY id FOR UPDATE`,
			[]string{from, machine})
		if err != nil {
			return err
		}
		var app string
		for rows.Next() {
			var mid, mapp string
			if err := rows.Scan(&mid, &mapp); err != nil {
				rows.Close()
				return err
			}
			if mid == machine {
				app = mapp
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if app == "" {
			return ErrMachineNotFound
		}
		return scanSpace(tx.QueryRow(ctx, `
			UPDATE directory.spaces SET machine = $2, app = $3 WHERE id = $1
			RETURNING `+spaceColumns, id, machine, app), &sp)
	})
	if err != nil {
		return Space{}, fmt.Errorf("move space %s to machine %s: %w", id, machine, err)
	}
	return sp, nil
}
