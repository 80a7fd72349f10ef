package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
)

// wait is the deadline of every condition these tests wait for: generous,
// because a busy machine is slow, and never the thing under test.
const wait = 60 * time.Second

func openStore(t *testing.T, cfg Config) (*Store, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	st, err := OpenConfig(ctx, pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st, pool
}

func claim(t *testing.T, st *Store, id, owner string) int64 {
	t.Helper()
	snap, err := st.Claim(context.Background(), id, owner)
	if err != nil {
		t.Fatal(err)
	}
	return snap.Epoch
}

// put is a batch that sets key to value and advances client c of group g.
func put(version int64, key, value, c string, lmid int64) *Batch {
	return &Batch{
		Version: version,
		Entries: []Entry{{Key: key, Value: []byte(value)}},
		Groups:  []Group{{ID: "g-" + c, UserID: "u"}},
		Clients: []Client{{ID: c, GroupID: "g-" + c, LastMutationID: lmid}},
	}
}

type result struct {
	space string
	err   error
}

func commitAsync(st *Store, id string, epoch int64, b *Batch, out chan<- result) {
	go func() { out <- result{id, st.Commit(context.Background(), id, epoch, b)} }()
}

// queued waits until n commits are queued behind the one in flight.
func queued(t *testing.T, st *Store, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d queued commits", n), func() bool {
		st.group.mu.Lock()
		defer st.group.mu.Unlock()
		return len(st.group.queue) == n
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// blockedOnLock waits until some backend of the test database waits for a
// lock: the commit under test is in flight and held.
func blockedOnLock(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	waitFor(t, "a statement waiting on a lock", func() bool {
		var n int
		err := pool.QueryRow(context.Background(), `
SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
}

// lockRow holds a lock taken by query in a transaction of its own until the
// returned function is called.
func lockRow(t *testing.T, pool *pgxpool.Pool, query string, args ...any) (release func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, query, args...); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { _ = tx.Rollback(ctx) }) }
	t.Cleanup(release)
	return release
}

func noResultYet(t *testing.T, out <-chan result) {
	t.Helper()
	select {
	case r := <-out:
		t.Fatalf("commit of %s returned (%v) while its transaction was held", r.space, r.err)
	default:
	}
}

func value(t *testing.T, pool *pgxpool.Pool, space, key string) string {
	t.Helper()
	var v string
	err := pool.QueryRow(context.Background(), `SELECT value::text FROM replica_entries WHERE space_id = $1 AND key = $2`, space, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func lastMutationID(t *testing.T, pool *pgxpool.Pool, space, client string) int64 {
	t.Helper()
	var lmid int64
	err := pool.QueryRow(context.Background(), `SELECT last_mutation_id FROM replica_clients WHERE space_id = $1 AND id = $2`, space, client).Scan(&lmid)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return lmid
}

// A group commit writes the batches of several spaces in one transaction,
// fences each on its own epoch (the fenced one writes nothing, the others
// commit), and answers no caller before that transaction committed.
func TestGroupCommit_FencesEachSpaceAndAnswersAfterCommit(t *testing.T) {
	st, pool := openStore(t, Config{Committers: 1})
	ctx := context.Background()
	epochs := map[string]int64{}
	for _, id := range []string{"a", "b", "c", "d", "x"} {
		epochs[id] = claim(t, st, id, "m1")
	}
	// x and b have a row the test can lock, to hold a commit that writes it.
	for _, id := range []string{"x", "b"} {
		if err := st.Commit(ctx, id, epochs[id], put(1, "k", `"1"`, "c"+id, 1)); err != nil {
			t.Fatal(err)
		}
	}
	releaseX := lockRow(t, pool, `SELECT 1 FROM replica_entries WHERE space_id = 'x' AND key = 'k' FOR UPDATE`)
	releaseB := lockRow(t, pool, `SELECT 1 FROM replica_entries WHERE space_id = 'b' AND key = 'k' FOR UPDATE`)

	// x's commit holds the one committer...
	outX := make(chan result, 1)
	commitAsync(st, "x", epochs["x"], put(2, "k", `"x2"`, "cx", 2), outX)
	blockedOnLock(t, pool)
	// ...while b, c, d and a queue behind it, to go in the next group
	// together, and d is claimed by another machine before its turn.
	out := make(chan result, 4)
	commitAsync(st, "b", epochs["b"], put(2, "k", `"b2"`, "cb", 2), out)
	commitAsync(st, "c", epochs["c"], put(1, "k", `"c1"`, "cc", 1), out)
	commitAsync(st, "d", epochs["d"], put(1, "k", `"d1"`, "cd", 1), out)
	commitAsync(st, "a", epochs["a"], put(1, "k", `"a1"`, "ca", 1), out)
	queued(t, st, 4)
	claim(t, st, "d", "m2")
	releaseX()
	if r := <-outX; r.err != nil {
		t.Fatalf("commit of x: %v", r.err)
	}
	// The group of b, c, d and a now waits for b's row: none of them may
	// have an answer until it commits.
	blockedOnLock(t, pool)
	noResultYet(t, out)
	if v := value(t, pool, "c", "k"); v != "" {
		t.Fatalf("c visible in Postgres before its group committed: %s", v)
	}
	releaseB()

	got := map[string]error{}
	for range 4 {
		select {
		case r := <-out:
			got[r.space] = r.err
		case <-time.After(wait):
			t.Fatalf("commits did not finish: %v", got)
		}
	}
	for _, id := range []string{"a", "b", "c"} {
		if got[id] != nil {
			t.Errorf("commit of %s: %v", id, got[id])
		}
	}
	if !errors.Is(got["d"], ErrFenced) {
		t.Errorf("commit of d after another machine claimed it: got %v, want ErrFenced", got["d"])
	}
	for id, want := range map[string]string{"a": `"a1"`, "b": `"b2"`, "c": `"c1"`, "d": ""} {
		if v := value(t, pool, id, "k"); v != want {
			t.Errorf("space %s: k = %q in Postgres, want %q", id, v, want)
		}
	}
	if l := lastMutationID(t, pool, "d", "cd"); l != 0 {
		t.Errorf("fenced space d: client's lastMutationID %d in Postgres, want none", l)
	}
}

// A batch whose space row is locked elsewhere (a claim or a garbage
// collection in progress) waits alone: the group does not wait with it.
func TestGroupCommit_LockedSpaceDoesNotHoldUpOthers(t *testing.T) {
	st, pool := openStore(t, Config{Committers: 1})
	epochs := map[string]int64{}
	for _, id := range []string{"a", "b", "c"} {
		epochs[id] = claim(t, st, id, "m1")
	}
	release := lockRow(t, pool, `SELECT 1 FROM replica_spaces WHERE id = 'a' FOR UPDATE`)
	outA := make(chan result, 1)
	commitAsync(st, "a", epochs["a"], put(1, "k", `"a1"`, "ca", 1), outA)
	blockedOnLock(t, pool)

	out := make(chan result, 2)
	commitAsync(st, "b", epochs["b"], put(1, "k", `"b1"`, "cb", 1), out)
	commitAsync(st, "c", epochs["c"], put(1, "k", `"c1"`, "cc", 1), out)
	for range 2 {
		select {
		case r := <-out:
			if r.err != nil {
				t.Errorf("commit of %s: %v", r.space, r.err)
			}
		case <-time.After(wait):
			t.Fatal("b and c waited for a's locked row")
		}
	}
	noResultYet(t, outA)
	if v := value(t, pool, "a", "k"); v != "" {
		t.Fatalf("a written while its row was held elsewhere: %s", v)
	}
	release()
	select {
	case r := <-outA:
		if r.err != nil {
			t.Fatalf("commit of a after release: %v", r.err)
		}
	case <-time.After(wait):
		t.Fatal("a's commit did not finish after its row was released")
	}
	if v := value(t, pool, "a", "k"); v != `"a1"` {
		t.Fatalf("a: k = %q, want \"a1\"", v)
	}
}

// A batch Postgres refuses fails alone; the spaces grouped with it commit.
func TestGroupCommit_RefusedBatchFailsAlone(t *testing.T) {
	st, pool := openStore(t, Config{Committers: 1})
	ctx := context.Background()
	epochs := map[string]int64{}
	for _, id := range []string{"a", "b", "c"} {
		epochs[id] = claim(t, st, id, "m1")
	}
	if err := st.Commit(ctx, "b", epochs["b"], put(1, "k", `"b1"`, "cb", 1)); err != nil {
		t.Fatal(err)
	}
	release := lockRow(t, pool, `SELECT 1 FROM replica_entries WHERE space_id = 'b' AND key = 'k' FOR UPDATE`)
	out := make(chan result, 3)
	commitAsync(st, "b", epochs["b"], put(2, "k", `"b2"`, "cb", 2), out)
	blockedOnLock(t, pool)
	commitAsync(st, "a", epochs["a"], put(1, "k", `not json`, "ca", 1), out)
	commitAsync(st, "c", epochs["c"], put(1, "k", `"c1"`, "cc", 1), out)
	queued(t, st, 2)
	release()
	got := map[string]error{}
	for range 3 {
		select {
		case r := <-out:
			got[r.space] = r.err
		case <-time.After(wait):
			t.Fatalf("commits did not finish: %v", got)
		}
	}
	if got["a"] == nil || errors.Is(got["a"], ErrFenced) || errors.Is(got["a"], ErrCommitUnknown) {
		t.Errorf("invalid batch of a: got %v, want a refusal", got["a"])
	}
	if got["b"] != nil || got["c"] != nil {
		t.Errorf("b: %v, c: %v; want both committed", got["b"], got["c"])
	}
	if v := value(t, pool, "c", "k"); v != `"c1"` {
		t.Errorf("c: k = %q, want \"c1\"", v)
	}
}

// Many spaces committing at once, on several committers, each get exactly
// their own writes, in order, and every acknowledged batch is in Postgres.
func TestGroupCommit_ConcurrentSpaces(t *testing.T) {
	st, pool := openStore(t, Config{})
	const spaces, rounds = 50, 20
	epochs := make([]int64, spaces)
	for i := range spaces {
		epochs[i] = claim(t, st, fmt.Sprintf("s%02d", i), "m1")
	}
	var wg sync.WaitGroup
	errs := make(chan error, spaces)
	for i := range spaces {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("s%02d", i)
			for r := int64(1); r <= rounds; r++ {
				if err := st.Commit(context.Background(), id, epochs[i], put(r, "k", fmt.Sprint(r), "c"+id, r)); err != nil {
					errs <- fmt.Errorf("space %s round %d: %w", id, r, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range spaces {
		id := fmt.Sprintf("s%02d", i)
		if v := value(t, pool, id, "k"); v != fmt.Sprint(rounds) {
			t.Errorf("space %s: k = %s, want %d", id, v, rounds)
		}
		if l := lastMutationID(t, pool, id, "c"+id); l != rounds {
			t.Errorf("space %s: lastMutationID %d, want %d", id, l, rounds)
		}
		var version int64
		if err := pool.QueryRow(context.Background(), `SELECT version FROM replica_spaces WHERE id = $1`, id).Scan(&version); err != nil {
			t.Fatal(err)
		}
		if version != rounds {
			t.Errorf("space %s: version %d, want %d", id, version, rounds)
		}
	}
}
