package dedicated

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/fly/machines"
)

// DefaultReconcileInterval is the pause between two passes of RunReconciler when it is given 0.
const DefaultReconcileInterval = time.Minute

// Report is what a Reconcile pass found and, unless it was a dry run, did.
type Report struct {
	// Orphans are machines made for a space that the directory does not place on them (their creation failed
	// half-way, or the space was deleted and the machine not retired): destroyed.
	Orphans []string
	// Rehomed are spaces whose machine no longer exists in the Machines API: each got a new machine of its own
	// (its data is in Postgres) and was moved to it.
	Rehomed []Rehome
	// Forgotten are dedicated machines the directory still listed, with no space, that no longer exist:
	// removed from the directory.
	Forgotten []string
}

// Rehome is a space moved from a machine that no longer exists to a new one.
type Rehome struct {
	Space, From, To string
}

// Empty reports whether the pass found nothing to fix.
func (r Report) Empty() bool {
	return len(r.Orphans) == 0 && len(r.Rehomed) == 0 && len(r.Forgotten) == 0
}

// Reconcile compares the app's machines in the Machines API with the directory and fixes what creation and
// deletion failures can leave behind:
//
//   - a machine whose metadata names a space that the directory does not place on it, older than
//     Config.OrphanAge (younger ones may still be being created), is destroyed;
//   - a space of the app whose machine the Machines API no longer has gets a new dedicated machine and is
//     moved to it (the clients follow as after any move);
//   - a dedicated machine without spaces that no longer exists is removed from the directory.
//
// With dryRun it only reports. A pass that changes things holds the app's reconcile lock in Postgres
// (directory.LockReconcile), so that routers reconciling at once do not both give a new machine to one space:
// if another process holds it, Reconcile does nothing and returns an error wrapping directory.ErrLockHeld. (A
// pass whose lock went with its connection can overlap another; a space is still moved once, since a rehome
// moves it only from the machine it found gone, and the loser destroys the machine it made.) A failure to fix
// one item does not stop the others; the errors are joined.
func (p *Placer) Reconcile(ctx context.Context, dryRun bool) (Report, error) {
	var rep Report
	if !dryRun {
		unlock, err := p.dir.LockReconcile(ctx, p.cfg.App)
		if err != nil {
			return rep, fmt.Errorf("reconcile: %w", err)
		}
		defer unlock()
	}
	// Both views are read before anything is changed, and a pass with an incomplete view does nothing.
	list, err := p.api.List(ctx, p.cfg.App, machines.ListOptions{})
	if err != nil {
		return rep, fmt.Errorf("reconcile: %w", err)
	}
	exists := map[string]bool{}
	for _, m := range list {
		if m.Active() {
			exists[m.ID] = true
		}
	}
	spaces, err := p.spaces(ctx)
	if err != nil {
		return rep, fmt.Errorf("reconcile: %w", err)
	}
	infos, err := p.dir.ListMachines(ctx)
	if err != nil {
		return rep, fmt.Errorf("reconcile: %w", err)
	}
	now := time.Now()
	var errs []error

	for _, m := range list {
		space := ""
		if m.Config != nil {
			space = m.Config.Metadata[MetadataSpace]
		}
		if space == "" || !m.Active() {
			continue
		}
		if sp, ok := spaces[space]; ok && sp.Machine == m.ID {
			continue
		}
		if m.CreatedAt.IsZero() || now.Sub(m.CreatedAt) < p.cfg.OrphanAge {
			continue
		}
		rep.Orphans = append(rep.Orphans, m.ID)
		if dryRun {
			continue
		}
		if err := p.api.Delete(ctx, p.cfg.App, m.ID, true); err != nil && !errors.Is(err, machines.ErrNotFound) {
			errs = append(errs, fmt.Errorf("destroy orphan machine %s: %w", m.ID, err))
			continue
		}
		delete(exists, m.ID)
		p.log.Info("dedicated: orphan machine destroyed", "machine", m.ID, "space", space)
		if err := p.forget(ctx, m.ID); err != nil && !errors.Is(err, directory.ErrMachineInUse) {
			errs = append(errs, err)
		}
	}

	for _, sp := range spaces {
		if exists[sp.Machine] || now.Sub(sp.CreatedAt) < p.cfg.OrphanAge {
			continue
		}
		if dryRun {
			rep.Rehomed = append(rep.Rehomed, Rehome{Space: sp.ID, From: sp.Machine})
			continue
		}
		to, err := p.rehome(ctx, sp)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Rehomed = append(rep.Rehomed, Rehome{Space: sp.ID, From: sp.Machine, To: to})
	}

	for _, m := range infos {
		if m.App != p.cfg.App || !m.Dedicated || m.Spaces > 0 || exists[m.ID] {
			continue
		}
		rep.Forgotten = append(rep.Forgotten, m.ID)
		if dryRun {
			continue
		}
		if err := p.forget(ctx, m.ID); err != nil && !errors.Is(err, directory.ErrMachineInUse) {
			errs = append(errs, err)
		}
	}
	return rep, errors.Join(errs...)
}

// rehome gives space sp, whose machine is gone, a new machine of its own and moves it there.
func (p *Placer) rehome(ctx context.Context, sp directory.Space) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, p.cfg.CreateTimeout)
	defer cancel()
	m, err := p.startMachine(cctx, sp.ID)
	if err != nil {
		return "", fmt.Errorf("rehome space %s: %w", sp.ID, err)
	}
	if _, err := p.dir.MoveSpaceToDedicated(cctx, sp.ID, sp.Machine, directory.Machine{ID: m.ID, App: p.cfg.App, Region: m.Region}); err != nil {
		p.destroy(m.ID, "its space could not be moved to it: "+err.Error())
		return "", fmt.Errorf("rehome space %s: %w", sp.ID, err)
	}
	p.log.Info("dedicated: space moved to a new machine; its machine no longer exists", "space", sp.ID,
		"from", sp.Machine, "to", m.ID)
	if err := p.forget(ctx, sp.Machine); err != nil && !errors.Is(err, directory.ErrMachineInUse) {
		return m.ID, err
	}
	return m.ID, nil
}

// spaces returns the app's spaces by ID.
func (p *Placer) spaces(ctx context.Context) (map[string]directory.Space, error) {
	list, err := p.dir.AppSpaces(ctx, p.cfg.App)
	if err != nil {
		return nil, err
	}
	out := make(map[string]directory.Space, len(list))
	for _, sp := range list {
		out[sp.ID] = sp
	}
	return out, nil
}

// RunReconciler runs Reconcile every interval (0 means DefaultReconcileInterval) until ctx is done, logging
// what each pass fixed and what failed. Run it in a goroutine whose owner cancels ctx and waits for it.
func (p *Placer) RunReconciler(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultReconcileInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rep, err := p.Reconcile(ctx, false)
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case errors.Is(err, directory.ErrLockHeld):
			p.log.Debug("dedicated: another process is reconciling; pass skipped")
		case err != nil:
			p.log.Warn("dedicated: reconcile pass failed", "err", err, "orphans", rep.Orphans, "rehomed", len(rep.Rehomed))
		case !rep.Empty():
			p.log.Info("dedicated: reconciled", "orphans", rep.Orphans, "rehomed", rep.Rehomed, "forgotten", rep.Forgotten)
		}
	}
}
