package ops

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/store"
)

// Errors of moves between data clusters (wrapped).
var (
	// ErrNoClusters means Config.OpenCluster is nil: this Ops cannot reach the data clusters.
	ErrNoClusters = errors.New("no data clusters configured (DATA_CLUSTERS)")
	// ErrVerify means the copy on the new cluster does not match the original; the move was undone.
	ErrVerify = errors.New("the copy does not match the original")
	// ErrOldCopyKept means the space moved, but its rows on the old cluster could not be deleted: they are
	// garbage nobody reads (a later move to that cluster replaces them).
	ErrOldCopyKept = errors.New("the space moved, but its old copy was not deleted")
)

// ClusterMoveOwner is the owner a cluster move fences a space with (the owner column of replica_spaces), so
// that an operator reading the old cluster's rows sees who took the space from its machine.
const ClusterMoveOwner = "spacectl move-cluster"

// undoTimeout bounds undoing a failed move, which runs even when the move's context is cancelled (Ctrl-C).
const undoTimeout = 30 * time.Second

// ClusterMove is a space whose data was moved from one Postgres cluster to another.
type ClusterMove struct {
	Space, From, To string
	// Version is the space's version, and Entries, Clients and Groups the rows copied (and verified).
	Version                  int64
	Entries, Clients, Groups int64
	// Epoch is the space's epoch on the new cluster; the next owner claims above it.
	Epoch int64
	// Unserved is how long nobody served the space: from the moving mark to the switch.
	Unserved time.Duration
}

// MoveSpaceToCluster moves space id's data to cluster to, while its clients may be pushing:
//
//  1. it takes the space's move lock (one mover per space) and marks the space as moving in the directory:
//     the NOTIFY makes its machine let go of it (4004) and routers answer its clients "retry later" (503);
//     no backend loads it until the mark is gone;
//  2. it fences the owner on the old cluster and reads every row (store.Export: Claim's epoch bump, so a
//     commit of the owner either is in the copy or fails with ErrFenced, and is not acknowledged);
//  3. it writes the rows on the new cluster in one transaction (store.Import, at an epoch above both sides');
//  4. it verifies: the checksum (row counts, sums of keys and values, clients, groups) of the new copy and of
//     the original, read again, must both equal the one read with the rows;
//  5. it switches the directory to the new cluster and clears the mark, in one transaction with its NOTIFY:
//     clients reconnect and the machine loads the space from the new cluster;
//  6. it deletes the old rows (only if nothing was committed there since the copy).
//
// A failure before the switch undoes the move: the mark is cleared and the space is served from the old
// cluster, intact (only its epoch moved on); the partial copy is deleted. A failure after it leaves the move
// done, and returns ErrOldCopyKept if the old rows stayed. A move that died with its process leaves the mark:
// running the same move again resumes it, and AbortClusterMove clears it.
func (o *Ops) MoveSpaceToCluster(ctx context.Context, id, to string) (ClusterMove, error) {
	mv := ClusterMove{Space: id, To: to}
	if o.cfg.OpenCluster == nil {
		return mv, fmt.Errorf("move space %s to cluster %s: %w", id, to, ErrNoClusters)
	}
	if !directory.ValidClusterName(to) {
		return mv, fmt.Errorf("move space %s to cluster %.40q: %w", id, to, directory.ErrInvalidCluster)
	}
	// The target first: an unknown or unreachable cluster changes nothing.
	target, err := o.cfg.OpenCluster(ctx, to)
	if err != nil {
		return mv, fmt.Errorf("move space %s to cluster %s: %w", id, to, err)
	}
	unlock, err := o.dir.LockSpaceMove(ctx, id)
	if err != nil {
		return mv, fmt.Errorf("move space %s to cluster %s: %w", id, to, err)
	}
	defer unlock()
	sp, err := o.dir.BeginClusterMove(ctx, id, to)
	if err != nil {
		return mv, err
	}
	mv.From = sp.Cluster
	marked := time.Now()
	o.log.Info("ops: space marked as moving between clusters", "space", id, "from", mv.From, "to", to)

	copied, err := o.copySpace(ctx, &mv, target)
	if err == nil && o.beforeSwitch != nil {
		err = o.beforeSwitch()
	}
	if err == nil {
		_, err = o.dir.FinishClusterMove(ctx, id, mv.From, to)
	}
	if err != nil {
		if moved := o.undoClusterMove(mv, target, copied, err); !moved {
			return mv, fmt.Errorf("move space %s from cluster %s to %s (undone: it stays on %s): %w", id, mv.From, to, mv.From, err)
		}
		// The switch committed though its answer was lost: the move is done.
	}
	mv.Unserved = time.Since(marked)
	o.log.Info("ops: space moved between clusters", "space", id, "from", mv.From, "to", to, "version", mv.Version,
		"entries", mv.Entries, "clients", mv.Clients, "unserved", mv.Unserved.Round(time.Millisecond))

	source, err := o.cfg.OpenCluster(ctx, mv.From)
	if err == nil {
		err = source.Delete(ctx, id, mv.Version)
	}
	switch {
	case errors.Is(err, store.ErrChanged):
		// Only a backend that does not check the directory (an old binary)
		// commits to a space marked as moving.
		o.log.Error("ops: the old copy of a moved space was committed to after the copy; those commits are not on the "+
			"new cluster, and the old rows are kept: check that every backend runs a version that knows clusters",
			"space", id, "cluster", mv.From, "err", err)
	case err != nil:
		o.log.Warn("ops: old copy of a moved space kept", "space", id, "cluster", mv.From, "err", err)
	default:
		return mv, nil
	}
	return mv, fmt.Errorf("move space %s from cluster %s to %s: %w: %w", id, mv.From, to, ErrOldCopyKept, err)
}

// copySpace is steps 2 to 4 of MoveSpaceToCluster; copied reports whether the rows were written on target.
func (o *Ops) copySpace(ctx context.Context, mv *ClusterMove, target *store.Store) (copied bool, err error) {
	source, err := o.cfg.OpenCluster(ctx, mv.From)
	if err != nil {
		return false, err
	}
	c, err := source.Export(ctx, mv.Space, ClusterMoveOwner)
	if err != nil {
		return false, err
	}
	mv.Version, mv.Entries, mv.Clients, mv.Groups = c.Version, c.Sum.Entries, c.Sum.Clients, c.Sum.Groups
	if mv.Epoch, err = target.Import(ctx, c); err != nil {
		return false, err
	}
	for _, side := range []struct {
		name string
		st   *store.Store
	}{{"new copy on " + mv.To, target}, {"original on " + mv.From, source}} {
		sum, err := side.st.Checksum(ctx, mv.Space)
		if err != nil {
			return true, err
		}
		if sum != c.Sum {
			return true, fmt.Errorf("%w: the %s has %+v, the copy read %+v", ErrVerify, side.name, sum, c.Sum)
		}
	}
	return true, nil
}

// undoClusterMove clears the moving mark of a move that failed with cause, and deletes the copy it wrote if
// the space is not on the target. moved reports that the directory does name the target (the switch committed
// but its answer was lost), in which case nothing is undone.
func (o *Ops) undoClusterMove(mv ClusterMove, target *store.Store, copied bool, cause error) (moved bool) {
	ctx, cancel := context.WithTimeout(context.Background(), undoTimeout)
	defer cancel()
	sp, err := o.dir.AbortClusterMove(ctx, mv.Space, mv.To)
	if errors.Is(err, directory.ErrSpaceNotFound) {
		// Deleted meanwhile: no mark to clear. Its data stays where it was,
		// as a delete leaves it; the copy goes.
		o.log.Warn("ops: space deleted during its move between clusters", "space", mv.Space, "cause", cause)
		if copied {
			o.deleteCopy(ctx, mv, target)
		}
		return false
	}
	if err != nil {
		o.log.Error("ops: failed move between clusters not undone: the space stays marked as moving, served by "+
			"nobody, until `spacectl abort-move` (or the same move again)", "space", mv.Space, "cause", cause, "err", err)
		return false
	}
	if sp.Cluster == mv.To {
		return true
	}
	o.log.Warn("ops: move between clusters failed and was undone; the space is served from its old cluster",
		"space", mv.Space, "cluster", sp.Cluster, "err", cause)
	if copied {
		o.deleteCopy(ctx, mv, target)
	}
	return false
}

// deleteCopy deletes the copy a failed move wrote on its target, only if nothing was committed to it since the
// import (which would mean it is served there).
func (o *Ops) deleteCopy(ctx context.Context, mv ClusterMove, target *store.Store) {
	if err := target.Delete(ctx, mv.Space, mv.Version); err != nil {
		o.log.Warn("ops: partial copy of a space kept on the target cluster (harmless: the next move there replaces it)",
			"space", mv.Space, "cluster", mv.To, "err", err)
	}
}

// AbortClusterMove clears space id's moving mark, if it has one, so that it is served again from the cluster it
// never left: for a move whose spacectl died part way. It refuses while a mover holds the space's move lock
// (directory.ErrLockHeld). It returns the space as it is afterwards.
func (o *Ops) AbortClusterMove(ctx context.Context, id string) (directory.Space, error) {
	unlock, err := o.dir.LockSpaceMove(ctx, id)
	if err != nil {
		return directory.Space{}, fmt.Errorf("abort the move of space %s: %w", id, err)
	}
	defer unlock()
	sp, err := o.dir.AbortClusterMove(ctx, id, "")
	if err != nil {
		return directory.Space{}, err
	}
	o.log.Info("ops: move between clusters aborted", "space", id, "cluster", sp.Cluster)
	return sp, nil
}
