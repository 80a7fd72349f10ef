package directory_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
)

func TestOpen_InvalidCluster(t *testing.T) {
	_, pool := newDirectory(t, directory.Config{})
	for _, name := range []string{"", "Main", "1st", "a b", "x=y", "abcdefghijklmnopqrstuvwxyz0123456"} {
		_, err := directory.Open(context.Background(), pool, directory.Config{Clusters: []string{"main", name}})
		if !errors.Is(err, directory.ErrInvalidCluster) {
			t.Errorf("Open with cluster %q: %v, want ErrInvalidCluster", name, err)
		}
	}
}

func TestCreateSpace_DefaultClusterIsMain(t *testing.T) {
	d, _ := newDirectory(t, directory.Config{})
	register(t, d, "m1")
	if sp := create(t, d, "s1"); sp.Cluster != directory.DefaultCluster || sp.MovingTo != "" {
		t.Fatalf("created %+v; want cluster %s, not moving", sp, directory.DefaultCluster)
	}
	if sp, err := d.Lookup(context.Background(), "s1"); err != nil || sp.Cluster != directory.DefaultCluster {
		t.Fatalf("Lookup = %+v, %v", sp, err)
	}
}

// TestCreateSpace_FewestSpacesCluster: new spaces, shared or dedicated, go to
// the configured cluster with the fewest spaces, exactly under concurrency;
// a cluster that is not configured receives none.
func TestCreateSpace_FewestSpacesCluster(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	d, _ := openDirectory(t, url, directory.Config{Clusters: []string{"main", "b", "c"}})
	register(t, d, "m1", "m2")

	// Ties go by name: b, c, main.
	for i, want := range []string{"b", "c", "main", "b"} {
		if sp := create(t, d, fmt.Sprintf("s%d", i)); sp.Cluster != want {
			t.Fatalf("space %d on cluster %s, want %s", i, sp.Cluster, want)
		}
	}
	sp, err := d.CreateDedicatedSpace(ctx, "ded", directory.Machine{ID: "d1", App: app})
	if err != nil || sp.Cluster != "c" {
		t.Fatalf("dedicated create = %+v, %v; want cluster c", sp, err)
	}

	// 30 more at once, shared and dedicated mixed: every cluster ends even.
	var wg sync.WaitGroup
	errs := make(chan error, 30)
	for i := range 30 {
		wg.Go(func() {
			var err error
			if i%3 == 0 {
				_, err = d.CreateDedicatedSpace(ctx, fmt.Sprintf("ded%d", i), directory.Machine{ID: fmt.Sprintf("d%d", i+2), App: app})
			} else {
				_, err = d.CreateSpace(ctx, fmt.Sprintf("c%d", i), app)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := clusterCounts(t, d); !maps3(got, 12, 12, 11) {
		t.Fatalf("spaces per cluster %v; want 12, 12 and 11 over main, b and c", got)
	}

	// Another router that places on main only.
	only, _ := openDirectory(t, url, directory.Config{Clusters: []string{"main"}})
	if sp := create(t, only, "main-only"); sp.Cluster != "main" {
		t.Fatalf("with Clusters [main], placed on %s", sp.Cluster)
	}
	// Deletes count too.
	if _, err := d.DeleteSpace(ctx, "main-only"); err != nil {
		t.Fatal(err)
	}
	if got := clusterCounts(t, d); !maps3(got, 12, 12, 11) {
		t.Fatalf("after a delete, spaces per cluster %v", got)
	}
}

// maps3 reports whether counts of main, b and c are want in some order.
func maps3(got map[string]int64, want ...int64) bool {
	have := []int64{got["main"], got["b"], got["c"]}
	slices.Sort(have)
	slices.Sort(want)
	return slices.Equal(have, want) && len(got) == 3
}

func clusterCounts(t *testing.T, d *directory.Directory) map[string]int64 {
	t.Helper()
	list, err := d.ListClusters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, c := range list {
		out[c.Name] = c.Spaces
	}
	return out
}

func TestClusterMove_BeginFinishAbort(t *testing.T) {
	ctx := context.Background()
	d, _ := newDirectory(t, directory.Config{})
	register(t, d, "m1")
	create(t, d, "s1")
	create(t, d, "s2")
	l := startListener(t, d)
	l.waitReset(t)

	// Bad input and impossible moves.
	if _, err := d.BeginClusterMove(ctx, "s1", "Bad Name"); !errors.Is(err, directory.ErrInvalidCluster) {
		t.Fatalf("begin to a bad name: %v", err)
	}
	if _, err := d.BeginClusterMove(ctx, "no/such", "b"); !errors.Is(err, directory.ErrInvalidSpaceID) {
		t.Fatalf("begin of a bad id: %v", err)
	}
	if _, err := d.BeginClusterMove(ctx, "nope", "b"); !errors.Is(err, directory.ErrSpaceNotFound) {
		t.Fatalf("begin of an unknown space: %v", err)
	}
	if _, err := d.BeginClusterMove(ctx, "s1", "main"); !errors.Is(err, directory.ErrSameCluster) {
		t.Fatalf("begin to its own cluster: %v", err)
	}

	// Begin: announced, served nowhere, listed.
	sp, err := d.BeginClusterMove(ctx, "s1", "b")
	if err != nil || sp.Cluster != "main" || sp.MovingTo != "b" {
		t.Fatalf("begin = %+v, %v", sp, err)
	}
	l.waitChange(t, "s1")
	if got, err := d.NotOn(ctx, "m1", []string{"s1", "s2"}); err != nil || !slices.Equal(got, []string{"s1"}) {
		t.Fatalf("NotOn during the move = %v, %v; want [s1]", got, err)
	}
	if _, err := d.BeginClusterMove(ctx, "s1", "b"); err != nil {
		t.Fatalf("begin again to the same cluster (resume): %v", err)
	}
	if _, err := d.BeginClusterMove(ctx, "s1", "c"); !errors.Is(err, directory.ErrMoveInProgress) {
		t.Fatalf("begin to another cluster during a move: %v", err)
	}
	moves, err := d.ClusterMoves(ctx)
	if err != nil || len(moves) != 1 || moves[0].Space != "s1" || moves[0].From != "main" || moves[0].To != "b" || moves[0].Since.IsZero() {
		t.Fatalf("ClusterMoves = %+v, %v", moves, err)
	}

	// Finish only from where it is, to where it was going.
	if _, err := d.FinishClusterMove(ctx, "s1", "main", "c"); !errors.Is(err, directory.ErrPlacementChanged) {
		t.Fatalf("finish to another cluster: %v", err)
	}
	if _, err := d.FinishClusterMove(ctx, "s2", "main", "b"); !errors.Is(err, directory.ErrPlacementChanged) {
		t.Fatalf("finish of a space not moving: %v", err)
	}
	sp, err = d.FinishClusterMove(ctx, "s1", "main", "b")
	if err != nil || sp.Cluster != "b" || sp.MovingTo != "" {
		t.Fatalf("finish = %+v, %v", sp, err)
	}
	l.waitChange(t, "s1")
	if got, err := d.NotOn(ctx, "m1", []string{"s1", "s2"}); err != nil || len(got) != 0 {
		t.Fatalf("NotOn after the move = %v, %v; want none", got, err)
	}
	// A space still loaded from the cluster it left is an old copy.
	got, err := d.NotOnCluster(ctx, "m1", []string{"s1", "s2", "s1"}, []string{"main", "main", ""})
	if err != nil || !slices.Equal(got, []string{"s1"}) {
		t.Fatalf("NotOnCluster with s1 loaded from main = %v, %v; want [s1]", got, err)
	}
	if _, err := d.NotOnCluster(ctx, "m1", []string{"s1"}, []string{"a", "b"}); err == nil {
		t.Fatal("NotOnCluster with mismatched lengths succeeded")
	}
	if got := clusterCounts(t, d); got["main"] != 1 || got["b"] != 1 {
		t.Fatalf("spaces per cluster after the move: %v", got)
	}

	// Abort: back to served from where it is; repeating it is harmless.
	if _, err := d.BeginClusterMove(ctx, "s2", "b"); err != nil {
		t.Fatal(err)
	}
	l.waitChange(t, "s2")
	for range 2 {
		sp, err = d.AbortClusterMove(ctx, "s2", "")
		if err != nil || sp.Cluster != "main" || sp.MovingTo != "" {
			t.Fatalf("abort = %+v, %v", sp, err)
		}
	}
	l.waitChange(t, "s2")
	if moves, err := d.ClusterMoves(ctx); err != nil || len(moves) != 0 {
		t.Fatalf("ClusterMoves after abort = %+v, %v", moves, err)
	}
	if _, err := d.AbortClusterMove(ctx, "nope", ""); !errors.Is(err, directory.ErrSpaceNotFound) {
		t.Fatalf("abort of an unknown space: %v", err)
	}
	// An abort aimed at another move leaves this one alone.
	if _, err := d.BeginClusterMove(ctx, "s2", "b"); err != nil {
		t.Fatal(err)
	}
	if sp, err := d.AbortClusterMove(ctx, "s2", "c"); err != nil || sp.MovingTo != "b" {
		t.Fatalf("abort of a move to c while moving to b = %+v, %v", sp, err)
	}
}

func TestLockSpaceMove(t *testing.T) {
	ctx := context.Background()
	d, _ := newDirectory(t, directory.Config{})
	unlock, err := d.LockSpaceMove(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.LockSpaceMove(ctx, "s1"); !errors.Is(err, directory.ErrLockHeld) {
		t.Fatalf("second lock of s1: %v, want ErrLockHeld", err)
	}
	other, err := d.LockSpaceMove(ctx, "s2")
	if err != nil {
		t.Fatalf("lock of another space: %v", err)
	}
	other()
	unlock()
	again, err := d.LockSpaceMove(ctx, "s1")
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	again()
}
