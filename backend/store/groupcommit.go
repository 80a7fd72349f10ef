package store

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Defaults for Config's zero values.
const (
	DefaultMaxGroupSpaces = 1000
	DefaultMaxGroupBytes  = 8 << 20
	DefaultCommitters     = 2
	DefaultGroupTimeout   = 10 * time.Second
)

// Config tunes the group commit across spaces. The zero value of every field
// means its default.
type Config struct {
	// MaxGroupSpaces bounds the spaces written by one group commit. 1 turns
	// group commit off: every space commits in a transaction of its own.
	// Zero value means DefaultMaxGroupSpaces (1,000).
	MaxGroupSpaces int
	// MaxGroupBytes bounds the approximate bytes of one group commit (keys,
	// values, client ids), so that one large batch does not make many
	// small ones wait for its transfer. A batch larger than this is still
	// written, in a group of its own. Zero value means DefaultMaxGroupBytes
	// (8 MiB).
	MaxGroupBytes int
	// Committers bounds the group commits in flight at once, each on a
	// connection of its own. While they are all busy, batches that arrive
	// wait and go in the next group together. Zero value means
	// DefaultCommitters (2).
	Committers int
	// GroupTimeout bounds one group commit. Zero value means
	// DefaultGroupTimeout (10s).
	GroupTimeout time.Duration
	// Logger receives one line per failed group. Zero value means
	// slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.MaxGroupSpaces <= 0 {
		c.MaxGroupSpaces = DefaultMaxGroupSpaces
	}
	if c.MaxGroupBytes <= 0 {
		c.MaxGroupBytes = DefaultMaxGroupBytes
	}
	if c.Committers <= 0 {
		c.Committers = DefaultCommitters
	}
	if c.GroupTimeout <= 0 {
		c.GroupTimeout = DefaultGroupTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// committer gathers the Commit calls of all spaces into groups. It has no
// goroutine of its own: the callers take turns leading. A caller that finds
// fewer than Committers groups in flight leads one: it takes its own batch
// and what else is queued, writes them in one statement, hands every caller
// its result, and, if more batches queued meanwhile, passes the lead to the
// first of them. So a batch that arrives while the committers are busy waits
// only for one commit to finish and then goes in the next group, and a lone
// space commits at once, as it would alone.
type committer struct {
	st *Store

	mu      sync.Mutex
	queue   []*commitReq
	leading int // groups being gathered or written
}

// commit returns with r.err set: nil, ErrFenced, errAlone (commit it alone),
// a context error (r was never written) or a storage error.
func (c *committer) commit(r *commitReq) {
	c.mu.Lock()
	c.queue = append(c.queue, r)
	lead := c.leading < c.st.cfg.Committers
	if lead {
		c.leading++
	}
	c.mu.Unlock()
	if !lead {
		select {
		case <-r.done:
		case <-r.ctx.Done():
			c.mu.Lock()
			if !r.lead {
				if i := slices.Index(c.queue, r); i >= 0 {
					c.queue = slices.Delete(c.queue, i, i+1)
					c.mu.Unlock()
					r.err = r.ctx.Err()
					return
				}
			}
			c.mu.Unlock()
			<-r.done // already taken by a group: its outcome is ours
		}
		if !r.lead {
			return
		}
	}
	c.leadGroup(r)
}

// leadGroup writes a group that holds r, delivers the results, and passes
// the lead on or gives it up.
func (c *committer) leadGroup(r *commitReq) {
	cfg := &c.st.cfg
	c.mu.Lock()
	group := []*commitReq{r}
	size := r.size
	if i := slices.Index(c.queue, r); i >= 0 {
		c.queue = slices.Delete(c.queue, i, i+1)
	}
	n := 0
	for _, q := range c.queue {
		if len(group) == cfg.MaxGroupSpaces || size+q.size > cfg.MaxGroupBytes {
			break
		}
		group = append(group, q)
		size += q.size
		n++
	}
	c.queue = slices.Delete(c.queue, 0, n)
	c.mu.Unlock()

	// A caller that gave up before its batch was taken is not written.
	live := group[:0:0]
	for _, q := range group {
		if err := q.ctx.Err(); err != nil {
			q.err = err
			continue
		}
		live = append(live, q)
	}
	if len(live) > 0 {
		// Even a group of one skips a row locked elsewhere: waiting for it
		// here would hold a committer, and every space behind it, until
		// someone else's transaction ends. Such a batch waits alone.
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), cfg.GroupTimeout)
		c.st.write(ctx, live, false)
		cancel()
		observeGroup(live, size, time.Since(start))
		if err := live[0].err; err != nil && !errors.Is(err, errAlone) && !errors.Is(err, ErrFenced) {
			cfg.Logger.Warn("group commit failed", "spaces", len(live), "first", describe(live), "err", err)
		}
	}

	c.mu.Lock()
	var next *commitReq
	if len(c.queue) > 0 {
		// Out of the queue, so no other leader takes it too.
		next = c.queue[0]
		c.queue = slices.Delete(c.queue, 0, 1)
		next.lead = true
	} else {
		c.leading--
	}
	c.mu.Unlock()
	for _, q := range group {
		if q != r {
			close(q.done)
		}
	}
	if next != nil {
		close(next.done)
	}
}
