package directory

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spaceport-sync/spaceport/backend/protocol"
)

// DefaultCluster is the name of the Postgres cluster that holds the
// directory itself (DATABASE_URL). It is every space's cluster unless the
// directory says otherwise, which is how a deployment with one Postgres keeps
// working unchanged.
const DefaultCluster = "main"

// maxClusterNameLen bounds cluster names.
const maxClusterNameLen = 32

// Errors of the cluster operations (wrapped; test with errors.Is).
var (
	ErrInvalidCluster = errors.New("invalid cluster name (1 to 32 characters of [a-z0-9_-], starting with a letter)")
	ErrSameCluster    = errors.New("space is already on that cluster")
	ErrMoveInProgress = errors.New("space is being moved to another cluster")
)

// ValidClusterName reports whether s may name a data cluster: 1 to 32
// characters of [a-z0-9_-], starting with a letter. Names are kept plain
// because they are written in environment variables (name=URL) and logs.
func ValidClusterName(s string) bool {
	if len(s) == 0 || len(s) > maxClusterNameLen || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// placementClusters checks Config.Clusters and returns the list placement
// chooses from: DefaultCluster alone if empty, each name once.
func placementClusters(names []string) ([]string, error) {
	if len(names) == 0 {
		return []string{DefaultCluster}, nil
	}
	out := make([]string, 0, len(names))
	for _, n := range names {
		if !ValidClusterName(n) {
			return nil, fmt.Errorf("placement cluster %.40q: %w", n, ErrInvalidCluster)
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// pickCluster is the placement policy of data clusters: the one of
// Config.Clusters that holds the fewest spaces, ties by name. It runs in the
// creating transaction under the app's placement lock, so creates in one app
// count after each other, as for machines. Spaces, not activity, are
// counted: the directory knows which spaces exist, not which are busy.
func (d *Directory) pickCluster(ctx context.Context, tx pgx.Tx) (string, error) {
	if len(d.cfg.Clusters) == 1 {
		return d.cfg.Clusters[0], nil
	}
	var name string
	err := tx.QueryRow(ctx, `
		SELECT n FROM unnest($1::text[]) AS n
		LEFT JOIN directory.clusters c ON c.name = n
		ORDER BY coalesce(c.space_count, 0), n COLLATE "C"
		LIMIT 1`, d.cfg.Clusters).Scan(&name)
	if err != nil {
		return "", fmt.Errorf("pick a cluster: %w", err)
	}
	return name, nil
}

// BeginClusterMove marks space id as moving to cluster to: from the moment
// it commits (and its NOTIFY with it) no backend loads or keeps the space,
// and routers answer its connections with "retry later", until
// FinishClusterMove or AbortClusterMove. It returns the space, whose
// Cluster is the one being left. Marking a space that is already moving to
// the same cluster resumes that move (a spacectl that died part way).
// Errors: ErrInvalidSpaceID, ErrInvalidCluster, ErrSpaceNotFound,
// ErrSameCluster, ErrMoveInProgress (moving to another cluster).
func (d *Directory) BeginClusterMove(ctx context.Context, id, to string) (Space, error) {
	if err := checkMoveArgs(id, to); err != nil {
		return Space{}, fmt.Errorf("begin move of space %.64q to cluster %.40q: %w", id, to, err)
	}
	sp, err := d.updateSpace(ctx, `
		UPDATE directory.spaces SET moving_to = $2, moving_since = coalesce(moving_since, now())
		WHERE id = $1 AND cluster <> $2 AND (moving_to IS NULL OR moving_to = $2)
		RETURNING `+spaceColumns, id, to)
	if errors.Is(err, pgx.ErrNoRows) {
		err = d.whyNot(ctx, id, func(now Space) error {
			if now.Cluster == to {
				return ErrSameCluster
			}
			return fmt.Errorf("it is moving to %s: %w", now.MovingTo, ErrMoveInProgress)
		})
	}
	if err != nil {
		return Space{}, fmt.Errorf("begin move of space %s to cluster %s: %w", id, to, err)
	}
	return sp, nil
}

// FinishClusterMove records that space id's data is now on cluster to, and
// no longer moving, if it is still marked as moving there from cluster
// from. The change and its NOTIFY commit together: backends load the space
// from the new cluster from then on. Errors: ErrInvalidSpaceID,
// ErrInvalidCluster, ErrSpaceNotFound, ErrPlacementChanged (the mark was
// aborted or the space is elsewhere).
func (d *Directory) FinishClusterMove(ctx context.Context, id, from, to string) (Space, error) {
	if err := checkMoveArgs(id, to); err != nil {
		return Space{}, fmt.Errorf("finish move of space %.64q to cluster %.40q: %w", id, to, err)
	}
	sp, err := d.updateSpace(ctx, `
		UPDATE directory.spaces SET cluster = $3, moving_to = NULL, moving_since = NULL
		WHERE id = $1 AND cluster = $2 AND moving_to = $3
		RETURNING `+spaceColumns, id, from, to)
	if errors.Is(err, pgx.ErrNoRows) {
		err = d.whyNot(ctx, id, func(now Space) error {
			return fmt.Errorf("it is on %s, moving to %q, not moving from %s to %s: %w", now.Cluster, now.MovingTo, from, to, ErrPlacementChanged)
		})
	}
	if err != nil {
		return Space{}, fmt.Errorf("finish move of space %s to cluster %s: %w", id, to, err)
	}
	return sp, nil
}

// AbortClusterMove clears space id's moving mark if it is moving to cluster
// to (any cluster if to is empty), so that it is served again from the
// cluster it never left, and returns the space as it is afterwards. A
// space that is not moving there is returned unchanged: aborting is safe to
// repeat. Errors: ErrInvalidSpaceID, ErrSpaceNotFound.
func (d *Directory) AbortClusterMove(ctx context.Context, id, to string) (Space, error) {
	if !protocol.ValidSpaceID(id) {
		return Space{}, fmt.Errorf("abort move of space %.64q: %w", id, ErrInvalidSpaceID)
	}
	sp, err := d.updateSpace(ctx, `
		UPDATE directory.spaces SET moving_to = NULL, moving_since = NULL
		WHERE id = $1 AND moving_to IS NOT NULL AND ($2 = '' OR moving_to = $2)
		RETURNING `+spaceColumns, id, to)
	if errors.Is(err, pgx.ErrNoRows) {
		sp, err = d.Lookup(ctx, id)
	}
	if err != nil {
		return Space{}, fmt.Errorf("abort move of space %s: %w", id, err)
	}
	return sp, nil
}

func checkMoveArgs(id, to string) error {
	if !protocol.ValidSpaceID(id) {
		return ErrInvalidSpaceID
	}
	if !ValidClusterName(to) {
		return ErrInvalidCluster
	}
	return nil
}

// updateSpace runs an UPDATE ... RETURNING spaceColumns of one space.
func (d *Directory) updateSpace(ctx context.Context, sql string, args ...any) (Space, error) {
	var sp Space
	err := scanSpace(d.pool.QueryRow(ctx, sql, args...), &sp)
	return sp, err
}

// whyNot explains a conditional update of space id that matched no row:
// ErrSpaceNotFound, or what explain says of the space as it is now.
func (d *Directory) whyNot(ctx context.Context, id string, explain func(Space) error) error {
	now, err := d.Lookup(ctx, id)
	if err != nil {
		return err
	}
	return explain(now)
}

// ClusterInfo is a data cluster as the directory knows it.
type ClusterInfo struct {
	Name string
	// Spaces is how many spaces the directory places on it.
	Spaces int64
}

// ListClusters returns every cluster that holds or held spaces, and
// DefaultCluster, by name, with its space count. Clusters configured but
// never given a space are not listed: the directory knows only names its
// spaces carry.
func (d *Directory) ListClusters(ctx context.Context) ([]ClusterInfo, error) {
	rows, err := d.pool.Query(ctx, `SELECT name, space_count FROM directory.clusters ORDER BY name COLLATE "C"`)
	if err != nil {
		return nil, fmt.Errorf("list clusters: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ClusterInfo, error) {
		var c ClusterInfo
		err := r.Scan(&c.Name, &c.Spaces)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("list clusters: %w", err)
	}
	return out, nil
}

// ClusterMoveInfo is a move between clusters in progress (or stuck: its
// mover died; spacectl move-cluster resumes it, abort-move ends it).
type ClusterMoveInfo struct {
	Space, From, To string
	Since           time.Time
}

// ClusterMoves returns the moves between clusters in progress, oldest first,
// at most MaxListLimit.
func (d *Directory) ClusterMoves(ctx context.Context) ([]ClusterMoveInfo, error) {
	rows, err := d.pool.Query(ctx, `
		SELECT id, cluster, moving_to, moving_since FROM directory.spaces
		WHERE moving_to IS NOT NULL ORDER BY moving_since, id LIMIT $1`, MaxListLimit)
	if err != nil {
		return nil, fmt.Errorf("list cluster moves: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ClusterMoveInfo, error) {
		var m ClusterMoveInfo
		err := r.Scan(&m.Space, &m.From, &m.To, &m.Since)
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("list cluster moves: %w", err)
	}
	return out, nil
}

// LockSpaceMove takes space id's move lock, a session advisory lock on a
// connection of its own, so that one mover at a time copies a space between
// clusters: two would each import and clean up after the other. It does not
// wait: if another process holds it the error wraps ErrLockHeld. unlock
// ends the connection, and the lock with it (so does losing the
// connection, which is why each step of a move is also safe on its own).
func (d *Directory) LockSpaceMove(ctx context.Context, id string) (unlock func(), err error) {
	if !protocol.ValidSpaceID(id) {
		return nil, fmt.Errorf("move lock of space %.64q: %w", id, ErrInvalidSpaceID)
	}
	conn, closeConn, err := d.ownConn(ctx, moveApplicationName)
	if err != nil {
		return nil, fmt.Errorf("move lock of space %s: %w", id, err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, moveLockKey(id)).Scan(&ok); err != nil {
		closeConn()
		return nil, fmt.Errorf("move lock of space %s: %w", id, err)
	}
	if !ok {
		closeConn()
		return nil, fmt.Errorf("move lock of space %s: %w", id, ErrLockHeld)
	}
	return closeConn, nil
}

// moveApplicationName is the application_name of LockSpaceMove's
// connection, to find it in pg_stat_activity.
const moveApplicationName = "spaceport-cluster-move"

func moveLockKey(id string) int64 {
	h := fnv.New64a()
	h.Write([]byte("spaceport-directory-cluster-move:" + id))
	return int64(h.Sum64())
}
