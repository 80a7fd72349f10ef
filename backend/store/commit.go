package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// commitSQL writes the batches of one or more spaces in a single statement,
// so that a commit is one statement and one transaction whatever the number
// of spaces. Fencing is per space: l locks each space row, u advances only
// the rows whose epoch is still the committer's, and every write joins u, so a
// fenced space writes nothing while the others commit. The final SELECT tells
// the caller which rows it locked and at which epoch.
//
// The lock clause is filled in by commitStatement: a lone commit waits for its
// row (FOR UPDATE), a group skips rows that someone else holds (SKIP LOCKED)
// so that a space being claimed or collected elsewhere cannot hold up the
// group; those spaces are committed alone by their own callers. Because a
// group never waits for a space row, and entry and client rows are only ever
// written under their space row's lock, two groups cannot deadlock.
const commitSQL = `
WITH v AS (
	SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS v(id, epoch, version)
), l AS MATERIALIZED (
	SELECT s.id, s.epoch FROM replica_spaces s WHERE s.id = ANY($1::text[]) FOR UPDATE %s
), u AS (
	UPDATE replica_spaces s SET version = v.version, updated_at = now()
	FROM l JOIN v ON v.id = l.id AND v.epoch = l.epoch
	WHERE s.id = l.id
	RETURNING s.id, s.version
), e AS (
	INSERT INTO replica_entries (space_id, key, value, version, deleted)
	SELECT t.sid, t.k, t.val, u.version, t.d
	FROM unnest($4::text[], $5::text[], $6::json[], $7::bool[]) AS t(sid, k, val, d) JOIN u ON u.id = t.sid
	ON CONFLICT (space_id, key) DO UPDATE
	SET value = excluded.value, version = excluded.version, deleted = excluded.deleted, updated_at = now()
), g AS (
	INSERT INTO replica_client_groups (space_id, id, user_id)
	SELECT t.sid, t.gid, t.uid
	FROM unnest($8::text[], $9::text[], $10::text[]) AS t(sid, gid, uid) JOIN u ON u.id = t.sid
	ON CONFLICT (space_id, id) DO UPDATE SET last_seen = now()
), c AS (
	INSERT INTO replica_clients (space_id, id, client_group_id, last_mutation_id, version)
	SELECT t.sid, t.cid, t.gid, t.lmid, u.version
	FROM unnest($11::text[], $12::text[], $13::text[], $14::bigint[]) AS t(sid, cid, gid, lmid) JOIN u ON u.id = t.sid
	ON CONFLICT (space_id, id) DO UPDATE SET last_mutation_id = excluded.last_mutation_id, version = excluded.version
)
SELECT id, epoch FROM l`

var (
	commitWaitSQL = fmt.Sprintf(commitSQL, "")
	commitSkipSQL = fmt.Sprintf(commitSQL, "SKIP LOCKED")
)

// errAlone tells a grouped caller that its space was not written by the
// group (its row was locked by someone else, or the group failed in a way
// that might be this space's fault) and that it must commit alone.
var errAlone = errors.New("commit alone")

// commitReq is one space's batch on its way to Postgres.
type commitReq struct {
	spaceID string
	epoch   int64
	b       *Batch
	ctx     context.Context
	size    int // approximate bytes, for the group bound

	done chan struct{} // closed when err is final, or when lead is set
	err  error
	lead bool // this caller leads the next group
}

// commitArgs are commitSQL's parameters for a set of batches.
type commitArgs struct {
	ids                 []string
	epochs, versions    []int64
	eSpace, eKey        []string
	eValue              []*string
	eDeleted            []bool
	gSpace, gID, gUser  []string
	cSpace, cID, cGroup []string
	cLMID               []int64
}

func (a *commitArgs) add(r *commitReq) {
	a.ids = append(a.ids, r.spaceID)
	a.epochs = append(a.epochs, r.epoch)
	a.versions = append(a.versions, r.b.Version)
	for _, e := range r.b.Entries {
		a.eSpace, a.eKey, a.eDeleted = append(a.eSpace, r.spaceID), append(a.eKey, e.Key), append(a.eDeleted, e.Deleted)
		var v *string
		if !e.Deleted {
			s := string(e.Value)
			v = &s
		}
		a.eValue = append(a.eValue, v)
	}
	for _, g := range r.b.Groups {
		a.gSpace, a.gID, a.gUser = append(a.gSpace, r.spaceID), append(a.gID, g.ID), append(a.gUser, g.UserID)
	}
	for _, c := range r.b.Clients {
		a.cSpace, a.cID, a.cGroup, a.cLMID = append(a.cSpace, r.spaceID), append(a.cID, c.ID), append(a.cGroup, c.GroupID), append(a.cLMID, c.LastMutationID)
	}
}

// write commits reqs in one statement and sets each one's err: nil
// (committed), ErrFenced, errAlone (skipped: commit it alone) or the
// statement's failure. With wait, rows locked by others are waited for
// instead of skipped.
func (s *Store) write(ctx context.Context, reqs []*commitReq, wait bool) {
	var a commitArgs
	byID := make(map[string]int, len(reqs))
	for i, r := range reqs {
		a.add(r)
		byID[r.spaceID] = i
		r.err = nil
	}
	seen := make([]bool, len(reqs))
	err := s.exec(ctx, wait, &a, func(id string, epoch int64) {
		i, ok := byID[id]
		if !ok {
			return
		}
		seen[i] = true
		if r := reqs[i]; epoch != r.epoch {
			r.err = fmt.Errorf("commit space %s at epoch %d (now %d): %w", id, r.epoch, epoch, ErrFenced)
		}
	})
	var pgErr *pgconn.PgError
	for i, r := range reqs {
		switch {
		case err != nil && !wait && errors.As(err, &pgErr):
			// The server refused the group; it may be one space's batch
			// (a row Postgres will not take), so each tries alone and
			// only that one fails.
			r.err = errAlone
		case err != nil:
			r.err = fmt.Errorf("commit space %s: %w", r.spaceID, err)
		case seen[i]:
			// Committed, or fenced (set above).
		case wait:
			// No row: the space was deleted, so this owner's claim is void.
			r.err = fmt.Errorf("commit space %s at epoch %d: space gone: %w", r.spaceID, r.epoch, ErrFenced)
		default:
			r.err = errAlone
		}
	}
}

// exec runs commitSQL once in a transaction of its own, calling row for each
// space row it locked. BEGIN and the statement go in one round trip, COMMIT
// in a second: an explicit transaction, so that a failure or a timeout
// before COMMIT (a statement waiting for a lock, say) is known to have
// written nothing. Its error wraps ErrCommitUnknown only when COMMIT itself
// was sent and not answered.
func (s *Store) exec(ctx context.Context, wait bool, a *commitArgs, row func(id string, epoch int64)) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire connection: %w", err)
	}
	defer conn.Release()
	q := commitSkipSQL
	if wait {
		q = commitWaitSQL
	}
	batch := &pgx.Batch{}
	batch.Queue("BEGIN")
	batch.Queue(q, a.ids, a.epochs, a.versions,
		a.eSpace, a.eKey, a.eValue, a.eDeleted,
		a.gSpace, a.gID, a.gUser,
		a.cSpace, a.cID, a.cGroup, a.cLMID).Query(func(rows pgx.Rows) error {
		var id string
		var epoch int64
		_, err := pgx.ForEachRow(rows, []any{&id, &epoch}, func() error {
			row(id, epoch)
			return nil
		})
		return err
	})
	if err := conn.SendBatch(ctx, batch).Close(); err != nil {
		// Nothing was committed: the transaction, if it began, ends with
		// the connection or with this ROLLBACK.
		rollback(conn)
		return err
	}
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) || pgconn.SafeToRetry(err) {
			// The server answered (it rolled back), or COMMIT never left.
			rollback(conn)
			return err
		}
		return fmt.Errorf("%w: %w", ErrCommitUnknown, err)
	}
	return nil
}

// rollback ends a failed transaction so the connection goes back to the pool
// idle; if that fails too, the connection is closed, which the pool then
// drops (and Postgres rolls back).
func rollback(conn *pgxpool.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, "ROLLBACK"); err != nil {
		_ = conn.Conn().Close(ctx)
	}
}

// Commit writes a batch at b.Version if epoch still owns the space. It
// returns ErrFenced if another owner claimed it, an error wrapping
// ErrCommitUnknown if the outcome is unknown (the connection failed while
// COMMIT was in flight: the caller must reload the space), and any other
// error when nothing was written.
//
// Concurrent calls for different spaces are committed together (group commit
// across spaces, Config.MaxGroupSpaces); Commit returns only once the
// transaction holding its batch has committed, so an acknowledgement sent
// after it is durable.
func (s *Store) Commit(ctx context.Context, spaceID string, epoch int64, b *Batch) error {
	r := &commitReq{spaceID: spaceID, epoch: epoch, b: b, ctx: ctx, size: b.size(), done: make(chan struct{})}
	if s.cfg.MaxGroupSpaces > 1 {
		s.group.commit(r)
		if !errors.Is(r.err, errAlone) {
			return r.err
		}
	}
	s.write(ctx, []*commitReq{r}, true)
	return r.err
}

// size is roughly the bytes the batch sends, for bounding a group.
func (b *Batch) size() int {
	n := 64
	for _, e := range b.Entries {
		n += len(e.Key) + len(e.Value) + 16
	}
	for _, c := range b.Clients {
		n += len(c.ID) + len(c.GroupID) + 16
	}
	for _, g := range b.Groups {
		n += len(g.ID) + len(g.UserID)
	}
	return n
}

// describe names the spaces of a group for a log line.
func describe(reqs []*commitReq) string {
	ids := make([]string, 0, min(len(reqs), 5))
	for _, r := range reqs[:min(len(reqs), 5)] {
		ids = append(ids, r.spaceID)
	}
	if len(reqs) > 5 {
		ids = append(ids, fmt.Sprintf("and %d more", len(reqs)-5))
	}
	return strings.Join(ids, ", ")
}
