// Package space is the space engine: one in-memory replica per loaded space,
// kept by a single writer goroutine that runs every mutation in arrival order,
// commits each batch in one Postgres transaction (group commit) and only then
// acknowledges and pokes. Reads (pokes, pulls) are served from memory by the
// connections' own goroutines under a read lock, so fan-out never waits for
// the writer and the writer never waits for a slow connection.
//
// Lifecycle: a space is loaded (claimed, fencing any previous owner) when the
// first peer joins, kept while peers are attached, and unloaded after the last
// one leaves and a grace period passes. Loading one space never blocks
// another.
package space

import (
	"log/slog"
	"time"
)

// Defaults for Config's zero values.
const (
	DefaultGracePeriod       = 30 * time.Second
	DefaultQueueLen          = 1024
	DefaultMaxBatchPushes    = 512
	DefaultMaxBatchMutations = 10_000
	DefaultTombstoneTTL      = 7 * 24 * time.Hour
	DefaultClientGroupTTL    = 30 * 24 * time.Hour
	DefaultGCInterval        = time.Hour
	DefaultMaxKeyBytes       = 1024
	DefaultMaxValueBytes     = 1 << 20
	DefaultCommitTimeout     = 10 * time.Second
	DefaultLoadTimeout       = 60 * time.Second
	DefaultMaxPeers          = 10_000
	DefaultMaxSpaces         = 10_000
	DefaultMaxPushMutations  = 10_000
	DefaultPokeRate          = 20_000
	// DefaultRecheckInterval is how often RunRecheck asks the directory
	// whether each loaded space is still this machine's.
	DefaultRecheckInterval = 30 * time.Second
)

// Config tunes the engine. The zero value of every field means its default.
type Config struct {
	// Owner names this process in the store's owner column (the machine ID).
	// Zero value means "unknown".
	Owner string
	// GracePeriod is how long a space stays loaded after its last peer
	// left, so that a reconnecting client does not pay a reload. Zero value
	// means DefaultGracePeriod (30s); negative means unload at once.
	GracePeriod time.Duration
	// QueueLen bounds the pushes waiting for a space's writer; a connection
	// pushing into a full queue waits (backpressure on that connection only).
	// Zero value means DefaultQueueLen (1024).
	QueueLen int
	// MaxBatchPushes and MaxBatchMutations bound one group commit, so that a
	// burst does not make one transaction (and every ack in it) wait too
	// long. Zero values mean DefaultMaxBatchPushes (512) and
	// DefaultMaxBatchMutations (10,000).
	MaxBatchPushes    int
	MaxBatchMutations int
	// TombstoneTTL is how long a delete is remembered for diffs. A client
	// whose cookie is older than the oldest forgotten delete gets a full
	// resync instead of a diff. Zero value means DefaultTombstoneTTL (7
	// days); negative keeps tombstones forever.
	TombstoneTTL time.Duration
	// ClientGroupTTL forgets client groups (their clients' lastMutationIDs)
	// not seen for this long; a forgotten group that comes back gets
	// ClientStateNotFound and starts afresh. Each browser tab load creates a
	// client, so without this the client table only grows. Zero value means
	// DefaultClientGroupTTL (30 days); negative never forgets.
	ClientGroupTTL time.Duration
	// GCInterval is how often a loaded space collects garbage (also once
	// after each load). Zero or negative means DefaultGCInterval (1h).
	GCInterval time.Duration
	// MaxKeyBytes and MaxValueBytes bound what a mutator may Put. Zero
	// values mean DefaultMaxKeyBytes (1 KiB) and DefaultMaxValueBytes (1 MiB).
	MaxKeyBytes   int
	MaxValueBytes int
	// MaxPeers bounds the connections of one space; past it a joiner is
	// refused (close 4029, retry later). Zero value means DefaultMaxPeers
	// (10,000).
	MaxPeers int
	// MaxSpaces bounds the spaces one process holds in memory; loading one
	// more is refused (close 4029) until others unload. Zero value means
	// DefaultMaxSpaces (10,000).
	MaxSpaces int
	// MaxPushMutations bounds the mutations one push may run: the first
	// ones run and the push is acknowledged, the rest come again in the
	// client's next push (as after a gap). Zero value means
	// DefaultMaxPushMutations (10,000).
	MaxPushMutations int
	// PokeRate bounds the pokes one space sends per second over all its
	// connections: each connection is poked at most once every (the
	// space's connections ÷ PokeRate), e.g. every 5 ms with 100 clients.
	// A poke carries everything since the connection's previous one, so
	// pacing loses nothing: a quiet space's poke still goes out at once,
	// and under load one poke carries the commits of the interval. Without
	// it a space of many clients sends a poke per commit per client, one
	// write syscall each, and past what the CPU can write the pokes queue
	// up and latency grows without bound. Zero value means DefaultPokeRate
	// (20,000); negative means no pacing.
	PokeRate int
	// SchemaVersions lists the Replicache schemaVersions the mutators serve.
	// Empty means any schema version is served.
	SchemaVersions []string
	// CommitTimeout bounds one group commit. Zero or negative means
	// DefaultCommitTimeout (10s).
	CommitTimeout time.Duration
	// LoadTimeout bounds loading a space. Zero or negative means
	// DefaultLoadTimeout (60s).
	LoadTimeout time.Duration
	// Assigner says whether this machine may serve a space (the directory's
	// word). Zero value (nil) serves every space: a single machine with no
	// directory, as in the engine's own tests.
	Assigner Assigner
	// Logger receives one line per event. Zero value means slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	// These have no "off": a negative value would panic a ticker or fail
	// every commit, so it means the default too.
	pos := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	defInt := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.GracePeriod, DefaultGracePeriod)
	def(&c.TombstoneTTL, DefaultTombstoneTTL)
	def(&c.ClientGroupTTL, DefaultClientGroupTTL)
	pos(&c.GCInterval, DefaultGCInterval)
	pos(&c.CommitTimeout, DefaultCommitTimeout)
	pos(&c.LoadTimeout, DefaultLoadTimeout)
	defInt(&c.QueueLen, DefaultQueueLen)
	defInt(&c.MaxBatchPushes, DefaultMaxBatchPushes)
	defInt(&c.MaxBatchMutations, DefaultMaxBatchMutations)
	defInt(&c.MaxKeyBytes, DefaultMaxKeyBytes)
	defInt(&c.MaxValueBytes, DefaultMaxValueBytes)
	defInt(&c.MaxPeers, DefaultMaxPeers)
	defInt(&c.MaxSpaces, DefaultMaxSpaces)
	defInt(&c.MaxPushMutations, DefaultMaxPushMutations)
	if c.PokeRate == 0 {
		c.PokeRate = DefaultPokeRate
	}
	if c.Owner == "" {
		c.Owner = "unknown"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) servesSchema(v string) bool {
	if len(c.SchemaVersions) == 0 {
		return true
	}
	for _, s := range c.SchemaVersions {
		if s == v {
			return true
		}
	}
	return false
}
