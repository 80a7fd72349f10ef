package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spaceport-sync/spaceport/backend/clusters"
	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/space"
)

// assigner answers the engine's "is this space ours?" from the directory: a
// space is ours when the directory places it on this machine and it is not
// being moved between clusters; a loaded space is no longer ours once the
// directory places its data on another cluster than the one it was loaded
// from.
type assigner struct {
	dir       *directory.Directory
	machineID string
	claims    *clusters.Store
}

func (a assigner) Assigned(ctx context.Context, spaceID string) error {
	sp, err := a.dir.Lookup(ctx, spaceID)
	switch {
	case errors.Is(err, directory.ErrSpaceNotFound):
		return fmt.Errorf("space %s is not in the directory: %w", spaceID, space.ErrMoved)
	case err != nil:
		return err
	case sp.Machine != a.machineID:
		return fmt.Errorf("space %s belongs to machine %s: %w", spaceID, sp.Machine, space.ErrMoved)
	case sp.MovingTo != "":
		return fmt.Errorf("space %s is moving from cluster %s to %s: %w", spaceID, sp.Cluster, sp.MovingTo, space.ErrMoving)
	}
	return nil
}

func (a assigner) Moved(ctx context.Context, spaceIDs []string) ([]string, error) {
	// A move between clusters announces its switch like any move, but the
	// space stays on this machine: only its cluster tells the copy loaded
	// before the move (whose announcement was missed) from the new one.
	return a.dir.NotOnCluster(ctx, a.machineID, spaceIDs, a.claims.ClaimedClusters(spaceIDs))
}
