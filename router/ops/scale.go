package ops

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spaceport-sync/spaceport/fly/machines"
)

// ScaleOptions tune Scale.
type ScaleOptions struct {
	// DownOnly removes surplus machines but creates none: on Fly, scripts/scale lets `fly scale count` create
	// machines (flyctl keeps its release bookkeeping), and spacectl drains the ones going away first.
	DownOnly bool
}

// ScaleResult is what a scale did.
type ScaleResult struct {
	// Created are the machines created and registered in the directory.
	Created []string
	// Drain is what the scale-down drained, stopped and destroyed.
	Drain DrainResult
}

// Scale brings the app to n machines (n >= 1). Up: it clones the config of a running machine (as
// `fly machine clone` does), waits until each new machine is started and has registered itself in the directory
// as live; new spaces then go to it, and Rebalance moves existing ones. Down: it drains the surplus machines
// (those with the fewest spaces, stopped ones first) and destroys them, so that no space is left on a machine
// that no longer exists.
func (o *Ops) Scale(ctx context.Context, n int, opts ScaleOptions) (ScaleResult, error) {
	var res ScaleResult
	if n < 1 {
		return res, fmt.Errorf("scale to %d: %w", n, ErrLastMachine)
	}
	if o.api == nil {
		return res, fmt.Errorf("scale: %w", ErrNoMachinesAPI)
	}
	all, err := o.api.List(ctx, o.cfg.App, machines.ListOptions{})
	if err != nil {
		return res, fmt.Errorf("scale: %w", err)
	}
	var active []machines.Machine
	for _, m := range all {
		if m.Active() {
			active = append(active, m)
		}
	}
	switch {
	case n > len(active) && !opts.DownOnly:
		res.Created, err = o.scaleUp(ctx, active, n-len(active))
	case n < len(active):
		res.Drain, err = o.scaleDown(ctx, active, len(active)-n)
	}
	return res, err
}

func (o *Ops) scaleUp(ctx context.Context, active []machines.Machine, add int) ([]string, error) {
	if len(active) == 0 {
		return nil, fmt.Errorf("scale up: app %s has no machine to clone; deploy it first (fly deploy)", o.cfg.App)
	}
	template := active[0]
	for _, m := range active {
		if m.State == machines.StateStarted {
			template = m
			break
		}
	}
	if template.Config == nil {
		full, err := o.api.Get(ctx, o.cfg.App, template.ID)
		if err != nil {
			return nil, fmt.Errorf("scale up: %w", err)
		}
		template = *full
	}
	if template.Config == nil {
		return nil, fmt.Errorf("scale up: machine %s has no config to clone", template.ID)
	}
	var created []string
	for range add {
		m, err := o.api.Create(ctx, o.cfg.App, machines.CreateRequest{Region: template.Region, Config: template.Config.Clone()})
		if err != nil {
			return created, fmt.Errorf("scale up: %w", err)
		}
		o.log.Info("ops: machine created", "machine", m.ID, "cloned_from", template.ID)
		created = append(created, m.ID)
	}
	for _, id := range created {
		err := o.api.Wait(ctx, o.cfg.App, id, machines.WaitRequest{State: machines.StateStarted, Timeout: o.cfg.StartTimeout})
		if err != nil {
			return created, fmt.Errorf("scale up: %w", err)
		}
	}
	if err := o.waitLive(ctx, created); err != nil {
		return created, fmt.Errorf("scale up: %w", err)
	}
	return created, nil
}

// waitLive waits until every machine of ids is live in the directory: it registered itself and receives spaces.
func (o *Ops) waitLive(ctx context.Context, ids []string) error {
	deadline := time.Now().Add(o.cfg.StartTimeout)
	for {
		infos, err := o.dir.ListMachines(ctx)
		if err != nil {
			return err
		}
		live := map[string]bool{}
		for _, m := range infos {
			live[m.ID] = m.Live
		}
		var missing []string
		for _, id := range ids {
			if !live[id] {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("machines %v started but did not register in the directory within %s (check their logs: fly logs -i ID)",
				missing, o.cfg.StartTimeout)
		}
		if err := sleep(ctx, pollInterval); err != nil {
			return err
		}
	}
}

func (o *Ops) scaleDown(ctx context.Context, active []machines.Machine, remove int) (DrainResult, error) {
	infos, err := o.dir.ListMachines(ctx)
	if err != nil {
		return DrainResult{}, fmt.Errorf("scale down: %w", err)
	}
	spaces := map[string]int{}
	for _, m := range infos {
		spaces[m.ID] = m.Spaces
	}
	running := func(m machines.Machine) int {
		if m.State == machines.StateStarted {
			return 1
		}
		return 0
	}
	victims := slices.Clone(active)
	slices.SortFunc(victims, func(a, b machines.Machine) int {
		return cmp.Or(cmp.Compare(running(a), running(b)), cmp.Compare(spaces[a.ID], spaces[b.ID]), cmp.Compare(a.ID, b.ID))
	})
	var ids []string
	for _, m := range victims[:remove] {
		ids = append(ids, m.ID)
	}
	res, err := o.Drain(ctx, ids, DrainOptions{Destroy: true})
	if errors.Is(err, ErrNoTarget) {
		err = fmt.Errorf("%w: the machines that stay are not live; start them first (fly machine start)", err)
	}
	return res, err
}
