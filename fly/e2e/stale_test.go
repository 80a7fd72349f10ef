package e2e_test

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// staleCacheTTL is the router's CACHE_TTL in TestFlylocal_StaleRouterCache: short, so the stale placement expires
// within the test.
const staleCacheTTL = 3 * time.Second

// TestFlylocal_StaleRouterCache moves a space without announcing it, as when a NOTIFY is lost: the router keeps
// replaying connections to the old machine until its cache entry expires, and the old machine, which missed the
// announcement too, keeps serving its connected clients. The first connection the router sends there is refused
// with 4004, and that refusal is how the old machine learns of the move: it lets go of the space at once (its
// clients get 4004 too). Clients retry with backoff, land on the new owner once the router's entry expires, and
// converge with every mutation applied once. Ownership changes exactly once: the old machine never claims the
// space back (no ping-pong), as the space's epoch and owner in Postgres show.
func TestFlylocal_StaleRouterCache(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the router and backend binaries")
	}
	t.Parallel()
	ctx := testContext(t)
	// No periodic recheck during the test: the refused join must be what tells the old machine.
	m := moveWithClientOnOldOwner(ctx, t, "e2e-stale", map[string]string{"RECHECK_INTERVAL": "1h"})

	// Client 2 connects through the router, whose cache still says owner: refused (4004) until the entry expires,
	// then it lands on the new machine.
	start := time.Now()
	p2 := newPeer(t, "client 2", m.e.wsURL(m.spaceID, m.e.token(t)))
	if w := p2.connect(ctx); w.MachineID != m.other {
		t.Fatalf("client 2 landed on %s; the space is on %s", w.MachineID, m.other)
	}
	t.Logf("client 2 reached the new owner %s after the stale entry (TTL %s): %s", m.other, staleCacheTTL,
		time.Since(start).Round(time.Millisecond))

	// Client 1 was on the old machine, which let go of the space when it refused client 2.
	p1 := m.p1
	p1.waitMoved(ctx)
	if w := p1.connect(ctx); w.MachineID != m.other {
		t.Fatalf("client 1 reconnected to %s; the space is on %s", w.MachineID, m.other)
	}
	l1 := p1.mutate(ctx, "increment", map[string]any{"key": "counter", "delta": 1})
	l2 := p2.mutate(ctx, "increment", map[string]any{"key": "counter", "delta": 1})
	p1.waitConfirmed(ctx, l1)
	p2.waitConfirmed(ctx, l2)
	waitConverged(t, 3, p1, p2)
	m.claimedOnceMore(ctx, t)
}

// lostMoveRecheck is the backends' RECHECK_INTERVAL in TestFlylocal_LostMoveWithClientsStaying.
const lostMoveRecheck = 500 * time.Millisecond

// TestFlylocal_LostMoveWithClientsStaying moves a space without announcing it while its only client stays
// connected to the old machine, so no refused join tells the old machine either. Its periodic recheck of the
// directory (RECHECK_INTERVAL) does: it lets go of the space, the client reconnects to the new owner and goes on
// from its replica, and nothing is lost or doubled.
func TestFlylocal_LostMoveWithClientsStaying(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the router and backend binaries")
	}
	t.Parallel()
	ctx := testContext(t)
	m := moveWithClientOnOldOwner(ctx, t, "e2e-lost-move", map[string]string{"RECHECK_INTERVAL": lostMoveRecheck.String()})

	p1 := m.p1
	p1.waitMoved(ctx)
	t.Logf("the old owner let go %s after the silent move (RECHECK_INTERVAL %s)",
		time.Since(m.movedAt).Round(time.Millisecond), lostMoveRecheck)
	if w := p1.connect(ctx); w.MachineID != m.other {
		t.Fatalf("client 1 reconnected to %s; the space is on %s", w.MachineID, m.other)
	}
	p1.waitConfirmed(ctx, p1.mutate(ctx, "increment", map[string]any{"key": "counter", "delta": 1}))
	waitConverged(t, 2, p1)
	m.claimedOnceMore(ctx, t)
}

// silentMove is a space moved from owner to other without the NOTIFY that announces it, while client 1 (p1),
// which has made one increment and one todo, is still connected to owner.
type silentMove struct {
	e                     *edge
	db                    *pgx.Conn
	spaceID, owner, other string
	p1                    *peer
	movedAt               time.Time
}

// moveWithClientOnOldOwner starts the stack (router CACHE_TTL staleCacheTTL, plus env), creates spaceID, connects
// client 1 to its machine and moves the space silently to the other machine.
func moveWithClientOnOldOwner(ctx context.Context, t *testing.T, spaceID string, env map[string]string) *silentMove {
	t.Helper()
	var dbURL string
	e, pair := openPair(t, func(stackEnv map[string]string) {
		stackEnv["CACHE_TTL"] = staleCacheTTL.String()
		maps.Copy(stackEnv, env)
		dbURL = stackEnv["DATABASE_URL"]
	})
	m := &silentMove{e: e, spaceID: spaceID}
	m.owner = e.createSpace(t, spaceID).Machine
	m.other = theOther(pair, m.owner)
	// The creation's NOTIFY evicts the space from the router's cache; it must have been heard before client 1
	// fills the entry that the silent move leaves stale.
	e.waitMetric(t, "spaceport_router_directory_changes_total", 1)

	m.p1 = newPeer(t, "client 1", e.wsURL(spaceID, e.token(t)))
	if w := m.p1.connect(ctx); w.MachineID != m.owner {
		t.Fatalf("client 1 landed on %s; the space is on %s", w.MachineID, m.owner)
	}
	m.p1.waitConfirmed(ctx, m.p1.mutate(ctx, "increment", map[string]any{"key": "counter", "delta": 1}))
	m.p1.waitConfirmed(ctx, m.p1.mutate(ctx, "createTodo", map[string]any{"id": "before", "text": "before the move"}))

	db, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close(context.Background()) })
	m.db = db
	m.movedAt = time.Now()
	moveSilently(ctx, t, db, spaceID, m.owner, m.other)
	if got := e.getSpace(t, spaceID); got.Machine != m.other {
		t.Fatalf("the directory says %s is on %s after the move to %s", spaceID, got.Machine, m.other)
	}
	return m
}

// claimedOnceMore fails the test unless the space was claimed exactly twice, by its first owner and then once by
// the new one: ownership never went back.
func (m *silentMove) claimedOnceMore(ctx context.Context, t *testing.T) {
	t.Helper()
	var epoch int64
	var holder string
	if err := m.db.QueryRow(ctx, `SELECT epoch, owner FROM replica_spaces WHERE id = $1`, m.spaceID).Scan(&epoch, &holder); err != nil {
		t.Fatal(err)
	}
	if epoch != 2 || holder != m.other {
		t.Fatalf("space claimed %d times, last by %s; want 2 claims (the first owner, then %s once)", epoch, holder, m.other)
	}
}

// moveSilently changes a space's placement in the directory without the NOTIFY that announces it (triggers off
// for the transaction, machines' space counts fixed by hand): what every listener sees when the announcement is
// lost.
func moveSilently(ctx context.Context, t *testing.T, db *pgx.Conn, spaceID, from, to string) {
	t.Helper()
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		for _, q := range []struct {
			sql  string
			args []any
		}{
			{`SET LOCAL session_replication_role = replica`, nil},
			{`UPDATE directory.spaces SET machine = $2 WHERE id = $1`, []any{spaceID, to}},
			{`UPDATE directory.machines SET space_count = space_count - 1 WHERE id = $1`, []any{from}},
			{`UPDATE directory.machines SET space_count = space_count + 1 WHERE id = $1`, []any{to}},
		} {
			if _, err := tx.Exec(ctx, q.sql, q.args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("move %s to %s without NOTIFY: %v", spaceID, to, err)
	}
}
