package ops_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/fly/machines"
	"github.com/spaceport-sync/spaceport/fly/stacktest"
	"github.com/spaceport-sync/spaceport/router/ops"
)

// testScaleUpAndDown scales the backend app of a stack with two machines through flylocal's Machines API: up,
// a clone of a running machine that registers itself and receives spaces; down, the machine with the fewest
// spaces is drained and destroyed, and every space is left on a machine that exists.
func testScaleUpAndDown(t *testing.T, bins stacktest.Binaries) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*loadTimeout)
	defer cancel()
	dbURL := pgtest.NewDatabase(t)
	srv := openStack(t, bins, dbURL, 2)
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	dir, err := directory.Open(ctx, pool, directory.Config{})
	if err != nil {
		t.Fatal(err)
	}
	api, err := machines.New(machines.Config{BaseURL: srv.APIURL()})
	if err != nil {
		t.Fatal(err)
	}
	o, err := ops.New(ops.Config{Directory: dir, Machines: api, Grace: -1})
	if err != nil {
		t.Fatal(err)
	}
	stacktest.WaitUntil(t, loadTimeout, "2 backend machines live", func() error {
		if n := liveCount(ctx, dir); n != 2 {
			return fmt.Errorf("%d live", n)
		}
		return nil
	})

	res, err := o.Scale(ctx, 3, ops.ScaleOptions{})
	if err != nil || len(res.Created) != 1 {
		t.Fatalf("Scale to 3: %+v, %v", res, err)
	}
	added := res.Created[0]
	if n := liveCount(ctx, dir); n != 3 {
		t.Fatalf("after scaling up, %d machines are live", n)
	}
	if res, err := o.Scale(ctx, 4, ops.ScaleOptions{DownOnly: true}); err != nil || len(res.Created) != 0 {
		t.Fatalf("Scale -down-only to 4: %+v, %v", res, err)
	}
	placed := map[string]int{}
	for i := range 6 {
		sp, err := o.CreateSpace(ctx, fmt.Sprintf("scale-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		placed[sp.Machine]++
	}
	if placed[added] != 2 {
		t.Fatalf("spaces per machine %v: the new machine should get its share", placed)
	}

	res, err = o.Scale(ctx, 2, ops.ScaleOptions{})
	if err != nil || len(res.Drain.Destroyed) != 1 || len(res.Drain.Moves) != 2 {
		t.Fatalf("Scale to 2: %+v, %v", res, err)
	}
	gone := res.Drain.Destroyed[0]
	if _, err := api.Get(ctx, ops.DefaultApp, gone); !errors.Is(err, machines.ErrNotFound) {
		t.Fatalf("the destroyed machine: %v", err)
	}
	ms, err := api.List(ctx, ops.DefaultApp, machines.ListOptions{})
	if err != nil || len(ms) != 2 {
		t.Fatalf("machines after scaling down: %v, %v", ms, err)
	}
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.ID)
	}
	spaces, err := dir.ListSpaces(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, sp := range spaces {
		if !slices.Contains(ids, sp.Machine) {
			t.Fatalf("space %s is on machine %s, which is gone", sp.ID, sp.Machine)
		}
	}
	if _, err := o.Scale(ctx, 0, ops.ScaleOptions{}); !errors.Is(err, ops.ErrLastMachine) {
		t.Fatalf("Scale to 0: %v", err)
	}
}

func liveCount(ctx context.Context, dir *directory.Directory) int {
	ms, err := dir.ListMachines(ctx)
	if err != nil {
		return -1
	}
	n := 0
	for _, m := range ms {
		if m.Live {
			n++
		}
	}
	return n
}
