// Package clusters keeps a backend's spaces on several Postgres clusters.
// Store is the space engine's store (space.Store) over them: it asks the
// directory which cluster holds a space, claims the space there, and sends
// the space's commits and garbage collection to that cluster until the
// engine releases the claim. The engine itself knows nothing of clusters.
//
// The directory's own database is the cluster named directory.DefaultCluster
// ("main"); the others are named in DATA_CLUSTERS (Parse) and opened the
// first time a space of theirs is claimed, so a backend connects only to the
// clusters its spaces need, and one cluster that is down costs only its own
// spaces.
//
// Claims follow moves between clusters (router/ops): a space marked as
// moving is refused (space.ErrMoving), and the directory is asked again
// after each claim, so a claim that raced with a move is never used (its
// cluster is no longer the space's, or the space is moving, and the mover's
// fence bumps past it anyway).
package clusters

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/spaceport-sync/spaceport/backend/directory"
	"github.com/spaceport-sync/spaceport/backend/space"
	"github.com/spaceport-sync/spaceport/backend/store"
)

// ErrUnknownCluster means the directory places a space on a cluster this
// process was not given (DATA_CLUSTERS lacks it).
var ErrUnknownCluster = errors.New("space is on a cluster this process was not given (DATA_CLUSTERS)")

// Locator says where a space lives; *directory.Directory is one.
type Locator interface {
	Lookup(ctx context.Context, id string) (directory.Space, error)
}

// Config configures a Store.
type Config struct {
	// Directory is asked which cluster holds each space. Required.
	Directory Locator
	// Main is the store on the directory's own database, the cluster
	// directory.DefaultCluster, opened by the caller. Required.
	Main *store.Store
	// Clusters are the other clusters (Parse), each opened on first use
	// with its own pool; its store's migrations run then.
	Clusters []Cluster
	// Store tunes the store of each cluster in Clusters (group commit).
	Store store.Config
	// ApplicationName is the application_name of the pools opened here.
	// Empty means "spaceport-backend".
	ApplicationName string
	// Logger receives one line per cluster opened. Nil means
	// slog.Default().
	Logger *slog.Logger
}

// Store is space.Store over several clusters. It is safe for concurrent use.
type Store struct {
	dir      Locator
	clusters map[string]*cluster
	log      *slog.Logger

	mu     sync.Mutex
	claims map[string]claim // by space ID: where its live claim was made
}

var (
	_ space.Store    = (*Store)(nil)
	_ space.Releaser = (*Store)(nil)
)

// claim is a space's claim: the store it was made in, at which epoch.
type claim struct {
	st      *store.Store
	cluster string
	epoch   int64
}

// cluster is one cluster, open or not yet.
type cluster struct {
	name    string
	poolCfg *pgxpool.Config // nil for the main cluster, opened by the caller
	stCfg   store.Config

	// open is a one-slot semaphore held while opening, so that one claim
	// opens the cluster while the others wait, each within its own context.
	open chan struct{}
	st   *store.Store // set once opened; read and written holding open
	pool *pgxpool.Pool
}

// metricClaims counts claims per cluster, so an operator sees which
// clusters a machine's spaces come from.
var metricClaims = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "spaceport_cluster_claims_total", Help: "Spaces claimed (loaded), by the Postgres cluster that holds them.",
}, []string{"cluster"})

// New returns a Store over cfg.Main and cfg.Clusters. Nothing is opened yet.
func New(cfg Config) (*Store, error) {
	if cfg.Directory == nil || cfg.Main == nil {
		return nil, errors.New("clusters: Config.Directory and Config.Main are required")
	}
	if cfg.ApplicationName == "" {
		cfg.ApplicationName = "spaceport-backend"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Store{dir: cfg.Directory, log: cfg.Logger, claims: map[string]claim{}, clusters: map[string]*cluster{
		directory.DefaultCluster: {name: directory.DefaultCluster, st: cfg.Main, open: make(chan struct{}, 1)},
	}}
	if err := checkClusters(cfg.Clusters); err != nil {
		return nil, fmt.Errorf("clusters: %w", err)
	}
	for _, c := range cfg.Clusters {
		pc, err := poolConfig(c, cfg.ApplicationName)
		if err != nil {
			return nil, fmt.Errorf("clusters: %w", err)
		}
		s.clusters[c.Name] = &cluster{name: c.Name, poolCfg: pc, stCfg: cfg.Store, open: make(chan struct{}, 1)}
	}
	return s, nil
}

// Claim claims space spaceID in the cluster the directory names for it. A
// space marked as moving is refused with an error wrapping space.ErrMoving;
// one not in the directory, or whose cluster changed during the claim, with
// space.ErrMoved; one on a cluster this process lacks, ErrUnknownCluster.
func (s *Store) Claim(ctx context.Context, spaceID, owner string) (*store.Snapshot, error) {
	name, err := s.locate(ctx, spaceID)
	if err != nil {
		return nil, fmt.Errorf("claim space %s: %w", spaceID, err)
	}
	st, err := s.Cluster(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("claim space %s: %w", spaceID, err)
	}
	snap, err := st.Claim(ctx, spaceID, owner)
	if err != nil {
		return nil, fmt.Errorf("on cluster %s: %w", name, err)
	}
	// Asked again after the claim: a move marks the space before it fences
	// it, so if the directory still names this cluster and no move now,
	// any move that comes will fence this claim, and it is safe to serve.
	// Otherwise the claim is not used; the rows it may have touched are
	// the old copy of a move, which nobody reads.
	again, err := s.locate(ctx, spaceID)
	if err != nil {
		return nil, fmt.Errorf("claim space %s: after the claim on cluster %s: %w", spaceID, name, err)
	}
	if again != name {
		return nil, fmt.Errorf("claim space %s: moved from cluster %s to %s meanwhile: %w", spaceID, name, again, space.ErrMoved)
	}
	s.mu.Lock()
	s.claims[spaceID] = claim{st: st, cluster: name, epoch: snap.Epoch}
	s.mu.Unlock()
	metricClaims.WithLabelValues(name).Inc()
	return snap, nil
}

// Commit commits to the cluster where the space was claimed at epoch. A
// commit at an epoch this Store no longer knows fails with store.ErrFenced:
// its claim was released or replaced, so it is not the owner's.
func (s *Store) Commit(ctx context.Context, spaceID string, epoch int64, b *store.Batch) error {
	st, err := s.claimed(spaceID, epoch)
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return st.Commit(ctx, spaceID, epoch, b)
}

// CollectGarbage collects in the cluster where the space was claimed.
func (s *Store) CollectGarbage(ctx context.Context, spaceID string, epoch int64, tombstoneTTL, groupTTL time.Duration) (*store.Garbage, error) {
	st, err := s.claimed(spaceID, epoch)
	if err != nil {
		return nil, fmt.Errorf("collect garbage: %w", err)
	}
	return st.CollectGarbage(ctx, spaceID, epoch, tombstoneTTL, groupTTL)
}

// Release forgets the claim of spaceID at epoch (space.Releaser): the
// engine's writer that made it has exited.
func (s *Store) Release(spaceID string, epoch int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.claims[spaceID]; ok && c.epoch == epoch {
		delete(s.claims, spaceID)
	}
}

// ClaimedClusters returns, for each of spaceIDs, the cluster its live claim
// was made on, or "" if it has none: what the engine holds in memory is a
// copy of that cluster's rows, and is stale once the directory names another
// (directory.NotOnCluster).
func (s *Store) ClaimedClusters(spaceIDs []string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, len(spaceIDs))
	for i, id := range spaceIDs {
		out[i] = s.claims[id].cluster
	}
	return out
}

// Close closes the pools of the clusters opened here (not Main's). Call it
// once the engine has stopped.
func (s *Store) Close() {
	for _, c := range s.clusters {
		c.open <- struct{}{}
		if c.pool != nil {
			c.pool.Close()
			c.pool, c.st = nil, nil
		}
		<-c.open
	}
}

func (s *Store) claimed(spaceID string, epoch int64) (*store.Store, error) {
	s.mu.Lock()
	c, ok := s.claims[spaceID]
	s.mu.Unlock()
	if !ok || c.epoch != epoch {
		return nil, fmt.Errorf("space %s has no claim at epoch %d here: %w", spaceID, epoch, store.ErrFenced)
	}
	return c.st, nil
}

// locate returns the cluster of space id, or why it may not be served.
func (s *Store) locate(ctx context.Context, id string) (string, error) {
	sp, err := s.dir.Lookup(ctx, id)
	switch {
	case errors.Is(err, directory.ErrSpaceNotFound):
		return "", fmt.Errorf("space %s is not in the directory: %w", id, space.ErrMoved)
	case err != nil:
		return "", fmt.Errorf("find the cluster of space %s: %w", id, err)
	case sp.MovingTo != "":
		return "", fmt.Errorf("space %s is moving from cluster %s to %s: %w", id, sp.Cluster, sp.MovingTo, space.ErrMoving)
	}
	return sp.Cluster, nil
}

// Cluster returns the store of cluster name, opening it (a pool of its
// own, its migrations) on first use; an open that fails is tried again by
// the next call. A name this Store was not given is ErrUnknownCluster.
func (s *Store) Cluster(ctx context.Context, name string) (*store.Store, error) {
	c := s.clusters[name]
	if c == nil {
		return nil, fmt.Errorf("cluster %q: %w", name, ErrUnknownCluster)
	}
	select {
	case c.open <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for cluster %s to open: %w", name, ctx.Err())
	}
	defer func() { <-c.open }()
	if c.st != nil {
		return c.st, nil
	}
	start := time.Now()
	pool, err := pgxpool.NewWithConfig(ctx, c.poolCfg)
	if err != nil {
		return nil, fmt.Errorf("open cluster %s: %w", name, err)
	}
	st, err := store.OpenConfig(ctx, pool, c.stCfg)
	if err != nil {
		pool.Close()
		// Not cached: the next claim tries again.
		return nil, fmt.Errorf("open cluster %s: %w", name, err)
	}
	c.pool, c.st = pool, st
	s.log.Info("data cluster opened", "cluster", name, "took", time.Since(start).Round(time.Millisecond))
	return st, nil
}
