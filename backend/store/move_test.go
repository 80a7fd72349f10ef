package store

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"
)

// fill gives space id on st a history: entries (one deleted), two client
// groups (one forgotten, its clients gone) and clients, at versions 1 to 3.
func fill(t *testing.T, st *Store, id string) int64 {
	t.Helper()
	ctx := context.Background()
	epoch := claim(t, st, id, "m1")
	for _, b := range []*Batch{
		put(1, "a", `{"n": 1}`, "c1", 1),
		put(2, "b", `"two"`, "c2", 1),
		{Version: 3, Entries: []Entry{{Key: "a", Deleted: true}, {Key: "ünï/ç", Value: []byte(`[1,2,3]`)}},
			Groups: []Group{{ID: "g-c1", UserID: "u"}}, Clients: []Client{{ID: "c1", GroupID: "g-c1", LastMutationID: 2}}},
	} {
		if err := st.Commit(ctx, id, epoch, b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.pool.Exec(ctx, `UPDATE replica_client_groups SET last_seen = now() - interval '1 hour' WHERE space_id = $1 AND id = 'g-c2'`, id); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CollectGarbage(ctx, id, epoch, 0, time.Minute); err != nil {
		t.Fatal(err)
	}
	return epoch
}

// rowsOf is everything Claim loads of a space, in a comparable form.
func rowsOf(t *testing.T, st *Store, id string) (version, horizon int64, entries map[string]Entry, clients map[string]Client, groups map[string]Group) {
	t.Helper()
	snap, err := st.Claim(context.Background(), id, "reader")
	if err != nil {
		t.Fatal(err)
	}
	entries, clients, groups = map[string]Entry{}, map[string]Client{}, map[string]Group{}
	for _, e := range snap.Entries {
		entries[e.Key] = e
	}
	for _, c := range snap.Clients {
		clients[c.ID] = c
	}
	for _, g := range snap.Groups {
		groups[g.ID] = g
	}
	return snap.Version, snap.Horizon, entries, clients, groups
}

func TestMove_ExportImportVerifyDelete(t *testing.T) {
	ctx := context.Background()
	from, _ := openStore(t, Config{})
	to, _ := openStore(t, Config{})
	owner := fill(t, from, "s1")
	fill(t, from, "other") // another space on the same cluster, untouched by the move

	c, err := from.Export(ctx, "s1", "mover")
	if err != nil {
		t.Fatal(err)
	}
	if c.Epoch <= owner || c.Version != 3 || len(c.Entries) != 3 || len(c.Clients) != 1 || len(c.Groups) != 2 {
		t.Fatalf("export: epoch %d (owner's %d), version %d, %d entries, %d clients, %d groups",
			c.Epoch, owner, c.Version, len(c.Entries), len(c.Clients), len(c.Groups))
	}
	// The owner is fenced from the export on.
	if err := from.Commit(ctx, "s1", owner, put(4, "late", `1`, "c1", 3)); !errors.Is(err, ErrFenced) {
		t.Fatalf("the old owner's commit after the export: %v, want ErrFenced", err)
	}

	epoch, err := to.Import(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if epoch <= c.Epoch {
		t.Fatalf("imported at epoch %d, not above the export's %d", epoch, c.Epoch)
	}
	for name, st := range map[string]*Store{"source": from, "target": to} {
		if sum, err := st.Checksum(ctx, "s1"); err != nil || sum != c.Sum {
			t.Fatalf("%s checksum %+v, %v; export's %+v", name, sum, err, c.Sum)
		}
	}
	v1, h1, e1, c1, g1 := rowsOf(t, from, "s1")
	v2, h2, e2, c2, g2 := rowsOf(t, to, "s1")
	if v1 != v2 || h1 != h2 || !maps.Equal(c1, c2) || !maps.Equal(g1, g2) ||
		!maps.EqualFunc(e1, e2, func(a, b Entry) bool {
			return a.Key == b.Key && string(a.Value) == string(b.Value) && a.Version == b.Version && a.Deleted == b.Deleted
		}) {
		t.Fatalf("source and target differ:\n%d %d %v %v %v\n%d %d %v %v %v", v1, h1, e1, c1, g1, v2, h2, e2, c2, g2)
	}
	if !g2["g-c2"].Forgotten || e2["a"].Value != nil || !e2["a"].Deleted {
		t.Fatalf("forgotten group or tombstone not copied: %v %v", g2, e2)
	}
	// Timestamps that expiry reads come along.
	var fromTS, toTS time.Time
	q := `SELECT max(last_seen) FROM replica_client_groups WHERE space_id = 's1' AND id = 'g-c2'`
	if err := from.pool.QueryRow(ctx, q).Scan(&fromTS); err != nil {
		t.Fatal(err)
	}
	if err := to.pool.QueryRow(ctx, q).Scan(&toTS); err != nil {
		t.Fatal(err)
	}
	if !fromTS.Equal(toTS) {
		t.Fatalf("last_seen %v on the target, %v on the source", toTS, fromTS)
	}

	// A checksum sees a changed value.
	if _, err := to.pool.Exec(ctx, `UPDATE replica_entries SET value = '"2"' WHERE space_id = 's1' AND key = 'b'`); err != nil {
		t.Fatal(err)
	}
	if sum, _ := to.Checksum(ctx, "s1"); sum == c.Sum {
		t.Fatal("the checksum did not change with a value")
	}

	// Delete: refused while the version differs, then done; again is a no-op.
	if err := from.Delete(ctx, "s1", c.Version-1); !errors.Is(err, ErrChanged) {
		t.Fatalf("delete at an older version: %v, want ErrChanged", err)
	}
	if err := from.Delete(ctx, "s1", rowsVersion(t, from, "s1")); err != nil {
		t.Fatal(err)
	}
	if sum, err := from.Checksum(ctx, "s1"); err != nil || sum.Version != -1 || sum.Entries+sum.Clients+sum.Groups != 0 {
		t.Fatalf("after delete the source holds %+v, %v", sum, err)
	}
	if err := from.Delete(ctx, "s1", 3); err != nil {
		t.Fatalf("delete of a space with no rows: %v", err)
	}
	if sum, _ := from.Checksum(ctx, "other"); sum.Entries != 3 {
		t.Fatalf("the other space lost rows: %+v", sum)
	}
}

func rowsVersion(t *testing.T, st *Store, id string) int64 {
	t.Helper()
	sum, err := st.Checksum(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return sum.Version
}

// TestImport_EpochOnlyGrows: a target that already holds the space (a copy
// left behind, and an owner that claimed it many times) gets the import at
// an epoch above all of it, so that owner cannot commit into the copy, and
// nothing of the old copy stays.
func TestImport_EpochOnlyGrows(t *testing.T) {
	ctx := context.Background()
	from, _ := openStore(t, Config{})
	to, _ := openStore(t, Config{})
	fill(t, from, "s1")
	var stale int64
	for range 10 {
		stale = claim(t, to, "s1", "stale")
	}
	if err := to.Commit(ctx, "s1", stale, put(7, "junk", `true`, "cx", 5)); err != nil {
		t.Fatal(err)
	}
	c, err := from.Export(ctx, "s1", "mover")
	if err != nil {
		t.Fatal(err)
	}
	if c.Epoch >= stale {
		t.Fatalf("test setup: the source's epoch %d should be below the target's %d", c.Epoch, stale)
	}
	epoch, err := to.Import(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if epoch <= stale {
		t.Fatalf("imported at epoch %d, not above the target's %d", epoch, stale)
	}
	if err := to.Commit(ctx, "s1", stale, put(4, "junk2", `true`, "cx", 6)); !errors.Is(err, ErrFenced) {
		t.Fatalf("the stale owner's commit after the import: %v, want ErrFenced", err)
	}
	if sum, err := to.Checksum(ctx, "s1"); err != nil || sum != c.Sum {
		t.Fatalf("target %+v, %v; export %+v", sum, err, c.Sum)
	}
	if snap, err := to.Claim(ctx, "s1", "next"); err != nil || snap.Epoch != epoch+1 {
		t.Fatalf("claim after the import: %+v, %v; want epoch %d", snap, err, epoch+1)
	}
	_, _, entries, _, _ := rowsOf(t, to, "s1")
	if keys := slices.Sorted(maps.Keys(entries)); !slices.Equal(keys, []string{"a", "b", "ünï/ç"}) {
		t.Fatalf("target keys %v", keys)
	}
}

// TestExport_EmptySpace: a space that never had rows on its cluster exports
// as empty and imports as a space at version 0.
func TestExport_EmptySpace(t *testing.T) {
	ctx := context.Background()
	from, _ := openStore(t, Config{})
	to, _ := openStore(t, Config{})
	c, err := from.Export(ctx, "new", "mover")
	if err != nil || c.Version != 0 || len(c.Entries) != 0 || c.Sum.Entries != 0 {
		t.Fatalf("export of a new space: %+v, %v", c, err)
	}
	if _, err := to.Import(ctx, c); err != nil {
		t.Fatal(err)
	}
	if sum, err := to.Checksum(ctx, "new"); err != nil || sum != c.Sum {
		t.Fatalf("target %+v, %v; export %+v", sum, err, c.Sum)
	}
}
