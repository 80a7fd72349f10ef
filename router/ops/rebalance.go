package ops

import (
	"cmp"
	"context"
	"fmt"
	"slices"
)

// Load is one machine's spaces, as planning sees them.
type Load struct {
	Machine string
	Spaces  []string
}

// PlanRebalance returns the fewest moves that leave every machine within one space of every other. Spaces move
// off the machines that have the most, to those that have the fewest; the machines that keep one extra space are
// those that have the most already, so nothing moves twice. Of a machine's spaces, the last in ID order move
// first, so the same input always gives the same plan.
func PlanRebalance(loads []Load) []Move {
	n := len(loads)
	if n < 2 {
		return nil
	}
	ls := slices.Clone(loads)
	for i := range ls {
		ls[i].Spaces = slices.Sorted(slices.Values(ls[i].Spaces))
	}
	// Most spaces first; ties by machine ID.
	slices.SortFunc(ls, func(a, b Load) int {
		return cmp.Or(cmp.Compare(len(b.Spaces), len(a.Spaces)), cmp.Compare(a.Machine, b.Machine))
	})
	total := 0
	for _, l := range ls {
		total += len(l.Spaces)
	}
	base, extra := total/n, total%n
	target := func(i int) int {
		if i < extra {
			return base + 1
		}
		return base
	}
	type receiver struct {
		machine string
		room    int
	}
	var receivers []receiver
	for i := n - 1; i >= 0; i-- { // fewest spaces first
		if room := target(i) - len(ls[i].Spaces); room > 0 {
			receivers = append(receivers, receiver{ls[i].Machine, room})
		}
	}
	var moves []Move
	r := 0
	for i, l := range ls {
		surplus := len(l.Spaces) - target(i)
		for k := 0; k < surplus; k++ {
			space := l.Spaces[len(l.Spaces)-1-k]
			moves = append(moves, Move{Space: space, From: l.Machine, To: receivers[r].machine})
			if receivers[r].room--; receivers[r].room == 0 {
				r++
			}
		}
	}
	return moves
}

// Rebalance evens out the app's spaces across its live machines (PlanRebalance) and returns the moves; with
// dryRun it only plans them. Machines dedicated to one space (PLACEMENT=dedicated) take no part. Spaces on
// machines that are not live (stopped by Fly's auto-stop, or drained) stay
// where they are: a replay wakes their machine when a client comes. On an error it returns the moves made so far.
func (o *Ops) Rebalance(ctx context.Context, dryRun bool) ([]Move, error) {
	infos, err := o.dir.ListMachines(ctx)
	if err != nil {
		return nil, err
	}
	spaces, err := o.spacesByMachine(ctx)
	if err != nil {
		return nil, err
	}
	var loads []Load
	for _, m := range infos {
		if m.App == o.cfg.App && m.Live && !m.Dedicated {
			loads = append(loads, Load{Machine: m.ID, Spaces: spaces[m.ID]})
		}
	}
	plan := PlanRebalance(loads)
	if dryRun {
		return plan, nil
	}
	for i, mv := range plan {
		if err := o.move(ctx, mv); err != nil {
			return plan[:i], fmt.Errorf("rebalance: move %s to %s: %w", mv.Space, mv.To, err)
		}
	}
	return plan, nil
}
