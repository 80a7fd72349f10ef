package ops

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/fly/machines"
)

// maxDrainRounds bounds how often a drain re-reads a machine's spaces: a space placed on it just before it was
// cordoned shows up in the second round; more rounds mean someone keeps moving spaces onto it.
const maxDrainRounds = 5

// DrainOptions tune Drain.
type DrainOptions struct {
	// KeepRunning moves the spaces away but leaves the machines running (and cordoned: they receive no new
	// spaces until they register again, which a restart does).
	KeepRunning bool
	// Destroy destroys the machines once they have stopped, as `fly machine destroy` does. Their rows stay in
	// the directory, stopped and without spaces.
	Destroy bool
}

// DrainResult is what a drain did.
type DrainResult struct {
	Moves     []Move
	Stopped   []string
	Destroyed []string
}

// Drain empties machines ids: it cordons them (marks them stopped in the directory, so no new space is placed on
// them), moves each of their spaces to the live machine of the app with the fewest spaces, waits Config.Grace
// for clients to follow, then stops the machines through the Machines API and waits until they are stopped. The
// backend finishes its batch in flight on the stop signal and closes the connections it still has with 1001;
// their clients reconnect through the router to the new owners.
//
// A machine the directory does not know (it never ran the backend) has no spaces and is only stopped. Drain
// fails before changing anything if a machine is unknown to both, or if spaces would have nowhere to go
// (ErrNoTarget).
func (o *Ops) Drain(ctx context.Context, ids []string, opts DrainOptions) (DrainResult, error) {
	var res DrainResult
	if len(ids) == 0 {
		return res, errors.New("drain: no machine named")
	}
	if o.api == nil && (!opts.KeepRunning || opts.Destroy) {
		return res, fmt.Errorf("drain: stopping machines: %w", ErrNoMachinesAPI)
	}
	draining := map[string]bool{}
	for _, id := range ids {
		draining[id] = true
	}
	infos, err := o.dir.ListMachines(ctx)
	if err != nil {
		return res, fmt.Errorf("drain: %w", err)
	}
	inDir := map[string]directory.MachineInfo{}
	for _, m := range infos {
		inDir[m.ID] = m
	}
	for _, id := range ids {
		m, ok := inDir[id]
		switch {
		case ok && m.App != o.cfg.App:
			return res, fmt.Errorf("drain: machine %s belongs to app %s, not %s", id, m.App, o.cfg.App)
		case ok:
		case o.api == nil:
			return res, fmt.Errorf("drain: machine %s: %w", id, directory.ErrMachineNotFound)
		default:
			if _, err := o.api.Get(ctx, o.cfg.App, id); err != nil {
				return res, fmt.Errorf("drain: machine %s is neither in the directory nor in the Machines API: %w", id, err)
			}
		}
	}

	// Targets: the live machines of the app that stay, with their space counts.
	counts := map[string]int{}
	for _, m := range infos {
		if m.App == o.cfg.App && m.Live && !m.Dedicated && !draining[m.ID] {
			counts[m.ID] = m.Spaces
		}
	}
	spaces, err := o.spacesByMachine(ctx)
	if err != nil {
		return res, fmt.Errorf("drain: %w", err)
	}
	if len(counts) == 0 && drainedSpaces(spaces, ids) > 0 {
		return res, fmt.Errorf("drain %s: %d spaces: %w", strings.Join(ids, ", "), drainedSpaces(spaces, ids), ErrNoTarget)
	}

	for _, id := range ids {
		if _, ok := inDir[id]; ok {
			if err := o.dir.SetMachineState(ctx, id, directory.MachineStopped); err != nil {
				return res, fmt.Errorf("drain: cordon %s: %w", id, err)
			}
			o.log.Info("ops: machine cordoned", "machine", id)
		}
	}
	for round := 1; ; round++ {
		if round > 1 {
			if spaces, err = o.spacesByMachine(ctx); err != nil {
				return res, fmt.Errorf("drain: %w", err)
			}
		}
		if drainedSpaces(spaces, ids) == 0 {
			break
		}
		if round > maxDrainRounds {
			return res, fmt.Errorf("drain: spaces keep arriving on %s", strings.Join(ids, ", "))
		}
		if len(counts) == 0 {
			return res, fmt.Errorf("drain: %w", ErrNoTarget)
		}
		for _, id := range ids {
			for _, sp := range spaces[id] {
				to := leastLoaded(counts)
				mv := Move{Space: sp, From: id, To: to}
				if err := o.move(ctx, mv); err != nil {
					return res, fmt.Errorf("drain: move %s to %s: %w", sp, to, err)
				}
				counts[to]++
				res.Moves = append(res.Moves, mv)
			}
		}
	}
	if opts.KeepRunning {
		return res, nil
	}

	if err := sleep(ctx, o.cfg.Grace); err != nil {
		return res, fmt.Errorf("drain: %w", err)
	}
	for _, id := range ids {
		stopped, err := o.stop(ctx, id)
		if err != nil {
			return res, fmt.Errorf("drain: %w", err)
		}
		if !stopped {
			continue // already destroyed
		}
		res.Stopped = append(res.Stopped, id)
		if opts.Destroy {
			if err := o.destroy(ctx, id); err != nil {
				return res, fmt.Errorf("drain: %w", err)
			}
			res.Destroyed = append(res.Destroyed, id)
		}
	}
	return res, nil
}

// drainedSpaces counts the spaces on machines ids.
func drainedSpaces(spaces map[string][]string, ids []string) int {
	n := 0
	for _, id := range ids {
		n += len(spaces[id])
	}
	return n
}

// leastLoaded returns the machine with the fewest spaces; ties by ID.
func leastLoaded(counts map[string]int) string {
	ids := make([]string, 0, len(counts))
	for id := range counts {
		ids = append(ids, id)
	}
	return slices.MinFunc(ids, func(a, b string) int { return cmp.Or(cmp.Compare(counts[a], counts[b]), cmp.Compare(a, b)) })
}

// stop stops machine id through the Machines API and waits until it is stopped. It reports false if the
// machine no longer exists.
func (o *Ops) stop(ctx context.Context, id string) (bool, error) {
	m, err := o.api.Get(ctx, o.cfg.App, id)
	if errors.Is(err, machines.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	o.log.Info("ops: stopping machine", "machine", id, "state", m.State, "signal", DefaultStopSignal)
	err = o.api.StopAndWait(ctx, o.cfg.App, m, machines.StopRequest{Signal: DefaultStopSignal}, o.cfg.StopTimeout)
	if errors.Is(err, machines.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	o.log.Info("ops: machine stopped", "machine", id)
	return true, nil
}

// destroy destroys stopped machine id and waits until it is gone.
func (o *Ops) destroy(ctx context.Context, id string) error {
	if err := o.api.Destroy(ctx, o.cfg.App, id, o.cfg.StopTimeout); err != nil {
		return err
	}
	o.log.Info("ops: machine destroyed", "machine", id)
	return nil
}
