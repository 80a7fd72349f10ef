// Package routecache is the router's cache in front of the space directory:
// a bounded LRU of placements with a TTL, a smaller LRU of negative answers
// (unknown spaces) with a shorter TTL, and coalescing of concurrent misses so
// that a burst of connections to one uncached space costs one directory query.
//
// Entries are dropped at once by Evict (on a directory NOTIFY) and all at once
// by Purge (when the NOTIFY stream was interrupted); the TTL only bounds how
// stale an entry can get if a notification is missed.
package routecache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/spaceport-sync/spaceport/backend/directory"
)

// Defaults for Config fields left at zero.
const (
	DefaultSize          = 100_000
	DefaultTTL           = 30 * time.Second
	DefaultNegativeSize  = 10_000
	DefaultNegativeTTL   = 2 * time.Second
	DefaultLookupTimeout = 3 * time.Second
)

// LookupFunc reads a placement from the directory. It returns an error
// wrapping directory.ErrSpaceNotFound for an unknown space; that answer is
// cached as a negative entry. Any other error is returned to the callers and
// not cached.
type LookupFunc func(ctx context.Context, id string) (directory.Space, error)

// Config sizes the cache. The zero value is ready to use.
type Config struct {
	// Size bounds the number of cached placements (least recently used
	// goes first). Zero means DefaultSize (100,000; about 20 MB).
	Size int
	// TTL is how long a placement is trusted without a directory read.
	// Zero means DefaultTTL (30s).
	TTL time.Duration
	// NegativeSize bounds the cached "no such space" answers. They live in
	// their own LRU so that requests for random IDs cannot push real
	// placements out. Zero means DefaultNegativeSize (10,000).
	NegativeSize int
	// NegativeTTL is how long a "no such space" answer is kept: short, so a
	// space created through another router is found quickly even if its
	// NOTIFY is missed. Zero means DefaultNegativeTTL (2s).
	NegativeTTL time.Duration
	// LookupTimeout bounds one directory read. The read runs on behalf of
	// every caller waiting for that key, so it is not tied to any one
	// caller's context. Zero means DefaultLookupTimeout (3s).
	LookupTimeout time.Duration
}

func (c Config) withDefaults() Config {
	if c.Size <= 0 {
		c.Size = DefaultSize
	}
	if c.TTL <= 0 {
		c.TTL = DefaultTTL
	}
	if c.NegativeSize <= 0 {
		c.NegativeSize = DefaultNegativeSize
	}
	if c.NegativeTTL <= 0 {
		c.NegativeTTL = DefaultNegativeTTL
	}
	if c.LookupTimeout <= 0 {
		c.LookupTimeout = DefaultLookupTimeout
	}
	return c
}

// Stats are cumulative counters since the cache was made.
type Stats struct {
	// Hits are lookups answered from the cache, negative answers included.
	Hits uint64
	// Misses are lookups that had to wait for the directory, whether they
	// started the read or joined one in flight.
	Misses uint64
	// Coalesced are the misses that joined a read already in flight.
	Coalesced uint64
}

// Cache is a placement cache. It is safe for concurrent use and starts no
// goroutines of its own.
type Cache struct {
	cfg    Config
	lookup LookupFunc
	now    func() time.Time

	pos *lru.Cache[string, entry]
	neg *lru.Cache[string, time.Time] // space ID -> expiry

	mu       sync.Mutex
	inflight map[string]*call
	gen      uint64 // bumped by Purge; a read started before it is not stored

	hits, misses, coalesced atomic.Uint64
}

type entry struct {
	space   directory.Space
	expires time.Time
}

// call is one directory read shared by every caller that missed on its key.
type call struct {
	done  chan struct{}
	space directory.Space
	err   error
	gen   uint64
	stale bool // Evict ran while the read was in flight: do not store its answer
}

// New returns a cache that reads misses through lookup.
func New(lookup LookupFunc, cfg Config) *Cache {
	cfg = cfg.withDefaults()
	pos, err := lru.New[string, entry](cfg.Size)
	if err != nil {
		panic(fmt.Sprintf("routecache: %v", err)) // unreachable: sizes are positive
	}
	neg, err := lru.New[string, time.Time](cfg.NegativeSize)
	if err != nil {
		panic(fmt.Sprintf("routecache: %v", err))
	}
	return &Cache{cfg: cfg, lookup: lookup, now: time.Now, pos: pos, neg: neg, inflight: make(map[string]*call)}
}

// Lookup returns the placement of space id from the cache, or reads it from
// the directory. Concurrent misses on one id share a single read. An unknown
// space returns an error wrapping directory.ErrSpaceNotFound. If ctx ends
// first, Lookup returns ctx's error; the shared read goes on for the others.
func (c *Cache) Lookup(ctx context.Context, id string) (directory.Space, error) {
	now := c.now()
	if e, ok := c.pos.Get(id); ok {
		if now.Before(e.expires) {
			c.hits.Add(1)
			return e.space, nil
		}
		c.pos.Remove(id)
	}
	if exp, ok := c.neg.Get(id); ok {
		if now.Before(exp) {
			c.hits.Add(1)
			return directory.Space{}, fmt.Errorf("look up space %s (cached): %w", id, directory.ErrSpaceNotFound)
		}
		c.neg.Remove(id)
	}
	c.misses.Add(1)

	c.mu.Lock()
	cl, joined := c.inflight[id]
	if joined {
		c.coalesced.Add(1)
	} else {
		cl = &call{done: make(chan struct{}), gen: c.gen}
		c.inflight[id] = cl
	}
	c.mu.Unlock()
	if !joined {
		go c.read(id, cl)
	}

	select {
	case <-cl.done:
		return cl.space, cl.err
	case <-ctx.Done():
		return directory.Space{}, fmt.Errorf("look up space %s: %w", id, ctx.Err())
	}
}

// read runs one directory read for id and publishes it to the waiters. It
// runs in its own goroutine so that a caller giving up does not cancel the
// read for the others; LookupTimeout bounds its life.
func (c *Cache) read(id string, cl *call) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.LookupTimeout)
	defer cancel()
	sp, err := c.lookup(ctx, id)

	c.mu.Lock()
	if c.inflight[id] == cl {
		delete(c.inflight, id)
	}
	if !cl.stale && cl.gen == c.gen {
		now := c.now()
		switch {
		case err == nil:
			c.pos.Add(id, entry{space: sp, expires: now.Add(c.cfg.TTL)})
		case errors.Is(err, directory.ErrSpaceNotFound):
			c.neg.Add(id, now.Add(c.cfg.NegativeTTL))
		}
	}
	c.mu.Unlock()

	cl.space, cl.err = sp, err
	close(cl.done)
}

// Evict drops what the cache knows about id, including a read in flight: its
// answer may predate the change being announced, so it goes to the callers
// already waiting but is not stored, and the next Lookup reads again.
func (c *Cache) Evict(id string) {
	c.mu.Lock()
	if cl, ok := c.inflight[id]; ok {
		cl.stale = true
		delete(c.inflight, id)
	}
	c.pos.Remove(id)
	c.neg.Remove(id)
	c.mu.Unlock()
}

// Purge drops every entry and disowns every read in flight.
func (c *Cache) Purge() {
	c.mu.Lock()
	c.gen++
	clear(c.inflight)
	c.pos.Purge()
	c.neg.Purge()
	c.mu.Unlock()
}

// Len returns the number of cached placements and negative answers.
func (c *Cache) Len() (placements, negatives int) { return c.pos.Len(), c.neg.Len() }

// Stats returns the cache's counters.
func (c *Cache) Stats() Stats {
	return Stats{Hits: c.hits.Load(), Misses: c.misses.Load(), Coalesced: c.coalesced.Load()}
}
