package pgtest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Lock is a lock held by a transaction of the test's own, on a connection of
// its own: what holds up the code under test at a known point (a commit that
// must wait for a row, a load that must wait for its space).
type Lock struct {
	t    testing.TB
	conn *pgx.Conn
	tx   pgx.Tx
	pid  uint32
}

// HoldLock connects to the database at url, begins a transaction and runs
// sql in it (a `SELECT ... FOR UPDATE`, say), which takes the locks the test
// wants held. They are held until Release, or the end of the test.
func HoldLock(t testing.TB, url, sql string, args ...any) *Lock {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		_ = conn.Close(ctx)
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, sql, args...); err != nil {
		_ = conn.Close(ctx)
		t.Fatalf("take the lock (%s): %v", sql, err)
	}
	l := &Lock{t: t, conn: conn, tx: tx, pid: conn.PgConn().PID()}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return l
}

// Blocked reports how many other sessions wait for a lock this one holds.
func (l *Lock) Blocked(ctx context.Context) (int, error) {
	// Within a transaction pg_stat_activity keeps the snapshot of its first
	// read; clear it so that every call sees the sessions as they are now.
	if _, err := l.tx.Exec(ctx, `SELECT pg_stat_clear_snapshot()`); err != nil {
		return 0, err
	}
	var n int
	err := l.tx.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid))`, int(l.pid)).Scan(&n)
	return n, err
}

// WaitBlocked waits (up to a generous deadline) until another session waits
// for a lock this one holds: the code under test has reached the lock.
func (l *Lock) WaitBlocked(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		n, err := l.Blocked(ctx)
		if err != nil {
			t.Fatalf("waiting for a session blocked on the test's lock: %v", err)
		}
		if n > 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal("no session ever waited for the test's lock")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Release ends the transaction, which lets the waiting sessions go on.
func (l *Lock) Release() {
	l.t.Helper()
	if err := l.tx.Rollback(context.Background()); err != nil {
		l.t.Fatal(err)
	}
}
