package machines

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Fly's documented rate limits of the Machines API: per action and per machine (or app), 1 request a second
// with bursts of 3; getting a machine, 5 a second with bursts of 10. The client keeps to them on its side so a
// loop over many machines does not collect 429s.
const (
	ActionRate  = 1.0
	ActionBurst = 3
	GetRate     = 5.0
	GetBurst    = 10
)

// rateClass names one rate limit: an action (start, stop, ...) counted per machine or app.
type rateClass struct {
	action      string
	rate, burst float64
}

func action(name string) rateClass {
	return rateClass{action: name, rate: ActionRate, burst: ActionBurst}
}

var getClass = rateClass{action: "get", rate: GetRate, burst: GetBurst}

// maxBuckets bounds the limiter's memory; full buckets are dropped past it (a full bucket holds no state).
const maxBuckets = 1024

// limiter is a token bucket per (action, machine or app).
type limiter struct {
	now func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(now func() time.Time) *limiter {
	return &limiter{now: now, buckets: make(map[string]*bucket)}
}

// reserve takes a token from the bucket of (class, key) and returns how long the caller must wait before using
// it: zero while the burst lasts, then one interval per request ahead of it.
func (l *limiter) reserve(class rateClass, key string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	id := class.action + "/" + key
	b := l.buckets[id]
	if b == nil {
		if len(l.buckets) >= maxBuckets {
			l.prune(now)
		}
		b = &bucket{tokens: class.burst, last: now}
		l.buckets[id] = b
	}
	if elapsed := now.Sub(b.last).Seconds(); elapsed > 0 {
		b.tokens = min(class.burst, b.tokens+elapsed*class.rate)
		b.last = now
	}
	b.tokens--
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / class.rate * float64(time.Second))
}

// unreserve gives back a token reserved by a caller that gave up waiting.
func (l *limiter) unreserve(class rateClass, key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.buckets[class.action+"/"+key]; b != nil {
		b.tokens = min(class.burst, b.tokens+1)
	}
}

// prune drops the buckets that have refilled. l.mu must be held. Rates differ per class, so a bucket counts as
// refilled once a minute has passed since its last use, enough for every class.
func (l *limiter) prune(now time.Time) {
	for id, b := range l.buckets {
		if now.Sub(b.last) > time.Minute {
			delete(l.buckets, id)
		}
	}
}

// wait blocks until a request of class against key may be sent, or ctx is done.
func (l *limiter) wait(ctx context.Context, class rateClass, key string, log *slog.Logger) error {
	if class.rate == 0 {
		return nil
	}
	d := l.reserve(class, key)
	if d == 0 {
		return nil
	}
	log.Debug("machines API: rate limit", "action", class.action, "key", key, "wait", d)
	if err := sleep(ctx, d); err != nil {
		l.unreserve(class, key)
		return err
	}
	return nil
}
