package ops_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/backend/store"
	"github.com/spaceport-sync/spaceport/router/ops"
)

// clusterEnv is a directory on cluster main and the stores of main and b (two databases), with an Ops that
// moves spaces between them.
type clusterEnv struct {
	dir    *directory.Directory
	stores map[string]*store.Store
	ops    *ops.Ops
}

func newClusterEnv(t *testing.T) *clusterEnv {
	t.Helper()
	ctx := context.Background()
	e := &clusterEnv{stores: map[string]*store.Store{}}
	for _, name := range []string{"main", "b"} {
		pool, err := pgxpool.New(ctx, pgtest.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		if e.stores[name], err = store.Open(ctx, pool); err != nil {
			t.Fatal(err)
		}
		if name == "main" {
			if e.dir, err = directory.Open(ctx, pool, directory.Config{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	open := func(_ context.Context, name string) (*store.Store, error) {
		if st, ok := e.stores[name]; ok {
			return st, nil
		}
		return nil, fmt.Errorf("cluster %s: not configured", name)
	}
	var err error
	if e.ops, err = ops.New(ops.Config{Directory: e.dir, OpenCluster: open}); err != nil {
		t.Fatal(err)
	}
	register(t, e.dir, "m1")
	return e
}

// owner claims space id on cluster as a backend would and commits n increments of client c; it returns the
// claim's epoch.
func (e *clusterEnv) owner(t *testing.T, cluster, id string, n int) int64 {
	t.Helper()
	ctx := context.Background()
	st := e.stores[cluster]
	snap, err := st.Claim(ctx, id, "m1")
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		b := &store.Batch{Version: snap.Version + int64(i),
			Entries: []store.Entry{{Key: "counter", Value: fmt.Appendf(nil, "%d", i)}, {Key: fmt.Sprintf("k%d", i), Value: []byte(`"x"`)}},
			Groups:  []store.Group{{ID: "g1", UserID: "u1"}},
			Clients: []store.Client{{ID: "c1", GroupID: "g1", LastMutationID: int64(i)}}}
		if err := st.Commit(ctx, id, snap.Epoch, b); err != nil {
			t.Fatal(err)
		}
	}
	return snap.Epoch
}

func (e *clusterEnv) sum(t *testing.T, cluster, id string) store.Checksum {
	t.Helper()
	sum, err := e.stores[cluster].Checksum(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func (e *clusterEnv) lookup(t *testing.T, id string) directory.Space {
	t.Helper()
	sp, err := e.dir.Lookup(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

func TestMoveSpaceToCluster_CopyVerifySwitchDelete(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	if _, err := e.dir.CreateSpace(ctx, "s", app); err != nil {
		t.Fatal(err)
	}
	epoch := e.owner(t, "main", "s", 5)
	before := e.sum(t, "main", "s")

	mv, err := e.ops.MoveSpaceToCluster(ctx, "s", "b")
	if err != nil {
		t.Fatal(err)
	}
	if mv.From != "main" || mv.To != "b" || mv.Version != 5 || mv.Entries != 6 || mv.Clients != 1 || mv.Groups != 1 || mv.Epoch <= epoch {
		t.Fatalf("move = %+v; want main -> b at version 5 with 6 entries, 1 client, 1 group, epoch above %d", mv, epoch)
	}
	if sp := e.lookup(t, "s"); sp.Cluster != "b" || sp.MovingTo != "" {
		t.Fatalf("directory after the move: %+v", sp)
	}
	if got := e.sum(t, "b", "s"); got != before {
		t.Fatalf("b holds %+v, main held %+v", got, before)
	}
	if got := e.sum(t, "main", "s"); got.Version != -1 || got.Entries+got.Clients+got.Groups != 0 {
		t.Fatalf("main still holds %+v", got)
	}
	// The owner on main is fenced: its commit fails, nothing is written anywhere.
	err = e.stores["main"].Commit(ctx, "s", epoch, &store.Batch{Version: 6, Entries: []store.Entry{{Key: "late", Value: []byte(`1`)}}})
	if !errors.Is(err, store.ErrFenced) {
		t.Fatalf("the old owner's commit: %v, want ErrFenced", err)
	}
	if moves, err := e.dir.ClusterMoves(ctx); err != nil || len(moves) != 0 {
		t.Fatalf("moves in progress after the move: %+v, %v", moves, err)
	}

	// And back, above every epoch b saw.
	e.owner(t, "b", "s", 0)
	back, err := e.ops.MoveSpaceToCluster(ctx, "s", "main")
	if err != nil {
		t.Fatal(err)
	}
	if back.Epoch <= mv.Epoch {
		t.Fatalf("moved back at epoch %d, not above %d", back.Epoch, mv.Epoch)
	}
	if got := e.sum(t, "main", "s"); got != before {
		t.Fatalf("main holds %+v after the move back, held %+v", got, before)
	}
	if _, err := e.ops.MoveSpaceToCluster(ctx, "s", "main"); !errors.Is(err, directory.ErrSameCluster) {
		t.Fatalf("move to the cluster it is on: %v, want ErrSameCluster", err)
	}
}

// TestMoveSpaceToCluster_FailureLeavesItServedFromTheOldCluster: a move that fails after the copy, just before
// the switch, is undone: not moving, on main with every row, no copy left on b, and a new owner claims and
// commits on main.
func TestMoveSpaceToCluster_FailureLeavesItServedFromTheOldCluster(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	if _, err := e.dir.CreateSpace(ctx, "s", app); err != nil {
		t.Fatal(err)
	}
	e.owner(t, "main", "s", 3)
	before := e.sum(t, "main", "s")

	e.ops.SetBeforeSwitch(func() error { return errors.New("injected failure before the switch") })
	_, err := e.ops.MoveSpaceToCluster(ctx, "s", "b")
	if err == nil || !strings.Contains(err.Error(), "undone: it stays on main") || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("failed move: %v", err)
	}
	if sp := e.lookup(t, "s"); sp.Cluster != "main" || sp.MovingTo != "" {
		t.Fatalf("directory after the failed move: %+v", sp)
	}
	if got := e.sum(t, "main", "s"); got != before {
		t.Fatalf("main holds %+v after the failed move, held %+v", got, before)
	}
	if got := e.sum(t, "b", "s"); got.Version != -1 || got.Entries != 0 {
		t.Fatalf("b kept a partial copy: %+v", got)
	}
	e.owner(t, "main", "s", 1) // claims above the mover's fence, commits
	if got := e.sum(t, "main", "s"); got.Version != before.Version+1 {
		t.Fatalf("after a new owner's commit main is at version %d, want %d", got.Version, before.Version+1)
	}

	// Refusals change nothing: an unknown target, a target it is on, a move already running.
	e.ops.SetBeforeSwitch(nil)
	for _, tc := range []struct {
		to   string
		want string
	}{{"c", "cluster c: not configured"}, {"Bad", "invalid cluster name"}, {"main", "already on that cluster"}} {
		if _, err := e.ops.MoveSpaceToCluster(ctx, "s", tc.to); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("move to %q: %v, want %q", tc.to, err, tc.want)
		}
	}
	unlock, err := e.dir.LockSpaceMove(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.ops.MoveSpaceToCluster(ctx, "s", "b"); !errors.Is(err, directory.ErrLockHeld) {
		t.Fatalf("move while another mover holds the lock: %v, want ErrLockHeld", err)
	}
	if _, err := e.ops.AbortClusterMove(ctx, "s"); !errors.Is(err, directory.ErrLockHeld) {
		t.Fatalf("abort while a mover holds the lock: %v, want ErrLockHeld", err)
	}
	unlock()
	if sp := e.lookup(t, "s"); sp.Cluster != "main" || sp.MovingTo != "" {
		t.Fatalf("directory after refused moves: %+v", sp)
	}
}

// TestMoveSpaceToCluster_DiedMoverResumesOrAborts: a mark left by a mover that died is cleared by
// AbortClusterMove, or finished by running the same move again.
func TestMoveSpaceToCluster_DiedMoverResumesOrAborts(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	for _, id := range []string{"s1", "s2"} {
		if _, err := e.dir.CreateSpace(ctx, id, app); err != nil {
			t.Fatal(err)
		}
		e.owner(t, "main", id, 2)
		if _, err := e.dir.BeginClusterMove(ctx, id, "b"); err != nil {
			t.Fatal(err)
		}
	}
	sp, err := e.ops.AbortClusterMove(ctx, "s1")
	if err != nil || sp.Cluster != "main" || sp.MovingTo != "" {
		t.Fatalf("abort = %+v, %v", sp, err)
	}
	if _, err := e.ops.MoveSpaceToCluster(ctx, "s2", "b"); err != nil {
		t.Fatalf("resumed move: %v", err)
	}
	if sp := e.lookup(t, "s2"); sp.Cluster != "b" || sp.MovingTo != "" {
		t.Fatalf("after the resumed move: %+v", sp)
	}
	if got := e.sum(t, "b", "s2"); got.Version != 2 || got.Entries != 3 {
		t.Fatalf("b holds %+v", got)
	}
}

// TestMoveSpaceToCluster_SpaceDeletedDuringTheMove: the switch finds no space; the copy goes, the old rows stay (as
// a delete leaves a space's data).
func TestMoveSpaceToCluster_SpaceDeletedDuringTheMove(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	if _, err := e.dir.CreateSpace(ctx, "s", app); err != nil {
		t.Fatal(err)
	}
	e.owner(t, "main", "s", 2)
	before := e.sum(t, "main", "s")
	e.ops.SetBeforeSwitch(func() error {
		_, err := e.dir.DeleteSpace(ctx, "s")
		return err
	})
	if _, err := e.ops.MoveSpaceToCluster(ctx, "s", "b"); !errors.Is(err, directory.ErrSpaceNotFound) {
		t.Fatalf("move of a space deleted meanwhile: %v, want ErrSpaceNotFound", err)
	}
	if got := e.sum(t, "b", "s"); got.Version != -1 {
		t.Fatalf("b kept the copy: %+v", got)
	}
	if got := e.sum(t, "main", "s"); got != before {
		t.Fatalf("main holds %+v, held %+v", got, before)
	}
}
