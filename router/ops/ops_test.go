package ops_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/pglocal/pgtest"
	"github.com/spaceport-sync/spaceport/router/ops"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const app = ops.DefaultApp

// openDirectory opens a directory on a fresh database.
func openDirectory(t *testing.T) *directory.Directory {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	dir, err := directory.Open(ctx, pool, directory.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// register registers backend machines, live.
func register(t *testing.T, dir *directory.Directory, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := dir.RegisterMachine(context.Background(), directory.Machine{ID: id, App: app, Region: "local"}); err != nil {
			t.Fatal(err)
		}
	}
}

// place puts n spaces named prefix-i on machine, whatever placement would choose.
func place(t *testing.T, dir *directory.Directory, machine, prefix string, n int) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		id := fmt.Sprintf("%s-%02d", prefix, i)
		if _, err := dir.CreateSpace(ctx, id, app); err != nil {
			t.Fatal(err)
		}
		if _, err := dir.MoveSpace(ctx, id, machine); err != nil {
			t.Fatal(err)
		}
	}
}

// counts returns the space count of each machine of the app.
func counts(t *testing.T, dir *directory.Directory) map[string]int {
	t.Helper()
	ms, err := dir.ListMachines(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, m := range ms {
		out[m.ID] = m.Spaces
	}
	return out
}

func newOps(t *testing.T, dir *directory.Directory) *ops.Ops {
	t.Helper()
	o, err := ops.New(ops.Config{Directory: dir})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestPlanRebalance(t *testing.T) {
	for _, tc := range []struct {
		counts []int
		moves  int
	}{
		{[]int{5, 1, 0}, 3},
		{[]int{3, 3, 3}, 0},
		{[]int{4, 0}, 2},
		{[]int{2, 1, 0}, 1},
		{[]int{3, 2, 0}, 1}, // 2 and 2 keep the extra spaces; 1 moves to the empty machine
		{[]int{7}, 0},
		{[]int{0, 0, 9, 0}, 6},
		{[]int{1, 0}, 0},
	} {
		loads := make([]ops.Load, len(tc.counts))
		for i, n := range tc.counts {
			loads[i].Machine = fmt.Sprintf("m%d", i)
			for j := range n {
				loads[i].Spaces = append(loads[i].Spaces, fmt.Sprintf("m%d-s%d", i, j))
			}
		}
		moves := ops.PlanRebalance(loads)
		if len(moves) != tc.moves {
			t.Errorf("%v: %d moves %v, want %d", tc.counts, len(moves), moves, tc.moves)
		}
		checkBalanced(t, loads, moves)
		if again := ops.PlanRebalance(loads); !slices.Equal(again, moves) {
			t.Errorf("%v: two plans differ: %v and %v", tc.counts, moves, again)
		}
	}
}

// TestPlanRebalance_Random checks random loads: the result is balanced, no machine both gives and receives, and
// no space moves twice, which together make the plan the shortest.
func TestPlanRebalance_Random(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		loads := make([]ops.Load, 1+r.IntN(8))
		for i := range loads {
			loads[i].Machine = fmt.Sprintf("m%d", i)
			for j := range r.IntN(20) {
				loads[i].Spaces = append(loads[i].Spaces, fmt.Sprintf("m%d-s%d", i, j))
			}
		}
		checkBalanced(t, loads, ops.PlanRebalance(loads))
	}
}

func checkBalanced(t *testing.T, loads []ops.Load, moves []ops.Move) {
	t.Helper()
	where := map[string]string{}
	count := map[string]int{}
	for _, l := range loads {
		count[l.Machine] = len(l.Spaces)
		for _, s := range l.Spaces {
			where[s] = l.Machine
		}
	}
	gives, gets, moved := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, mv := range moves {
		if where[mv.Space] != mv.From || moved[mv.Space] || mv.From == mv.To {
			t.Fatalf("%v: bad move %+v", loads, mv)
		}
		moved[mv.Space] = true
		gives[mv.From], gets[mv.To] = true, true
		count[mv.From]--
		count[mv.To]++
	}
	for m := range gives {
		if gets[m] {
			t.Fatalf("%v: machine %s both gives and receives: %v", loads, m, moves)
		}
	}
	vals := slices.Collect(maps.Values(count))
	if len(vals) > 0 && slices.Max(vals)-slices.Min(vals) > 1 {
		t.Fatalf("%v: after %v the counts are %v", loads, moves, count)
	}
}

func TestRebalance(t *testing.T) {
	t.Parallel()
	dir := openDirectory(t)
	ctx := context.Background()
	register(t, dir, "m1", "m2", "m3", "parked")
	place(t, dir, "m1", "a", 7)
	place(t, dir, "parked", "p", 4)
	// A machine Fly stopped for being idle keeps its spaces: a replay wakes it.
	if err := dir.SetMachineState(ctx, "parked", directory.MachineStopped); err != nil {
		t.Fatal(err)
	}
	o := newOps(t, dir)

	plan, err := o.Rebalance(ctx, true)
	if err != nil || len(plan) != 4 {
		t.Fatalf("dry run: %v, %v; want 4 moves", plan, err)
	}
	if c := counts(t, dir); c["m1"] != 7 {
		t.Fatalf("a dry run changed the directory: %v", c)
	}
	moves, err := o.Rebalance(ctx, false)
	if err != nil || !slices.Equal(moves, plan) {
		t.Fatalf("Rebalance: %v, %v; the dry run planned %v", moves, err, plan)
	}
	if c := counts(t, dir); c["m1"] != 3 || c["m2"] != 2 || c["m3"] != 2 || c["parked"] != 4 {
		t.Fatalf("after rebalance: %v", c)
	}
	for _, mv := range moves {
		sp, err := dir.Lookup(ctx, mv.Space)
		if err != nil || sp.Machine != mv.To {
			t.Fatalf("space %s is on %s (%v), moved to %s", mv.Space, sp.Machine, err, mv.To)
		}
	}
	if again, err := o.Rebalance(ctx, false); err != nil || len(again) != 0 {
		t.Fatalf("a second rebalance moved %v (%v)", again, err)
	}
}

func TestDrain_KeepRunningMovesEverySpaceAndCordons(t *testing.T) {
	t.Parallel()
	dir := openDirectory(t)
	ctx := context.Background()
	register(t, dir, "m1", "m2", "m3")
	place(t, dir, "m1", "a", 5)
	place(t, dir, "m2", "b", 1)
	o := newOps(t, dir)

	res, err := o.Drain(ctx, []string{"m1"}, ops.DrainOptions{KeepRunning: true})
	if err != nil || len(res.Moves) != 5 || len(res.Stopped) != 0 {
		t.Fatalf("Drain: %+v, %v", res, err)
	}
	c := counts(t, dir)
	if c["m1"] != 0 || c["m2"]+c["m3"] != 6 || c["m2"]-c["m3"] > 1 || c["m3"]-c["m2"] > 1 {
		t.Fatalf("after the drain: %v", c)
	}
	// Cordoned: new spaces go elsewhere.
	for i := range 6 {
		sp, err := o.CreateSpace(ctx, fmt.Sprintf("new-%d", i))
		if err != nil || sp.Machine == "m1" {
			t.Fatalf("CreateSpace after the drain: %+v, %v", sp, err)
		}
	}
}

func TestDrain_SeveralMachinesGoToTheOthers(t *testing.T) {
	t.Parallel()
	dir := openDirectory(t)
	ctx := context.Background()
	register(t, dir, "m1", "m2", "m3")
	place(t, dir, "m1", "a", 3)
	place(t, dir, "m2", "b", 3)
	res, err := newOps(t, dir).Drain(ctx, []string{"m1", "m2"}, ops.DrainOptions{KeepRunning: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, mv := range res.Moves {
		if mv.To != "m3" {
			t.Fatalf("move %+v: a drained machine must not receive spaces", mv)
		}
	}
	if c := counts(t, dir); c["m3"] != 6 {
		t.Fatalf("after the drain: %v", c)
	}
}

func TestDrain_RefusesBeforeChangingAnything(t *testing.T) {
	t.Parallel()
	dir := openDirectory(t)
	ctx := context.Background()
	register(t, dir, "m1", "m2")
	place(t, dir, "m1", "a", 2)
	if err := dir.SetMachineState(ctx, "m2", directory.MachineStopped); err != nil {
		t.Fatal(err)
	}
	o := newOps(t, dir)

	_, err := o.Drain(ctx, []string{"m1"}, ops.DrainOptions{KeepRunning: true})
	if !errors.Is(err, ops.ErrNoTarget) {
		t.Fatalf("drain of the only live machine: %v, want ErrNoTarget", err)
	}
	_, err = o.Drain(ctx, []string{"m1"}, ops.DrainOptions{})
	if !errors.Is(err, ops.ErrNoMachinesAPI) {
		t.Fatalf("drain that must stop a machine without the Machines API: %v", err)
	}
	_, err = o.Drain(ctx, []string{"nope"}, ops.DrainOptions{KeepRunning: true})
	if !errors.Is(err, directory.ErrMachineNotFound) {
		t.Fatalf("drain of an unknown machine: %v", err)
	}
	ms, _ := dir.ListMachines(ctx)
	for _, m := range ms {
		if m.ID == "m1" && (!m.Live || m.Spaces != 2) {
			t.Fatalf("a refused drain changed machine m1: %+v", m)
		}
	}
	if _, err := o.Scale(ctx, 0, ops.ScaleOptions{}); !errors.Is(err, ops.ErrLastMachine) {
		t.Fatalf("scale to 0: %v", err)
	}
}

func TestMoveSpaceAndStatus(t *testing.T) {
	t.Parallel()
	dir := openDirectory(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	register(t, dir, "m1", "m2")
	if err := dir.RegisterMachine(ctx, directory.Machine{ID: "other", App: "another-app"}); err != nil {
		t.Fatal(err)
	}
	place(t, dir, "m1", "a", 1)
	o := newOps(t, dir)
	mv, err := o.MoveSpace(ctx, "a-00", "m2")
	if err != nil || mv != (ops.Move{Space: "a-00", From: "m1", To: "m2"}) {
		t.Fatalf("MoveSpace: %+v, %v", mv, err)
	}
	st, err := o.Status(ctx)
	if err != nil || len(st) != 2 || st[0].ID != "m1" || st[1].Spaces != 1 || !st[1].Live || !st[1].InDirectory {
		t.Fatalf("Status: %+v, %v", st, err)
	}
}
