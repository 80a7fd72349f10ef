package directory

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spaceport-sync/spaceport/backend/protocol"
)

// ErrMachineInUse is returned (wrapped) by DeleteMachine when spaces are still
// assigned to the machine.
var ErrMachineInUse = errors.New("machine still owns spaces")

// foreignKeyViolation is Postgres' SQLSTATE for a broken foreign key.
const foreignKeyViolation = "23503"

// CreateDedicatedSpace creates space id on machine m, which was created for it
// (placement "dedicated"): in one transaction it records m as a started,
// dedicated machine (unless the machine registered itself first, which only
// marks it dedicated) and the space on it, with its data on the cluster of
// Config.Clusters that has the fewest spaces. Shared placement never chooses a
// dedicated machine. The caller creates and starts the machine first, so the
// space exists only once its machine does. Errors: ErrInvalidSpaceID,
// ErrInvalidMachine, ErrSpaceExists.
func (d *Directory) CreateDedicatedSpace(ctx context.Context, id string, m Machine) (Space, error) {
	if !protocol.ValidSpaceID(id) {
		return Space{}, fmt.Errorf("create space %.64q: %w", id, ErrInvalidSpaceID)
	}
	if !m.valid() {
		return Space{}, fmt.Errorf("create space %s on machine %.64q (app %.64q): %w", id, m.ID, m.App, ErrInvalidMachine)
	}
	sp := Space{ID: id, App: m.App, Machine: m.ID}
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		// The app's placement lock, as CreateSpace's, so that concurrent
		// creates count each other's cluster choice.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, placementLockKey(m.App)); err != nil {
			return err
		}
		if err := recordDedicated(ctx, tx, m); err != nil {
			return err
		}
		var err error
		if sp.Cluster, err = d.pickCluster(ctx, tx); err != nil {
			return err
		}
		err = tx.QueryRow(ctx, `
			INSERT INTO directory.spaces (id, app, machine, cluster) VALUES ($1, $2, $3, $4)
			ON CONFLICT (id) DO NOTHING
			RETURNING created_at`, id, m.App, m.ID, sp.Cluster).Scan(&sp.CreatedAt)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrSpaceExists
		}
		return err
	})
	if err != nil {
		return Space{}, fmt.Errorf("create space %s on dedicated machine %s: %w", id, m.ID, err)
	}
	return sp, nil
}

// recordDedicated records m as a started machine dedicated to one space, or
// marks it dedicated if it registered itself first. The heartbeat is the
// router's word that the machine just started (it waited for it); the
// machine's own beats follow.
func recordDedicated(ctx context.Context, tx pgx.Tx, m Machine) error {
	_, err := tx.Exec(ctx, `
		INSERT INTO directory.machines (id, app, region, state, last_heartbeat, dedicated)
		VALUES ($1, $2, $3, $4, now(), true)
		ON CONFLICT (id) DO UPDATE SET dedicated = true`,
		m.ID, m.App, m.Region, string(MachineStarted))
	return err
}

// DeleteSpace removes space id from the directory and returns its last
// placement. The NOTIFY of the deletion commits with it: routers forget the
// space and its machine lets it go. The space's data (package store) is not
// touched. Errors: ErrInvalidSpaceID, ErrSpaceNotFound.
func (d *Directory) DeleteSpace(ctx context.Context, id string) (Space, error) {
	if !protocol.ValidSpaceID(id) {
		return Space{}, fmt.Errorf("delete space %.64q: %w", id, ErrInvalidSpaceID)
	}
	var sp Space
	err := scanSpace(d.pool.QueryRow(ctx, `DELETE FROM directory.spaces WHERE id = $1 RETURNING `+spaceColumns, id), &sp)
	if errors.Is(err, pgx.ErrNoRows) {
		return Space{}, fmt.Errorf("delete space %s: %w", id, ErrSpaceNotFound)
	}
	if err != nil {
		return Space{}, fmt.Errorf("delete space %s: %w", id, err)
	}
	return sp, nil
}

// DeleteMachine removes machine id from the directory, once it has been
// destroyed. A machine that still owns spaces is refused (ErrMachineInUse);
// an unknown one is ErrMachineNotFound. A machine that is still running
// registers itself again at its next heartbeat.
func (d *Directory) DeleteMachine(ctx context.Context, id string) error {
	tag, err := d.pool.Exec(ctx, `DELETE FROM directory.machines WHERE id = $1`, id)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == foreignKeyViolation {
		return fmt.Errorf("delete machine %.64q: %w", id, ErrMachineInUse)
	}
	if err != nil {
		return fmt.Errorf("delete machine %.64q: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("delete machine %.64q: %w", id, ErrMachineNotFound)
	}
	return nil
}

// MoveSpaceToDedicated assigns space id, found on machine from, to machine
// m, a machine created for it, recording m as a started, dedicated machine
// in the same transaction: how a space whose dedicated machine was lost gets
// a new one. The move happens only if the space is still on from, so that
// two repairs of one space (a reconcile pass that outlived its lock) cannot
// both move it: the second gets ErrPlacementChanged and nothing is recorded.
// Like MoveSpace, the change is announced with NOTIFY. Errors:
// ErrInvalidSpaceID, ErrInvalidMachine, ErrSpaceNotFound, ErrPlacementChanged.
func (d *Directory) MoveSpaceToDedicated(ctx context.Context, id, from string, m Machine) (Space, error) {
	if !protocol.ValidSpaceID(id) {
		return Space{}, fmt.Errorf("move space %.64q: %w", id, ErrInvalidSpaceID)
	}
	if !m.valid() {
		return Space{}, fmt.Errorf("move space %s to machine %.64q (app %.64q): %w", id, m.ID, m.App, ErrInvalidMachine)
	}
	var sp Space
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if err := recordDedicated(ctx, tx, m); err != nil {
			return err
		}
		err := scanSpace(tx.QueryRow(ctx, `
			UPDATE directory.spaces SET machine = $2, app = $3 WHERE id = $1 AND machine = $4
			RETURNING `+spaceColumns, id, m.ID, m.App, from), &sp)
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		var now string
		switch err := tx.QueryRow(ctx, `SELECT machine FROM directory.spaces WHERE id = $1`, id).Scan(&now); {
		case errors.Is(err, pgx.ErrNoRows):
			return ErrSpaceNotFound
		case err != nil:
			return err
		}
		return fmt.Errorf("it is on %s, not %s: %w", now, from, ErrPlacementChanged)
	})
	if err != nil {
		return Space{}, fmt.Errorf("move space %s to dedicated machine %s: %w", id, m.ID, err)
	}
	return sp, nil
}
