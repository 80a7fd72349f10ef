// Package directory is the space directory: which backend machines exist and
// are alive, which machine owns each space, and which Postgres cluster holds
// each space's data. It is the one owner of the directory tables (schema
// "directory" in Postgres) and their migrations.
//
// Backend machines register themselves at start and heartbeat
// (RegisterMachine, RunHeartbeat), and check that the directory assigns a
// space to them before serving it (Lookup). The router places new spaces on
// the live machine with the fewest spaces and on the data cluster with the
// fewest (CreateSpace), answers replay decisions (Lookup, behind its cache)
// and moves spaces (MoveSpace); spacectl moves a space's data between
// clusters (BeginClusterMove, FinishClusterMove). Every change of a space's
// placement, machine or cluster, is announced with Postgres NOTIFY on
// NotifyChannel in the transaction that makes it; Listen delivers those
// announcements so caches drop stale entries at once.
//
// The package speaks SQL and nothing else: no HTTP, no caching.
package directory

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spaceport-sync/spaceport/backend/migrate"
)

// DefaultBackendApp is the backend app where none is configured (the
// router's and spacectl's BACKEND_APP): the app of fly/backend/fly.toml,
// whose name the router puts in fly-replay.
const DefaultBackendApp = "spaceport-backend"

// Defaults for Config fields left at their zero value.
const (
	// DefaultLiveWindow: a started machine whose last heartbeat is older than
	// this is not live and receives no new spaces. Three heartbeats at
	// DefaultHeartbeatInterval fit in it, so one slow or lost beat is harmless.
	DefaultLiveWindow = 15 * time.Second
	// DefaultHeartbeatInterval is the beat of RunHeartbeat when it is given 0.
	DefaultHeartbeatInterval = 5 * time.Second
	// DefaultListenRetryMin and DefaultListenRetryMax bound the capped,
	// jittered exponential backoff between reconnects of Listen.
	DefaultListenRetryMin = 100 * time.Millisecond
	DefaultListenRetryMax = 5 * time.Second
	// DefaultListenPingInterval: a listener that has received nothing for
	// this long checks its connection with a round trip, so a connection
	// that died silently (no FIN, no RST) is noticed and replaced.
	DefaultListenPingInterval = 15 * time.Second
	// DefaultListLimit is how many spaces ListSpaces returns when asked for
	// 0; MaxListLimit caps any request.
	DefaultListLimit = 1000
	MaxListLimit     = 10000
)

// NotifyChannel is the Postgres NOTIFY channel on which every change of a
// space's placement (created, moved, deleted) is announced; the payload is the
// space ID.
const NotifyChannel = "spaceport_directory_spaces"

// ListenApplicationName is the application_name of Listen's dedicated
// connection, so operators can tell it apart in pg_stat_activity.
const ListenApplicationName = "spaceport-directory-listen"

// migrationOwner is this package's name in schema_migrations.
const migrationOwner = "directory"

// Errors returned (wrapped, test with errors.Is) by Directory methods.
var (
	ErrSpaceNotFound       = errors.New("space not found")
	ErrSpaceExists         = errors.New("space already exists")
	ErrNoLiveMachine       = errors.New("no live machine to place the space on")
	ErrMachineNotFound     = errors.New("machine not found")
	ErrInvalidSpaceID      = errors.New("invalid space id (1 to 64 characters of [A-Za-z0-9_-])")
	ErrInvalidMachine      = errors.New("invalid machine (id and app: 1 to 64 characters of [A-Za-z0-9_.-]; region at most 64 bytes)")
	ErrInvalidMachineState = errors.New("invalid machine state")
	ErrLockHeld            = errors.New("lock held by another process")
	ErrPlacementChanged    = errors.New("space placement changed meanwhile")
)

// Config tunes a Directory. The zero value is ready to use.
type Config struct {
	// LiveWindow: a machine is live when its state is started and its last
	// heartbeat is newer than this. Zero means DefaultLiveWindow (15s).
	LiveWindow time.Duration
	// ListenRetryMin and ListenRetryMax bound Listen's reconnect backoff.
	// Zero means DefaultListenRetryMin (100ms) and DefaultListenRetryMax (5s).
	ListenRetryMin time.Duration
	ListenRetryMax time.Duration
	// ListenPingInterval: how long Listen waits for a notification before it
	// checks the connection. Zero means DefaultListenPingInterval (15s).
	ListenPingInterval time.Duration
	// Clusters names the data clusters new spaces may be placed on; each
	// new space goes to the one holding the fewest spaces (ties by name).
	// Empty means DefaultCluster alone. Only creating spaces reads it.
	Clusters []string
	// Logger receives reconnects and heartbeat failures. Nil means
	// slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.LiveWindow <= 0 {
		c.LiveWindow = DefaultLiveWindow
	}
	if c.ListenRetryMin <= 0 {
		c.ListenRetryMin = DefaultListenRetryMin
	}
	if c.ListenRetryMax <= 0 {
		c.ListenRetryMax = DefaultListenRetryMax
	}
	if c.ListenRetryMax < c.ListenRetryMin {
		c.ListenRetryMax = c.ListenRetryMin
	}
	if c.ListenPingInterval <= 0 {
		c.ListenPingInterval = DefaultListenPingInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Directory is the space directory on one Postgres pool. It is safe for
// concurrent use and holds no state of its own besides the pool, so any
// number of routers and backends may share the same tables.
type Directory struct {
	pool *pgxpool.Pool
	cfg  Config
	log  *slog.Logger
}

// Open applies the directory's migrations (under migrate's advisory lock, so
// many processes may open at once) and returns a Directory on pool. The caller
// keeps owning the pool.
func Open(ctx context.Context, pool *pgxpool.Pool, cfg Config) (*Directory, error) {
	cfg = cfg.withDefaults()
	clusters, err := placementClusters(cfg.Clusters)
	if err != nil {
		return nil, fmt.Errorf("open directory: %w", err)
	}
	cfg.Clusters = clusters
	if err := migrate.Up(ctx, pool, migrationOwner, migrations); err != nil {
		return nil, fmt.Errorf("open directory: %w", err)
	}
	return &Directory{pool: pool, cfg: cfg, log: cfg.Logger}, nil
}

// Ping reports whether the directory's database answers.
func (d *Directory) Ping(ctx context.Context) error {
	if err := d.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping directory: %w", err)
	}
	return nil
}

// liveWindowMicros is the live window as a query parameter, compared with
// the database clock (never the caller's), so machines and routers with
// skewed clocks agree on who is live.
func (d *Directory) liveWindowMicros() int64 { return d.cfg.LiveWindow.Microseconds() }
