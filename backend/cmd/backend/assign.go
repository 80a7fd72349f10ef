package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/space"
)

// assigner answers the engine's "is this space ours?" from the directory: a
// space is ours when the directory places it on this machine and it is not
// being moved between clusters.
type assigner struct {
	dir       *directory.Directory
	machineID string
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
	return a.dir.NotOn(ctx, a.machineID, spaceIDs)
}
