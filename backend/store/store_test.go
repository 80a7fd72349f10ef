package store_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/store"
	"github.com/spaceport-sync/spaceport/backend/store/storetest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// openStore opens a store on a fresh database and returns it with its pool,
// through which the tests read what Postgres holds.
func openStore(t *testing.T) (*store.Store, *pgxpool.Pool) {
	t.Helper()
	return storetest.Open(t, pgtest.NewDatabase(t))
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func claim(t *testing.T, st *store.Store, spaceID, owner string) *store.Snapshot {
	t.Helper()
	snap, err := st.Claim(testCtx(t), spaceID, owner)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func commit(t *testing.T, st *store.Store, spaceID string, epoch int64, b *store.Batch) {
	t.Helper()
	if err := st.Commit(testCtx(t), spaceID, epoch, b); err != nil {
		t.Fatalf("commit version %d at epoch %d: %v", b.Version, epoch, err)
	}
}

// row is what Postgres holds for a space: its row and its entries, clients
// and groups, read directly (not through the store).
type row struct {
	version, epoch, horizon int64
	owner                   string
	entries                 map[string]store.Entry
	lmids                   map[string]int64 // client ID -> last_mutation_id
	groups                  map[string]store.Group
}

func read(t *testing.T, pool *pgxpool.Pool, spaceID string) row {
	t.Helper()
	ctx := testCtx(t)
	r := row{entries: map[string]store.Entry{}, lmids: map[string]int64{}, groups: map[string]store.Group{}}
	if err := pool.QueryRow(ctx, `SELECT version, epoch, gc_horizon, owner FROM replica_spaces WHERE id = $1`, spaceID).
		Scan(&r.version, &r.epoch, &r.horizon, &r.owner); err != nil {
		t.Fatalf("read space %s: %v", spaceID, err)
	}
	rows, err := pool.Query(ctx, `SELECT key, value::text, version, deleted FROM replica_entries WHERE space_id = $1`, spaceID)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var e store.Entry
		var v *string
		if err := rows.Scan(&e.Key, &v, &e.Version, &e.Deleted); err != nil {
			t.Fatal(err)
		}
		if v != nil {
			e.Value = []byte(*v)
		}
		r.entries[e.Key] = e
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows, err = pool.Query(ctx, `SELECT id, last_mutation_id FROM replica_clients WHERE space_id = $1`, spaceID)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		var lmid int64
		if err := rows.Scan(&id, &lmid); err != nil {
			t.Fatal(err)
		}
		r.lmids[id] = lmid
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows, err = pool.Query(ctx, `SELECT id, user_id, forgotten FROM replica_client_groups WHERE space_id = $1`, spaceID)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var g store.Group
		if err := rows.Scan(&g.ID, &g.UserID, &g.Forgotten); err != nil {
			t.Fatal(err)
		}
		r.groups[g.ID] = g
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return r
}

func put(key, value string) store.Entry { return store.Entry{Key: key, Value: []byte(value)} }

func TestClaim_NewSpaceStartsAtEpochOne(t *testing.T) {
	st, pool := openStore(t)
	snap := claim(t, st, "s", "m1")
	if snap.Epoch != 1 || snap.Version != 0 || snap.Horizon != 0 || len(snap.Entries)+len(snap.Clients)+len(snap.Groups) != 0 {
		t.Fatalf("snapshot of a new space = %+v, want epoch 1 and nothing else", snap)
	}
	if r := read(t, pool, "s"); r.epoch != 1 || r.owner != "m1" || r.version != 0 {
		t.Fatalf("row of a new space: %+v", r)
	}
	// Every claim bumps the epoch and names its owner.
	if snap := claim(t, st, "s", "m2"); snap.Epoch != 2 {
		t.Fatalf("second claim at epoch %d, want 2", snap.Epoch)
	}
	if r := read(t, pool, "s"); r.epoch != 2 || r.owner != "m2" {
		t.Fatalf("row after the second claim: epoch %d owner %s", r.epoch, r.owner)
	}
}

// What one owner committed, the next owner's Claim loads: entries with their
// versions (tombstones included), clients with their group and
// lastMutationID, groups with their user.
func TestClaim_LoadsWhatWasCommitted(t *testing.T) {
	st, _ := openStore(t)
	e1 := claim(t, st, "s", "m1").Epoch
	commit(t, st, "s", e1, &store.Batch{Version: 1,
		Entries: []store.Entry{put("a", `{"n":1}`), put("b", `"x"`)},
		Clients: []store.Client{{ID: "c1", GroupID: "g1", LastMutationID: 2}},
		Groups:  []store.Group{{ID: "g1", UserID: "alice"}},
	})
	commit(t, st, "s", e1, &store.Batch{Version: 2,
		Entries: []store.Entry{{Key: "b", Deleted: true}, put("c", `[1,2]`)},
		Clients: []store.Client{{ID: "c1", GroupID: "g1", LastMutationID: 3}, {ID: "c2", GroupID: "g2", LastMutationID: 1}},
		Groups:  []store.Group{{ID: "g1", UserID: "alice"}, {ID: "g2", UserID: "bob"}},
	})
	// Another space is not loaded with it.
	commit(t, st, "other", claim(t, st, "other", "m1").Epoch, &store.Batch{Version: 1, Entries: []store.Entry{put("z", "0")}})

	snap := claim(t, st, "s", "m2")
	if snap.Epoch != 2 || snap.Version != 2 {
		t.Fatalf("claimed at epoch %d version %d, want 2 and 2", snap.Epoch, snap.Version)
	}
	slices.SortFunc(snap.Entries, func(x, y store.Entry) int { return strings.Compare(x.Key, y.Key) })
	want := []store.Entry{
		{Key: "a", Value: []byte(`{"n":1}`), Version: 1},
		{Key: "b", Version: 2, Deleted: true},
		{Key: "c", Value: []byte(`[1,2]`), Version: 2},
	}
	if !slices.EqualFunc(snap.Entries, want, entryEq) {
		t.Fatalf("entries %s, want %s", fmtEntries(snap.Entries), fmtEntries(want))
	}
	slices.SortFunc(snap.Clients, func(x, y store.Client) int { return strings.Compare(x.ID, y.ID) })
	if want := []store.Client{{ID: "c1", GroupID: "g1", LastMutationID: 3, Version: 2}, {ID: "c2", GroupID: "g2", LastMutationID: 1, Version: 2}}; !slices.Equal(snap.Clients, want) {
		t.Fatalf("clients %+v, want %+v", snap.Clients, want)
	}
	slices.SortFunc(snap.Groups, func(x, y store.Group) int { return strings.Compare(x.ID, y.ID) })
	if want := []store.Group{{ID: "g1", UserID: "alice"}, {ID: "g2", UserID: "bob"}}; !slices.Equal(snap.Groups, want) {
		t.Fatalf("groups %+v, want %+v", snap.Groups, want)
	}
}

func entryEq(x, y store.Entry) bool {
	return x.Key == y.Key && string(x.Value) == string(y.Value) && x.Version == y.Version && x.Deleted == y.Deleted
}

func fmtEntries(es []store.Entry) string {
	s := "["
	for _, e := range es {
		s += fmt.Sprintf(" %s=%s@%d(deleted %v)", e.Key, e.Value, e.Version, e.Deleted)
	}
	return s + " ]"
}

// A commit is conditional on the epoch: at an older epoch it fails with
// ErrFenced and writes nothing, not even its first rows.
func TestCommit_AtAnOldEpochIsFencedAndWritesNothing(t *testing.T) {
	st, pool := openStore(t)
	e1 := claim(t, st, "s", "m1").Epoch
	commit(t, st, "s", e1, &store.Batch{Version: 1, Entries: []store.Entry{put("k", `"m1"`)}})
	e2 := claim(t, st, "s", "m2").Epoch
	before := read(t, pool, "s")

	err := st.Commit(testCtx(t), "s", e1, &store.Batch{Version: 2,
		Entries: []store.Entry{put("k", `"stale"`), put("new", `1`)},
		Clients: []store.Client{{ID: "c", GroupID: "g", LastMutationID: 9}},
		Groups:  []store.Group{{ID: "g", UserID: "u"}},
	})
	if !errors.Is(err, store.ErrFenced) {
		t.Fatalf("commit at the old epoch: %v, want ErrFenced", err)
	}
	if after := read(t, pool, "s"); !sameRow(before, after) {
		t.Fatalf("a fenced commit changed Postgres:\nbefore %+v\nafter  %+v", before, after)
	}
	// A space nobody claimed cannot be committed to either.
	if err := st.Commit(testCtx(t), "never-claimed", 1, &store.Batch{Version: 1}); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("commit to an unclaimed space: %v, want ErrFenced", err)
	}
	// The new owner commits.
	commit(t, st, "s", e2, &store.Batch{Version: 2, Entries: []store.Entry{put("k", `"m2"`)}})
	if r := read(t, pool, "s"); string(r.entries["k"].Value) != `"m2"` || r.version != 2 {
		t.Fatalf("after the new owner's commit: %+v", r)
	}
}

func sameRow(a, b row) bool {
	return a.version == b.version && a.epoch == b.epoch && a.horizon == b.horizon && a.owner == b.owner &&
		maps.EqualFunc(a.entries, b.entries, entryEq) && maps.Equal(a.lmids, b.lmids) &&
		maps.Equal(a.groups, b.groups)
}

// A commit writes exactly its batch at its version: puts, deletes (as
// tombstones), lastMutationIDs and groups; a group seen again keeps its user.
func TestCommit_WritesTheBatchAtItsVersion(t *testing.T) {
	st, pool := openStore(t)
	e := claim(t, st, "s", "m1").Epoch
	commit(t, st, "s", e, &store.Batch{Version: 1,
		Entries: []store.Entry{put("a", `1`), put("b", `2`)},
		Clients: []store.Client{{ID: "c1", GroupID: "g1", LastMutationID: 1}},
		Groups:  []store.Group{{ID: "g1", UserID: "alice"}},
	})
	commit(t, st, "s", e, &store.Batch{Version: 2,
		Entries: []store.Entry{put("a", `10`), {Key: "b", Deleted: true}},
		Clients: []store.Client{{ID: "c1", GroupID: "g1", LastMutationID: 4}},
		Groups:  []store.Group{{ID: "g1", UserID: "mallory"}},
	})
	// An empty batch moves only the version.
	commit(t, st, "s", e, &store.Batch{Version: 3})
	r := read(t, pool, "s")
	if r.version != 3 {
		t.Fatalf("version %d, want 3", r.version)
	}
	if a := r.entries["a"]; string(a.Value) != "10" || a.Version != 2 || a.Deleted {
		t.Fatalf("a = %+v, want 10 at version 2", a)
	}
	if b := r.entries["b"]; !b.Deleted || b.Value != nil || b.Version != 2 {
		t.Fatalf("b = %+v, want a tombstone at version 2", b)
	}
	if r.lmids["c1"] != 4 {
		t.Fatalf("c1's last_mutation_id = %d, want 4", r.lmids["c1"])
	}
	if g := r.groups["g1"]; g.UserID != "alice" {
		t.Fatalf("group g1 = %+v: a later batch must not change its user", g)
	}
}

// Fencing under races: over many rounds, a commit of the current owner races
// a Claim by the other machine. Whatever the interleaving, exactly one of
// two things happened, as Postgres shows: the commit landed before the claim
// (and the claim loaded it), or it failed with ErrFenced and wrote nothing.
// After the claim the loser can never commit at its epoch again, and only the
// winner's commits are in Postgres.
func TestCommit_RacingAClaimNeverLetsTwoOwnersCommit(t *testing.T) {
	st, pool := openStore(t)
	const rounds = 200
	owners := [2]string{"m1", "m2"}
	owner := 0
	snap := claim(t, st, "s", owners[owner])
	epoch, version := snap.Epoch, snap.Version
	var landed, fenced int
	for i := range rounds {
		other := 1 - owner
		// The owner's commit: its value, and its client's lastMutationID i+1.
		mine := &store.Batch{Version: version + 1,
			Entries: []store.Entry{put("k", fmt.Sprintf(`"%s round %d"`, owners[owner], i))},
			Clients: []store.Client{{ID: "c-" + owners[owner], GroupID: "g", LastMutationID: int64(i + 1)}},
			Groups:  []store.Group{{ID: "g", UserID: "u"}},
		}
		before := read(t, pool, "s")
		var commitErr, claimErr error
		var taken *store.Snapshot
		var wg sync.WaitGroup
		start := make(chan struct{})
		wg.Go(func() { <-start; commitErr = st.Commit(testCtx(t), "s", epoch, mine) })
		wg.Go(func() { <-start; taken, claimErr = st.Claim(testCtx(t), "s", owners[other]) })
		close(start)
		wg.Wait()
		if claimErr != nil {
			t.Fatalf("round %d: claim: %v", i, claimErr)
		}
		if taken.Epoch != epoch+1 {
			t.Fatalf("round %d: claimed at epoch %d, want %d", i, taken.Epoch, epoch+1)
		}
		r := read(t, pool, "s")
		if r.epoch != taken.Epoch || r.owner != owners[other] {
			t.Fatalf("round %d: Postgres says epoch %d owner %s, want %d %s", i, r.epoch, r.owner, taken.Epoch, owners[other])
		}
		switch {
		case commitErr == nil:
			landed++
			// Committed before the claim: in Postgres, and in what the
			// claim loaded.
			if r.version != mine.Version || string(r.entries["k"].Value) != string(mine.Entries[0].Value) || r.lmids[mine.Clients[0].ID] != int64(i+1) {
				t.Fatalf("round %d: the commit succeeded but Postgres holds version %d, k=%s, lmid %d", i, r.version, r.entries["k"].Value, r.lmids[mine.Clients[0].ID])
			}
			if taken.Version != mine.Version || loaded(taken, "k") != string(mine.Entries[0].Value) {
				t.Fatalf("round %d: the commit succeeded before the claim, yet the claim loaded version %d and k=%s", i, taken.Version, loaded(taken, "k"))
			}
		case errors.Is(commitErr, store.ErrFenced):
			fenced++
			// Fenced: nothing of it is in Postgres, nor in the claim.
			before.epoch, before.owner = r.epoch, r.owner
			if !sameRow(before, r) {
				t.Fatalf("round %d: a fenced commit changed Postgres:\nbefore %+v\nafter  %+v", i, before, r)
			}
			if taken.Version != version || loaded(taken, "k") != string(before.entries["k"].Value) {
				t.Fatalf("round %d: the commit was fenced, yet the claim loaded version %d and k=%s", i, taken.Version, loaded(taken, "k"))
			}
		default:
			t.Fatalf("round %d: commit racing a claim: %v, want success or ErrFenced", i, commitErr)
		}
		// The loser's next commit at its epoch is fenced, and changes nothing.
		late := &store.Batch{Version: taken.Version + 1, Entries: []store.Entry{put("k", `"late"`)},
			Clients: []store.Client{{ID: "c-" + owners[owner], GroupID: "g", LastMutationID: 1_000_000}}}
		if err := st.Commit(testCtx(t), "s", epoch, late); !errors.Is(err, store.ErrFenced) {
			t.Fatalf("round %d: the old owner's commit after the claim: %v, want ErrFenced", i, err)
		}
		if after := read(t, pool, "s"); !sameRow(r, after) {
			t.Fatalf("round %d: the old owner's late commit changed Postgres", i)
		}
		owner, epoch, version = other, taken.Epoch, taken.Version
	}
	// The last owner still commits.
	commit(t, st, "s", epoch, &store.Batch{Version: version + 1, Entries: []store.Entry{put("k", `"last"`)}})
	if r := read(t, pool, "s"); string(r.entries["k"].Value) != `"last"` || r.epoch != rounds+1 {
		t.Fatalf("after the rounds: k=%s epoch %d, want \"last\" and %d", r.entries["k"].Value, r.epoch, rounds+1)
	}
	t.Logf("%d rounds: the commit landed before the claim %d times, was fenced %d times", rounds, landed, fenced)
}

// loaded is the value of key in a snapshot ("" if absent).
func loaded(snap *store.Snapshot, key string) string {
	for _, e := range snap.Entries {
		if e.Key == key {
			return string(e.Value)
		}
	}
	return ""
}

// Garbage collection removes tombstones and forgets client groups older than
// their TTLs (and only those), raises the horizon to the newest tombstone it
// removed, and keeps live entries.
func TestCollectGarbage_RemovesOnlyWhatIsOlderThanItsTTL(t *testing.T) {
	st, pool := openStore(t)
	e := claim(t, st, "s", "m1").Epoch
	commit(t, st, "s", e, &store.Batch{Version: 1,
		Entries: []store.Entry{put("live", `1`), put("old1", `1`), put("old2", `1`)},
		Clients: []store.Client{{ID: "c-old", GroupID: "g-old", LastMutationID: 1}},
		Groups:  []store.Group{{ID: "g-old", UserID: "u"}},
	})
	commit(t, st, "s", e, &store.Batch{Version: 2, Entries: []store.Entry{{Key: "old1", Deleted: true}}})
	commit(t, st, "s", e, &store.Batch{Version: 3, Entries: []store.Entry{{Key: "old2", Deleted: true}}})
	storetest.Age(t, pool, "s", time.Hour)
	// Written after the aging: young.
	commit(t, st, "s", e, &store.Batch{Version: 4,
		Entries: []store.Entry{put("young", `1`)},
		Clients: []store.Client{{ID: "c-new", GroupID: "g-new", LastMutationID: 1}},
		Groups:  []store.Group{{ID: "g-new", UserID: "u"}},
	})
	commit(t, st, "s", e, &store.Batch{Version: 5, Entries: []store.Entry{{Key: "young", Deleted: true}}})

	g, err := st.CollectGarbage(testCtx(t), "s", e, time.Minute, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(g.Tombstones)
	if g.Horizon != 3 || !slices.Equal(g.Tombstones, []string{"old1", "old2"}) || !slices.Equal(g.ForgottenGroups, []string{"g-old"}) {
		t.Fatalf("garbage = %+v, want horizon 3, tombstones old1 old2, group g-old", g)
	}
	r := read(t, pool, "s")
	if r.horizon != 3 {
		t.Fatalf("horizon in Postgres %d, want 3", r.horizon)
	}
	if _, ok := r.entries["old1"]; ok {
		t.Fatal("old tombstone old1 still in Postgres")
	}
	if !r.entries["young"].Deleted || string(r.entries["live"].Value) != "1" {
		t.Fatalf("entries after GC: %s, want the live entry and the young tombstone kept", fmtEntries(slices.Collect(maps.Values(r.entries))))
	}
	if _, ok := r.lmids["c-old"]; ok || r.lmids["c-new"] != 1 {
		t.Fatalf("clients after GC: %v, want only c-new", r.lmids)
	}
	if !r.groups["g-old"].Forgotten || r.groups["g-new"].Forgotten {
		t.Fatalf("groups after GC: %+v, want g-old forgotten and g-new kept", r.groups)
	}
	// The next load sees the same: the forgotten group, no old tombstone.
	snap := claim(t, st, "s", "m1")
	if snap.Horizon != 3 || len(snap.Entries) != 2 || len(snap.Clients) != 1 {
		t.Fatalf("claim after GC: horizon %d, %d entries, %d clients; want 3, 2, 1", snap.Horizon, len(snap.Entries), len(snap.Clients))
	}
	// A second round finds nothing more; the horizon does not go down.
	g, err = st.CollectGarbage(testCtx(t), "s", snap.Epoch, time.Minute, time.Minute)
	if err != nil || g.Horizon != 3 || len(g.Tombstones)+len(g.ForgottenGroups) != 0 {
		t.Fatalf("second GC = %+v, %v; want nothing at horizon 3", g, err)
	}
}

// A zero TTL turns that half of garbage collection off; a collector that lost
// the space is fenced and removes nothing.
func TestCollectGarbage_OffAndFenced(t *testing.T) {
	st, pool := openStore(t)
	e := claim(t, st, "s", "m1").Epoch
	commit(t, st, "s", e, &store.Batch{Version: 1,
		Entries: []store.Entry{{Key: "gone", Deleted: true}},
		Clients: []store.Client{{ID: "c", GroupID: "g", LastMutationID: 1}},
		Groups:  []store.Group{{ID: "g", UserID: "u"}},
	})
	storetest.Age(t, pool, "s", time.Hour)
	before := read(t, pool, "s")
	if g, err := st.CollectGarbage(testCtx(t), "s", e, 0, 0); err != nil || len(g.Tombstones)+len(g.ForgottenGroups) != 0 {
		t.Fatalf("GC with both TTLs off = %+v, %v; want nothing", g, err)
	}
	e2 := claim(t, st, "s", "m2").Epoch
	before.epoch, before.owner = e2, "m2"
	if _, err := st.CollectGarbage(testCtx(t), "s", e, time.Minute, time.Minute); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("GC at the old epoch: %v, want ErrFenced", err)
	}
	if after := read(t, pool, "s"); !sameRow(before, after) {
		t.Fatalf("GC changed Postgres while off or fenced:\nbefore %+v\nafter  %+v", before, after)
	}
	// Tombstones only: the group stays.
	if g, err := st.CollectGarbage(testCtx(t), "s", e2, time.Minute, 0); err != nil || !slices.Equal(g.Tombstones, []string{"gone"}) || len(g.ForgottenGroups) != 0 {
		t.Fatalf("GC of tombstones only = %+v, %v", g, err)
	}
}
